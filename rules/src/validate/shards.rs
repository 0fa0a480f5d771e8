//! The uid-shard map: every shard 00–99 owned by exactly one RZone.

use std::collections::HashMap;

use super::{items, At, Doc, Problems};
use crate::ruleset::{Cell, CellId, ZoneType};

#[derive(Clone, Copy)]
enum Slot {
    Free,
    /// Claimed by an entry that had its own problem: no gap report.
    Invalid,
    Owned(CellId),
}

// Long on purpose: the checks of one entry run in sequence, each pushing
// its own problem and carrying on, so that every problem is reported.
pub(super) fn compile(
    probs: &mut Problems,
    docs: &[Doc],
    cells: &[Cell],
    index: &HashMap<Box<str>, CellId>,
) -> [Option<CellId>; 100] {
    let entries = items(docs, "shards", |r| &r.shards);
    let mut slots = [Slot::Free; 100];
    // (shard, first owner, second owner, entry of the second)
    let mut clashes: Vec<(u8, CellId, CellId, usize)> = Vec::new();
    // An unreadable range claims unknown shards: gaps are not reported then.
    let mut unreadable = false;
    for (e, (at, s)) in entries.iter().enumerate() {
        let Some((lo, hi)) = parse_range(&s.range) else {
            let msg = format!(
                "shard range {:?} must be NN or NN-NN with 00 <= NN <= 99",
                s.range
            );
            probs.push(at.field("range").error(msg));
            unreadable = true;
            continue;
        };
        let owner = match index.get(s.cell.as_str()) {
            None => {
                let msg = format!(
                    "shard range {}: cell {} is not a declared cell",
                    s.range, s.cell
                );
                probs.push(at.field("cell").error(msg));
                None
            }
            Some(&id) if cells[usize::from(id.0)].zone != ZoneType::R => {
                let zone = cells[usize::from(id.0)].zone;
                let msg = format!(
                    "shard range {}: cell {} is {}; only RZones own shards",
                    s.range,
                    s.cell,
                    zone.with_article()
                );
                probs.push(at.field("cell").error(msg));
                None
            }
            Some(&id) => Some(id),
        };
        for n in lo..=hi {
            let slot = &mut slots[usize::from(n)];
            match (*slot, owner) {
                (Slot::Owned(first), Some(second)) => clashes.push((n, first, second, e)),
                (Slot::Free, Some(id)) => *slot = Slot::Owned(id),
                (Slot::Free, None) => *slot = Slot::Invalid,
                _ => {}
            }
        }
    }
    report_clashes(probs, &entries, cells, &clashes);
    if !unreadable {
        report_gaps(probs, docs, &slots);
    }
    slots.map(|s| match s {
        Slot::Owned(id) => Some(id),
        _ => None,
    })
}

fn parse_range(s: &str) -> Option<(u8, u8)> {
    let num = |x: &str| -> Option<u8> {
        let ok = (1..=2).contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| x.parse().ok()).flatten()
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    (lo <= hi && hi <= 99).then_some((lo, hi))
}

/// One problem per run of consecutive shards with the same two owners.
fn report_clashes<T>(
    probs: &mut Problems,
    entries: &[(At<'_>, T)],
    cells: &[Cell],
    clashes: &[(u8, CellId, CellId, usize)],
) {
    let name = |id: CellId| &*cells[usize::from(id.0)].name;
    let mut i = 0;
    while i < clashes.len() {
        let (lo, a, b, e) = clashes[i];
        let mut hi = lo;
        while i + 1 < clashes.len() && clashes[i + 1] == (hi + 1, a, b, e) {
            hi += 1;
            i += 1;
        }
        let what = if lo == hi {
            format!("shard {lo:02} is")
        } else {
            format!("shards {lo:02}-{hi:02} are")
        };
        let msg = if a == b {
            format!("{what} assigned to {} twice", name(a))
        } else {
            format!("{what} owned by both {} and {}", name(a), name(b))
        };
        probs.push(entries[e].0.field("range").error(msg));
        i += 1;
    }
}

fn report_gaps(probs: &mut Problems, docs: &[Doc], slots: &[Slot; 100]) {
    let Some(doc) = docs
        .iter()
        .find(|d| !d.raw.shards.is_empty())
        .or(docs.first())
    else {
        return;
    };
    let at = At {
        src: &doc.src,
        path: "shards".to_owned(),
    };
    let mut n = 0usize;
    while n < 100 {
        if !matches!(slots[n], Slot::Free) {
            n += 1;
            continue;
        }
        let lo = n;
        while n + 1 < 100 && matches!(slots[n + 1], Slot::Free) {
            n += 1;
        }
        let msg = if lo == n {
            format!("shard {lo:02} is not owned by any RZone")
        } else {
            format!("shards {lo:02}-{n:02} are not owned by any RZone")
        };
        probs.push(at.error(msg));
        n += 1;
    }
}
