//! How a service spreads its requests over its backends and routes around sick ones: the passive ejection
//! policy ([`Ejection`]), the retry policy ([`Retries`]), backend weights and the smooth weighted round-robin
//! schedule they give ([`schedule`]). The policies are plain values built once per table; the state they act
//! on lives in atomics on the [`super::Backend`] (ejection) and the [`super::Service`] (cursor, retry budget).
//!
//! Nothing here runs on a request unless the service uses it: a backend that is not ejected costs the rotation
//! one relaxed load, and a service without retries does not touch its budget.

use std::time::Duration;

use serde::Deserialize;

/// The longest weight a backend may carry: a service's schedule has as many steps as its weights add up to.
pub(crate) const MAX_WEIGHT: u32 = 100;

/// When a backend is taken out of its service's rotation (Envoy's outlier detection, nginx's `max_fails`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row (connect failures, timeouts, broken exchanges, 5xx) that eject a backend.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each repeat (ejected again before it answered) doubles it.
    pub base: Duration,
    /// The longest an ejection lasts however often it repeats.
    pub max: Duration,
    /// At most this share (percent, rounded down) of a service's backends are ejected at once: a service of
    /// one backend never ejects it, one of two or three ejects at most one.
    pub max_ejected_percent: u8,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

impl Ejection {
    /// How long the ejection after `repeats` earlier ones (without an answer in between) lasts.
    pub(crate) fn length(&self, repeats: u32) -> Duration {
        let factor = 1u32.checked_shl(repeats.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max.max(self.base))
    }

    /// How many of `backends` may be ejected at once.
    pub(crate) fn max_ejected(&self, backends: usize) -> usize {
        backends * usize::from(self.max_ejected_percent) / 100
    }
}

/// An `ejection` value as written: `false` (off), `true` (the defaults), or a table of settings.
#[derive(Debug, Clone)]
pub(crate) enum EjectionSpec {
    On(bool),
    Table(EjectionTable),
}

impl<'de> Deserialize<'de> for EjectionSpec {
    /// By hand rather than `untagged`, so that a wrong key or value in the table is named in the error.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EjectionSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "true, false or a table { consecutive_failures, base_ejection, max_ejection, max_ejected_percent }",
                )
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EjectionSpec, E> {
                Ok(EjectionSpec::On(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EjectionSpec, A::Error> {
                EjectionTable::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(EjectionSpec::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `ejection = { consecutive_failures = 5, base_ejection = "30s", max_ejection = "5m", max_ejected_percent = 50 }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EjectionTable {
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    base_ejection: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_ejection: Option<Duration>,
    #[serde(default)]
    max_ejected_percent: Option<u8>,
}

impl EjectionSpec {
    /// The policy it sets (`None`: off), or why it is refused.
    pub(crate) fn policy(&self) -> Result<Option<Ejection>, String> {
        let t = match self {
            Self::On(false) => return Ok(None),
            Self::On(true) => return Ok(Some(Ejection::default())),
            Self::Table(t) => t,
        };
        let d = Ejection::default();
        let policy = Ejection {
            consecutive_failures: t.consecutive_failures.unwrap_or(d.consecutive_failures),
            base: t.base_ejection.unwrap_or(d.base),
            max: t.max_ejection.unwrap_or(d.max),
            max_ejected_percent: t.max_ejected_percent.unwrap_or(d.max_ejected_percent),
        };
        if policy.consecutive_failures == 0 {
            return Err("`ejection.consecutive_failures` must be at least 1".into());
        }
        if policy.base.is_zero() {
            return Err("`ejection.base_ejection` must be more than 0".into());
        }
        if policy.max < policy.base {
            return Err("`ejection.max_ejection` must be at least `base_ejection`".into());
        }
        if policy.max_ejected_percent > 100 {
            return Err("`ejection.max_ejected_percent` is a percentage, 0 to 100".into());
        }
        Ok(Some(policy))
    }
}

/// What a service retries on another backend (idempotent requests with a body read whole only), within its
/// budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// The statuses that are retried (500 to 599).
    statuses: Vec<u16>,
    /// A connection closed or reset by the backend before any answer.
    pub(crate) reset: bool,
    /// Extra requests allowed, as a percentage of the requests over the budget's window.
    pub(crate) budget_percent: u32,
}

/// The default `retry_budget`: 20% extra requests over the window (plus the floor).
pub(crate) const DEFAULT_RETRY_BUDGET: u32 = 20;

impl Retries {
    /// The policy `retry_on` and `retry_budget` set (`None`: no retries), or why they are refused.
    pub(crate) fn parse(on: &[String], budget: Option<u32>) -> Result<Option<Self>, String> {
        let mut retries = Retries { statuses: Vec::new(), reset: false, budget_percent: DEFAULT_RETRY_BUDGET };
        for what in on {
            match what.as_str() {
                "reset" => retries.reset = true,
                code => match code.parse::<u16>() {
                    Ok(c @ 500..=599) => retries.statuses.push(c),
                    _ => {
                        return Err(format!(
                            "`retry_on` {code:?}: write a status from 500 to 599 (\"502\") or \"reset\""
                        ))
                    }
                },
            }
        }
        if let Some(b) = budget {
            if b > 100 {
                return Err(format!("`retry_budget` {b}: a percentage of the requests, 0 to 100"));
            }
            retries.budget_percent = b;
        }
        if !retries.reset && retries.statuses.is_empty() {
            return match budget {
                Some(_) => Err("`retry_budget` needs `retry_on`".into()),
                None => Ok(None),
            };
        }
        Ok(Some(retries))
    }

    /// True when a response with `status` is retried.
    #[inline]
    pub(crate) fn on_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

/// A service's active health check: `GET path` to each backend every `interval`; an answer from 200 to 399
/// within `timeout` passes, anything else fails and takes the backend out until a check passes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}

impl HealthCheck {
    /// Why the check is refused, if it is.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/') || p.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
            return Err(format!("`health_check.path` {p:?} must be a path starting with '/'"));
        }
        if p.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!("`health_check.path` {p:?} is not a valid request path"));
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("`health_check.interval` and `timeout` must be more than 0".into());
        }
        Ok(())
    }

    /// True when a check that got `status` passes.
    pub(crate) fn passes(status: u16) -> bool {
        (200..400).contains(&status)
    }
}

/// How a service picks the backend a request starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In turn; by smooth weighted round robin (nginx's) when weights differ.
    #[default]
    RoundRobin,
    /// The one with fewer requests in flight of two picked at random (power of two choices, as Envoy's
    /// `LEAST_REQUEST`); weights are not used.
    LeastRequest,
}

/// A step of splitmix64: a well-mixed 64-bit value from a counter, for the two random picks of
/// [`Strategy::LeastRequest`] (no generator state to share between threads: the service's cursor is the seed).
#[inline]
pub(crate) fn mix(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The smooth weighted round-robin order of backends with `weights` (nginx's `ngx_http_upstream_get_peer`),
/// computed once: one period, as many steps as the weights (divided by their greatest common divisor) add up to.
/// `None` when all weights are equal: plain rotation gives the same order without the table.
pub(crate) fn schedule(weights: &[u32]) -> Option<Box<[u32]>> {
    let first = *weights.first()?;
    if weights.iter().all(|w| *w == first) {
        return None;
    }
    let g = weights.iter().copied().fold(0, gcd);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    Some(out.into())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_double_up_to_the_cap() {
        let e = Ejection { base: Duration::from_secs(30), ..Ejection::default() };
        let secs: Vec<u64> = (0..6).map(|r| e.length(r).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300]);
        assert_eq!(e.length(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn at_most_half_rounded_down() {
        let e = Ejection::default();
        let max: Vec<usize> = (0..6).map(|n| e.max_ejected(n)).collect();
        assert_eq!(max, [0, 0, 1, 1, 2, 2]);
        assert_eq!(Ejection { max_ejected_percent: 100, ..e }.max_ejected(3), 3);
    }

    #[test]
    fn ejection_spec() {
        let parse = |j: &str| serde_json::from_str::<EjectionSpec>(j).unwrap().policy();
        assert_eq!(parse("false").unwrap(), None);
        assert_eq!(parse("true").unwrap(), Some(Ejection::default()));
        let e = parse(r#"{"consecutive_failures": 3, "base_ejection": "1s"}"#).unwrap().unwrap();
        assert_eq!((e.consecutive_failures, e.base, e.max), (3, Duration::from_secs(1), Duration::from_secs(300)));
        for bad in [
            r#"{"consecutive_failures": 0}"#,
            r#"{"base_ejection": "0s"}"#,
            r#"{"base_ejection": "10m"}"#,
            r#"{"max_ejected_percent": 101}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<EjectionSpec>(r#"{"consecutive": 3}"#).is_err());
    }

    #[test]
    fn retries_spec() {
        let on = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Retries::parse(&[], None).unwrap(), None);
        let r = Retries::parse(&on(&["502", "503", "reset"]), None).unwrap().unwrap();
        assert!(r.on_status(503) && !r.on_status(500) && r.reset);
        assert_eq!(r.budget_percent, 20);
        assert_eq!(Retries::parse(&on(&["504"]), Some(50)).unwrap().unwrap().budget_percent, 50);
        assert!(Retries::parse(&on(&["404"]), None).unwrap_err().contains("500 to 599"));
        assert!(Retries::parse(&on(&["timeout"]), None).is_err());
        assert!(Retries::parse(&on(&["503"]), Some(101)).is_err());
        assert!(Retries::parse(&[], Some(10)).unwrap_err().contains("needs `retry_on`"));
    }

    #[test]
    fn smooth_weighted_round_robin() {
        assert_eq!(schedule(&[1, 1, 1]), None);
        // nginx's example: weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
        assert_eq!(&*schedule(&[5, 1, 1]).unwrap(), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*schedule(&[1, 3]).unwrap(), &[1, 0, 1, 1]);
        assert_eq!(schedule(&[2, 6]).unwrap().len(), 4, "divided by the common divisor");
    }
}
