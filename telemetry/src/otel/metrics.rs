//! The Prometheus metrics, exported over OTLP too.
//!
//! Counters and gauges are read from the same registry `/metrics` shows:
//! at each export the text exposition is rendered once, parsed
//! (prometheus-parse) and reported through one observable instrument per
//! family, with the labels as attributes. OpenTelemetry has no observable
//! histogram, so histograms are recorded twice at the source instead, into
//! the Prometheus histogram and into an OTel [`Histogram`] with the same
//! bucket bounds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use prometheus_parse::{Sample, Scrape, Value};

use super::meter;

/// A render of the registry, shared by the callbacks of one export.
type Cached = Option<(Instant, Arc<Vec<Sample>>)>;

/// Renders the exposition text on demand.
type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Callbacks of one export run back to back: one render serves them all.
const FRESH: Duration = Duration::from_secs(1);

struct Source {
    render: Render,
    /// Mutex: callbacks run on the SDK's export thread, one at a time;
    /// the lock only guards the cached parse between them.
    cache: Mutex<Cached>,
}

impl Source {
    fn samples(&self) -> Arc<Vec<Sample>> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, s)) = c.as_ref() {
            if at.elapsed() < FRESH {
                return s.clone();
            }
        }
        let text = (self.render)();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let samples = Arc::new(Scrape::parse(lines).map(|s| s.samples).unwrap_or_default());
        *c = Some((Instant::now(), samples.clone()));
        samples
    }
}

fn attrs(s: &Sample) -> Vec<KeyValue> {
    s.labels
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// The counter and gauge families the exposition declares
/// (`# TYPE name counter|gauge`), with their help text.
fn families(text: &str) -> Vec<(String, &'static str, String)> {
    let mut help = std::collections::HashMap::new();
    let mut out = Vec::new();
    for l in text.lines() {
        let mut w = l.splitn(4, ' ');
        let (Some("#"), Some(what), Some(name)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let rest = w.next().unwrap_or("").trim();
        match (what, rest) {
            ("HELP", h) => {
                help.insert(name.to_owned(), h.to_owned());
            }
            ("TYPE", "counter") => out.push((name.to_owned(), "counter", String::new())),
            ("TYPE", "gauge") => out.push((name.to_owned(), "gauge", String::new())),
            _ => {}
        }
    }
    for f in &mut out {
        f.2 = help.remove(&f.0).unwrap_or_default();
    }
    out
}

/// How often the bridge looks for families that appeared since: a
/// labelled family shows in the exposition only once it has a series.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);

/// Reports every counter and gauge family of `render`'s exposition over
/// OTLP (a no-op unless metrics export is on). A thread registers each
/// family's instrument when it first appears in the exposition.
pub fn bridge(render: impl Fn() -> String + Send + Sync + 'static) {
    let Some(m) = meter() else {
        return;
    };
    let src = Arc::new(Source {
        render: Arc::new(render),
        cache: Mutex::new(None),
    });
    let spawned = std::thread::Builder::new()
        .name("otel-metrics".into())
        .spawn(move || {
            let mut known = std::collections::HashSet::new();
            loop {
                let text = (src.render)();
                for (name, kind, help) in families(&text) {
                    if known.insert(name.clone()) {
                        register(m, &src, name, kind, help);
                    }
                }
                std::thread::sleep(DISCOVER_EVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "OpenTelemetry: cannot start the metrics bridge");
    }
}

/// One observable instrument for one family.
fn register(
    m: &opentelemetry::metrics::Meter,
    src: &Arc<Source>,
    name: String,
    kind: &str,
    help: String,
) {
    let s = src.clone();
    // OpenMetrics names a counter's sample `<family>_total`.
    let sample = if kind == "counter" {
        format!("{name}_total")
    } else {
        name.clone()
    };
    let observe = move |o: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
        for x in s.samples().iter().filter(|x| x.metric == sample) {
            if let Some(v) = number(&x.value) {
                o.observe(v, &attrs(x));
            }
        }
    };
    if kind == "counter" {
        let _ = m
            .f64_observable_counter(name)
            .with_description(help)
            .with_callback(observe)
            .build();
    } else {
        let _ = m
            .f64_observable_gauge(name)
            .with_description(help)
            .with_callback(observe)
            .build();
    }
}

/// An OTLP twin of a Prometheus histogram; records nothing unless metrics
/// export is on.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Option<opentelemetry::metrics::Histogram<f64>>);

impl Histogram {
    /// `name` as in Prometheus, with its bucket bounds.
    pub fn new(
        name: &'static str,
        help: &'static str,
        unit: &'static str,
        bounds: Vec<f64>,
    ) -> Self {
        Histogram(meter().map(|m| {
            m.f64_histogram(name)
                .with_description(help)
                .with_unit(unit)
                .with_boundaries(bounds)
                .build()
        }))
    }

    /// Records one value; `labels` values that are literals cost no copy.
    #[inline]
    pub fn record(&self, v: f64, labels: &[(&'static str, crate::Val<'_>)]) {
        self.record_all(std::iter::once(v), labels)
    }

    /// Records several values under one label set, built once.
    pub fn record_all(
        &self,
        values: impl IntoIterator<Item = f64>,
        labels: &[(&'static str, crate::Val<'_>)],
    ) {
        if let Some(h) = &self.0 {
            let a: Vec<KeyValue> = labels
                .iter()
                .map(|(k, v)| KeyValue::new(*k, super::span::value(*v)))
                .collect();
            for v in values {
                h.record(v, &a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_read_from_type_lines_with_their_help() {
        let text =
            "# HELP cellgate_x Things.\n# TYPE cellgate_x counter\ncellgate_x_total{a=\"1\"} 3\n\
                    # HELP cellgate_h Latency.\n# TYPE cellgate_h histogram\n\
                    # TYPE cellgate_g gauge\ncellgate_g 2\n# EOF\n";
        let f = families(text);
        assert_eq!(
            f,
            vec![
                ("cellgate_x".to_owned(), "counter", "Things.".to_owned()),
                ("cellgate_g".to_owned(), "gauge", String::new()),
            ]
        );
        let s = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let x = s
            .samples
            .iter()
            .find(|s| s.metric == "cellgate_x_total")
            .unwrap();
        assert_eq!(number(&x.value), Some(3.0));
        assert_eq!(attrs(x), vec![KeyValue::new("a", "1")]);
    }
}
