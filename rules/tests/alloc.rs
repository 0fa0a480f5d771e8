//! Issue 2: the per-message routing decision allocates nothing beyond the two
//! physical-name strings (the topic and the group).
//!
//! dhat's testing profiler is process-global, so this file holds exactly one
//! test. Run: `cargo test -p cellgate-rules --test alloc --release`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::PathBuf;

use cellgate_rules::names::{self, Resource};
use cellgate_rules::{CellId, RuleSet, SubscriptionKind, Targets, TenantId, UnitHeaders};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const NS: &str = "ANT";
const TOPIC: &str = "BILL";
const GROUP: &str = "BILL_CONSUMER";

/// Numeric uids (digit path) and non-numeric ones (CRC32 path).
const UIDS: [&str; 8] = [
    "12375",
    "user-4711",
    "7",
    "2088102122524333",
    "ant:merchant:7781",
    "00",
    "0f8c2b7e-6a1d-4c1e-9d2b-3c4a5e6f7a8b",
    "99",
];

const ORIGINS: [&str; 4] = ["RZ00A", "RZ01A", "RZ02A", "RZ03A"];

/// Everything the gateway and the router decide for one message (the same
/// decision as `decision/full` in benches/routing.rs).
struct Decision {
    topic: String,
    group: String,
    headers: UnitHeaders,
    accepts: [bool; 4],
    targets: Targets,
}

fn decide(r: &RuleSet, ant: TenantId, cell_name: &str, cell: CellId, uid: &str) -> Decision {
    let topic = names::physical(NS, cell_name, TOPIC, Resource::Topic).unwrap();
    let group = names::physical(NS, cell_name, GROUP, Resource::Group).unwrap();
    let headers = r.unit_headers(ant, cell, Some(uid)).unwrap();
    let accepts = SubscriptionKind::ALL.map(|k| r.accepts(k, cell, &headers));
    let targets = r.router_targets(ant, TOPIC, None, cell, &headers);
    Decision {
        topic,
        group,
        headers,
        accepts,
        targets,
    }
}

#[test]
fn the_decision_allocates_only_the_two_physical_names() {
    let _profiler = dhat::Profiler::builder().testing().build();

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ldc.yaml");
    let rules = cellgate_rules::load(&path).unwrap();
    let ant = rules.tenant_id(NS).unwrap();
    let origins = ORIGINS.map(|n| (n, rules.cell_id(n).unwrap()));
    let input = |i: usize| {
        let (name, cell) = origins[(i / 3) % origins.len()];
        (name, cell, UIDS[i % UIDS.len()])
    };

    // Warm up: lazily built caches (the regex engines' scratch space) are
    // filled on first use, not per message.
    for i in 0..64 {
        let (name, cell, uid) = input(i);
        black_box(decide(&rules, ant, name, cell, uid));
    }

    const N: u64 = 10_000;
    let before = dhat::HeapStats::get();
    let mut copies = 0usize;
    for i in 0..N as usize {
        let (name, cell, uid) = input(i);
        let d = black_box(decide(
            &rules,
            black_box(ant),
            black_box(name),
            black_box(cell),
            black_box(uid),
        ));
        copies += d.targets.len();
        black_box((&d.topic, &d.group, &d.headers, &d.accepts));
    }
    let after = dhat::HeapStats::get();

    // The loop did the work it claims to (every original message with a uid
    // is copied to at least G and C, on the example topology).
    assert!(copies >= 2 * N as usize, "copies: {copies}");

    let allocs = after.total_blocks - before.total_blocks;
    let bytes = after.total_bytes - before.total_bytes;
    assert_eq!(
        allocs,
        2 * N,
        "{allocs} heap allocations ({bytes} bytes) for {N} decisions; \
         expected exactly 2 per decision (the physical topic and group)"
    );
    // Nothing is kept: the two strings are freed with each decision.
    assert_eq!(after.curr_blocks, before.curr_blocks);
}
