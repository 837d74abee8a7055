//! Why a request could not be forwarded, what the client is told, and which metric says so.
//!
//! Owns the proxy's error vocabulary: [`ProxyError`], its source ([`Fault`]), and the label values of the
//! proxy's error counters ([`Unrouted`], [`UpstreamErrorKind`]). It does not build responses nor count: the
//! handler's single exit does both, from what an error says here.

use std::time::Duration;

use http::StatusCode;

use crate::metrics::LabelValue;
use crate::passivation::Refusal;

/// Who is at fault, in pingora's terms: decides the status class and keeps logs and metrics honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The client sent something reveille cannot route (4xx).
    Downstream,
    /// A backend failed (5xx).
    Upstream,
    /// reveille's own configuration cannot serve the request (5xx).
    Internal,
}

/// A request that reveille answers itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("missing or malformed Host header")]
    BadHost,
    #[error("no route for host {host:?}")]
    UnknownHost { host: String },
    /// No route for the host yet, and a route source (etcd) has not loaded: the route may exist there.
    #[error("no route for host {host:?} yet: the routes are still loading")]
    RoutesLoading { host: String },
    /// A request path with a `.` or `..` segment, to a host that has path routes (it could reach a backend
    /// under another prefix than the one matched).
    #[error("the request path has a '.' or '..' segment")]
    DotSegment,
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
    /// The body's framing was invalid (a bad chunk size line, say).
    #[error("malformed request body")]
    BadBody,
    /// The client stopped sending its body, or sent it slower than the minimum rate.
    #[error("request body not received in time: {reason}")]
    BodyTimeout { reason: &'static str },
    /// The request's total time limit passed before a response began.
    #[error("service {service:?} did not complete the request within {}", humantime::format_duration(*.limit))]
    RequestTimeout { service: String, limit: Duration },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// More header fields than `max_header_count` (h2: HTTP/1.1's are refused by hyper's parser).
    #[error("{count} header fields, more than the {limit} allowed")]
    TooManyHeaders { count: usize, limit: usize },
    /// A passivated service could not be woken in time, or not at all.
    #[error("service {service:?} is not available: {refusal}")]
    Wake { service: String, refusal: Refusal },
    /// An HTTP/1.1 upgrade (WebSocket) to a backend spoken to over HTTP/2, which has no upgrade (RFC 8441's
    /// extended CONNECT is not implemented): refused, never sent as a plain request.
    #[error("service {service:?}: an HTTP/1.1 upgrade (WebSocket) cannot be forwarded to its HTTP/2 backend")]
    UpgradeToH2 { service: String },
}

impl ProxyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadHost | Self::BadBody | Self::DotSegment => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            // nginx's "client closed request": only ever seen in logs and metrics, the client is gone.
            Self::ClientAborted => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::UnknownHost { .. } => StatusCode::NOT_FOUND,
            Self::AllBackendsFailed { .. } | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } | Self::RequestTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::MissingService { .. } | Self::RoutesLoading { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Wake { refusal: Refusal::Timeout { .. }, .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Wake { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpgradeToH2 { .. } => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The gRPC status a gRPC client is told instead (`grpc-status`, see `doc/statuscodes.md` of gRPC): 12
    /// UNIMPLEMENTED for no route, 14 UNAVAILABLE when no backend could answer, 4 DEADLINE_EXCEEDED for a
    /// timeout, and gRPC's own mapping of the HTTP status for the rest.
    pub(crate) fn grpc_status(&self) -> u8 {
        match self {
            Self::UnknownHost { .. } | Self::MethodNotAllowed | Self::UpgradeToH2 { .. } => 12,
            Self::MissingService { .. }
            | Self::RoutesLoading { .. }
            | Self::AllBackendsFailed { .. }
            | Self::UpstreamProtocol { .. } => 14,
            Self::UpstreamTimeout { .. } | Self::RequestTimeout { .. } | Self::BodyTimeout { .. } => 4,
            Self::Wake { refusal: Refusal::Timeout { .. }, .. } => 4,
            Self::Wake { .. } => 14,
            Self::ClientAborted => 1,
            Self::TooManyHeaders { .. } => 8,
            Self::BadHost | Self::BadBody | Self::DotSegment => 13,
        }
    }

    /// The `grpc-message` a gRPC client is told: the same reason as the text body, percent-encoded as gRPC
    /// asks (only printable ASCII other than `%` goes as is).
    pub(crate) fn grpc_message(&self) -> String {
        let reason = self.public_reason();
        let mut out = String::with_capacity(reason.len());
        for b in reason.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// Seconds for `Retry-After`, where trying again soon can work.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RoutesLoading { .. } => Some(1),
            Self::Wake { refusal: Refusal::Overflow { .. } | Refusal::Removed, .. } => Some(2),
            Self::Wake { refusal: Refusal::Failed { .. } | Refusal::Unavailable { .. }, .. } => Some(5),
            _ => None,
        }
    }

    /// Who is at fault. It picks the error counter the error adds to (see `metric`).
    pub(crate) fn fault(&self) -> Fault {
        match self {
            Self::BadHost
            | Self::UnknownHost { .. }
            | Self::DotSegment
            | Self::ClientAborted
            | Self::BadBody
            | Self::BodyTimeout { .. }
            | Self::MethodNotAllowed
            | Self::TooManyHeaders { .. } => Fault::Downstream,
            // The operator's configuration is incomplete (or routes WebSocket to an HTTP/2 backend): neither the
            // client's fault nor a backend's.
            Self::MissingService { .. } | Self::RoutesLoading { .. } | Self::UpgradeToH2 { .. } => Fault::Internal,
            _ => Fault::Upstream,
        }
    }

    /// The error counter this error adds to, beside the per-service and latency metrics every response gets.
    /// Downstream and internal errors met before a service was found count as unrouted; upstream errors count
    /// by kind when the request ended on one. A failed connect is counted by the attempt that met it (the next
    /// backend may still answer), and a refused wake by passivation, so neither counts here.
    pub(super) fn metric(&self) -> Option<ErrorMetric> {
        match self.fault() {
            Fault::Downstream | Fault::Internal => match self {
                Self::BadHost => Some(ErrorMetric::Unrouted(Unrouted::BadHost)),
                Self::UnknownHost { .. } => Some(ErrorMetric::Unrouted(Unrouted::UnknownHost)),
                Self::MissingService { .. } => Some(ErrorMetric::Unrouted(Unrouted::MissingService)),
                Self::RoutesLoading { .. } => Some(ErrorMetric::Unrouted(Unrouted::RoutesLoading)),
                _ => None,
            },
            Fault::Upstream => match self {
                Self::UpstreamTimeout { .. } | Self::RequestTimeout { .. } => {
                    Some(ErrorMetric::Upstream(UpstreamErrorKind::ResponseTimeout))
                }
                Self::UpstreamProtocol { .. } => Some(ErrorMetric::Upstream(UpstreamErrorKind::Protocol)),
                _ => None,
            },
        }
    }

    /// The plain-text body the client gets: status line, then a reason that names nothing internal (no
    /// service, backend address, container or Docker detail: those are in the log, see [`Self::logged`]).
    pub(crate) fn body(&self) -> String {
        let status = self.status();
        format!("{} {}: {}\n", status.as_u16(), status.canonical_reason().unwrap_or(""), self.public_reason())
    }

    fn public_reason(&self) -> std::borrow::Cow<'static, str> {
        let reason = match self {
            // The client's own input, echoed: nothing of reveille's.
            Self::BadHost
            | Self::UnknownHost { .. }
            | Self::DotSegment
            | Self::MethodNotAllowed
            | Self::BadBody
            | Self::TooManyHeaders { .. } => return self.to_string().into(),
            Self::BodyTimeout { .. } => "request body not received in time",
            Self::ClientAborted => "request incomplete",
            Self::MissingService { .. } => "this host is not served at the moment",
            Self::RoutesLoading { .. } => "the routes are still loading; try again",
            Self::AllBackendsFailed { .. } => "the service could not be reached",
            Self::UpstreamTimeout { .. } | Self::RequestTimeout { .. } => "the service did not answer in time",
            Self::UpstreamProtocol { .. } => "the service failed to answer",
            Self::Wake { refusal, .. } => refusal.public_reason(),
            Self::UpgradeToH2 { .. } => "this service does not take WebSocket connections",
        };
        reason.into()
    }

    /// Whether the exit logs this error at `warn`: every 502, 503 and 504 reveille answers itself, so an
    /// operator sees why without turning on debug logs. Client errors are routine at an edge: debug.
    pub(crate) fn logged(&self) -> bool {
        matches!(self.fault(), Fault::Upstream | Fault::Internal)
    }
}

/// An error counter and its label, as [`ProxyError::metric`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorMetric {
    /// `reveille_unrouted_requests_total`.
    Unrouted(Unrouted),
    /// `reveille_upstream_errors_total`.
    Upstream(UpstreamErrorKind),
}

/// Requests that no service answered; the label of `reveille_unrouted_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unrouted {
    UnknownHost,
    BadHost,
    /// A route exists but its service does not (503).
    MissingService,
    /// No route yet, before every route source has loaded (503).
    RoutesLoading,
}

impl LabelValue for Unrouted {
    const ALL: &'static [Self] = &[Self::UnknownHost, Self::BadHost, Self::MissingService, Self::RoutesLoading];

    fn as_label(self) -> &'static str {
        match self {
            Self::UnknownHost => "unknown_host",
            Self::BadHost => "bad_host",
            Self::MissingService => "missing_service",
            Self::RoutesLoading => "routes_loading",
        }
    }

    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// Why an upstream attempt failed; the label of `reveille_upstream_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    /// The backend refused the TCP connection.
    ConnectRefused,
    /// The TCP connection did not complete within the connect timeout.
    ConnectTimeout,
    /// Any other connect failure (unreachable, DNS...).
    ConnectOther,
    /// No response headers within the response timeout.
    ResponseTimeout,
    /// The backend broke the HTTP exchange (closed early, sent garbage).
    Protocol,
    /// The backend stopped sending its response body for the upstream read timeout.
    BodyTimeout,
    /// A kept-alive connection closed just as a request went out on it; the request went again on a new
    /// connection when that was safe (see `handler::send_to`), and failed with 502 otherwise.
    ReusedClosed,
    /// The TLS handshake with an `https://` backend failed (a certificate that does not verify, say); nothing
    /// was sent, and the next backend may take the request.
    Tls,
}

impl UpstreamErrorKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectOther => "connect_other",
            Self::ResponseTimeout => "response_timeout",
            Self::Protocol => "protocol",
            Self::BodyTimeout => "body_timeout",
            Self::ReusedClosed => "reused_closed",
            Self::Tls => "tls",
        }
    }
}

impl LabelValue for UpstreamErrorKind {
    const ALL: &'static [Self] = &[
        Self::ConnectRefused,
        Self::ConnectTimeout,
        Self::ConnectOther,
        Self::ResponseTimeout,
        Self::Protocol,
        Self::BodyTimeout,
        Self::ReusedClosed,
        Self::Tls,
    ];

    fn as_label(self) -> &'static str {
        self.as_str()
    }

    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_indexes_match_their_position() {
        for (i, v) in Unrouted::ALL.iter().enumerate() {
            assert_eq!(v.index(), i);
        }
        for (i, v) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(v.index(), i);
        }
    }

    #[test]
    fn the_source_of_an_error_picks_its_counter() {
        let host = || "h".to_string();
        let service = || "s".to_string();
        assert_eq!(
            ProxyError::UnknownHost { host: host() }.metric(),
            Some(ErrorMetric::Unrouted(Unrouted::UnknownHost))
        );
        assert_eq!(ProxyError::BadHost.metric(), Some(ErrorMetric::Unrouted(Unrouted::BadHost)));
        assert_eq!(
            ProxyError::MissingService { host: host(), service: service() }.metric(),
            Some(ErrorMetric::Unrouted(Unrouted::MissingService))
        );
        assert_eq!(
            ProxyError::UpstreamTimeout { service: service(), timeout: Duration::from_secs(1) }.metric(),
            Some(ErrorMetric::Upstream(UpstreamErrorKind::ResponseTimeout))
        );
        assert_eq!(
            ProxyError::UpstreamProtocol { service: service() }.metric(),
            Some(ErrorMetric::Upstream(UpstreamErrorKind::Protocol))
        );
        for uncounted in [
            ProxyError::MethodNotAllowed,
            ProxyError::ClientAborted,
            ProxyError::AllBackendsFailed { service: service() },
            ProxyError::Wake { service: service(), refusal: Refusal::Removed },
        ] {
            assert_eq!(uncounted.metric(), None, "{uncounted}");
        }
    }

    #[test]
    fn grpc_clients_get_grpcs_codes_and_a_percent_encoded_message() {
        let service = || "s".to_string();
        let unknown = ProxyError::UnknownHost { host: "50%-caf\u{e9}.test".into() };
        assert_eq!(unknown.grpc_status(), 12);
        assert_eq!(unknown.grpc_message(), "no route for host \"50%25-caf%C3%A9.test\"");
        assert_eq!(ProxyError::AllBackendsFailed { service: service() }.grpc_status(), 14);
        assert_eq!(
            ProxyError::UpstreamTimeout { service: service(), timeout: Duration::from_secs(1) }.grpc_status(),
            4
        );
        assert_eq!(ProxyError::Wake { service: service(), refusal: Refusal::Removed }.grpc_status(), 14);
    }
}
