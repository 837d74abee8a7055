//! Why a request could not be forwarded, and what the client is told.

use std::time::Duration;

use http::StatusCode;

use crate::passivation::Refusal;

/// Who is at fault, in pingora's terms: decides the status class and keeps logs and metrics honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something reveille cannot route (4xx).
    Downstream,
    /// A backend failed (5xx).
    Upstream,
    /// reveille's own configuration cannot serve the request (5xx).
    Internal,
}

/// A request that reveille answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("missing or malformed Host header")]
    BadHost,
    #[error("no route for host {host:?}")]
    UnknownHost { host: String },
    #[error("host {host:?} is routed to service {service:?}, which does not exist")]
    MissingService { host: String, service: String },
    #[error("no backend of service {service:?} could be reached")]
    AllBackendsFailed { service: String },
    #[error("service {service:?} did not answer within {}", humantime::format_duration(*.timeout))]
    UpstreamTimeout { service: String, timeout: Duration },
    /// The detail goes to the log, not to the client.
    #[error("service {service:?} failed to answer")]
    UpstreamProtocol { service: String },
    #[error("the client closed the connection before sending the whole request")]
    ClientAborted,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A passivated service could not be woken in time, or not at all.
    #[error("service {service:?} is not available: {refusal}")]
    Wake { service: String, refusal: Refusal },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadHost => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            // nginx's "client closed request": only ever seen in logs and metrics, the client is gone.
            Self::ClientAborted => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::UnknownHost { .. } => StatusCode::NOT_FOUND,
            Self::AllBackendsFailed { .. } | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::MissingService { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Wake { refusal: Refusal::Timeout { .. }, .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Wake { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds for `Retry-After`, where trying again soon can work.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Wake { refusal: Refusal::Overflow { .. } | Refusal::Removed, .. } => Some(2),
            Self::Wake { refusal: Refusal::Failed { .. } | Refusal::Unavailable { .. }, .. } => Some(5),
            _ => None,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Self::BadHost | Self::UnknownHost { .. } | Self::ClientAborted | Self::MethodNotAllowed => {
                Fault::Downstream
            }
            // The operator's configuration is incomplete: neither the client's fault nor a backend's.
            Self::MissingService { .. } => Fault::Internal,
            _ => Fault::Upstream,
        }
    }

    /// The plain-text body the client gets: status line, then the reason.
    pub fn body(&self) -> String {
        let status = self.status();
        format!("{} {}: {self}\n", status.as_u16(), status.canonical_reason().unwrap_or(""))
    }
}
