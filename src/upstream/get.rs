//! One `GET` on a connection of its own, to the answer's head: what the active health checks
//! (`crate::health_check`) and passivation's readiness probe ask a backend. Off the request path, so hyper's
//! client on a connection opened for the purpose (closed after the head), not the pooled exchange: HTTP/1.1 with
//! `Host`, or HTTP/2 with prior knowledge (an `h2c://` backend, which speaks nothing else) with the authority
//! in the target.

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a `GET` got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GetError {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the connection closed before an answer")]
    Closed,
    #[error("the request could not be built: {0}")]
    Request(#[from] http::Error),
}

/// `GET path` of `authority` over `io`, HTTP/2 with prior knowledge when `h2`, else HTTP/1.1, sent as
/// `agent`: the answer's status. The connection is dropped (closed) with the answer's head.
pub(crate) async fn get_status<I>(
    io: I,
    h2: bool,
    authority: &str,
    path: &str,
    agent: &'static str,
) -> Result<StatusCode, GetError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let agent = HeaderValue::from_static(agent);
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        let req =
            Request::get(format!("http://{authority}{path}")).header(USER_AGENT, agent).body(Empty::<Bytes>::new())?;
        answer(sender.send_request(req), conn).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let req = Request::get(path).header(HOST, authority).header(USER_AGENT, agent).body(Empty::<Bytes>::new())?;
        answer(sender.send_request(req), conn).await
    }
}

/// The response's status, driving the connection until it comes (or the connection ends without one).
async fn answer<R, C>(response: R, conn: C) -> Result<StatusCode, GetError>
where
    R: std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(response);
    tokio::select! {
        biased;
        r = &mut response => Ok(r?.status()),
        r = &mut conn => {
            r?;
            // The connection ended, cleanly. A backend that answers and closes at once (`Connection: close`)
            // ends it in the same poll as its answer, which is then waiting for us: not a missing answer.
            response.await.map(|r| r.status()).map_err(|_| GetError::Closed)
        }
    }
}
