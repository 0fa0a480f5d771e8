//! The router's metrics, registered into the process's Prometheus registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A route: who copies from where to where. Tenants and cells come from
/// the rules, so the label set is bounded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub tenant: String,
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

fn lag_histogram() -> Histogram {
    // 100 µs .. ~3.3 s, doubling.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// Cheap to clone (every field is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct RouterMetrics {
    pub copies: Family<RouteLabels, Counter>,
    /// Store time in the origin → store time in the target.
    pub lag: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub dedupe_hits: Counter,
    pub skipped: Family<KindLabels, Counter>,
    pub errors: Family<KindLabels, Counter>,
    /// `lag`'s OTLP twin (OTLP has no observable histogram).
    pub otel_lag: cellgate_telemetry::Histogram,
}

impl RouterMetrics {
    pub fn new(registry: &mut Registry) -> RouterMetrics {
        let m = RouterMetrics {
            copies: Family::default(),
            lag: Family::new_with_constructor(lag_histogram),
            dedupe_hits: Counter::default(),
            skipped: Family::default(),
            errors: Family::default(),
            otel_lag: cellgate_telemetry::Histogram::new(
                "cellgate_router_replication_lag_seconds",
                "Time from store in the origin cell to store of the copy in the target cell",
                "s",
                exponential_buckets(0.000_1, 2.0, 16).collect(),
            ),
        };
        let r = registry.sub_registry_with_prefix("router");
        r.register(
            "copies",
            "Copies appended, per tenant, source and target cell",
            m.copies.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "Time from store in the origin cell to store of the copy in the target cell",
            m.lag.clone(),
        );
        r.register(
            "dedupe_hits",
            "Copies not appended because the target already held the message",
            m.dedupe_hits.clone(),
        );
        r.register(
            "skipped",
            "Messages read and not copied, by reason",
            m.skipped.clone(),
        );
        r.register("errors", "Router errors by kind", m.errors.clone());
        m
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }
}
