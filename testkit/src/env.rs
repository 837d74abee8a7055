//! Settings from environment variables: every lab tunable is read through here.

use std::str::FromStr;

/// The environment variable `name` parsed as a `T`, or `default` when it is not set. Panics on a value that
/// does not parse.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

/// [`env_or`], and panics if the value is below `min`.
pub fn env_at_least<T: FromStr + PartialOrd + std::fmt::Display>(name: &str, default: T, min: T) -> T {
    let value = env_or(name, default);
    assert!(value >= min, "{name} must be at least {min}");
    value
}

/// The non-empty, trimmed items of a comma-separated list.
pub fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|w| !w.is_empty())
}

/// The names a comma-separated variable `name` picks out of `known` (all of them when it is not set). Panics
/// on an unknown name or an empty choice.
pub fn choose(name: &str, known: &[&'static str]) -> Vec<&'static str> {
    let wanted = std::env::var(name).unwrap_or_else(|_| known.join(","));
    let chosen: Vec<_> = list(&wanted)
        .map(|w| known.iter().copied().find(|n| *n == w).unwrap_or_else(|| panic!("{name}: unknown name {w:?}")))
        .collect();
    assert!(!chosen.is_empty(), "{name} names nothing");
    chosen
}
