//! The per-message decision shared by the `routing` bench and the `alloc`
//! test, so both measure the same thing.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;

use cellgate_rules::names::Resource;
use cellgate_rules::{CellId, RuleSet, SubscriptionKind, Targets, TenantId, UnitHeaders};

pub const NS: &str = "ANT";
pub const TOPIC: &str = "BILL";
pub const GROUP: &str = "BILL_CONSUMER";

/// Numeric uids (digit path) interleaved with non-numeric ones (CRC32 path),
/// so the branch predictor does not learn one path. A power of two in length.
pub const UIDS: [&str; 16] = [
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
pub const ORIGINS: [&str; 4] = ["RZ00A", "RZ01A", "RZ02A", "RZ03A"];

pub struct Fixture {
    pub rules: RuleSet,
    pub ant: TenantId,
    pub origins: [(&'static str, CellId); 4],
}

impl Fixture {
    pub fn load() -> Fixture {
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
    pub fn input(&self, i: usize) -> (&'static str, CellId, &'static str) {
        let (cell_name, cell) = self.origins[(i / 3) % self.origins.len()];
        (cell_name, cell, UIDS[i % UIDS.len()])
    }
}

/// Everything the gateway and the router decide for one message.
pub struct Decision {
    pub topic: String,
    pub group: String,
    pub headers: UnitHeaders,
    pub accepts: [bool; 4],
    pub targets: Targets,
}

/// The four subscription predicates, as seen from `me`.
pub fn predicates(r: &RuleSet, me: CellId, h: &UnitHeaders) -> [bool; 4] {
    SubscriptionKind::ALL.map(|k| r.accepts(k, me, h))
}

/// The full per-message decision (the headline benchmark).
pub fn decide(r: &RuleSet, ant: TenantId, cell: CellId, uid: &str) -> Decision {
    let topic = r.physical_name(ant, cell, TOPIC, Resource::Topic).unwrap();
    let group = r.physical_name(ant, cell, GROUP, Resource::Group).unwrap();
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
