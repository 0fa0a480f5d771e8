//! Property tests for SPEC §2: the logical ↔ physical mapping is a bijection
//! on valid names and refuses everything else.
#![allow(clippy::unwrap_used)]

use cellgate_rules::names::{self, parse_physical, physical, Resource};
use cellgate_rules::NameKind;
use proptest::prelude::*;

fn part() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![Just(Resource::Topic), Just(Resource::Group)]
}

fn limit(r: Resource) -> usize {
    match r {
        Resource::Topic => names::MAX_PHYSICAL_TOPIC,
        Resource::Group => names::MAX_PHYSICAL_GROUP,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// unwrap(wrap(x)) == x for every valid x; and wrap refuses exactly the
    /// combinations that are too long or reserved.
    #[test]
    fn wrap_then_unwrap_is_identity(ns in part(), cell in part(), name in part(), res in resource()) {
        let fits = ns.len() + cell.len() + name.len() + 2 <= limit(res);
        match physical(&ns, &cell, &name, res) {
            Ok(p) => {
                prop_assert!(fits && !names::is_reserved(&name));
                prop_assert_eq!(p.len(), ns.len() + cell.len() + name.len() + 2);
                let back = parse_physical(&p, res).unwrap();
                prop_assert_eq!((back.namespace, back.cell, back.name), (ns.as_str(), cell.as_str(), name.as_str()));
                if res == Resource::Group {
                    let retry = names::retry_topic(&p);
                    prop_assert!(retry.len() <= names::MAX_RETRY_TOPIC);
                    let (_, g) = names::parse_retry_or_dlq(&retry).unwrap();
                    prop_assert_eq!(g.name, name.as_str());
                }
            }
            Err(_) => prop_assert!(!fits || names::is_reserved(&name)),
        }
    }

    /// Any part with a character outside [A-Za-z0-9_-], an empty part or one
    /// over 64 characters is refused, wherever it is.
    #[test]
    fn invalid_parts_are_refused(
        good in part(),
        bad in prop_oneof![
            Just(String::new()),
            "[A-Za-z0-9_-]{65,80}",
            "[A-Za-z0-9_-]{0,10}[^A-Za-z0-9_-][A-Za-z0-9_-]{0,10}",
        ],
        slot in 0usize..3,
        res in resource(),
    ) {
        let mut parts = [good.clone(), good.clone(), good];
        parts[slot] = bad.clone();
        prop_assert!(physical(&parts[0], &parts[1], &parts[2], res).is_err());
        let kind = [NameKind::Namespace, NameKind::Cell, NameKind::Topic][slot];
        prop_assert!(names::validate(kind, &bad).is_err());
    }

    /// parse_physical accepts a string only if physical() produces exactly it.
    #[test]
    fn parse_accepts_only_what_wrap_produces(s in "[A-Za-z0-9_|%-]{0,140}", res in resource()) {
        if let Ok(p) = parse_physical(&s, res) {
            prop_assert_eq!(physical(p.namespace, p.cell, p.name, res).unwrap(), s);
        }
    }

    /// Reserved names are refused as topics and groups whatever surrounds them.
    #[test]
    fn reserved_prefixes_are_refused(suffix in "[A-Za-z0-9_-]{0,20}", prefix in prop_oneof![Just("rmq_sys_"), Just("CID_RMQ_SYS_")]) {
        let name = format!("{prefix}{suffix}");
        prop_assert!(physical("NS", "C1", &name, Resource::Topic).is_err());
        prop_assert!(physical("NS", "C1", &name, Resource::Group).is_err());
        // As a namespace it would make every name of the tenant a system
        // name; as a cell it is only a name.
        prop_assert!(physical(&name, "C1", "T", Resource::Topic).is_err());
        prop_assert!(physical("NS", &name, "T", Resource::Topic).is_ok());
    }
}

#[test]
fn system_topics_are_reserved() {
    for t in [
        "TBW102",
        "SCHEDULE_TOPIC_XXXX",
        "RMQ_SYS_TRANS_HALF_TOPIC",
        "RMQ_SYS_TRACE_TOPIC",
    ] {
        assert!(physical("NS", "C1", t, Resource::Topic).is_err(), "{t}");
    }
}
