//! The tenant state machine against a scripted runtime, on tokio's paused clock: the timers (idle, wake
//! timeout, page_after) are exercised exactly and instantly. The real-Docker tests are in `tests/it/passivation.rs`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::passivation::tenant::SleepRefused;
use crate::passivation::StopCheck;
use crate::routes::{Backend, ContainerSpec, IdleAction, Service};
use crate::runtime::{
    ContainerEvent, ContainerInfo, ContainerState, EventStream, RuntimeError, RuntimeFuture, Traffic,
};

#[derive(Debug)]
struct Script {
    state: ContainerState,
    /// When the current run started (for `ready_after`).
    started_at: Option<Instant>,
    /// The application accepts connections this long after a start (`None`: never).
    ready_after: Option<Duration>,
    /// The container exits with this code right after starting.
    exit_on_start: Option<i64>,
    start_delay: Duration,
    stop_delay: Duration,
    unavailable: bool,
    calls: Vec<&'static str>,
    /// The grace of each stop call.
    graces: Vec<Option<Duration>>,
    /// What the stop check answers, in turn (the last one from then on).
    stop_checks: Vec<StopCheck>,
    /// The container's traffic counters: `None`, no witness (as a runtime without counters).
    traffic: Option<Traffic>,
    /// Someone the cluster cannot see sends this many packets a second to the container (counted in
    /// `traffic` as the paused clock moves).
    unseen_rate: u64,
    /// Since when `unseen_rate` has applied.
    unseen_since: Instant,
    /// Packets each stop check adds to the counters (its own connection).
    stop_check_packets: u64,
    /// The stats call fails.
    traffic_fails: bool,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn new(state: ContainerState) -> Self {
        Fake(Arc::new(Mutex::new(Script {
            state,
            started_at: if state == ContainerState::Running { Some(Instant::now()) } else { None },
            ready_after: Some(Duration::from_millis(300)),
            exit_on_start: None,
            start_delay: Duration::from_millis(50),
            stop_delay: Duration::from_millis(100),
            unavailable: false,
            calls: Vec::new(),
            graces: Vec::new(),
            stop_checks: vec![StopCheck::Idle],
            traffic: None,
            unseen_rate: 0,
            unseen_since: Instant::now(),
            stop_check_packets: 0,
            traffic_fails: false,
        })))
    }

    /// Counters from now on, moved by `rate` packets a second of use nobody sees.
    fn unseen_use(&self, rate: u64) {
        let mut s = self.0.lock();
        let t = Self::counters(&s);
        s.traffic = Some(t);
        s.unseen_rate = rate;
        s.unseen_since = Instant::now();
    }

    fn counters(s: &Script) -> Traffic {
        let mut t = s.traffic.unwrap_or_default();
        let moved = s.unseen_rate * s.unseen_since.elapsed().as_millis() as u64 / 1000;
        t.rx_packets += moved / 2;
        t.tx_packets += moved - moved / 2;
        t.rx_bytes += moved / 2 * 100;
        t.tx_bytes += (moved - moved / 2) * 200;
        t
    }

    fn count(&self, call: &str) -> usize {
        self.0.lock().calls.iter().filter(|c| **c == call).count()
    }

    fn check(&self, call: &'static str) -> Result<(), RuntimeError> {
        let mut s = self.0.lock();
        if s.unavailable {
            return Err(RuntimeError::Unavailable { endpoint: "fake".into(), reason: "socket gone".into() });
        }
        s.calls.push(call);
        Ok(())
    }
}

impl ContainerRuntime for Fake {
    fn inspect<'a>(&'a self, _: &'a str, _: Option<&'a str>) -> RuntimeFuture<'a, ContainerInfo> {
        Box::pin(async move {
            self.check("inspect")?;
            let s = self.0.lock();
            let running = s.state == ContainerState::Running;
            Ok(ContainerInfo {
                id: "0123456789abcdef".into(),
                name: "ctr".into(),
                state: s.state,
                ip: running.then(|| IpAddr::from([10, 0, 0, 1])),
                exit_code: if s.state == ContainerState::Stopped { s.exit_on_start } else { None },
                error: None,
                published: None,
                health: None,
                exposed_ports: Vec::new(),
            })
        })
    }
    fn start<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.check("start")?;
            let delay = self.0.lock().start_delay;
            tokio::time::sleep(delay).await;
            let mut s = self.0.lock();
            if s.exit_on_start.is_some() {
                s.state = ContainerState::Stopped;
            } else {
                s.state = ContainerState::Running;
                s.started_at = Some(Instant::now());
            }
            Ok(())
        })
    }
    fn stop<'a>(&'a self, _: &'a str, grace: Option<Duration>) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.check("stop")?;
            self.0.lock().graces.push(grace);
            let delay = self.0.lock().stop_delay;
            tokio::time::sleep(delay).await;
            self.0.lock().state = ContainerState::Stopped;
            Ok(())
        })
    }
    fn pause<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.check("pause")?;
            self.0.lock().state = ContainerState::Paused;
            Ok(())
        })
    }
    fn unpause<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.check("unpause")?;
            self.0.lock().state = ContainerState::Running;
            Ok(())
        })
    }
    fn events(&self) -> RuntimeFuture<'_, EventStream> {
        Box::pin(async move {
            let stream: EventStream = Box::pin(futures_util::stream::pending::<Result<ContainerEvent, RuntimeError>>());
            Ok(stream)
        })
    }
    fn traffic<'a>(&'a self, _: &'a str) -> RuntimeFuture<'a, Option<Traffic>> {
        Box::pin(async move {
            self.check("traffic")?;
            let s = self.0.lock();
            if s.traffic_fails {
                return Err(RuntimeError::Refused { action: "stats", container: "ctr".into(), reason: "no".into() });
            }
            Ok(s.traffic.map(|_| Self::counters(&s)))
        })
    }
    fn endpoint(&self) -> &str {
        "fake"
    }
}

impl Probe for Fake {
    fn ready<'a>(
        &'a self,
        _: &'a Backend,
        _: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let s = self.0.lock();
            match (s.state, s.started_at, s.ready_after) {
                (ContainerState::Running, Some(at), Some(after)) => at.elapsed() >= after,
                _ => false,
            }
        })
    }

    fn stop_check<'a>(
        &'a self,
        _: &'a Backend,
        _: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = StopCheck> + Send + 'a>> {
        Box::pin(async move { self.stop_check_answer() })
    }
}

impl Fake {
    fn stop_check_answer(&self) -> StopCheck {
        let mut s = self.0.lock();
        s.calls.push("stop_check");
        let own = s.stop_check_packets;
        if let Some(t) = s.traffic.as_mut() {
            t.rx_packets += own / 2;
            t.tx_packets += own - own / 2;
        }
        if s.stop_checks.len() > 1 {
            s.stop_checks.remove(0)
        } else {
            s.stop_checks[0]
        }
    }
}

fn spec(f: impl FnOnce(&mut ContainerSpec)) -> Arc<Service> {
    let mut c = ContainerSpec {
        container: "ctr".into(),
        port: Some(8080),
        idle_timeout: Some(Duration::from_secs(600)),
        wake_timeout: Some(Duration::from_secs(30)),
        idle_action: IdleAction::Stop,
        ..Default::default()
    };
    f(&mut c);
    Arc::new(Service::with_container("acme", vec![], Some(c)))
}

fn passivator(fake: &Fake) -> Arc<Passivator> {
    passivator_with(fake, Settings::default())
}

fn passivator_with(fake: &Fake, settings: Settings) -> Arc<Passivator> {
    let metrics = Metrics::new();
    Passivator::new(settings, Arc::new(fake.clone()), Arc::new(fake.clone()), &metrics, Events::new(), None)
}

/// With the traffic witness on, as with a cluster (here without etcd: the state machine is the same).
/// Returns the metrics too, to read `reveille_idle_stop_vetoes_total`.
fn witnessed(fake: &Fake) -> (Arc<Passivator>, Metrics) {
    let metrics = Metrics::new();
    let (runtime, probe) = (Arc::new(fake.clone()), Arc::new(fake.clone()));
    (Passivator::build(Settings::default(), runtime, probe, &metrics, Events::new(), None, true), metrics)
}

/// Lets the driver run until everything waits on the (paused) clock.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn phase_becomes(t: &Tenant, want: Phase) {
    for _ in 0..10_000 {
        if t.phase() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("phase stayed {:?}, wanted {want:?}", t.phase());
}

#[tokio::test(start_paused = true)]
async fn one_start_for_many_requests_released_in_arrival_order() {
    let fake = Fake::new(ContainerState::Stopped);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|_| {})).unwrap();
    settle().await;
    assert_eq!(t.phase(), Phase::Stopped);
    let order = Arc::new(Mutex::new(Vec::new()));
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (t, order) = (t.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let (backend, _activity) = t.admit(false).await.expect("served");
            order.lock().push(i);
            backend
        }));
        tokio::task::yield_now().await;
    }
    for task in tasks {
        let backend = task.await.unwrap().expect("the container's address");
        assert_eq!(backend.as_str(), "10.0.0.1:8080");
    }
    assert_eq!(fake.count("start"), 1, "single flight");
    assert_eq!(*order.lock(), (0..50).collect::<Vec<_>>(), "released in arrival order");
    // Ready 300 ms after the start, found by a probe at most one interval (25 ms) later.
    let took = begin.elapsed();
    assert!(took >= Duration::from_millis(350) && took <= Duration::from_millis(400), "{took:?}");
    assert_eq!(t.phase(), Phase::Running);
}

#[tokio::test(start_paused = true)]
async fn idle_timer_counts_from_the_last_release() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(60)))).unwrap();
    phase_becomes(&t, Phase::Running).await; // adopted
    let (_, activity) = t.admit(false).await.unwrap();
    let ws = activity.clone(); // e.g. an upgraded connection
    drop(activity);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(t.phase(), Phase::Running, "never stopped while a guard is held");
    assert_eq!(fake.count("stop"), 0);
    drop(ws);
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(t.phase(), Phase::Running);
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("stop"), 1);
}

#[tokio::test(start_paused = true)]
async fn zero_idle_timeout_never_stops() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::ZERO))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(t.phase(), Phase::Running);
    assert_eq!(fake.count("stop"), 0);
}

/// A long stop (a container that ignores SIGTERM and has a long grace) holds the request, which is served as soon
/// as the tenant is started again.
#[tokio::test(start_paused = true)]
async fn a_request_during_stopping_is_held_and_starts_it_again() {
    let fake = Fake::new(ContainerState::Running);
    fake.0.lock().stop_delay = Duration::from_secs(5);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(10)))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(t.phase(), Phase::Stopping);
    let begin = Instant::now();
    let (backend, _a) = t.admit(false).await.expect("served once the stop is over");
    assert!(backend.is_some());
    assert!(begin.elapsed() >= Duration::from_secs(4), "waited for the stop: {:?}", begin.elapsed());
    assert_eq!((fake.count("stop"), fake.count("start")), (1, 1));
    assert_eq!(t.phase(), Phase::Running);
}

#[tokio::test(start_paused = true)]
async fn stop_grace_is_the_services_else_the_global_else_the_containers_own() {
    // (global `[passivation] stop_timeout`, the service's, what the runtime is asked for)
    let cases = [
        (None, None, None),
        (Some(Duration::from_secs(10)), None, Some(Duration::from_secs(10))),
        (None, Some(Duration::from_secs(2)), Some(Duration::from_secs(2))),
        (Some(Duration::from_secs(10)), Some(Duration::from_secs(2)), Some(Duration::from_secs(2))),
    ];
    for (global, own, want) in cases {
        let fake = Fake::new(ContainerState::Running);
        let p = passivator_with(&fake, Settings { stop_timeout: global, ..Settings::default() });
        let t = p.tenant(&spec(|c| c.stop_timeout = own)).unwrap();
        phase_becomes(&t, Phase::Running).await;
        t.request_sleep().expect("idle");
        phase_becomes(&t, Phase::Stopped).await;
        assert_eq!(fake.0.lock().graces, [want], "global {global:?}, service {own:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn wake_timeout_answers_timeout() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().ready_after = None;
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.wake_timeout = Some(Duration::from_secs(5)))).unwrap();
    let begin = Instant::now();
    let err = t.admit(false).await.unwrap_err();
    assert_eq!(err, Refusal::Timeout { after: Duration::from_secs(5) });
    assert!(begin.elapsed() >= Duration::from_secs(5));
    phase_becomes(&t, Phase::Failed).await;
}

#[tokio::test(start_paused = true)]
async fn a_container_that_exits_fails_the_wake_at_once() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().exit_on_start = Some(3);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|_| {})).unwrap();
    let begin = Instant::now();
    let err = t.admit(false).await.unwrap_err();
    assert!(matches!(&err, Refusal::Failed { reason } if reason.contains("code 3")), "{err:?}");
    assert!(begin.elapsed() < Duration::from_secs(1), "{:?}", begin.elapsed());
    // Within the cool-down a new request gets the same answer without another start.
    let again = t.admit(false).await.unwrap_err();
    assert_eq!(again, err);
    assert_eq!(fake.count("start"), 1);
    // After it, the next request tries again.
    tokio::time::sleep(tenant::FAILURE_COOLDOWN).await;
    fake.0.lock().exit_on_start = None;
    assert!(t.admit(false).await.is_ok());
    assert_eq!(fake.count("start"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_crash_while_probing_is_seen_through_events() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().ready_after = None;
    let p = passivator(&fake);
    let t = p.tenant(&spec(|_| {})).unwrap();
    let waiter = {
        let t = t.clone();
        tokio::spawn(async move { t.admit(false).await })
    };
    phase_becomes(&t, Phase::Starting).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let mut s = fake.0.lock();
        s.state = ContainerState::Stopped;
        s.exit_on_start = Some(137);
    }
    let begin = Instant::now();
    t.notify_event();
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(&err, Refusal::Failed { reason } if reason.contains("137")), "{err:?}");
    assert!(begin.elapsed() < Duration::from_millis(30), "{:?}", begin.elapsed());
}

#[tokio::test(start_paused = true)]
async fn hold_overflow_and_clients_that_give_up() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().ready_after = Some(Duration::from_secs(10));
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.max_held = Some(3))).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let t = t.clone();
        held.push(tokio::spawn(async move { t.admit(false).await.map(|(b, _)| b) }));
    }
    settle().await;
    assert_eq!(t.held(), 3);
    assert_eq!(t.admit(false).await.unwrap_err(), Refusal::Overflow { max: 3 });
    // A client that gives up frees its place.
    held.pop().unwrap().abort();
    settle().await;
    let t2 = t.clone();
    let fourth = tokio::spawn(async move { t2.admit(false).await.map(|(b, _)| b) });
    for h in held {
        assert!(h.await.unwrap().is_ok());
    }
    assert!(fourth.await.unwrap().is_ok());
    assert_eq!(fake.count("start"), 1);
}

#[tokio::test(start_paused = true)]
async fn browser_requests_get_the_page_after_page_after() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().ready_after = Some(Duration::from_secs(5));
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.page_after = Some(Duration::from_millis(700)))).unwrap();
    let begin = Instant::now();
    assert_eq!(t.admit(true).await.unwrap_err(), Refusal::Starting);
    assert_eq!(begin.elapsed(), Duration::from_millis(700));
    assert_eq!(t.held(), 0, "the page request no longer waits");
    assert_eq!(t.phase(), Phase::Starting, "the wake goes on");
    // A non-page request is held until ready.
    assert!(t.admit(false).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn runtime_unavailable_fails_wakes_fast_and_spares_running_tenants() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().unavailable = true;
    let p = passivator(&fake);
    let t = p.tenant(&spec(|_| {})).unwrap();
    let begin = Instant::now();
    let err = t.admit(false).await.unwrap_err();
    assert!(matches!(err, Refusal::Unavailable { .. }), "{err:?}");
    assert!(begin.elapsed() < Duration::from_millis(10));
    // Docker comes back: the next request wakes it (no cool-down for an unreachable runtime).
    fake.0.lock().unavailable = false;
    assert!(t.admit(false).await.is_ok());
    // Docker goes away again: the running tenant keeps serving.
    fake.0.lock().unavailable = true;
    for _ in 0..10 {
        assert!(t.admit(false).await.is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn pause_mode_pauses_and_unpauses() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_action = IdleAction::Pause;
            c.idle_timeout = Some(Duration::from_secs(30));
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    phase_becomes(&t, Phase::Paused).await;
    assert_eq!((fake.count("pause"), fake.count("stop")), (1, 0));
    assert!(t.admit(false).await.is_ok());
    assert_eq!((fake.count("unpause"), fake.count("start")), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn pause_then_stop_after_stop_after_and_the_next_wake_starts() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_action = IdleAction::Pause;
            c.idle_timeout = Some(Duration::from_secs(30));
            c.stop_after = Some(Duration::from_secs(60));
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    phase_becomes(&t, Phase::Paused).await;
    assert_eq!((fake.count("pause"), fake.count("stop")), (1, 0));
    // Still paused just before `stop_after`...
    tokio::time::sleep(Duration::from_secs(55)).await;
    settle().await;
    assert_eq!(t.snapshot().phase, Phase::Paused);
    // ...stopped after it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("stop"), 1);
    // The next wake is a start, not an unpause.
    assert!(t.admit(false).await.is_ok());
    assert_eq!((fake.count("unpause"), fake.count("start")), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_wake_from_pause_before_stop_after_unpauses_and_is_not_stopped() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_action = IdleAction::Pause;
            c.idle_timeout = Some(Duration::from_secs(30));
            c.stop_after = Some(Duration::from_secs(60));
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    phase_becomes(&t, Phase::Paused).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(t.admit(false).await.is_ok());
    assert_eq!(fake.count("unpause"), 1);
    // Running again: `stop_after` no longer applies; only a new idle period pauses it.
    tokio::time::sleep(Duration::from_secs(45)).await;
    settle().await;
    assert_eq!(fake.count("stop"), 0);
}

#[tokio::test(start_paused = true)]
async fn sleep_is_refused_while_active_and_removal_answers_held_requests() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let svc = spec(|_| {});
    let t = p.tenant(&svc).unwrap();
    phase_becomes(&t, Phase::Running).await;
    let (_, a) = t.admit(false).await.unwrap();
    assert_eq!(t.request_sleep(), Err(SleepRefused::Active(1)));
    drop(a);
    assert_eq!(t.request_sleep(), Ok(()));
    phase_becomes(&t, Phase::Stopped).await;

    // A held request whose service disappears is answered, not left hanging.
    fake.0.lock().ready_after = None;
    let waiter = {
        let t = t.clone();
        tokio::spawn(async move { t.admit(false).await.map(|(b, _)| b) })
    };
    phase_becomes(&t, Phase::Starting).await;
    p.reconcile(&crate::routes::RouteTable::empty());
    assert_eq!(waiter.await.unwrap().unwrap_err(), Refusal::Removed);
    assert!(p.get("acme").is_none());
}

#[tokio::test(start_paused = true)]
async fn reconcile_updates_in_place_and_replaces_on_a_new_container() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let table = |svc: &Arc<Service>| {
        let mut t = crate::routes::RouteTable::empty();
        t.set_service("acme", Some(svc.clone()));
        t
    };
    let v1 = spec(|_| {});
    p.reconcile(&table(&v1));
    let t1 = p.get("acme").expect("created by the reconcile");
    phase_becomes(&t1, Phase::Running).await;

    // A new idle timeout: same tenant (same state, same container), new definition.
    let v2 = spec(|c| c.idle_timeout = Some(Duration::from_secs(5)));
    p.reconcile(&table(&v2));
    let t2 = p.get("acme").unwrap();
    assert!(Arc::ptr_eq(&t1, &t2));
    assert!(t2.serves(&v2));
    tokio::time::sleep(Duration::from_secs(6)).await;
    phase_becomes(&t2, Phase::Stopped).await;

    // A request holding the older snapshot does not roll the definition back.
    let _ = p.tenant(&v1);
    assert!(t2.serves(&v2));

    // Another container: another tenant.
    let v3 = spec(|c| c.container = "other".into());
    p.reconcile(&table(&v3));
    let t3 = p.get("acme").unwrap();
    assert!(!Arc::ptr_eq(&t2, &t3));
    assert!(t2.cancel.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_wake_that_timed_out_is_adopted_later_and_stopped_when_idle() {
    let fake = Fake::new(ContainerState::Stopped);
    fake.0.lock().ready_after = Some(Duration::from_secs(8));
    let p = passivator(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.wake_timeout = Some(Duration::from_secs(5));
            c.idle_timeout = Some(Duration::from_secs(60));
        }))
        .unwrap();
    assert!(matches!(t.admit(false).await, Err(Refusal::Timeout { .. })));
    phase_becomes(&t, Phase::Failed).await;
    // The container kept running: the periodic re-inspection adopts it, and the idle timer then stops it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("stop"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_new_port_is_used_at_once_and_sleep_is_refused_while_waking() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let table = |svc: &Arc<Service>| {
        let mut t = crate::routes::RouteTable::empty();
        t.set_service("acme", Some(svc.clone()));
        t
    };
    p.reconcile(&table(&spec(|_| {})));
    let t = p.get("acme").unwrap();
    phase_becomes(&t, Phase::Running).await;
    p.reconcile(&table(&spec(|c| c.port = Some(9090))));
    settle().await;
    let (backend, _a) = t.admit(false).await.unwrap();
    assert_eq!(backend.unwrap().as_str(), "10.0.0.1:9090");
    drop(_a);

    assert_eq!(t.request_sleep(), Ok(()));
    phase_becomes(&t, Phase::Stopped).await;
    fake.0.lock().ready_after = Some(Duration::from_secs(3));
    t.request_wake();
    phase_becomes(&t, Phase::Starting).await;
    assert_eq!(t.request_sleep(), Err(SleepRefused::Phase(Phase::Starting)));
}

/// Ready when any of the fakes' applications is (tenants on several scripted hosts share one probe).
struct AnyReady(Vec<Fake>);

impl Probe for AnyReady {
    fn ready<'a>(
        &'a self,
        b: &'a Backend,
        p: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            for f in &self.0 {
                if f.ready(b, p).await {
                    return true;
                }
            }
            false
        })
    }
}

#[tokio::test(start_paused = true)]
async fn each_tenant_uses_its_docker_host_and_a_host_down_fails_only_its_tenants() {
    let default = Fake::new(ContainerState::Stopped);
    let second = Fake::new(ContainerState::Stopped);
    default.0.lock().unavailable = true;
    let metrics = Metrics::new();
    let runtimes = Runtimes::single(Arc::new(default.clone())).with("second", Arc::new(second.clone()));
    let probe = Arc::new(AnyReady(vec![default.clone(), second.clone()]));
    let p = Passivator::new(Settings::default(), runtimes, probe, &metrics, Events::new(), None);
    let on_default = p.tenant(&spec(|_| {})).unwrap();
    let on_second = p
        .tenant(&Arc::new(Service::with_container(
            "other",
            vec![],
            spec(|c| c.docker_host = Some("second".into())).container().cloned(),
        )))
        .unwrap();

    let begin = Instant::now();
    let err = on_default.admit(false).await.unwrap_err();
    assert!(matches!(err, Refusal::Unavailable { .. }), "{err:?}");
    assert!(begin.elapsed() < Duration::from_millis(10), "fast: {:?}", begin.elapsed());
    assert!(on_second.admit(false).await.is_ok(), "the other host's tenant wakes");
    assert_eq!((second.count("start"), default.count("start")), (1, 0), "each tenant's calls go to its own host");

    let text = metrics.encode();
    for line in [
        "reveille_docker_host_up{host=\"default\"} 0",
        "reveille_docker_host_up{host=\"second\"} 1",
        "reveille_wakes_by_host_total{host=\"default\",result=\"unavailable\"} 1",
        "reveille_wakes_by_host_total{host=\"second\",result=\"ok\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("reveille_docker_unavailable_total{host=\"default\"} ")), "{text}");

    // The default host comes back: its tenant wakes too.
    default.0.lock().unavailable = false;
    assert!(on_default.admit(false).await.is_ok());
    assert_eq!(default.count("start"), 1);
}

/// A busy tenant (its `stop_check` answers 409) is asked again after each idle timeout, stays `running` meanwhile
/// (no `stopping`, so no status churn in etcd), and is stopped at the first idle answer.
#[tokio::test(start_paused = true)]
async fn a_busy_stop_check_puts_the_stop_off_by_an_idle_timeout_each_time() {
    let fake = Fake::new(ContainerState::Running);
    fake.0.lock().stop_checks = vec![StopCheck::Busy(409), StopCheck::Busy(423), StopCheck::Idle];
    let p = passivator(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_timeout = Some(Duration::from_secs(60));
            c.stop_check = Some("/busy".into());
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    let begin = Instant::now();
    let (_, mut events, _) = p.shared.events.subscribe(None);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(fake.count("stop_check"), 1);
    assert_eq!(t.phase(), Phase::Running);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fake.count("stop_check"), 2, "asked again one idle timeout later");
    assert_eq!(t.phase(), Phase::Running);
    assert_eq!(fake.count("stop"), 0);
    tokio::time::sleep(Duration::from_secs(59)).await;
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("stop_check"), 3);
    let took = begin.elapsed();
    assert!(took >= Duration::from_secs(180) && took < Duration::from_secs(181), "{took:?}");
    // While busy, the tenant never left `running`: its first change is the stop.
    let first = events.try_recv().expect("a state change");
    assert_eq!(first.data["state"], "stopping", "{first:?}");
}

/// An admin `sleep` does not ask: it stops the tenant whatever it says.
#[tokio::test(start_paused = true)]
async fn an_admin_sleep_does_not_ask_the_stop_check() {
    let fake = Fake::new(ContainerState::Running);
    fake.0.lock().stop_checks = vec![StopCheck::Busy(409)];
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.stop_check = Some("/busy".into()))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    t.request_sleep().expect("idle");
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("stop_check"), 0);
}

/// Without etcd, a keep-awake is this replica's: the idle stop waits for its end, then happens at once; ending
/// it early lets the idle timer fire at once.
#[tokio::test(start_paused = true)]
async fn keep_awake_puts_the_idle_stop_off_until_it_ends() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(60)))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    let begin = Instant::now();
    let kept = t.set_keep_awake(Duration::from_secs(300)).await.unwrap().expect("in force");
    assert_eq!(kept.by, p.settings().node);
    assert!(t.keep_awake().is_some());
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(t.phase(), Phase::Running);
    assert_eq!(fake.count("stop"), 0);
    // The paused clock moves tokio's timers, not the wall clock the keep-awake's end is written in: end it.
    assert_eq!(t.set_keep_awake(Duration::ZERO).await.unwrap(), None);
    assert!(t.keep_awake().is_none());
    phase_becomes(&t, Phase::Stopped).await;
    assert!(begin.elapsed() < Duration::from_secs(291), "{:?}", begin.elapsed());
    assert_eq!(fake.count("stop"), 1);
}

/// Pause, then stop: a keep-awake set while paused holds off the stop too, until it ends.
#[tokio::test(start_paused = true)]
async fn keep_awake_holds_off_the_stop_of_a_paused_tenant() {
    let fake = Fake::new(ContainerState::Running);
    let p = passivator(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_action = IdleAction::Pause;
            c.idle_timeout = Some(Duration::from_secs(30));
            c.stop_after = Some(Duration::from_secs(60));
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    phase_becomes(&t, Phase::Paused).await;
    t.set_keep_awake(Duration::from_secs(3600)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(t.phase(), Phase::Paused);
    assert_eq!(fake.count("stop"), 0);
    t.set_keep_awake(Duration::ZERO).await.unwrap();
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("stop"), 1);
}

// === the traffic witness (issue 29) ===

fn vetoes(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with("reveille_idle_stop_vetoes_total{") && l.contains("reason=\"traffic\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Used unseen (a replica cut off from etcd, every 0.5 s): the counters moved across the window, so the stop is
/// put off by an idle timeout, each time, without leaving `running`; once the use ends, the next check stops it.
#[tokio::test(start_paused = true)]
async fn counters_that_moved_put_the_stop_off_by_an_idle_timeout() {
    let fake = Fake::new(ContainerState::Running);
    fake.unseen_use(4);
    let (p, metrics) = witnessed(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(10)))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    let begin = Instant::now();
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(t.phase(), Phase::Running);
    assert_eq!(fake.count("stop"), 0);
    // A look at 5 s and the check at 10 s, then each idle timeout again: 15/20, 25/30.
    assert_eq!(fake.count("traffic"), 6);
    assert_eq!(vetoes(&metrics), 3);
    // The use ends at 31 s: the window 35..40 is quiet, and the check at 40 s stops it.
    fake.unseen_use(0);
    tokio::time::sleep(Duration::from_millis(8_900)).await;
    assert_eq!(t.phase(), Phase::Running, "not before the check an idle timeout after the last veto");
    phase_becomes(&t, Phase::Stopped).await;
    let took = begin.elapsed();
    assert!(took >= Duration::from_secs(40) && took < Duration::from_secs(41), "{took:?}");
    assert_eq!(vetoes(&metrics), 3);
}

/// Counters still: stopped at the idle timeout, as without the witness (a look in the middle of it).
#[tokio::test(start_paused = true)]
async fn counters_that_did_not_move_let_the_stop_go() {
    let fake = Fake::new(ContainerState::Running);
    fake.unseen_use(0);
    let (p, metrics) = witnessed(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(10)))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    let begin = Instant::now();
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(t.phase(), Phase::Running);
    assert_eq!(fake.count("traffic"), 1, "the look at the window's start");
    phase_becomes(&t, Phase::Stopped).await;
    assert!(begin.elapsed() < Duration::from_millis(10_200), "{:?}", begin.elapsed());
    assert_eq!(fake.count("traffic"), 2);
    assert_eq!(vetoes(&metrics), 0);
}

/// reveille's own traffic is no use: a busy `stop_check` (12 packets on its own connection each time) puts the
/// stop off by itself, and the witness does not turn its packets into a veto.
#[tokio::test(start_paused = true)]
async fn only_reveilles_own_stop_check_traffic_lets_the_stop_go() {
    let fake = Fake::new(ContainerState::Running);
    fake.unseen_use(0);
    {
        let mut s = fake.0.lock();
        s.stop_checks = vec![StopCheck::Busy(409), StopCheck::Idle];
        s.stop_check_packets = 12;
    }
    let (p, metrics) = witnessed(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_timeout = Some(Duration::from_secs(10));
            c.stop_check = Some("/busy".into());
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    let begin = Instant::now();
    tokio::time::sleep(Duration::from_millis(10_100)).await;
    assert_eq!(fake.count("stop_check"), 1);
    assert_eq!(t.phase(), Phase::Running);
    tokio::time::sleep(Duration::from_millis(9_800)).await;
    assert_eq!(t.phase(), Phase::Running, "asked again an idle timeout after the busy answer");
    phase_becomes(&t, Phase::Stopped).await;
    let took = begin.elapsed();
    assert!(took >= Duration::from_secs(20) && took < Duration::from_millis(20_300), "{took:?}");
    assert_eq!(fake.count("stop_check"), 2);
    assert_eq!(vetoes(&metrics), 0, "its own checks are not use");
}

/// A witness that cannot tell never keeps a tenant up: a failed stats call, or a runtime without counters
/// (Swarm), and the stop goes on etcd's view at the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_broken_or_missing_witness_stops_as_before() {
    for broken in [true, false] {
        let fake = Fake::new(ContainerState::Running);
        if broken {
            fake.unseen_use(50);
            fake.0.lock().traffic_fails = true;
        }
        let (p, metrics) = witnessed(&fake);
        let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(10)))).unwrap();
        phase_becomes(&t, Phase::Running).await;
        let begin = Instant::now();
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert_eq!(t.phase(), Phase::Running, "broken {broken}");
        phase_becomes(&t, Phase::Stopped).await;
        assert!(begin.elapsed() < Duration::from_millis(10_200), "broken {broken}: {:?}", begin.elapsed());
        assert_eq!(fake.count("traffic"), 2, "broken {broken}: one look, one check");
        assert_eq!(vetoes(&metrics), 0);
    }
}

/// An admin `sleep` is not asked about: the counters may move, it stops at once.
#[tokio::test(start_paused = true)]
async fn an_admin_sleep_skips_the_witness() {
    let fake = Fake::new(ContainerState::Running);
    fake.unseen_use(100);
    let (p, metrics) = witnessed(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(10)))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let looked = fake.count("traffic");
    t.request_sleep().expect("idle");
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("traffic"), looked, "no look for the sleep");
    assert_eq!(vetoes(&metrics), 0);
}

/// Without a cluster the witness is off: a single replica sees every use itself.
#[tokio::test(start_paused = true)]
async fn a_single_replica_does_not_ask_the_counters() {
    let fake = Fake::new(ContainerState::Running);
    fake.unseen_use(100);
    let p = passivator(&fake);
    let t = p.tenant(&spec(|c| c.idle_timeout = Some(Duration::from_secs(10)))).unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("traffic"), 0);
}

/// `traffic_witness = false`: a tenant whose own outbound traffic moves its counters is stopped on etcd's view
/// alone, and the counters are never read.
#[tokio::test(start_paused = true)]
async fn a_service_without_the_witness_is_stopped_whatever_its_counters_say() {
    let fake = Fake::new(ContainerState::Running);
    fake.unseen_use(100);
    let (p, metrics) = witnessed(&fake);
    let t = p
        .tenant(&spec(|c| {
            c.idle_timeout = Some(Duration::from_secs(10));
            c.no_traffic_witness = true;
        }))
        .unwrap();
    phase_becomes(&t, Phase::Running).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    phase_becomes(&t, Phase::Stopped).await;
    assert_eq!(fake.count("traffic"), 0);
    assert_eq!(vetoes(&metrics), 0);
}
