//! What to do with one message read from a source cell: nothing, or one
//! copy per destination cell. Pure: everything comes from the rules
//! snapshot and the message.

use cellgate_broker_core::{QueueSelect, RecordRef};
use cellgate_rules::names::{self, Resource};
use cellgate_rules::{CellId, RuleSet, Targets, TenantId, SHARDING_KEY};

/// Why a message is not copied. Cheap: most messages in a busy cell are
/// copies or local-only, and this is decided per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a `NS|CELL%NAME` topic of the source cell (a DLQ, a foreign name).
    /// Decided per topic: such a topic is never read.
    NotATenantTopic,
    /// The namespace is not (or no longer) in the rules.
    UnknownTenant,
    /// No readable unit headers (stamped by no gateway).
    NoHeaders,
    /// A copy (on a backend that cannot leave copies out of the read), a
    /// message of another origin, or no enabled target elsewhere.
    NoTargets,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotATenantTopic => "not_a_tenant_topic",
            Skip::UnknownTenant => "unknown_tenant",
            Skip::NoHeaders => "no_headers",
            Skip::NoTargets => "no_targets",
        }
    }
}

/// A tenant topic of the source cell, parsed once per pass (not per
/// message: parsing re-validates every part of the name).
#[derive(Debug, Clone, Copy)]
pub struct SourceTopic<'a> {
    pub tenant: TenantId,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// `topic` as a tenant topic of `origin`, or why the router ignores it.
pub fn source_topic<'a>(
    rules: &RuleSet,
    origin: CellId,
    topic: &'a str,
) -> Result<SourceTopic<'a>, Skip> {
    let p = names::parse_physical(topic, Resource::Topic).map_err(|_| Skip::NotATenantTopic)?;
    if p.cell != rules.cell_name(origin) {
        return Err(Skip::NotATenantTopic);
    }
    let tenant = rules.tenant_id(p.namespace).ok_or(Skip::UnknownTenant)?;
    Ok(SourceTopic {
        tenant,
        namespace: p.namespace,
        name: p.name,
    })
}

/// The copies a message of `src` needs: destination cell and the kinds it
/// is for.
pub fn targets(
    rules: &RuleSet,
    origin: CellId,
    src: &SourceTopic<'_>,
    m: &RecordRef<'_>,
) -> Result<Targets, Skip> {
    let h = rules
        .read_unit_headers(|k| m.property(k))
        .map_err(|_| Skip::NoHeaders)?;
    let t = rules.router_targets(src.tenant, src.name, m.tag(), origin, &h);
    if t.is_empty() {
        return Err(Skip::NoTargets);
    }
    Ok(t)
}

/// The queue choice of a copy of `m`: by its sharding key (the
/// `__SHARDINGKEY` property), so per-key order holds in the target too.
/// Everything else a copy keeps is the broker's `CopyOf` contract: body,
/// tag, keys, every property (trace context included), born time and
/// message id, with `__UNIT.COPY_FOR` set to the kinds it is for.
pub fn select_of(m: &RecordRef<'_>) -> QueueSelect {
    match m.property(SHARDING_KEY) {
        Some(k) => QueueSelect::ShardingKey(k.to_owned()),
        None => QueueSelect::RoundRobin,
    }
}

/// The physical topic of `src`'s logical topic in `dest`.
pub fn dest_topic(rules: &RuleSet, src: &SourceTopic<'_>, dest: CellId) -> Option<String> {
    names::physical(
        src.namespace,
        rules.cell_name(dest),
        src.name,
        Resource::Topic,
    )
    .ok()
}
