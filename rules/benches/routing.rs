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

use std::hint::black_box;
use std::path::PathBuf;

use cellgate_rules::names::{self, Resource};
use cellgate_rules::{CellId, RuleSet, SubscriptionKind, Targets, TenantId, UnitHeaders};
use criterion::{criterion_group, criterion_main, Criterion};

const NS: &str = "ANT";
const TOPIC: &str = "BILL";
const GROUP: &str = "BILL_CONSUMER";

/// Numeric uids (digit path) interleaved with non-numeric ones (CRC32 path),
/// so the branch predictor does not learn one path. A power of two in length.
const UIDS: [&str; 16] = [
    "12375",
    "user-4711",
    "7",
    "2088102122524333",
    "a",
    "00",
    "ant:merchant:7781",
    "99",
    "0f8c2b7e-6a1d-4c1e-9d2b-3c4a5e6f7a8b",
    "123456789012345678",
    "abc",
    "50",
    "U_20881234",
    "31",
    "alice@example.com",
    "8",
];

/// Origin cells, rotated independently of the uids.
const ORIGINS: [&str; 4] = ["RZ00A", "RZ01A", "RZ02A", "RZ03A"];

struct Fixture {
    rules: RuleSet,
    ant: TenantId,
    origins: [(&'static str, CellId); 4],
}

impl Fixture {
    fn load() -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ldc.yaml");
        let rules = cellgate_rules::load(&path).unwrap();
        let ant = rules.tenant_id(NS).unwrap();
        let origins = ORIGINS.map(|n| (n, rules.cell_id(n).unwrap()));
        Fixture {
            rules,
            ant,
            origins,
        }
    }

    /// The inputs of the `i`th message.
    fn input(&self, i: usize) -> (&'static str, CellId, &'static str) {
        let (cell_name, cell) = self.origins[(i / 3) % self.origins.len()];
        (cell_name, cell, UIDS[i % UIDS.len()])
    }
}

/// Everything the gateway and the router decide for one message.
struct Decision {
    topic: String,
    group: String,
    headers: UnitHeaders,
    accepts: [bool; 4],
    targets: Targets,
}

/// The four subscription predicates, as seen from `me`.
fn predicates(r: &RuleSet, me: CellId, h: &UnitHeaders) -> [bool; 4] {
    SubscriptionKind::ALL.map(|k| r.accepts(k, me, h))
}

/// The full per-message decision (the headline benchmark).
fn decide(r: &RuleSet, ant: TenantId, cell_name: &str, cell: CellId, uid: &str) -> Decision {
    let topic = names::physical(NS, cell_name, TOPIC, Resource::Topic).unwrap();
    let group = names::physical(NS, cell_name, GROUP, Resource::Group).unwrap();
    let headers = r.unit_headers(ant, cell, Some(uid)).unwrap();
    let accepts = predicates(r, cell, &headers);
    let targets = r.router_targets(ant, TOPIC, None, cell, &headers);
    Decision {
        topic,
        group,
        headers,
        accepts,
        targets,
    }
}

fn bench(c: &mut Criterion) {
    let f = Fixture::load();
    let r = &f.rules;

    // Sanity: the decision is the documented one before anything is timed.
    let d = decide(r, f.ant, "RZ00A", f.origins[0].1, "12375");
    assert_eq!(d.topic, "ANT|RZ00A%BILL");
    assert_eq!(d.group, "ANT|RZ00A%BILL_CONSUMER");
    assert_eq!(r.cell_name(d.headers.target_r.unwrap()), "RZ03A");
    assert_eq!(d.accepts, [true, false, false, false]);
    assert_eq!(d.targets.len(), 3);

    let mut g = c.benchmark_group("decision");

    g.bench_function("full", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (name, cell, uid) = f.input(i);
            i = i.wrapping_add(1);
            black_box(decide(
                r,
                black_box(f.ant),
                black_box(name),
                black_box(cell),
                black_box(uid),
            ))
        })
    });

    g.bench_function("names_only", |b| {
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
