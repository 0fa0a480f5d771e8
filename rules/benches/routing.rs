//! The per-message routing decision on the reference topology
//! (examples/ldc.yaml), issue 2: under 300 ns per message, with no heap
//! allocation beyond the two physical-name strings (see tests/alloc.rs).
//!
//! `decision/full` is the headline: wrap the topic and the group to physical
//! names, stamp the unit headers for a message with a uid, evaluate the four
//! subscription predicates and compute the router's targets. The other
//! benchmarks time the parts, so one can see where the time goes.
//!
//! Run: `cargo bench -p cellgate-rules --bench routing`.

#![allow(clippy::unwrap_used)]

mod common;

use std::hint::black_box;

use cellgate_rules::names::{self, Resource};
use cellgate_rules::{CellId, UnitHeaders};
use common::{decide, predicates, Fixture, GROUP, NS, ORIGINS, TOPIC, UIDS};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let f = Fixture::load();
    let r = &f.rules;

    // Sanity: the decision is the documented one before anything is timed.
    let d = decide(r, f.ant, f.origins[0].1, "12375");
    assert_eq!(d.topic, "ANT|RZ00A%BILL");
    assert_eq!(d.group, "ANT|RZ00A%BILL_CONSUMER");
    assert_eq!(r.cell_name(d.headers.target_r.unwrap()), "RZ03A");
    assert_eq!(d.accepts, [true, false, false, false]);
    assert_eq!(d.targets.len(), 3);

    let mut g = c.benchmark_group("decision");

    g.bench_function("full", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, cell, uid) = f.input(i);
            i = i.wrapping_add(1);
            black_box(decide(r, black_box(f.ant), black_box(cell), black_box(uid)))
        })
    });

    // The two names as the gateway builds them: the namespace and cell come
    // from the rule set (checked at load), only the logical name is checked.
    g.bench_function("names_only", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, cell, _) = f.input(i);
            i = i.wrapping_add(1);
            let t = r.physical_name(black_box(f.ant), black_box(cell), TOPIC, Resource::Topic);
            let g = r.physical_name(black_box(f.ant), black_box(cell), GROUP, Resource::Group);
            black_box((t, g))
        })
    });

    // The same two names from untrusted strings: every part is checked.
    g.bench_function("names_only_from_strings", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (name, _, _) = f.input(i);
            i = i.wrapping_add(1);
            let t = names::physical(black_box(NS), black_box(name), TOPIC, Resource::Topic);
            let g = names::physical(black_box(NS), black_box(name), GROUP, Resource::Group);
            black_box((t, g))
        })
    });

    g.bench_function("headers_only", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (_, cell, uid) = f.input(i);
            i = i.wrapping_add(1);
            black_box(r.unit_headers(black_box(f.ant), black_box(cell), Some(black_box(uid))))
        })
    });

    // Headers precomputed outside the loop, one per input, so only the
    // predicates and the router's targets are timed.
    let inputs: Vec<(CellId, UnitHeaders)> = (0..UIDS.len() * ORIGINS.len() * 3)
        .map(|i| {
            let (_, cell, uid) = f.input(i);
            (cell, r.unit_headers(f.ant, cell, Some(uid)).unwrap())
        })
        .collect();
    g.bench_function("predicates_and_targets", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (cell, h) = &inputs[i % inputs.len()];
            i = i.wrapping_add(1);
            let cell = black_box(*cell);
            let h = black_box(h);
            let accepts = predicates(r, cell, h);
            let targets = r.router_targets(black_box(f.ant), black_box(TOPIC), None, cell, h);
            black_box((accepts, targets))
        })
    });

    // Not part of the decision above: the bearer-token check (SHA-256 of the
    // token, then a hash-map lookup), timed for comparison.
    g.bench_function("token_authenticate", |b| {
        b.iter(|| black_box(r.authenticate(black_box("ant-demo-token")).is_some()))
    });

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
