//! The invariant that makes failover safe: whatever takeover is in force when
//! a message is published, when the router copies it and when consumers read
//! it, each of its kinds (R, G, C) is accepted in exactly one cell, and the
//! broker-side filter agrees with the predicate.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use cellgate_rules::{RuleSet, Sources, SubscriptionKind as K, UnitHeaders};
use proptest::prelude::*;

const CELLS: [&str; 7] = [
    "RZ00A", "RZ01A", "RZ02A", "RZ03A", "GZ00A", "CZSH0", "CZHZ0",
];
const TAKEOVERS: [&str; 5] = [
    "takeover: []",
    "takeover:\n  - { cell: RZ03A, by: RZ02A }",
    "takeover:\n  - { cell: RZ02A, by: RZ03A }",
    "takeover:\n  - { cell: RZ00A, by: RZ03A }\n  - { cell: CZSH0, by: CZHZ0 }",
    "takeover:\n  - { cell: RZ01A, by: RZ00A }\n  - { cell: RZ02A, by: RZ00A }",
];

fn versions() -> &'static [RuleSet] {
    static V: std::sync::OnceLock<Vec<RuleSet>> = std::sync::OnceLock::new();
    V.get_or_init(compile_versions)
}

fn compile_versions() -> Vec<RuleSet> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ldc.yaml"))
            .unwrap();
    TAKEOVERS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Sources::from_text("ldc.yaml", &text.replace("takeover: []", t))
                .compile(i as u64 + 1)
                .unwrap()
        })
        .collect()
}

fn props(r: &RuleSet, h: &UnitHeaders) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    h.write(r, |k, v| p.push((k, v.to_owned())));
    p
}

fn stored(r: &RuleSet, props: &[(&'static str, String)]) -> UnitHeaders {
    r.read_unit_headers(|k| props.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn each_kind_is_accepted_in_exactly_one_cell(
        publish in 0usize..5, route in 0usize..5, read in 0usize..5,
        origin in 0usize..4, uid in prop_oneof!["[0-9]{1,12}", "[a-z]{1,12}"], has_uid in any::<bool>(),
    ) {
        let v = versions();
        let (p, r, s) = (&v[publish], &v[route], &v[read]);
        let ant = p.tenant_id("ANT").unwrap();
        let o = p.cell_id(CELLS[origin]).unwrap();
        // Each component sees the message as stored properties, read with its
        // own rule set: no id of one version is used with another.
        let published = props(p, &p.unit_headers(ant, o, has_uid.then_some(uid.as_str())).unwrap());
        let h_r = stored(r, &published);
        let o_r = r.cell_id(CELLS[origin]).unwrap();
        // Where the message lies: the original in its origin, and the copies
        // (the original's properties plus COPY_FOR).
        let mut lying: Vec<(usize, Vec<(&'static str, String)>)> = vec![(origin, published.clone())];
        for (dest, kinds) in r.router_targets(ant, "BILL", None, o_r, &h_r).iter() {
            let c = CELLS.iter().position(|n| *n == r.cell_name(dest)).unwrap();
            let mut copy = published.clone();
            copy.push((cellgate_rules::COPY_FOR, kinds.as_str().to_owned()));
            // A copy is never copied again.
            prop_assert!(r.router_targets(ant, "BILL", None, dest, &stored(r, &copy)).is_empty());
            lying.push((c, copy));
        }
        for kind in K::ALL {
            let mut accepted = 0;
            for (c, pr) in &lying {
                let me = s.cell_id(CELLS[*c]).unwrap();
                let yes = s.accepts(kind, me, &stored(s, pr));
                // The broker-side filter, over the raw properties, agrees.
                let f = s.subscription_filter(kind, me);
                prop_assert_eq!(yes, f.matches(|k| pr.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())));
                accepted += usize::from(yes);
            }
            let expected = match kind {
                K::Rzone if !has_uid => 0,
                _ => 1,
            };
            prop_assert_eq!(accepted, expected, "{} accepted {} times (publish v{}, route v{}, read v{})", kind, accepted, publish + 1, route + 1, read + 1);
        }
    }
}
