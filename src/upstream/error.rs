//! Why the backend side failed: a connection that could not be opened ([`ConnectError`]), and an exchange that
//! went wrong ([`UpstreamError`]). Neither holds the proxy's errors: a request body that failed is carried as
//! the body's own error, boxed, whatever its type.

use std::io;

/// A request body's error, whatever the body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend connection could not be opened (refused, timed out, unreachable, or its TLS handshake failed);
/// nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{}", if *.tls { "TLS handshake with the backend failed" } else { "cannot connect to the backend" })]
pub(crate) struct ConnectError {
    /// The TCP connection was made; the TLS handshake on it failed (a certificate that does not verify, no
    /// common protocol, a handshake past the connect timeout).
    tls: bool,
    #[source]
    source: BoxError,
}

impl ConnectError {
    /// No TCP connection, or another reason before TLS.
    pub(crate) fn other(e: impl Into<BoxError>) -> Self {
        Self { tls: false, source: e.into() }
    }

    /// The TLS handshake failed.
    pub(crate) fn tls(e: impl Into<BoxError>) -> Self {
        Self { tls: true, source: e.into() }
    }

    /// Whether it was the TLS handshake that failed.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("the backend closed the connection before answering")]
    Closed,
    #[error("backend connection: {0}")]
    Io(#[source] io::Error),
    #[error("malformed response head from the backend: {0}")]
    Head(#[source] httparse::Error),
    /// The limit, in bytes.
    #[error("the backend's response head is over {} KiB", .0 / 1024)]
    HeadTooLarge(usize),
    #[error("the backend's response has an invalid {0}")]
    Framing(&'static str),
    #[error("malformed chunked body from the backend: {0}")]
    Chunk(&'static str),
    #[error("the backend closed the connection in the middle of the response")]
    Incomplete,
    #[error("the backend answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("sending the request body: {0}")]
    RequestBody(#[source] BoxError),
    /// An h2 stream failed: reset (by the backend, or by reveille for the backend's error), or its connection
    /// gone.
    #[error("backend h2 stream: {0}")]
    H2(#[source] crate::http2::server::StreamError),
    /// The backend reset its h2 stream once the response had begun: the reason as the `h2` crate's error, which
    /// hyper's server (`--http2 hyper`) looks for to reset its client's stream with the same reason, as
    /// reveille's own server does.
    #[error("backend h2 stream reset: {0}")]
    H2Reset(#[source] h2::Error),
}

impl UpstreamError {
    /// The connection ended (closed, reset) before the backend answered anything.
    pub(crate) fn closed_before_answer(&self) -> bool {
        use io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        match self {
            Self::Closed => true,
            Self::Io(e) => matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof),
            _ => false,
        }
    }
}

/// `error: cause: cause` in one line, for the log.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
