//! The `otel` build: real spans and exporters.

mod metrics;
mod span;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::Registry;

pub use metrics::{bridge, Histogram};
pub use span::{span, Span, SpanStart};

use crate::settings::{Endpoint, Protocol, Settings};
use crate::{Error, FIELDS};

/// Set once by [`install`]; read on every message. A `OnceLock` rather
/// than a lock: after start-up it is only ever read.
struct Global {
    tracer: SdkTracer,
    propagator: TextMapCompositePropagator,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();
/// The one check the hot paths make. Separate from `GLOBAL` so that
/// "off" is a relaxed load of one byte.
static TRACING: AtomicBool = AtomicBool::new(false);
static METER: OnceLock<opentelemetry::metrics::Meter> = OnceLock::new();

/// The subscriber's slot for the `tracing` → OpenTelemetry bridge, empty
/// until [`install`] turns traces on.
type Bridge = Option<Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>>;
static LAYER: OnceLock<tracing_subscriber::reload::Handle<Bridge, Registry>> = OnceLock::new();

/// A layer for the process's `tracing` subscriber (put it first, directly
/// on the registry): once [`install`] turns traces on, the process's own
/// `tracing` spans at INFO and above (rules reloads, …) are exported with
/// the message spans, through `tracing-opentelemetry`. Until then it does
/// nothing.
pub fn tracing_layer() -> impl tracing_subscriber::Layer<Registry> {
    let (layer, handle) = tracing_subscriber::reload::Layer::new(None);
    let _ = LAYER.set(handle);
    layer
}

/// Whether message spans are being made.
#[inline]
pub fn enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

fn global() -> Option<&'static Global> {
    if enabled() {
        GLOBAL.get()
    } else {
        None
    }
}

/// A trace context a span can continue or link to: extracted from HTTP
/// headers or message properties, or taken from a span.
#[derive(Debug, Clone, Default)]
pub struct Parent(Option<Context>);

impl Parent {
    pub fn none() -> Parent {
        Parent(None)
    }

    /// Whether it holds a valid span context.
    pub fn is_some(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|c| c.span().span_context().is_valid())
    }

    pub(crate) fn context(&self) -> Option<&Context> {
        self.0.as_ref()
    }
}

/// A getter as an OpenTelemetry `Extractor`.
struct Lookup<'a, F>(F, std::marker::PhantomData<&'a ()>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Lookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    fn keys(&self) -> Vec<&str> {
        FIELDS.to_vec()
    }
}

/// The trace context in a carrier (HTTP headers, message properties),
/// read through `get`, through the configured propagator. Empty when
/// tracing is off or the carrier has none.
pub fn extract<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Parent {
    let Some(g) = global() else {
        return Parent::none();
    };
    // Most carriers have no context: skip the propagator's work for them.
    if FIELDS.iter().all(|f| get(f).is_none()) {
        return Parent::none();
    }
    let cx = g.propagator.extract(&Lookup(get, std::marker::PhantomData));
    Parent(Some(cx))
}

/// Message properties as an `Injector`.
struct Props<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Props<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

fn inject(cx: &Context, props: &mut BTreeMap<String, String>) {
    if let Some(g) = global() {
        g.propagator.inject_context(cx, &mut Props(props));
    }
}

/// What [`install`] set up; [`Installed::shutdown`] flushes what is left.
#[derive(Debug, Default)]
pub struct Installed {
    traces: Option<SdkTracerProvider>,
    metrics: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Installed {
    pub fn traces_on(&self) -> bool {
        self.traces.is_some()
    }

    pub fn metrics_on(&self) -> bool {
        self.metrics.is_some()
    }

    /// Flushes and stops the exporters (blocking: call from a blocking
    /// context at shutdown).
    pub fn shutdown(self) {
        TRACING.store(false, Ordering::Relaxed);
        if let Some(t) = self.traces {
            if let Err(e) = t.shutdown() {
                tracing::warn!(error = %e, "OpenTelemetry: flushing spans at shutdown");
            }
        }
        if let Some(m) = self.metrics {
            if let Err(e) = m.shutdown() {
                tracing::warn!(error = %e, "OpenTelemetry: flushing metrics at shutdown");
            }
        }
    }
}

fn resource(s: &Settings) -> Resource {
    Resource::builder()
        .with_service_name(s.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The propagators `OTEL_PROPAGATORS` names (default: W3C trace context
/// and baggage). Names this build does not know are refused.
fn propagator() -> Result<TextMapCompositePropagator, Error> {
    let names = std::env::var("OTEL_PROPAGATORS").unwrap_or_default();
    let names = if names.trim().is_empty() {
        "tracecontext,baggage".to_owned()
    } else {
        names
    };
    let mut out: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for n in names.split(',').map(str::trim) {
        match n {
            "tracecontext" => out.push(Box::new(TraceContextPropagator::new())),
            "baggage" => out.push(Box::new(BaggagePropagator::new())),
            "none" => {}
            other => {
                return Err(Error::Setting {
                    name: "OTEL_PROPAGATORS".to_owned(),
                    why: format!("{other:?} is not supported: use tracecontext, baggage or none"),
                })
            }
        }
    }
    Ok(TextMapCompositePropagator::new(out))
}

/// Builds an OTLP exporter (`SpanExporter` or `MetricExporter`: their
/// builders have the same methods, on different types) for `e`.
macro_rules! exporter {
    ($kind:ident, $e:expr, $what:literal) => {{
        let e: &Endpoint = $e;
        let b = opentelemetry_otlp::$kind::builder();
        let r = match e.protocol {
            Protocol::HttpProtobuf => b
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(e.url.clone())
                .build(),
            Protocol::Grpc => b.with_tonic().with_endpoint(e.url.clone()).build(),
        };
        r.map_err(|err| Error::Exporter(format!("{} to {}: {err}", $what, e.url)))
    }};
}

/// Sets up export as `s` says. Call once, from inside the Tokio runtime
/// (the gRPC exporter needs it). Spans are batched by the SDK's own
/// thread (`OTEL_BSP_*` tune it); metrics are pushed every
/// `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
pub fn install(s: &Settings) -> Result<Installed, Error> {
    let mut out = Installed::default();
    if let Some(e) = &s.traces {
        let provider = SdkTracerProvider::builder()
            .with_resource(resource(s))
            .with_batch_exporter(exporter!(SpanExporter, e, "traces")?)
            .build();
        let tracer = provider.tracer("cellgate");
        if let Some(slot) = LAYER.get() {
            use tracing_subscriber::Layer as _;
            let bridge = tracing_opentelemetry::layer()
                .with_tracer(tracer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            let _ = slot.modify(|l| *l = Some(Box::new(bridge)));
        }
        let g = Global {
            tracer,
            propagator: propagator()?,
        };
        if GLOBAL.set(g).is_ok() {
            TRACING.store(true, Ordering::Relaxed);
        }
        out.traces = Some(provider);
    }
    if let Some(e) = &s.metrics {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_resource(resource(s))
            .with_periodic_exporter(exporter!(MetricExporter, e, "metrics")?)
            .build();
        use opentelemetry::metrics::MeterProvider as _;
        let _ = METER.set(provider.meter("cellgate"));
        out.metrics = Some(provider);
    }
    Ok(out)
}

pub(crate) fn meter() -> Option<&'static opentelemetry::metrics::Meter> {
    METER.get()
}

pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    global().map(|g| &g.tracer)
}

pub(crate) fn inject_into(cx: &Context, props: &mut BTreeMap<String, String>) {
    inject(cx, props)
}
