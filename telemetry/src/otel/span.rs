//! Message spans: a builder that does nothing unless tracing is on.

use std::collections::BTreeMap;
use std::time::SystemTime;

use opentelemetry::trace::{Link, Span as _, SpanBuilder, SpanKind, Status, TraceContextExt};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};

use super::{inject_into, tracer, Parent};
use crate::{Kind, Val};

pub(crate) fn value(v: Val<'_>) -> Value {
    match v {
        Val::Static(s) => Value::from(s),
        Val::Str(s) => Value::from(s.to_owned()),
        Val::I64(i) => Value::I64(i),
        Val::Strs(s) => Value::Array(Array::String(
            s.iter().map(|x| StringValue::from(x.clone())).collect(),
        )),
    }
}

fn kind(k: Kind) -> SpanKind {
    match k {
        Kind::Producer => SpanKind::Producer,
        Kind::Consumer => SpanKind::Consumer,
        Kind::Client => SpanKind::Client,
        Kind::Internal => SpanKind::Internal,
    }
}

/// A span being described; [`SpanStart::start`] starts it.
#[derive(Debug)]
pub struct SpanStart(Option<Box<Start>>);

#[derive(Debug)]
struct Start {
    builder: SpanBuilder,
    attrs: Vec<KeyValue>,
    links: Vec<Link>,
    parent: Context,
}

/// A span to describe, named by `name` (called only when tracing is on).
#[inline]
pub fn span(k: Kind, name: impl FnOnce() -> String) -> SpanStart {
    if tracer().is_none() {
        return SpanStart(None);
    }
    SpanStart(Some(Box::new(Start {
        builder: SpanBuilder::from_name(name()).with_kind(kind(k)),
        attrs: Vec::with_capacity(12),
        links: Vec::new(),
        parent: Context::new(),
    })))
}

// === impl SpanStart ===

impl SpanStart {
    /// Continues `p`'s trace (no-op for an empty parent).
    pub fn parent(mut self, p: &Parent) -> Self {
        if let (Some(s), Some(cx)) = (self.0.as_mut(), p.context()) {
            s.parent = cx.clone();
        }
        self
    }

    /// Links to `p` (no-op for an empty one).
    pub fn link(mut self, p: &Parent) -> Self {
        if let (Some(s), Some(cx)) = (self.0.as_mut(), p.context()) {
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                s.links.push(Link::with_context(sc));
            }
        }
        self
    }

    pub fn attr<'a>(mut self, k: &'static str, v: impl Into<Val<'a>>) -> Self {
        if let Some(s) = self.0.as_mut() {
            s.attrs.push(KeyValue::new(k, value(v.into())));
        }
        self
    }

    /// An attribute only when `v` is `Some`.
    pub fn attr_opt<'a, V: Into<Val<'a>>>(self, k: &'static str, v: Option<V>) -> Self {
        match v {
            Some(v) => self.attr(k, v),
            None => self,
        }
    }

    /// Backdates the start (a route span starts when the original was
    /// stored).
    pub fn start_at(mut self, t: SystemTime) -> Self {
        if let Some(s) = self.0.as_mut() {
            s.builder.start_time = Some(t);
        }
        self
    }

    pub fn start(self) -> Span {
        let (Some(s), Some(tracer)) = (self.0, tracer()) else {
            return Span(None);
        };
        let Start {
            builder,
            attrs,
            links,
            parent,
        } = *s;
        let builder = builder.with_attributes(attrs).with_links(links);
        let span = builder.start_with_context(tracer, &parent);
        Span(Some((span, parent)))
    }
}

/// A started span; ends when dropped (or at [`Span::end_at`]). Keeps its
/// parent's context for the baggage that rides along when it is injected.
#[derive(Debug)]
pub struct Span(Option<(opentelemetry_sdk::trace::Span, Context)>);

// === impl Span ===

impl Span {
    pub fn none() -> Span {
        Span(None)
    }

    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|(s, _)| s.is_recording())
    }

    pub fn set<'a>(&mut self, k: &'static str, v: impl Into<Val<'a>>) {
        if let Some((s, _)) = self.0.as_mut() {
            s.set_attribute(KeyValue::new(k, value(v.into())));
        }
    }

    /// Marks the span failed, with a short reason.
    pub fn error(&mut self, why: &str) {
        if let Some((s, _)) = self.0.as_mut() {
            s.set_status(Status::error(why.to_owned()));
            s.set_attribute(KeyValue::new("error.type", why.to_owned()));
        }
    }

    /// This span as the parent (or link target) of others.
    pub fn as_parent(&self) -> Parent {
        Parent(self.context())
    }

    fn context(&self) -> Option<Context> {
        let (s, parent) = self.0.as_ref()?;
        Some(parent.with_remote_span_context(s.span_context().clone()))
    }

    /// Writes this span's context into message properties
    /// (`traceparent`, `tracestate`, `baggage`), so the message's
    /// consumers, in any cell, join the trace.
    pub fn inject(&self, props: &mut BTreeMap<String, String>) {
        if let Some(cx) = self.context() {
            inject_into(&cx, props);
        }
    }

    /// The `traceparent` value of this span, for carriers that are not
    /// property maps (a receipt handle).
    pub fn traceparent(&self) -> Option<String> {
        let mut m = BTreeMap::new();
        self.inject(&mut m);
        m.remove(crate::TRACEPARENT)
    }

    /// Ends the span now (as dropping it does).
    pub fn end(self) {}

    pub fn end_at(mut self, t: SystemTime) {
        if let Some((s, _)) = self.0.as_mut() {
            s.end_with_timestamp(t);
        }
    }
}
