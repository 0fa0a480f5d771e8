//! The gateway's Prometheus metrics (`GET /metrics`, text format).
//!
//! Labels are bounded: endpoints are route names (never raw paths), tenants
//! and cells come from the rules, statuses are HTTP codes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use cellgate_rules::RulesHandle;
use cellgate_telemetry::Val;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantCell {
    tenant: String,
    cell: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// A (tenant, cell) pair's message and byte counters.
type Pair = (Counter, Counter);

/// Counter handles by tenant, then cell. `Family::get_or_create` needs an
/// owned label set, two `String`s per publish; a `Counter` clone shares its
/// value, so the handles are looked up by `&str` here instead.
#[derive(Debug, Default)]
struct PairCache(RwLock<HashMap<Box<str>, ByCell>>);

type ByCell = HashMap<Box<str>, Pair>;

impl PairCache {
    /// Adds `n` messages and `bytes` to the pair, made by `make` on first use.
    fn add(&self, tenant: &str, cell: &str, n: u64, bytes: u64, make: impl FnOnce() -> Pair) {
        let inc = |(msgs, size): &Pair| {
            msgs.inc_by(n);
            size.inc_by(bytes);
        };
        if let Ok(map) = self.0.read() {
            if let Some(p) = map.get(tenant).and_then(|m| m.get(cell)) {
                return inc(p);
            }
        }
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        inc(map
            .entry(tenant.into())
            .or_default()
            .entry(cell.into())
            .or_insert_with(make));
    }
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    /// Registries of other components in this process (the router), shown
    /// on the same endpoint. RwLock: added at start-up, read per scrape.
    others: std::sync::RwLock<Vec<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    published: Family<TenantCell, Counter>,
    published_bytes: Family<TenantCell, Counter>,
    delivered: Family<TenantCell, Counter>,
    delivered_bytes: Family<TenantCell, Counter>,
    published_cache: PairCache,
    delivered_cache: PairCache,
    connections_refused: Counter,
    rules_version: Gauge,
    reloads: Family<Outcome, Gauge>,
    /// The latency histogram's OTLP twin (OTLP has no observable
    /// histogram; see cellgate-telemetry's metrics module).
    otel_latency: cellgate_telemetry::Histogram,
}

/// Cheap to clone: one shared registry.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cellgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let published = Family::<TenantCell, Counter>::default();
        let published_bytes = Family::<TenantCell, Counter>::default();
        let delivered = Family::<TenantCell, Counter>::default();
        let delivered_bytes = Family::<TenantCell, Counter>::default();
        let connections_refused = Counter::default();
        let rules_version = Gauge::default();
        let reloads = Family::<Outcome, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            latency.clone(),
        );
        registry.register(
            "messages_published",
            "Messages stored by publish, per tenant and cell",
            published.clone(),
        );
        registry.register(
            "published_bytes",
            "Body bytes stored by publish, per tenant and cell",
            published_bytes.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages delivered by receive, per tenant and cell",
            delivered.clone(),
        );
        registry.register(
            "delivered_bytes",
            "Body bytes delivered by receive, per tenant and cell",
            delivered_bytes.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept because the connection limit was reached",
            connections_refused.clone(),
        );
        registry.register(
            "rules_version",
            "Version of the rules in force",
            rules_version.clone(),
        );
        registry.register(
            "rules_reloads",
            "Rules reloads by outcome since start",
            reloads.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            others: std::sync::RwLock::new(Vec::new()),
            requests,
            latency,
            published,
            published_bytes,
            delivered,
            delivered_bytes,
            published_cache: PairCache::default(),
            delivered_cache: PairCache::default(),
            connections_refused,
            rules_version,
            reloads,
            otel_latency: cellgate_telemetry::Histogram::new(
                "cellgate_http_request_duration_seconds",
                "HTTP request latency by endpoint",
                "s",
                exponential_buckets(0.000_05, 2.0, 16).collect(),
            ),
        }))
    }

    pub fn request(&self, endpoint: &'static str, status: u16, took: Duration) {
        self.0
            .requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        self.0
            .latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
        self.0
            .otel_latency
            .record(took.as_secs_f64(), &[("endpoint", Val::Static(endpoint))]);
    }

    fn tc(tenant: &str, cell: &str) -> TenantCell {
        TenantCell {
            tenant: tenant.to_owned(),
            cell: cell.to_owned(),
        }
    }

    pub fn published(&self, tenant: &str, cell: &str, n: u64, bytes: u64) {
        let i = &self.0;
        i.published_cache.add(tenant, cell, n, bytes, || {
            let l = Self::tc(tenant, cell);
            (
                i.published.get_or_create(&l).clone(),
                i.published_bytes.get_or_create(&l).clone(),
            )
        });
    }

    pub fn delivered(&self, tenant: &str, cell: &str, n: u64, bytes: u64) {
        if n == 0 {
            return;
        }
        let i = &self.0;
        i.delivered_cache.add(tenant, cell, n, bytes, || {
            let l = Self::tc(tenant, cell);
            (
                i.delivered.get_or_create(&l).clone(),
                i.delivered_bytes.get_or_create(&l).clone(),
            )
        });
    }

    /// Shows `r`'s metrics on `/metrics` too.
    pub fn add_registry(&self, r: Registry) {
        if let Ok(mut o) = self.0.others.write() {
            o.push(r);
        }
    }

    pub fn connection_refused(&self) {
        self.0.connections_refused.inc();
    }

    /// The text exposition, with the rules gauges read now.
    pub fn render(&self, rules: &RulesHandle) -> String {
        let i = &self.0;
        i.rules_version.set(rules.current().version() as i64);
        let c = rules.counts();
        for (outcome, n) in [
            ("swapped", c.swapped),
            ("unchanged", c.unchanged),
            ("invalid", c.invalid),
            ("not_reloadable", c.not_reloadable),
            ("io_error", c.io_error),
        ] {
            i.reloads.get_or_create(&Outcome { outcome }).set(n as i64);
        }
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let others = i.others.read().unwrap_or_else(|p| p.into_inner());
        let ok = encode_registry(&mut out, &i.registry).is_ok()
            && others.iter().all(|r| encode_registry(&mut out, r).is_ok())
            && encode_eof(&mut out).is_ok();
        if !ok {
            out.clear();
        }
        out
    }
}
