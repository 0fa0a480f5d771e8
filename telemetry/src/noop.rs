//! The build without the `otel` feature: the same API, doing nothing.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::settings::Settings;
use crate::{Error, Kind, Val};

#[inline(always)]
pub fn enabled() -> bool {
    false
}

#[derive(Debug, Clone, Default)]
pub struct Parent;

impl Parent {
    pub fn none() -> Parent {
        Parent
    }
    pub fn is_some(&self) -> bool {
        false
    }
}

#[inline(always)]
pub fn extract<'a>(_get: impl Fn(&str) -> Option<&'a str>) -> Parent {
    Parent
}

#[derive(Debug)]
pub struct SpanStart;

#[inline(always)]
pub fn span(_k: Kind, _name: impl FnOnce() -> String) -> SpanStart {
    SpanStart
}

impl SpanStart {
    #[inline(always)]
    pub fn parent(self, _p: &Parent) -> Self {
        self
    }
    #[inline(always)]
    pub fn link(self, _p: &Parent) -> Self {
        self
    }
    #[inline(always)]
    pub fn attr<'a>(self, _k: &'static str, _v: impl Into<Val<'a>>) -> Self {
        self
    }
    #[inline(always)]
    pub fn attr_opt<'a, V: Into<Val<'a>>>(self, _k: &'static str, _v: Option<V>) -> Self {
        self
    }
    #[inline(always)]
    pub fn start_at(self, _t: SystemTime) -> Self {
        self
    }
    #[inline(always)]
    pub fn start(self) -> Span {
        Span
    }
}

#[derive(Debug)]
pub struct Span;

impl Span {
    pub fn none() -> Span {
        Span
    }
    #[inline(always)]
    pub fn is_recording(&self) -> bool {
        false
    }
    #[inline(always)]
    pub fn set<'a>(&mut self, _k: &'static str, _v: impl Into<Val<'a>>) {}
    #[inline(always)]
    pub fn error(&mut self, _why: &str) {}
    #[inline(always)]
    pub fn as_parent(&self) -> Parent {
        Parent
    }
    #[inline(always)]
    pub fn inject(&self, _props: &mut BTreeMap<String, String>) {}
    #[inline(always)]
    pub fn traceparent(&self) -> Option<String> {
        None
    }
    #[inline(always)]
    pub fn end(self) {}
    #[inline(always)]
    pub fn end_at(self, _t: SystemTime) {}
}

#[derive(Debug, Default)]
pub struct Installed;

impl Installed {
    pub fn traces_on(&self) -> bool {
        false
    }
    pub fn metrics_on(&self) -> bool {
        false
    }
    pub fn shutdown(self) {}
}

/// Refuses settings that turn export on: this build cannot export.
pub fn install(s: &Settings) -> Result<Installed, Error> {
    if s.is_on() {
        return Err(Error::Setting {
            name: "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            why: "this cellgate was built without the `otel` feature; unset the OTLP \
                  endpoint or rebuild with it"
                .to_owned(),
        });
    }
    Ok(Installed)
}

pub fn bridge(_render: impl Fn() -> String + Send + Sync + 'static) {}

#[derive(Debug, Clone, Default)]
pub struct Histogram;

impl Histogram {
    pub fn new(_n: &'static str, _h: &'static str, _u: &'static str, _b: Vec<f64>) -> Self {
        Histogram
    }
    #[inline(always)]
    pub fn record(&self, _v: f64, _labels: &[(&'static str, Val<'_>)]) {}
    #[inline(always)]
    pub fn record_all(
        &self,
        _values: impl IntoIterator<Item = f64>,
        _labels: &[(&'static str, Val<'_>)],
    ) {
    }
}

/// Nothing to bridge in this build.
pub fn tracing_layer() -> tracing_subscriber::layer::Identity {
    tracing_subscriber::layer::Identity::new()
}
