//! The chaos run's clients: each tenant is used for a while (a request every 100-500 ms, each through a random
//! replica), then left idle longer than its idle timeout (so the decider stops it), then woken again, until the
//! run ends. Every request is recorded as an [`Event::Request`]. It owns the traffic; the schedule of faults is
//! `faults.rs`'s.

use std::time::Duration;

use super::cluster::{request, tenant_host};
use super::faults::Rng;
use super::history::Event;
use super::record::{Addresses, Recorder};

/// How long a client waits for an answer: longer than a cold start, a freeze (a request held by a frozen
/// replica is answered when it thaws) and reveille's wake timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The workload's shape.
#[derive(Debug, Clone)]
pub struct Workload {
    pub tenants: Vec<String>,
    pub replicas: Vec<String>,
    pub idle_timeout: Duration,
    /// A busy phase's length, ms (min, max).
    pub busy_ms: (u64, u64),
    /// The pause between two requests of a busy phase, ms (min, max).
    pub interval_ms: (u64, u64),
}

/// Runs the workload until `stop` is set; then waits for the requests still in flight.
pub async fn run(
    w: Workload,
    seed: u64,
    addresses: Addresses,
    rec: Recorder,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, tenant) in w.tenants.iter().enumerate() {
        let (w, addresses, rec, mut stop) = (w.clone(), addresses.clone(), rec.clone(), stop.clone());
        let tenant = tenant.clone();
        let mut rng = Rng::new(seed ^ (0x5eed_0000 + i as u64));
        tasks.spawn(async move {
            let mut requests = tokio::task::JoinSet::new();
            // Tenants start out of phase with each other.
            let mut idle = Duration::from_millis(rng.range(0, 2000));
            loop {
                if sleep_or_stop(idle, &mut stop).await {
                    break;
                }
                let busy_until =
                    tokio::time::Instant::now() + Duration::from_millis(rng.range(w.busy_ms.0, w.busy_ms.1));
                while tokio::time::Instant::now() < busy_until {
                    let replica = rng.pick(&w.replicas).clone();
                    requests.spawn(one(tenant.clone(), replica, addresses.clone(), rec.clone()));
                    if sleep_or_stop(Duration::from_millis(rng.range(w.interval_ms.0, w.interval_ms.1)), &mut stop)
                        .await
                    {
                        break;
                    }
                }
                if *stop.borrow() {
                    break;
                }
                // Idle past the timeout (and the decider's check), so that the tenant is stopped.
                idle = w.idle_timeout + Duration::from_millis(rng.range(1500, 4000));
            }
            while requests.join_next().await.is_some() {}
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Sleeps `d`, or less if the run stops: whether it stopped.
async fn sleep_or_stop(d: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// One request to `tenant` through `replica`, recorded.
pub async fn one(tenant: String, replica: String, addresses: Addresses, rec: Recorder) {
    let start_ms = rec.now_ms();
    let addr = addresses.lock().unwrap().get(&replica).copied();
    let (status, error, reveille_error) = match addr {
        None => (0, Some("no address (the replica's container is not running)".to_string()), None),
        Some(addr) => match request(addr, &tenant_host(&tenant), "/index.html", REQUEST_TIMEOUT).await {
            Ok((status, reason, body)) => {
                // A 200 must be the tenant's own page, not something else answering 200.
                if status == 200 && !crate::docker::is_hello(&body) {
                    (
                        status,
                        Some(format!("a 200 that is not the tenant's page: {:?}", String::from_utf8_lossy(&body))),
                        None,
                    )
                } else {
                    (status, None, reason)
                }
            }
            Err(e) => (0, Some(e), None),
        },
    };
    rec.push(Event::Request { replica, tenant, start_ms, end_ms: rec.now_ms(), status, error, reveille_error });
}

/// A tenant's requests through one replica every `every` for `length` (the partition scenario's client).
pub async fn steady(
    tenant: &str,
    replica: &str,
    every: Duration,
    length: Duration,
    addresses: Addresses,
    rec: Recorder,
) {
    let end = tokio::time::Instant::now() + length;
    let mut requests = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(every);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        requests.spawn(one(tenant.to_string(), replica.to_string(), addresses.clone(), rec.clone()));
    }
    while requests.join_next().await.is_some() {}
}
