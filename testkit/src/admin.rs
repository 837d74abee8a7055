//! reveille's admin API from blocking code: a request, a service's state and the wait for one, `/metrics` and
//! the wake phases' times in it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::prometheus::sample;

/// How long reveille may take to report a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// `METHOD path` on 127.0.0.1:port with `Connection: close` and `X-Reveille: 1` (which the admin API's commands
/// need when no token is set): `(status, body)`; `None` if there is no answer.
pub fn http_request(port: u16, method: &str, path: &str) -> Option<(u16, Bytes)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("connection", "close")
        .header("x-reveille", "1")
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // The timeout is made inside the runtime: made outside one, it panics (no timer to register with).
    let send = async { tokio::time::timeout(Duration::from_secs(10), crate::http::send(addr, req)).await };
    let resp = crate::http::block_on(send).ok()?.ok()?;
    Some((resp.status().as_u16(), resp.into_body()))
}

/// A service's `state` in `GET /api/services`.
pub fn service_state(admin: u16, name: &str) -> Option<String> {
    service_field(admin, name, "/state")
}

/// A string in service `name`'s view in `GET /api/services`, by JSON pointer into it: `/state`, or
/// `/depends_on/0/state` for its first dependency's.
pub fn service_field(admin: u16, name: &str, pointer: &str) -> Option<String> {
    let (status, body) = http_request(admin, "GET", "/api/services")?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
    json["services"][name].pointer(pointer)?.as_str().map(str::to_string)
}

/// Polls `/api/services` every 10 ms until `name` is in `state`.
pub fn wait_state(admin: u16, name: &str, state: &str) -> Result<(), String> {
    wait_field(admin, name, "/state", state)
}

/// Polls `/api/services` every 10 ms until [`service_field`] is `want`.
pub fn wait_field(admin: u16, name: &str, pointer: &str, want: &str) -> Result<(), String> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        let now = service_field(admin, name, pointer);
        if now.as_deref() == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("service {name}: {pointer} still {now:?} after {STATE_TIMEOUT:?}, expected {want:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// reveille's `/metrics`.
pub fn metrics_text(admin: u16) -> Option<String> {
    match http_request(admin, "GET", "/metrics")? {
        (200, body) => Some(String::from_utf8_lossy(&body).into_owned()),
        _ => None,
    }
}

/// The wake phases reveille times (`reveille_wake_phase_seconds`).
pub const PHASES: [&str; 4] = ["start_call", "running", "ready", "total"];

/// `(sum, count)` of `reveille_wake_phase_seconds` per phase, in [`PHASES`] order.
pub fn phase_totals(admin: u16) -> Vec<(f64, f64)> {
    let text = metrics_text(admin).unwrap_or_default();
    PHASES
        .iter()
        .map(|p| {
            let labels = [("phase", *p)];
            (
                sample(&text, "reveille_wake_phase_seconds_sum", &labels).unwrap_or(f64::NAN),
                sample(&text, "reveille_wake_phase_seconds_count", &labels).unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// Mean seconds and count per phase between two [`phase_totals`].
pub fn phase_means(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(&'static str, f64, f64)> {
    PHASES
        .iter()
        .zip(before.iter().zip(after))
        .map(|(p, ((s0, c0), (s1, c1)))| (*p, (s1 - s0) / (c1 - c0), c1 - c0))
        .collect()
}
