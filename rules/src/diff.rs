//! What changed between two rule sets, in words an operator reads in a log.

use std::collections::BTreeMap;
use std::fmt;

use crate::ruleset::{Grant, RuleSet, Tenant};

/// The changes from one rule set to the next; empty when they mean the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesDiff(Vec<String>);

impl RulesDiff {
    pub fn between(old: &RuleSet, new: &RuleSet) -> RulesDiff {
        let mut out = Vec::new();
        shards(old, new, &mut out);
        if old.cell_name(old.gzone()) != new.cell_name(new.gzone()) {
            out.push(format!(
                "active GZone {} -> {}",
                old.cell_name(old.gzone()),
                new.cell_name(new.gzone())
            ));
        }
        cells(old, new, &mut out);
        takeovers(old, new, &mut out);
        tenants(old, new, &mut out);
        let (a, b) = (grants_of(old, None), grants_of(new, None));
        if a != b {
            out.push(format!("platform admin tokens {a:?} -> {b:?}"));
        }
        RulesDiff(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn changes(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for RulesDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no changes");
        }
        f.write_str(&self.0.join("\n"))
    }
}

fn shards(old: &RuleSet, new: &RuleSet, out: &mut Vec<String>) {
    let owner = |r: &RuleSet, n: usize| r.cell_name(r.shard_owner[n]).to_owned();
    let mut n = 0;
    while n < 100 {
        let (a, b) = (owner(old, n), owner(new, n));
        if a == b {
            n += 1;
            continue;
        }
        let lo = n;
        while n + 1 < 100 && owner(old, n + 1) == a && owner(new, n + 1) == b {
            n += 1;
        }
        let what = if lo == n {
            format!("shard {lo:02}")
        } else {
            format!("shards {lo:02}-{n:02}")
        };
        out.push(format!("{what} moved {a} -> {b}"));
        n += 1;
    }
}

fn cells(old: &RuleSet, new: &RuleSet, out: &mut Vec<String>) {
    for (_, c) in old.cells() {
        match new.cell_id(&c.name).map(|id| new.cell(id)) {
            None => out.push(format!("cell {} removed", c.name)),
            Some(n) => {
                if c.zone != n.zone {
                    out.push(format!("cell {}: zone {} -> {}", c.name, c.zone, n.zone));
                }
                if c.city != n.city {
                    out.push(format!("cell {}: city {} -> {}", c.name, c.city, n.city));
                }
                if c.broker != n.broker {
                    out.push(format!(
                        "cell {}: broker {} -> {}",
                        c.name, c.broker, n.broker
                    ));
                }
            }
        }
    }
    for (_, c) in new.cells() {
        if old.cell_id(&c.name).is_none() {
            out.push(format!(
                "cell {} added ({}, city {}, broker {})",
                c.name, c.zone, c.city, c.broker
            ));
        }
    }
}

fn takeovers(old: &RuleSet, new: &RuleSet, out: &mut Vec<String>) {
    let map = |r: &RuleSet| -> BTreeMap<String, String> {
        r.takeovers()
            .map(|(a, b)| (r.cell_name(a).to_owned(), r.cell_name(b).to_owned()))
            .collect()
    };
    let (a, b) = (map(old), map(new));
    for (cell, by) in &a {
        match b.get(cell) {
            None => out.push(format!("takeover of {cell} by {by} ended")),
            Some(nb) if nb != by => out.push(format!("takeover of {cell}: {by} -> {nb}")),
            _ => {}
        }
    }
    for (cell, by) in &b {
        if !a.contains_key(cell) {
            out.push(format!("takeover of {cell} by {by} started"));
        }
    }
}

// Long on purpose: one comparison per tenant field, each a line of output;
// splitting them apart would only scatter a flat list.
fn tenants(old: &RuleSet, new: &RuleSet, out: &mut Vec<String>) {
    for (oid, t) in old.tenants() {
        let Some(nid) = new.tenant_id(&t.namespace) else {
            out.push(format!("tenant {} removed", t.namespace));
            continue;
        };
        let n = new.tenant(nid);
        let ns = &t.namespace;
        if cell_names(old, t) != cell_names(new, n) {
            out.push(format!(
                "tenant {ns}: cells {:?} -> {:?}",
                cell_names(old, t),
                cell_names(new, n)
            ));
        }
        if t.topics != n.topics {
            out.push(format!(
                "tenant {ns}: topics {:?} -> {:?}",
                t.topics.src, n.topics.src
            ));
        }
        if t.groups != n.groups {
            out.push(format!(
                "tenant {ns}: groups {:?} -> {:?}",
                t.groups.src, n.groups.src
            ));
        }
        if t.quotas != n.quotas {
            out.push(format!(
                "tenant {ns}: quotas {} -> {}",
                quotas(&t.quotas),
                quotas(&n.quotas)
            ));
        }
        if t.uid_shard != n.uid_shard {
            let (a, b) = (t.uid_shard.positions(), n.uid_shard.positions());
            out.push(format!("tenant {ns}: uid_shard digits {a:?} -> {b:?}"));
        }
        if t.routes != n.routes {
            out.push(format!(
                "tenant {ns}: routes {} -> {}",
                routes(t),
                routes(n)
            ));
        }
        if t.load_test_groups != n.load_test_groups {
            let (a, b) = (&t.load_test_groups.src, &n.load_test_groups.src);
            out.push(format!("tenant {ns}: load_test_groups {a:?} -> {b:?}"));
        }
        if t.ordered_topics != n.ordered_topics {
            let (a, b) = (&t.ordered_topics.src, &n.ordered_topics.src);
            out.push(format!("tenant {ns}: ordered_topics {a:?} -> {b:?}"));
        }
        let (a, b) = (grants_of(old, Some(oid)), grants_of(new, Some(nid)));
        if a != b {
            out.push(format!("tenant {ns}: tokens {a:?} -> {b:?}"));
        }
    }
    for (_, t) in new.tenants() {
        if old.tenant_id(&t.namespace).is_none() {
            out.push(format!("tenant {} added", t.namespace));
        }
    }
}

fn cell_names<'a>(r: &'a RuleSet, t: &Tenant) -> Vec<&'a str> {
    r.cells()
        .filter(|(id, _)| t.allows_cell(*id))
        .map(|(id, _)| r.cell_name(id))
        .collect()
}

fn routes(t: &Tenant) -> String {
    let parts: Vec<String> = t
        .routes
        .iter()
        .map(|r| match &r.tags_src {
            Some(tags) => format!("{:?}/{tags:?}->{}", r.topic_src, r.targets),
            None => format!("{:?}->{}", r.topic_src, r.targets),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Hash prefix → "name perms topics groups" of one tenant's tokens (or the
/// platform admin's, for `None`). Keyed by hash: names need not be unique,
/// and a changed prefix is a rotated token.
fn grants_of(r: &RuleSet, tenant: Option<crate::TenantId>) -> BTreeMap<String, String> {
    r.grants
        .iter()
        .filter(|(_, g)| g.tenant == tenant)
        .map(|(h, g): (&[u8; 32], &Grant)| {
            let p = g.permissions;
            let flag = |on: bool, c: char| if on { c } else { '-' };
            let mut desc = format!(
                "{} {}{}{}",
                g.name,
                flag(p.publish, 'p'),
                flag(p.subscribe, 's'),
                flag(p.admin, 'a')
            );
            if let Some(t) = &g.topics {
                desc.push_str(&format!(" topics={:?}", t.sources()));
            }
            if let Some(t) = &g.groups {
                desc.push_str(&format!(" groups={:?}", t.sources()));
            }
            (hex::encode(&h[..4]), desc)
        })
        .collect()
}

fn quotas(q: &crate::Quotas) -> String {
    let opt = |v: Option<u32>| v.map_or("unlimited".to_owned(), |v| v.to_string());
    format!(
        "publish_rate {} burst {} max_message_bytes {}",
        opt(q.publish_rate),
        opt(q.publish_burst),
        q.max_message_bytes
    )
}
