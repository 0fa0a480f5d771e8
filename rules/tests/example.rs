//! The reference topology (examples/ldc.yaml) and SPEC §4's worked example.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use cellgate_rules::names::{self, Resource};
use cellgate_rules::{
    RuleSet, Sources, SubscriptionKind as K, TargetMask, ZoneType, ORIUNIT, RULES_SHA256,
    RULES_VERSION, TARGET_C, TARGET_G, TARGET_R,
};

/// (destination, COPY_FOR) of each copy the router makes of `h` read in `origin`.
fn copies<'a>(
    r: &'a RuleSet,
    t: cellgate_rules::TenantId,
    origin: cellgate_rules::CellId,
    h: &cellgate_rules::UnitHeaders,
) -> Vec<(&'a str, &'static str)> {
    r.router_targets(t, "BILL", None, origin, h)
        .iter()
        .map(|(c, kinds)| (r.cell_name(c), kinds.as_str()))
        .collect()
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/ldc.yaml")
}

fn example() -> RuleSet {
    cellgate_rules::load(&example_path()).unwrap()
}

/// The example with `extra` YAML appended (e.g. a takeover section).
fn example_with(replace: &str, with: &str) -> RuleSet {
    let text = std::fs::read_to_string(example_path()).unwrap();
    assert!(text.contains(replace), "example lacks {replace:?}");
    let text = text.replace(replace, with);
    Sources::from_text("ldc.yaml", &text).compile(2).unwrap()
}

#[test]
fn reference_topology_is_as_documented() {
    let r = example();
    let zone = |n: &str| r.cell(r.cell_id(n).unwrap()).zone;
    for n in ["RZ00A", "RZ01A", "RZ02A", "RZ03A"] {
        assert_eq!(zone(n), ZoneType::R, "{n}");
    }
    assert_eq!(zone("GZ00A"), ZoneType::G);
    assert_eq!(zone("CZSH0"), ZoneType::C);
    assert_eq!(zone("CZHZ0"), ZoneType::C);
    assert_eq!(r.cell_name(r.gzone()), "GZ00A");
    let owner = |s: u8| r.cell_name(r.shard_owner(cellgate_rules::Shard::new(s).unwrap()));
    assert_eq!((owner(0), owner(24)), ("RZ00A", "RZ00A"));
    assert_eq!((owner(25), owner(49)), ("RZ01A", "RZ01A"));
    assert_eq!((owner(50), owner(74)), ("RZ02A", "RZ02A"));
    assert_eq!((owner(75), owner(99)), ("RZ03A", "RZ03A"));
    let cz = |n: &str| r.cell_name(r.czone_of(r.cell_id(n).unwrap())).to_owned();
    assert_eq!(cz("RZ00A"), "CZSH0");
    assert_eq!(cz("RZ03A"), "CZHZ0");
    assert_eq!(cz("GZ00A"), "CZSH0");
    // Tokens: the clear demo tokens authenticate, anything else does not.
    let ant = r.authenticate("ant-demo-token").unwrap();
    assert_eq!(ant.tenant, r.tenant_id("ANT"));
    assert!(ant.permissions.publish && ant.permissions.subscribe && !ant.permissions.admin);
    let beta = r.authenticate("beta-demo-token").unwrap();
    assert_eq!(beta.tenant, r.tenant_id("BETA"));
    let admin = r.authenticate("admin-demo-token").unwrap();
    assert_eq!(admin.tenant, None);
    assert!(admin.permissions.admin);
    assert!(r.authenticate("ant-demo-token ").is_none());
    assert_eq!(r.version(), 1);
}

#[test]
fn worked_example_headers_predicates_and_copies() {
    let r = example();
    let ant = r.tenant_id("ANT").unwrap();
    let rz00 = r.cell_id("RZ00A").unwrap();
    // uid 12375 -> shard 75 -> RZ03A.
    let h = r.unit_headers(ant, rz00, Some("12375")).unwrap();
    let mut props = Vec::new();
    h.write(&r, |k, v| props.push((k, v.to_owned())));
    assert_eq!(
        props,
        vec![
            (ORIUNIT, "RZ00A".to_owned()),
            (TARGET_G, "GZ00A".to_owned()),
            (TARGET_C, "CZSH0".to_owned()),
            (TARGET_R, "RZ03A".to_owned()),
            (RULES_VERSION, "1".to_owned()),
            (RULES_SHA256, r.meta().sha256[..16].to_owned()),
        ]
    );
    // Reading the stored properties back gives the same headers.
    let back = r
        .read_unit_headers(|k| props.iter().find(|(p, _)| *p == k).map(|(_, v)| v.as_str()))
        .unwrap();
    assert_eq!(back, h);

    let id = |n: &str| r.cell_id(n).unwrap();
    let targets = copies(&r, ant, id("RZ00A"), &h);
    assert_eq!(targets, [("RZ03A", "R"), ("GZ00A", "G"), ("CZSH0", "C")]);
    // A copy is never copied again, wherever it is read.
    for (c, kinds) in r.router_targets(ant, "BILL", None, rz00, &h).iter() {
        assert!(r
            .router_targets(ant, "BILL", None, c, &h.as_copy(kinds))
            .is_empty());
    }
    assert!(r
        .router_targets(ant, "BILL", None, id("RZ03A"), &h)
        .is_empty());

    // SPEC §4 / issue 5 table: where the message lies (original in RZ00A, a
    // copy in each destination), which subscribers receive it.
    let placed = r.router_targets(ant, "BILL", None, rz00, &h);
    let in_cell = |c: &str| match placed.iter().find(|(d, _)| *d == id(c)) {
        Some((_, kinds)) => Some(h.as_copy(kinds)),
        None if c == "RZ00A" => Some(h),
        None => None,
    };
    let receives = |c: &str, k: K| in_cell(c).is_some_and(|hh| r.accepts(k, id(c), &hh));
    assert!(receives("RZ03A", K::Rzone));
    assert!(receives("GZ00A", K::Gzone));
    assert!(receives("CZSH0", K::Czone));
    assert!(receives("RZ00A", K::Local));
    assert!(!receives("CZHZ0", K::Czone));
    assert!(!receives("RZ00A", K::Rzone));
    assert!(!receives("RZ03A", K::Local));
    // Each kind is accepted in exactly one cell.
    for k in K::ALL {
        let n = r.cells().filter(|(_, c)| receives(&c.name, k)).count();
        assert_eq!(n, 1, "{k}");
    }

    // Physical names: from the rule set (trusted prefix) and from strings.
    for name in ["BILL", "G_1", "x-y"] {
        assert_eq!(
            r.physical_name(ant, id("RZ03A"), name, Resource::Topic)
                .unwrap(),
            names::physical("ANT", "RZ03A", name, Resource::Topic).unwrap()
        );
    }
    assert!(r
        .physical_name(ant, id("RZ03A"), "a|b", Resource::Topic)
        .is_err());
    assert!(r
        .physical_name(ant, id("RZ03A"), "TBW102", Resource::Topic)
        .is_err());
    assert_eq!(
        names::physical("ANT", "RZ03A", "BILL", Resource::Topic).unwrap(),
        "ANT|RZ03A%BILL"
    );
}

#[test]
fn no_uid_means_no_rzone_target() {
    let r = example();
    let ant = r.tenant_id("ANT").unwrap();
    let hz = r.cell_id("RZ02A").unwrap();
    let h = r.unit_headers(ant, hz, None).unwrap();
    assert_eq!(h.target_r, None);
    assert_eq!(r.cell_name(h.target_c), "CZHZ0");
    let t: Vec<_> = r
        .router_targets(ant, "T1", None, hz, &h)
        .iter()
        .map(|(c, _)| r.cell_name(c).to_owned())
        .collect();
    assert_eq!(t, vec!["GZ00A", "CZHZ0"]);
    for c in ["RZ00A", "RZ01A", "RZ02A", "RZ03A"] {
        assert!(!r.accepts(K::Rzone, r.cell_id(c).unwrap(), &h));
    }
}

#[test]
fn takeover_is_resolved_at_publish_and_at_copy_and_then_fixed() {
    let before = example();
    let during = example_with("takeover: []", "takeover:\n  - { cell: RZ03A, by: RZ02A }");
    let after = example_with("takeover: []", "takeover: [] # switched back");
    let id = |n: &str| before.cell_id(n).unwrap();
    let ant = before.tenant_id("ANT").unwrap();

    // Published during the takeover: the header names the serving cell.
    let h = during
        .unit_headers(ant, id("RZ00A"), Some("12375"))
        .unwrap();
    assert_eq!(during.cell_name(h.target_r.unwrap()), "RZ02A");
    assert_eq!(
        copies(&during, ant, id("RZ00A"), &h),
        [("RZ02A", "R"), ("GZ00A", "G"), ("CZSH0", "C")]
    );

    // Published before, routed during: follows its header, redirected, and
    // the copy says what it is for.
    let old = before
        .unit_headers(ant, id("RZ00A"), Some("12375"))
        .unwrap();
    assert_eq!(before.cell_name(old.target_r.unwrap()), "RZ03A");
    let c = copies(&during, ant, id("RZ00A"), &old);
    assert_eq!(c[0], ("RZ02A", "R"));
    let copy = old.as_copy(TargetMask::parse("R").unwrap());
    // RZ02A's rzone subscribers take it (TARGET_R = RZ03A, a cell RZ02A took
    // over) under every version, so switching back strands nothing.
    for rules in [&before, &during, &after] {
        assert!(rules.accepts(K::Rzone, id("RZ02A"), &copy));
        assert!(!rules.accepts(K::Local, id("RZ02A"), &copy));
        assert!(!rules.accepts(K::Gzone, id("RZ02A"), &copy));
    }

    // An original is judged by its own headers, never by the rules in force:
    // published in RZ02A for shard 99 during the takeover, it is consumed in
    // place and not copied for R, before and after the switch back.
    let local = during.unit_headers(ant, id("RZ02A"), Some("99")).unwrap();
    assert_eq!(
        copies(&during, ant, id("RZ02A"), &local),
        [("GZ00A", "G"), ("CZHZ0", "C")]
    );
    for rules in [&during, &after] {
        assert!(rules.accepts(K::Rzone, id("RZ02A"), &local));
        assert!(!rules.accepts(K::Rzone, id("RZ03A"), &local));
    }

    // Published in RZ02A before the takeover for shard 99 (RZ03A's), routed
    // during it: RZ02A now serves RZ03A, so the router places a copy in
    // RZ02A itself; the original there is not accepted for R, the copy is.
    let pre = before.unit_headers(ant, id("RZ02A"), Some("99")).unwrap();
    assert_eq!(copies(&during, ant, id("RZ02A"), &pre)[0], ("RZ02A", "R"));
    assert!(!during.accepts(K::Rzone, id("RZ02A"), &pre));
    let self_copy = pre.as_copy(TargetMask::parse("R").unwrap());
    assert!(during.accepts(K::Rzone, id("RZ02A"), &self_copy));
    assert!(
        !during.accepts(K::Local, id("RZ02A"), &self_copy),
        "local must not see it twice"
    );

    // The broker-side filter agrees with the predicate.
    let f = during.subscription_filter(K::Rzone, id("RZ02A"));
    let mut props = Vec::new();
    copy.write(&during, |k, v| props.push((k, v.to_owned())));
    assert!(f.matches(|k| props.iter().find(|(p, _)| *p == k).map(|(_, v)| v.as_str())));
    assert!(!f.matches(|_| None));
}

#[test]
fn routes_first_match_wins_and_tags_filter() {
    let r = example_with(
        "      - topic: \".*\"\n        targets: [R, G, C]\n    load_test_groups",
        "      - topic: \"LOCAL_.*\"\n        targets: []\n      - topic: \"ORDER\"\n        tags: \"Paid|Refund\"\n        targets: [G]\n      - topic: \".*\"\n        targets: [R, G, C]\n    load_test_groups",
    );
    let ant = r.tenant_id("ANT").unwrap();
    let o = r.cell_id("RZ00A").unwrap();
    let h = r.unit_headers(ant, o, Some("30")).unwrap();
    let kinds = |topic: &str, tag: Option<&str>| -> Vec<&str> {
        r.router_targets(ant, topic, tag, o, &h)
            .iter()
            .map(|(_, k)| k.as_str())
            .collect()
    };
    assert_eq!(kinds("LOCAL_X", None), Vec::<&str>::new());
    assert_eq!(kinds("ORDER", Some("Paid")), ["G"]);
    assert_eq!(kinds("ORDER", Some("Created")), ["R", "G", "C"]);
    // Whole-name match: "XLOCAL_X" is not "LOCAL_.*".
    assert_eq!(kinds("XLOCAL_X", None).len(), 3);
}

#[test]
fn token_patterns_narrow_the_tenant_patterns() {
    let r = example_with(
        "        permissions: [publish, subscribe]\n    cells: [\"*\"]\n    topics: [\".*\"]",
        "        permissions: [publish, subscribe]\n        topics: [\"ORDER_.*\"]\n        groups: [\"G_ORDER\"]\n    cells: [\"*\"]\n    topics: [\"ORDER_.*\", \"BILL\"]",
    );
    let ant = r.tenant(r.tenant_id("ANT").unwrap());
    let g = r.authenticate("ant-demo-token").unwrap();
    assert!(g.allows_topic(ant, "ORDER_1"));
    assert!(
        !g.allows_topic(ant, "BILL"),
        "tenant allows BILL, the token does not"
    );
    assert!(!g.allows_topic(ant, "X"));
    assert!(g.allows_group(ant, "G_ORDER") && !g.allows_group(ant, "G_OTHER"));
    // The platform admin is bound by the tenant's patterns only.
    let admin = r.authenticate("admin-demo-token").unwrap();
    assert!(admin.allows_topic(ant, "BILL") && !admin.allows_topic(ant, "X"));
    // Load-test allow-list: PT_.* in the example, nothing for BETA.
    assert!(ant.load_test_allowed("PT_G1") && !ant.load_test_allowed("G1"));
    let beta = r.tenant(r.tenant_id("BETA").unwrap());
    assert!(!beta.load_test_allowed("PT_G1"));
}

#[test]
fn diff_names_token_pattern_changes_and_rotations() {
    let old = example();
    let narrowed = example_with(
        "        permissions: [publish, subscribe]\n    cells: [\"*\"]\n    topics",
        "        permissions: [publish, subscribe]\n        topics: [\"ORDER_.*\"]\n    cells: [\"*\"]\n    topics",
    );
    let d = cellgate_rules::RulesDiff::between(&old, &narrowed);
    assert_eq!(
        d.changes(),
        [
            r#"tenant ANT: tokens {"b54f4f77": "ant-demo ps-"} -> {"b54f4f77": "ant-demo ps- topics=[\"ORDER_.*\"]"}"#
        ]
    );
    let rotated = example_with(
        "b54f4f77bcc1a65d4530ec718c0deb6afe7bea90ba6aa18fd19b5e970eb6fcb9",
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let d = cellgate_rules::RulesDiff::between(&old, &rotated);
    assert_eq!(
        d.changes(),
        [r#"tenant ANT: tokens {"b54f4f77": "ant-demo ps-"} -> {"00000000": "ant-demo ps-"}"#]
    );
    let quota = example_with("publish_rate: 5000", "publish_rate: 10");
    assert_eq!(
        cellgate_rules::RulesDiff::between(&old, &quota).changes(),
        ["tenant ANT: quotas publish_rate 5000 burst unlimited max_message_bytes 4194304 -> publish_rate 10 burst unlimited max_message_bytes 4194304"]
    );
}

#[test]
fn subscription_kinds_parse() {
    assert_eq!("rzone".parse::<K>(), Ok(K::Rzone));
    assert_eq!("local".parse::<K>(), Ok(K::Local));
    assert_eq!(
        "RZONE".parse::<K>(),
        Err(cellgate_rules::InputError::Unknown)
    );
    assert_eq!(
        cellgate_rules::InputError::Unknown.to_string(),
        "is not one of the accepted values"
    );
}

#[test]
fn a_topic_must_fit_in_every_cell_it_may_be_copied_to() {
    let long = "R".repeat(64);
    let r = example_with(
        "  - { name: CZHZ0, zone: C, city: HZ, broker: embedded }",
        &format!("  - {{ name: CZHZ0, zone: C, city: HZ, broker: embedded }}\n  - {{ name: {long}, zone: R, city: HZ }}"),
    );
    let ant = r.tenant_id("ANT").unwrap();
    let rz00 = r.cell_id("RZ00A").unwrap();
    let topic = "T".repeat(60);
    // Fits in RZ00A (3 + 5 + 60 + 2 = 70) but not in the 64-character cell.
    let e = r
        .physical_name(ant, rz00, &topic, Resource::Topic)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "topic name is too long: copied to a cell with a 64-character name it would be 129 characters, over the limit of 127"
    );
    assert!(r
        .physical_name(ant, rz00, &"T".repeat(58), Resource::Topic)
        .is_ok());
    // Groups are not copied: only their own cell counts.
    assert!(r.physical_name(ant, rz00, &topic, Resource::Group).is_ok());
}

#[test]
fn target_masks_combine_and_subtract() {
    let m = |s: &str| TargetMask::parse(s).unwrap();
    assert_eq!(m("R").union(m("G,C")), m("R,G,C"));
    assert_eq!(m("R,G").minus(m("R")), m("G"));
    assert!(m("R").minus(m("R,C")).is_empty());
    assert!(!m("C").is_empty());
}
