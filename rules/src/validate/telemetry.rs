//! The `telemetry` section: where OpenTelemetry data goes. Its schema and
//! checks are the telemetry crate's (`FileSettings`); here they become
//! located errors like any other. Applied by the binary at start (a change
//! needs a restart).

use super::{At, Doc, Problems};
use crate::ruleset::{Location, Telemetry};

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
    for (field, why) in raw.problems() {
        probs.push(at.field(field).error(format!("telemetry.{field} {why}")));
    }
    let d = at.error("");
    Telemetry {
        settings: (*raw).clone(),
        declared_at: Some(Location {
            file: d.file,
            line: d.line,
            col: d.col,
        }),
    }
}
