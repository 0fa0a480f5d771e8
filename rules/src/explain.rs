//! `cellgate rules explain`: what the rules do with one message.

use serde::Serialize;

use crate::error::Error;
use crate::names::{self, Resource};
use crate::ruleset::{CellId, RuleSet, TenantId};
use crate::shard::Shard;
use crate::unit::{SubscriptionKind, Targets, UnitHeaders};

/// What to explain.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub tenant: &'a str,
    pub cell: &'a str,
    pub topic: &'a str,
    pub group: Option<&'a str>,
    pub uid: Option<&'a str>,
    pub tag: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub rules_version: u64,
    pub tenant: String,
    pub cell: String,
    pub zone: String,
    pub city: String,
    /// Whether the tenant's `topics` patterns allow the topic.
    pub topic_allowed: bool,
    /// Whether the tenant's `groups` patterns allow the group, if one was given.
    pub group_allowed: Option<bool>,
    pub physical_topic: String,
    pub physical_group: Option<String>,
    pub retry_topic: Option<String>,
    pub dlq_topic: Option<String>,
    pub shard: Option<String>,
    pub unit_headers: Vec<(String, String)>,
    pub route: Option<String>,
    pub copies: Vec<Copy>,
    /// Per subscription kind, the cells whose subscribers receive the message.
    pub receivers: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Serialize)]
pub struct Copy {
    pub target: String,
    /// The kinds the copy is for (`__UNIT.COPY_FOR`).
    pub copy_for: String,
    pub physical_topic: String,
}

pub fn explain(rules: &RuleSet, q: &Query<'_>) -> Result<Explanation, Error> {
    let (tid, cid) = resolve(rules, q)?;
    // The gateway's own path: the topic must also fit every cell it may be
    // copied to.
    let physical_topic = rules.physical_name(tid, cid, q.topic, Resource::Topic)?;
    let physical_group = q
        .group
        .map(|g| rules.physical_name(tid, cid, g, Resource::Group))
        .transpose()?;
    let shard = q
        .uid
        .map(|u| rules.tenant(tid).uid_shard.shard(u))
        .transpose()
        .map_err(Error::Uid)?;
    let h = rules.unit_headers(tid, cid, q.uid).map_err(Error::Uid)?;
    let mut unit_headers = Vec::new();
    h.write(rules, |k, v| {
        unit_headers.push((k.to_owned(), v.to_owned()))
    });
    let targets = rules.router_targets(tid, q.topic, q.tag, cid, &h);
    let (cell, tenant) = (rules.cell(cid), rules.tenant(tid));
    Ok(Explanation {
        topic_allowed: tenant.topics.matches(q.topic),
        group_allowed: q.group.map(|g| tenant.groups.matches(g)),
        rules_version: rules.version(),
        tenant: q.tenant.to_owned(),
        cell: q.cell.to_owned(),
        zone: cell.zone.to_string(),
        city: cell.city.to_string(),
        retry_topic: physical_group.as_deref().map(names::retry_topic),
        dlq_topic: physical_group.as_deref().map(names::dlq_topic),
        physical_topic,
        physical_group,
        shard: shard.map(|s| describe_shard(rules, s)),
        unit_headers,
        route: describe_route(rules, tid, q),
        copies: copies(rules, tid, q.topic, &targets)?,
        receivers: receivers(rules, cid, &h, &targets),
    })
}

fn resolve(rules: &RuleSet, q: &Query<'_>) -> Result<(TenantId, CellId), Error> {
    let tid = rules
        .tenant_id(q.tenant)
        .ok_or_else(|| Error::UnknownTenant(q.tenant.to_owned()))?;
    let cid = rules
        .cell_id(q.cell)
        .ok_or_else(|| Error::UnknownCell(q.cell.to_owned()))?;
    if !rules.tenant(tid).allows_cell(cid) {
        return Err(Error::CellNotAllowed {
            tenant: q.tenant.to_owned(),
            cell: q.cell.to_owned(),
        });
    }
    Ok((tid, cid))
}

fn describe_shard(rules: &RuleSet, s: Shard) -> String {
    let owner = rules.shard_owner(s);
    let serving = rules.serving(owner);
    if serving == owner {
        format!("{s} (owned by {})", rules.cell_name(owner))
    } else {
        let (o, by) = (rules.cell_name(owner), rules.cell_name(serving));
        format!("{s} (owned by {o}, taken over by {by})")
    }
}

fn describe_route(rules: &RuleSet, tid: TenantId, q: &Query<'_>) -> Option<String> {
    rules.route(tid, q.topic, q.tag).map(|(i, r)| {
        let tags = match &r.tags_src {
            Some(t) => format!("tags {t:?}"),
            None => "any tag".to_owned(),
        };
        format!(
            "routes[{i}]: topic {:?} {tags} -> {}",
            r.topic_src, r.targets
        )
    })
}

fn copies(
    rules: &RuleSet,
    tid: TenantId,
    topic: &str,
    targets: &Targets,
) -> Result<Vec<Copy>, Error> {
    targets
        .iter()
        .map(|(t, kinds)| {
            Ok(Copy {
                target: rules.cell_name(t).to_owned(),
                copy_for: kinds.to_string(),
                physical_topic: rules.physical_name(tid, t, topic, Resource::Topic)?,
            })
        })
        .collect()
}

/// Per kind, the cells whose subscribers take the message: it lies in the
/// origin's topic and, as a copy, in each destination's.
fn receivers(
    rules: &RuleSet,
    origin: CellId,
    h: &UnitHeaders,
    targets: &Targets,
) -> Vec<(String, Vec<String>)> {
    let holders: Vec<_> = std::iter::once((origin, *h))
        .chain(targets.iter().map(|(c, kinds)| (c, h.as_copy(kinds))))
        .collect();
    SubscriptionKind::ALL
        .iter()
        .map(|&k| {
            let cells = holders
                .iter()
                .filter(|(c, h)| rules.accepts(k, *c, h))
                .map(|(c, _)| rules.cell_name(*c).to_owned())
                .collect();
            (k.to_string(), cells)
        })
        .collect()
}
