//! The "starting" page a browser gets when its tenant is not ready within `page_after`.
//!
//! The template is HTML with `{{service}}`, `{{host}}`, `{{state}}`, `{{status_path}}` and `{{retry_after}}`
//! placeholders (values are HTML-escaped). The default one polls the status path and reloads when the tenant is
//! ready; operators can replace it with a file (`page_template` in `[passivation]`).
//!
//! Owns the template and its rendering only; when a request gets the page, and the response around it, are
//! decided in `http.rs`.

use std::path::Path;
use std::sync::Arc;

const DEFAULT: &str = include_str!("starting.html");

/// A loaded page template.
#[derive(Debug, Clone)]
pub struct Page {
    template: Arc<str>,
}

impl Default for Page {
    fn default() -> Self {
        Self { template: Arc::from(DEFAULT) }
    }
}

/// Values substituted into the template.
#[derive(Debug)]
pub struct PageValues<'a> {
    pub service: &'a str,
    pub host: &'a str,
    pub state: &'a str,
    pub status_path: &'a str,
    pub retry_after: u64,
}

impl Page {
    /// Reads a template file (a regular file of at most `max_size` bytes). It must mention `{{status_path}}`, or
    /// the page could never reload itself.
    pub fn load(path: &Path, max_size: u64) -> Result<Self, String> {
        let text = crate::fsread::read_to_string(path, max_size)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !text.contains("{{status_path}}") {
            return Err(format!(
                "{}: the page template must use {{{{status_path}}}} to know when the tenant is ready",
                path.display()
            ));
        }
        Ok(Self { template: Arc::from(text) })
    }

    pub fn render(&self, v: &PageValues<'_>) -> String {
        let retry = v.retry_after.to_string();
        let mut out = String::with_capacity(self.template.len() + 64);
        let mut rest = &*self.template;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(j) = after.find("}}") else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let value = match &after[..j] {
                "service" => Some(v.service),
                "host" => Some(v.host),
                "state" => Some(v.state),
                "status_path" => Some(v.status_path),
                "retry_after" => Some(retry.as_str()),
                _ => None,
            };
            match value {
                Some(value) => escape_into(&mut out, value),
                None => out.push_str(&rest[i..i + 2 + j + 2]),
            }
            rest = &after[j + 2..];
        }
        out.push_str(rest);
        out
    }
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        let page = Page { template: Arc::from("<h1>{{host}}</h1>{{unknown}} {{status_path}} {{retry_after}} {{") };
        let html = page.render(&PageValues {
            service: "s",
            host: "<script>x</script>.example",
            state: "starting",
            status_path: "/__reveille/status",
            retry_after: 2,
        });
        assert_eq!(html, "<h1>&lt;script&gt;x&lt;/script&gt;.example</h1>{{unknown}} /__reveille/status 2 {{");
    }

    #[test]
    fn default_template_polls_the_status_path() {
        let html = Page::default().render(&PageValues {
            service: "acme",
            host: "acme.example.com",
            state: "starting",
            status_path: "/__reveille/status",
            retry_after: 1,
        });
        assert!(html.contains("var statusPath = \"/__reveille/status\""));
        assert!(html.contains("acme.example.com is starting"));
        assert!(!html.contains("{{"));
    }
}
