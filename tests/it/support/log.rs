//! What the in-process proxies log, captured for the tests that read it. A process has one global `tracing`
//! subscriber, and every test of this binary shares the process: the first call here installs one for all,
//! with a layer per way of reading it (each filtered on its own, so one layer's filter never hides an event from
//! the other). Every test sees every test's lines: each picks its own by the names it gave (hosts, services).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One warning's fields, as strings (its target under `_target`).
pub type Line = BTreeMap<String, String>;

/// The logs captured so far: reveille's warnings as fields, and every warning and error as formatted text.
struct Captured {
    warnings: Mutex<Vec<Line>>,
    text: Arc<Mutex<Vec<u8>>>,
}

fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        // The level hint keeps every more verbose callsite off at its first check, as with no subscriber.
        let reveille_warnings = filter_fn(|m| m.target().starts_with("reveille") && *m.level() <= tracing::Level::WARN)
            .with_max_level_hint(LevelFilter::WARN);
        let fields = Fields.with_filter(reveille_warnings);
        let formatted = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .with_filter(LevelFilter::WARN);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(fields).with(formatted))
            .expect("no other global subscriber in the test binary (support::log installs the only one)");
        Captured { warnings: Mutex::new(Vec::new()), text }
    })
}

/// reveille's warnings so far, each as its fields; the first call starts the capture.
pub fn warnings() -> &'static Mutex<Vec<Line>> {
    &captured().warnings
}

/// Every warning and error so far, formatted as `tracing_subscriber::fmt` writes them; the first call starts
/// the capture.
pub fn text() -> Arc<Mutex<Vec<u8>>> {
    captured().text.clone()
}

/// Records each event's fields into [`warnings`].
struct Fields;

impl<S: tracing::Subscriber> Layer<S> for Fields {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Visitor(Line);
        impl Visit for Visitor {
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0.insert(field.name().to_string(), value.to_string());
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_string(), format!("{value:?}"));
            }
        }
        let mut fields = Visitor(Line::new());
        fields.0.insert("_target".into(), event.metadata().target().to_string());
        event.record(&mut fields);
        warnings().lock().unwrap().push(fields.0);
    }
}

/// Appends formatted lines to the text capture.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
