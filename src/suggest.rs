//! "Did you mean …?": the known name nearest to a misspelt one, for the keys of the config and routes files and
//! etcd's values. A typo such as `contaner` for `container` is otherwise a key silently ignored (or refused
//! without saying which key was meant).

/// A hint for an unknown `name` among `known`: ` (did you mean `x`?)`, or empty when no known name is close.
pub(crate) fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    nearest(name, known).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default()
}

/// The known name nearest to `name`, if one is close enough to be a typo of it: Jaro-Winkler similarity of at
/// least 0.8, clap's threshold for its own suggestions of flags and subcommands.
pub(crate) fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_key() {
        let fields = ["backends", "container", "port", "idle_timeout", "wake_timeout", "stop_timeout"];
        assert_eq!(nearest("contaner", fields), Some("container"));
        assert_eq!(nearest("idle_timout", fields), Some("idle_timeout"));
        assert_eq!(nearest("backend", fields), Some("backends"));
        assert_eq!(nearest("colour", fields), None);
        assert_eq!(did_you_mean("contaner", fields), " (did you mean `container`?)");
        assert_eq!(did_you_mean("colour", fields), "");
    }
}
