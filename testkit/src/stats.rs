//! Summaries of measured samples, and how the reports print them.

/// The median; NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile (`p` = 100 gives the maximum, 0 the minimum); NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as "635 µs" or "2.51 ms" ("-53.83 ms" below zero: a difference); "n/a" for NaN.
pub fn format_us(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// A total and its non-zero parts: "3 (connect 1, read 2)", or "0".
pub fn counts(parts: &[(&str, u64)]) -> String {
    let total: u64 = parts.iter().map(|(_, n)| n).sum();
    let nonzero: Vec<_> = parts.iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    if nonzero.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", nonzero.join(", "))
    }
}
