//! The router's hops in the message trace: one `route` hop per copy,
//! recorded in the destination cell's broker (where the copy now lives),
//! naming the source and target cells.

use cellgate_broker_core::{Hop, PutResult};

/// Hops for copies `ids` stored as `stored`, from `labels.0` to `labels.1`.
pub(crate) fn route_hops(
    ids: &[uuid::Uuid],
    stored: &[PutResult],
    labels: &(String, String),
) -> Vec<Hop> {
    let (source, target) = labels;
    ids.iter()
        .zip(stored)
        .map(|(id, r)| {
            Hop::new(*id, "route", r.stored_ms, target, "router")
                .with("source_cell", source.as_str())
                .with("target_cell", target.as_str())
                .with("queue", r.queue.to_string())
        })
        .collect()
}
