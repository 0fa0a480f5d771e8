//! The `telemetry` section: where OpenTelemetry data goes. Checked here so
//! that a typo in a protocol or an endpoint is a located error like any
//! other; applied by the binary at start (a change needs a restart).

use super::{At, Doc, Problems};
use crate::ruleset::{Location, Telemetry};

const PROTOCOLS: [&str; 2] = ["http/protobuf", "grpc"];
const EXPORTERS: [&str; 2] = ["otlp", "none"];

/// The section, set in at most one file.
pub(super) fn compile(probs: &mut Problems, docs: &[Doc]) -> Telemetry {
    let set: Vec<_> = docs
        .iter()
        .filter_map(|d| {
            let at = At {
                src: &d.src,
                path: "telemetry".to_owned(),
            };
            d.raw.telemetry.as_ref().map(|t| (at, t))
        })
        .collect();
    let Some((at, raw)) = set.first() else {
        return Telemetry::default();
    };
    for (again, _) in &set[1..] {
        probs.push(again.error(format!("telemetry is already set at {}", at.short())));
    }
    let one_of = |probs: &mut Problems, field: &str, v: &Option<String>, allowed: &[&str]| {
        if let Some(v) = v {
            if !allowed.contains(&v.as_str()) {
                let msg = format!("telemetry.{field} {v:?} must be one of {allowed:?}");
                probs.push(at.field(field).error(msg));
            }
        }
    };
    one_of(probs, "protocol", &raw.protocol, &PROTOCOLS);
    one_of(probs, "traces_exporter", &raw.traces_exporter, &EXPORTERS);
    one_of(probs, "metrics_exporter", &raw.metrics_exporter, &EXPORTERS);
    for (field, v) in [
        ("endpoint", &raw.endpoint),
        ("traces_endpoint", &raw.traces_endpoint),
        ("metrics_endpoint", &raw.metrics_endpoint),
    ] {
        if let Some(v) = v {
            if !v.starts_with("http://") || v.len() < 10 {
                let msg = format!(
                    "telemetry.{field} {v:?} must be an http:// URL (OTLP over TLS: send to \
                     a local OpenTelemetry Collector and let it forward)"
                );
                probs.push(at.field(field).error(msg));
            }
        }
    }
    if let Some(name) = &raw.service_name {
        if name.trim().is_empty() {
            probs.push(
                at.field("service_name")
                    .error("telemetry.service_name is empty"),
            );
        }
    }
    let d = at.error("");
    Telemetry {
        endpoint: raw.endpoint.clone(),
        traces_endpoint: raw.traces_endpoint.clone(),
        metrics_endpoint: raw.metrics_endpoint.clone(),
        protocol: raw.protocol.clone(),
        traces_exporter: raw.traces_exporter.clone(),
        metrics_exporter: raw.metrics_exporter.clone(),
        service_name: raw.service_name.clone(),
        declared_at: Some(Location {
            file: d.file,
            line: d.line,
            col: d.col,
        }),
    }
}
