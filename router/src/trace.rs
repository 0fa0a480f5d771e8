//! The router's OpenTelemetry spans: one `route` span per copy. (The
//! message trace needs nothing from the router: a copy is its own record
//! of the route, which the trace endpoint reads.)

use cellgate_broker_core::PutResult;
use cellgate_rules::names::Resource;

/// One OpenTelemetry `route {topic}` span per copy, a child of the
/// message's creation context (read from the copied properties; a message
/// published without one gets no span). It starts when the original was
/// stored in the source cell and ends when the copy was stored in the
/// target: its length is the replication lag of that copy.
pub(crate) fn route_spans(
    copies: &[cellgate_broker_core::CopyOf<'_>],
    stored: &[PutResult],
    (source, target): &(String, String),
    zone: cellgate_rules::ZoneType,
    names: &crate::send::Names,
    batch_of: &[usize],
) {
    use cellgate_telemetry::{self as tel, attr, Kind, Val};
    use std::time::{Duration, UNIX_EPOCH};
    if !tel::enabled() {
        return;
    }
    let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let zone = match zone {
        cellgate_rules::ZoneType::R => "RZone",
        cellgate_rules::ZoneType::G => "GZone",
        cellgate_rules::ZoneType::C => "CZone",
    };
    for ((c, s), b) in copies.iter().zip(stored).zip(batch_of) {
        let parent = tel::extract(|k| c.source.property(k));
        let Some(name) = names.get(*b).and_then(Option::as_ref) else {
            continue;
        };
        // The logical name, read off the copy's topic (only here, with
        // tracing on: the copy path itself never needs it).
        let logical = cellgate_rules::names::parse_physical(c.topic, Resource::Topic)
            .map(|p| p.name)
            .unwrap_or(c.topic);
        if !parent.is_some() {
            continue;
        }
        // Lean on purpose: one span per copy is the router's tracing cost.
        // The message id, logical topic and namespace are the parent's.
        tel::span(Kind::Internal, || format!("route {logical}"))
            .parent(&parent)
            .start_at(at(c.source.stored_ms()))
            .attr(attr::SYSTEM, Val::Static(tel::SYSTEM))
            .attr(attr::OPERATION_TYPE, Val::Static("send"))
            .attr(attr::OPERATION_NAME, Val::Static("route"))
            .attr(attr::DESTINATION, c.topic)
            .attr(attr::PARTITION, s.queue)
            .attr(attr::OFFSET, s.queue_offset)
            .attr(attr::SOURCE_CELL, source.as_str())
            .attr(attr::TARGET_CELL, target.as_str())
            .attr(attr::ZONE_TYPE, Val::Static(zone))
            .attr(attr::TENANT, name.tenant.as_str())
            .start()
            .end_at(at(s.stored_ms));
    }
}
