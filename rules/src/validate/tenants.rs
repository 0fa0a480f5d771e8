//! Tenants, their tokens, patterns, quotas, uid rule and routes; and the
//! platform admin tokens.

use std::collections::HashMap;

use super::topology::Topology;
use super::{items, patterns, whole_match, At, Doc, Problems};
use crate::error::NameKind;
use crate::names;
use crate::raw::{Permission, RawQuotas, RawRoute, RawTenant, RawToken};
use crate::ruleset::{
    Grant, Permissions, Quotas, Route, TargetMask, Tenant, TenantId, DEFAULT_MAX_MESSAGE_BYTES,
};
use crate::shard::{UidShardRule, MAX_DIGIT_POSITION};

/// Largest `max_message_bytes` accepted (RocketMQ's own ceiling is lower).
pub(crate) const MAX_MESSAGE_BYTES_LIMIT: u64 = 256 * 1024 * 1024;

pub(super) struct Tenants {
    pub tenants: Vec<Tenant>,
    pub grants: HashMap<[u8; 32], Grant>,
}

/// Tokens seen so far, to refuse one hash used twice.
type Seen<'a> = HashMap<[u8; 32], At<'a>>;

pub(super) fn compile(probs: &mut Problems, docs: &[Doc], topo: &Topology) -> Tenants {
    let mut seen: Seen<'_> = HashMap::new();
    let mut grants = HashMap::new();
    admin(probs, docs, &mut seen, &mut grants);
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut declared: HashMap<&str, String> = HashMap::new();
    for (at, t) in items(docs, "tenants", |r| &r.tenants) {
        if let Err(e) = names::validate(NameKind::Namespace, &t.namespace) {
            let msg = format!("tenant namespace {:?} {e}", t.namespace);
            probs.push(at.field("namespace").error(msg));
            continue;
        }
        if let Some(first) = declared.get(t.namespace.as_str()) {
            let msg = format!(
                "tenant {} is declared twice (first at {first})",
                t.namespace
            );
            probs.push(at.field("namespace").error(msg));
            continue;
        }
        declared.insert(&t.namespace, at.field("namespace").short());
        let id = TenantId(tenants.len() as u16);
        for (i, tok) in t.tokens.iter().enumerate() {
            let tat = at.field("tokens").index(i);
            if let Some((hash, grant)) = token(probs, &tat, tok, Some(id), &t.namespace) {
                claim(probs, &mut seen, &mut grants, hash, tat, grant);
            }
        }
        if tenants.len() >= usize::from(u16::MAX) {
            probs.push(at.error("more than 65535 tenants"));
            break;
        }
        tenants.push(tenant(probs, &at, t, topo));
    }
    Tenants { tenants, grants }
}

/// One tenant, once its namespace is known to be valid and new.
fn tenant(probs: &mut Problems, at: &At<'_>, t: &RawTenant, topo: &Topology) -> Tenant {
    let cells = tenant_cells(probs, at, t, topo);
    let longest_cell = topo
        .cells
        .iter()
        .zip(cells.iter())
        .filter(|(_, allowed)| **allowed)
        .map(|(c, _)| c.name.len())
        .max()
        .unwrap_or(0);
    let uid_shard = match &t.uid_shard {
        None => UidShardRule::default(),
        Some(u) => uid_rule(probs, &at.field("uid_shard").field("digits"), &u.digits),
    };
    let routes = t
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| route(probs, &at.field("routes").index(i), r))
        .collect();
    let load_test = Some(&t.load_test_groups);
    Tenant {
        namespace: t.namespace.as_str().into(),
        cells,
        longest_cell,
        topics: patterns(probs, &at.field("topics"), t.topics.as_ref()),
        groups: patterns(probs, &at.field("groups"), t.groups.as_ref()),
        quotas: quotas(probs, &at.field("quotas"), &t.quotas),
        uid_shard,
        routes,
        load_test_groups: patterns(probs, &at.field("load_test_groups"), load_test),
        ordered_topics: patterns(probs, &at.field("ordered_topics"), Some(&t.ordered_topics)),
    }
}

/// The cells a tenant may use, indexed by `CellId`.
fn tenant_cells(probs: &mut Problems, at: &At<'_>, t: &RawTenant, topo: &Topology) -> Box<[bool]> {
    let ns = &t.namespace;
    let mut cells = vec![false; topo.cells.len()].into_boxed_slice();
    if t.cells.is_empty() {
        let msg = format!("tenant {ns} has no cells; list them or use \"*\"");
        probs.push(at.field("cells").error(msg));
    }
    for (i, c) in t.cells.iter().enumerate() {
        match (c.as_str(), topo.cell_index.get(c.as_str())) {
            ("*", _) => cells.fill(true),
            (_, Some(id)) => cells[usize::from(id.0)] = true,
            (_, None) => {
                let msg = format!("tenant {ns}: cell {c} is not a declared cell");
                probs.push(at.field("cells").index(i).error(msg));
            }
        }
    }
    // A taken-over cell's traffic goes to the cell that serves it: a tenant
    // that may use the one must be able to use the other.
    for (a, &b) in topo.serving.iter().enumerate() {
        if cells[a] && !cells[usize::from(b.0)] {
            let (a, b) = (&topo.cells[a].name, &topo.cells[usize::from(b.0)].name);
            let msg = format!(
                "tenant {ns}: may use {a}, which is taken over by {b}, but not {b}; add {b} to \
                 its cells"
            );
            probs.push(at.field("cells").error(msg));
        }
    }
    cells
}

fn admin<'a>(
    probs: &mut Problems,
    docs: &'a [Doc],
    seen: &mut Seen<'a>,
    grants: &mut HashMap<[u8; 32], Grant>,
) {
    let mut first: Option<At<'a>> = None;
    for d in docs {
        let Some(admin) = &d.raw.platform_admin else {
            continue;
        };
        let at = At {
            src: &d.src,
            path: "platform_admin".to_owned(),
        };
        if let Some(f) = &first {
            probs.push(at.error(format!("platform_admin is already set at {}", f.short())));
            continue;
        }
        first = Some(at.clone());
        for (i, t) in admin.tokens.iter().enumerate() {
            let tat = at.field("tokens").index(i);
            let Some(hash) = sha256(probs, &tat.field("sha256"), &t.sha256) else {
                continue;
            };
            let grant = Grant {
                name: t.name.as_deref().unwrap_or("platform-admin").into(),
                tenant: None,
                permissions: Permissions {
                    publish: true,
                    subscribe: true,
                    admin: true,
                },
                topics: None,
                groups: None,
            };
            claim(probs, seen, grants, hash, tat, grant);
        }
    }
}

fn claim<'a>(
    probs: &mut Problems,
    seen: &mut Seen<'a>,
    grants: &mut HashMap<[u8; 32], Grant>,
    hash: [u8; 32],
    at: At<'a>,
    grant: Grant,
) {
    if let Some(first) = seen.get(&hash) {
        let msg = format!("token sha256 is also used at {}", first.short());
        probs.push(at.field("sha256").error(msg));
        return;
    }
    seen.insert(hash, at);
    grants.insert(hash, grant);
}

fn sha256(probs: &mut Problems, at: &At<'_>, hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex_str.len() == 64 && hex::decode_to_slice(hex_str, &mut out).is_ok() {
        return Some(out);
    }
    let got = match hex_str.chars().count() {
        64 => "a character that is not a hex digit".to_owned(),
        n => format!("{n} characters"),
    };
    probs.push(at.error(format!(
        "token sha256 must be 64 hex digits, got {got} (store the hash, not the token: \
         printf %s TOKEN | sha256sum)"
    )));
    None
}

fn token(
    probs: &mut Problems,
    at: &At<'_>,
    t: &RawToken,
    tenant: Option<TenantId>,
    ns: &str,
) -> Option<([u8; 32], Grant)> {
    let hash = sha256(probs, &at.field("sha256"), &t.sha256);
    let name = t.name.clone().unwrap_or_else(|| format!("{ns}-token"));
    if t.permissions.is_empty() {
        let msg = format!("token {name} has no permissions (publish, subscribe, admin)");
        probs.push(at.field("permissions").error(msg));
    }
    let has = |p| t.permissions.contains(&p);
    let grant = Grant {
        name: name.into(),
        tenant,
        permissions: Permissions {
            publish: has(Permission::Publish),
            subscribe: has(Permission::Subscribe),
            admin: has(Permission::Admin),
        },
        topics: t
            .topics
            .as_ref()
            .map(|p| patterns(probs, &at.field("topics"), Some(p))),
        groups: t
            .groups
            .as_ref()
            .map(|p| patterns(probs, &at.field("groups"), Some(p))),
    };
    Some((hash?, grant))
}

fn quotas(probs: &mut Problems, at: &At<'_>, q: &RawQuotas) -> Quotas {
    if q.publish_rate == Some(0) {
        let msg = "publish_rate must be at least 1 message per second (omit it for no limit)";
        probs.push(at.field("publish_rate").error(msg));
    }
    if q.publish_burst == Some(0) {
        probs.push(
            at.field("publish_burst")
                .error("publish_burst must be at least 1"),
        );
    }
    if q.publish_burst.is_some() && q.publish_rate.is_none() {
        let msg = "publish_burst needs publish_rate (a burst of an unlimited rate means nothing)";
        probs.push(at.field("publish_burst").error(msg));
    }
    let max = q.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if !(1..=MAX_MESSAGE_BYTES_LIMIT).contains(&max) {
        let msg =
            format!("max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES_LIMIT}, got {max}");
        probs.push(at.field("max_message_bytes").error(msg));
    }
    Quotas {
        publish_rate: q.publish_rate,
        publish_burst: q.publish_burst,
        max_message_bytes: max,
    }
}

fn uid_rule(probs: &mut Problems, at: &At<'_>, digits: &[u8]) -> UidShardRule {
    match digits {
        [t, u] => {
            if let Some(r) = UidShardRule::new(*t, *u) {
                return r;
            }
            let msg = format!(
                "uid_shard digits [{t}, {u}] must be two different positions from 1 (the last \
                 digit) to {MAX_DIGIT_POSITION}"
            );
            probs.push(at.error(msg));
        }
        _ => probs.push(at.error(format!(
            "uid_shard digits must name exactly two positions, e.g. [2, 1] for the last two \
             digits; got {}",
            digits.len()
        ))),
    }
    UidShardRule::default()
}

fn route(probs: &mut Problems, at: &At<'_>, r: &RawRoute) -> Option<Route> {
    let topic = whole_match(&r.topic).map_err(|e| probs.push(at.field("topic").error(e)));
    let tags = match &r.tags {
        None => Ok(None),
        Some(t) => whole_match(t)
            .map(Some)
            .map_err(|e| probs.push(at.field("tags").error(e))),
    };
    let mut targets = TargetMask::default();
    for &t in &r.targets {
        targets.set(t);
    }
    Some(Route {
        topic_src: r.topic.clone(),
        tags_src: r.tags.clone(),
        topic: topic.ok()?,
        tags: tags.ok()?,
        targets,
    })
}
