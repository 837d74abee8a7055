//! Reading reveille's `/metrics` (Prometheus text format).

/// The value of the sample `name{labels}` in Prometheus text; every label given must match (others may be
/// there too). `None` if there is no such sample.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once('}')?,
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        let matches = labels.iter().all(|(k, v)| label_text.split(',').any(|kv| kv.trim() == format!("{k}=\"{v}\"")));
        if !matches {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples() {
        let text = "# HELP reveille_open_connections x\nreveille_open_connections 3\n\
                    reveille_open_connections_total 9\nreveille_requests_total{service=\"a\",class=\"2xx\"} 5\n";
        assert_eq!(sample(text, "reveille_open_connections", &[]), Some(3.0));
        assert_eq!(sample(text, "reveille_requests_total", &[("class", "2xx")]), Some(5.0));
        assert_eq!(sample(text, "reveille_requests_total", &[("class", "5xx")]), None);
        assert_eq!(sample(text, "reveille_open", &[]), None);
    }
}
