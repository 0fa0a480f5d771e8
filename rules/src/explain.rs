//! `cellgate rules explain`: what the rules do with one message.

use serde::Serialize;

use crate::error::InputError;
use crate::names::{self, NameError, Resource};
use crate::ruleset::RuleSet;
use crate::unit::SubscriptionKind;

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

/// Why a query cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    #[error("unknown cell {0}")]
    UnknownCell(String),
    #[error("tenant {tenant} may not use cell {cell}")]
    CellNotAllowed { tenant: String, cell: String },
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("uid {0}")]
    Uid(InputError),
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

pub fn explain(rules: &RuleSet, q: &Query<'_>) -> Result<Explanation, ExplainError> {
    let tid = rules
        .tenant_id(q.tenant)
        .ok_or_else(|| ExplainError::UnknownTenant(q.tenant.to_owned()))?;
    let cid = rules
        .cell_id(q.cell)
        .ok_or_else(|| ExplainError::UnknownCell(q.cell.to_owned()))?;
    if !rules.tenant(tid).allows_cell(cid) {
        return Err(ExplainError::CellNotAllowed {
            tenant: q.tenant.to_owned(),
            cell: q.cell.to_owned(),
        });
    }
    let physical_topic = names::physical(q.tenant, q.cell, q.topic, Resource::Topic)?;
    let physical_group = q
        .group
        .map(|g| names::physical(q.tenant, q.cell, g, Resource::Group))
        .transpose()?;
    let shard = q
        .uid
        .map(|u| rules.tenant(tid).uid_shard.shard(u))
        .transpose()
        .map_err(ExplainError::Uid)?;
    let h = rules
        .unit_headers(tid, cid, q.uid)
        .map_err(ExplainError::Uid)?;
    let mut unit_headers = Vec::new();
    h.write(rules, |k, v| {
        unit_headers.push((k.to_owned(), v.to_owned()))
    });
    let route = rules.route(tid, q.topic, q.tag).map(|(i, r)| {
        let tags = match &r.tags_src {
            Some(t) => format!("tags {t:?}"),
            None => "any tag".to_owned(),
        };
        format!(
            "routes[{i}]: topic {:?} {tags} -> {}",
            r.topic_src, r.targets
        )
    });
    let targets = rules.router_targets(tid, q.topic, q.tag, cid, &h);
    let mut copies = Vec::new();
    for (t, kinds) in targets.iter() {
        copies.push(Copy {
            target: rules.cell_name(t).to_owned(),
            copy_for: kinds.to_string(),
            physical_topic: names::physical(
                q.tenant,
                rules.cell_name(t),
                q.topic,
                Resource::Topic,
            )?,
        });
    }
    // The message exists in the origin's topic and, as a copy, in each
    // destination's.
    let holders: Vec<_> = std::iter::once((cid, h))
        .chain(targets.iter().map(|(c, kinds)| (c, h.as_copy(kinds))))
        .collect();
    let receivers = SubscriptionKind::ALL
        .iter()
        .map(|&k| {
            let cells = holders
                .iter()
                .filter(|(c, h)| rules.accepts(k, *c, h))
                .map(|(c, _)| rules.cell_name(*c).to_owned())
                .collect();
            (k.to_string(), cells)
        })
        .collect();
    let cell = rules.cell(cid);
    let tenant = rules.tenant(tid);
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
        shard: shard.map(|s| {
            let owner = rules.shard_owner(s);
            let serving = rules.serving(owner);
            if serving == owner {
                format!("{s} (owned by {})", rules.cell_name(owner))
            } else {
                let (o, by) = (rules.cell_name(owner), rules.cell_name(serving));
                format!("{s} (owned by {o}, taken over by {by})")
            }
        }),
        unit_headers,
        route,
        copies,
        receivers,
    })
}
