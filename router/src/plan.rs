//! What to do with one message read from a source cell: nothing, or one
//! copy per destination cell. Pure: everything comes from the rules
//! snapshot and the message.

use std::collections::BTreeMap;

use cellgate_broker_core::{Message, QueueSelect, StoredMessage};
use cellgate_rules::names::{self, Resource};
use cellgate_rules::{CellId, RuleSet, TargetMask, COPY_FOR};

/// The property with a message's sharding key (set by the gateway); a copy
/// with the same key takes the same queue choice in its cell.
pub const SHARDING_KEY: &str = "__SHARDINGKEY";

/// Why a message is not copied. Cheap: most messages in a busy cell are
/// copies or local-only, and this is decided per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a `NS|CELL%NAME` topic of the source cell (a DLQ, a foreign name).
    NotATenantTopic,
    /// The namespace is not (or no longer) in the rules.
    UnknownTenant,
    /// No readable unit headers (stamped by no gateway).
    NoHeaders,
    /// A copy, a message of another origin, or no enabled target elsewhere.
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

/// The copies a message needs: destination cell and the kinds it is for.
pub fn targets(
    rules: &RuleSet,
    origin: CellId,
    m: &StoredMessage,
) -> Result<Vec<(CellId, TargetMask)>, Skip> {
    let p = names::parse_physical(&m.topic, Resource::Topic).map_err(|_| Skip::NotATenantTopic)?;
    if p.cell != rules.cell_name(origin) {
        return Err(Skip::NotATenantTopic);
    }
    let tenant = rules.tenant_id(p.namespace).ok_or(Skip::UnknownTenant)?;
    let h = rules
        .read_unit_headers(|k| m.properties.get(k).map(String::as_str))
        .map_err(|_| Skip::NoHeaders)?;
    let t = rules.router_targets(tenant, p.name, m.tag.as_deref(), origin, &h);
    if t.is_empty() {
        return Err(Skip::NoTargets);
    }
    Ok(t.iter().collect())
}

/// The copy of `m` for `dest_topic`: body, tag, keys, every property (trace
/// context included), born time and message id kept; `__UNIT.COPY_FOR` set
/// to the kinds it is for; the same queue choice by sharding key.
pub fn copy_of(m: &StoredMessage, dest_topic: String, kinds: &str) -> (Message, QueueSelect) {
    let mut properties: BTreeMap<String, String> = m.properties.clone();
    properties.insert(COPY_FOR.to_owned(), kinds.to_owned());
    let select = match properties.get(SHARDING_KEY) {
        Some(k) => QueueSelect::ShardingKey(k.clone()),
        None => QueueSelect::RoundRobin,
    };
    let msg = Message {
        topic: dest_topic,
        body: m.body.clone(),
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        properties,
        born_ms: m.born_ms,
    };
    (msg, select)
}

/// The physical topic of `m`'s logical topic in `dest`.
pub fn dest_topic(rules: &RuleSet, m: &StoredMessage, dest: CellId) -> Option<String> {
    let p = names::parse_physical(&m.topic, Resource::Topic).ok()?;
    names::physical(p.namespace, rules.cell_name(dest), p.name, Resource::Topic).ok()
}
