//! Issue 2: the per-message routing decision allocates nothing beyond the two
//! physical-name strings (the topic and the group).
//!
//! dhat's testing profiler is process-global, so this file holds exactly one
//! test. Run: `cargo test -p cellgate-rules --test alloc --release`.

#![allow(clippy::unwrap_used)]

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{decide, Fixture};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn the_decision_allocates_only_the_two_physical_names() {
    let _profiler = dhat::Profiler::builder().testing().build();

    let f = Fixture::load();
    let (rules, ant) = (&f.rules, f.ant);

    // Warm up: lazily built caches (the regex engines' scratch space) are
    // filled on first use, not per message.
    for i in 0..64 {
        let (_, cell, uid) = f.input(i);
        black_box(decide(rules, ant, cell, uid));
    }

    const N: u64 = 10_000;
    let before = dhat::HeapStats::get();
    let mut copies = 0usize;
    for i in 0..N as usize {
        let (_, cell, uid) = f.input(i);
        let d = black_box(decide(
            rules,
            black_box(ant),
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
    // dhat counts the whole process: the test harness's own threads may
    // allocate a few blocks meanwhile (seen: up to 4). One more allocation
    // per decision would add N, so a small fixed slack cannot hide it.
    const SLACK: u64 = 64;
    assert!(
        (2 * N..=2 * N + SLACK).contains(&allocs),
        "{allocs} heap allocations ({bytes} bytes) for {N} decisions; \
         expected 2 per decision (the physical topic and group), give or take \
         {SLACK} from other threads"
    );
    // Nothing is kept: the two strings are freed with each decision.
    assert!(after.curr_blocks <= before.curr_blocks + SLACK as usize);
}
