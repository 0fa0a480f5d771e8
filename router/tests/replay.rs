//! After a crash the router reads again from the journal's `next`, and a
//! copy that exists already is not made twice: at the destination the
//! rules in force name (the journal names the same rules), or, when the
//! plans may have been made under other rules, in any cell — over real
//! stores and a real journal file.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellgate_broker_core::{
    Broker, DeliveryConfig, EmbeddedBroker, Message, PutResult, QueueSelect, Store, StoreConfig,
};
use cellgate_router::journal::Journal;
use cellgate_router::metrics::{RouteLabels, RouterMetrics};
use cellgate_router::{BrokerDirectory, Router};
use cellgate_rules::{CellId, RuleSet, RulesHandle, COPY_FOR};

struct Cells(HashMap<String, Arc<EmbeddedBroker>>);

impl BrokerDirectory for Cells {
    fn broker(&self, rules: &RuleSet, cell: CellId) -> Option<Arc<dyn Broker>> {
        self.0
            .get(rules.cell_name(cell))
            .map(|b| b.clone() as Arc<dyn Broker>)
    }
}

fn copies(m: &RouterMetrics, target: &str) -> u64 {
    m.copies
        .get_or_create(&RouteLabels {
            tenant: "ANT".into(),
            source: "RZ00A".into(),
            target: target.into(),
        })
        .get()
}

/// Every cell of the example topology on a real store, the rules, and a
/// bill for uid 12375 published in RZ00A (copies: RZ03A for R, GZ00A for
/// G, CZSH0 for C).
async fn setup(dir: &Path) -> (Arc<RulesHandle>, Arc<Cells>, Message, PutResult) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rules = Arc::new(RulesHandle::open(&root.join("examples/ldc.yaml")).unwrap());
    let current = rules.current();
    let mut cells = HashMap::new();
    for (_, c) in current.cells() {
        let cfg = StoreConfig {
            log: cellgate_broker_core::LogConfig {
                segment_bytes: 4 << 20,
                ..Default::default()
            },
            ..StoreConfig::default()
        };
        let store = Store::open(&dir.join(&*c.name), cfg).unwrap();
        let b = EmbeddedBroker::new(Arc::new(store), DeliveryConfig::default());
        cells.insert(c.name.to_string(), Arc::new(b));
    }
    let tenant = current.tenant_id("ANT").unwrap();
    let h = current
        .unit_headers(tenant, current.cell_id("RZ00A").unwrap(), Some("12375"))
        .unwrap();
    let mut properties = BTreeMap::new();
    h.write(&current, |k, v| {
        properties.insert(k.to_owned(), v.to_owned());
    });
    let msg = Message {
        topic: "ANT|RZ00A%BILL".into(),
        body: b"bill".to_vec(),
        properties,
        ..Message::default()
    };
    let put = cells["RZ00A"]
        .send(msg.clone(), QueueSelect::Queue(0))
        .await
        .unwrap();
    (rules, Arc::new(Cells(cells)), msg, put)
}

/// A copy of `msg` for `kinds` placed in `cell` "before the crash".
async fn place(cells: &Cells, cell: &str, msg: &Message, put: &PutResult, kinds: &str) {
    let mut copy = msg.clone();
    copy.topic = format!("ANT|{cell}%BILL");
    copy.properties.insert(COPY_FOR.into(), kinds.into());
    cells.0[cell]
        .send_copies(vec![(copy, QueueSelect::Queue(0), put.id)])
        .await
        .unwrap();
}

/// A journal that has not moved past the message, naming `rules`.
fn crashed_journal(dir: &Path, rules: Option<String>) {
    let mut j = Journal::open(&dir.join("router"), "RZ00A").unwrap();
    j.queue_mut("ANT|RZ00A%BILL", 0).next = 0;
    j.progress.rules = rules;
    j.save().unwrap();
}

/// Runs the router until it has replayed the message: the dedupe hit is
/// counted, and the journal (written after the copies) has moved on and
/// names the rules in force (which, after a replay under unknown rules,
/// it does only once caught up).
async fn run_replay(dir: &Path, rules: &Arc<RulesHandle>, cells: &Arc<Cells>) -> RouterMetrics {
    let journal = dir.join("router");
    let sha = Some(rules.current().meta().sha256.clone());
    run_until(dir, rules, cells, |m| {
        m.dedupe_hits.get() == 1
            && Journal::open(&journal, "RZ00A")
                .is_ok_and(|j| j.queue("ANT|RZ00A%BILL", 0).next == 1 && j.progress.rules == sha)
    })
    .await
}

/// Runs a router over `cells` (its journal in `dir/router`) until `done`
/// holds of its metrics, for at most 30 s.
async fn run_until(
    dir: &Path,
    rules: &Arc<RulesHandle>,
    cells: &Arc<Cells>,
    done: impl Fn(&RouterMetrics) -> bool,
) -> RouterMetrics {
    let metrics = RouterMetrics::new(&mut Default::default());
    let router = Arc::new(Router {
        rules: rules.clone(),
        brokers: cells.clone(),
        dir: dir.join("router"),
        metrics: metrics.clone(),
    });
    let h = router.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&metrics) {
        assert!(Instant::now() < deadline, "the router did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.abort();
    let _ = h.await;
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_the_same_rules_skips_the_planned_destination_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, cells, msg, put) = setup(dir.path()).await;
    // Crashed after the copy to RZ03A, before the others.
    place(&cells, "RZ03A", &msg, &put, "R").await;
    crashed_journal(dir.path(), Some(rules.current().meta().sha256.clone()));
    let m = run_replay(dir.path(), &rules, &cells).await;
    assert_eq!(copies(&m, "RZ03A"), 0, "no second copy in RZ03A");
    for cell in ["GZ00A", "CZSH0"] {
        assert_eq!(copies(&m, cell), 1, "{cell}");
        assert!(
            cells.0[cell].get_by_id(&put.id).unwrap().is_some(),
            "{cell}"
        );
    }
    let held = cells.0["RZ03A"].read("ANT|RZ03A%BILL", 0, 0, 10).unwrap();
    assert_eq!(held.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_unknown_rules_skips_a_kind_any_cell_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, cells, msg, put) = setup(dir.path()).await;
    // Placed for R in RZ02A under a takeover since ended; crashed before
    // G and C. The journal does not know which rules planned that.
    place(&cells, "RZ02A", &msg, &put, "R").await;
    crashed_journal(dir.path(), None);
    let m = run_replay(dir.path(), &rules, &cells).await;
    assert_eq!(copies(&m, "RZ03A"), 0, "R is placed already (in RZ02A)");
    assert!(cells.0["RZ03A"].get_by_id(&put.id).unwrap().is_none());
    for cell in ["GZ00A", "CZSH0"] {
        assert_eq!(copies(&m, cell), 1, "{cell}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_copies_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, cells, _, put) = setup(dir.path()).await;
    let metrics = run_until(dir.path(), &rules, &cells, |m| {
        ["RZ03A", "GZ00A", "CZSH0"]
            .iter()
            .all(|c| copies(m, c) >= 1)
    })
    .await;
    assert_eq!(metrics.dedupe_hits.get(), 0);
    for cell in ["RZ03A", "GZ00A", "CZSH0"] {
        let copy = cells.0[cell].get_by_id(&put.id).unwrap().unwrap();
        assert_eq!(copies(&metrics, cell), 1);
        assert_eq!(copy.topic, format!("ANT|{cell}%BILL"));
    }
}

/// A step appends its copies only after the step before finished all of
/// its, and reads at most a batch (256) of a queue: so once a replayed
/// message lacks a copy it was planned to have, nothing a batch past it
/// can have one, and the replay stops asking (dedupe.rs). A copy placed
/// there, which no crash can leave, shows that it was not asked about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stops_looking_a_batch_past_the_first_missing_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, cells, msg, first) = setup(dir.path()).await;
    let mut puts = vec![first];
    for _ in 1..600 {
        let put = cells.0["RZ00A"]
            .send(msg.clone(), QueueSelect::Queue(0))
            .await
            .unwrap();
        puts.push(put);
    }
    // The dead process's last step landed the copies of messages 0-9.
    for put in &puts[..10] {
        for (cell, kinds) in [("RZ03A", "R"), ("GZ00A", "G"), ("CZSH0", "C")] {
            place(&cells, cell, &msg, put, kinds).await;
        }
    }
    place(&cells, "RZ03A", &msg, &puts[500], "R").await;
    let sha = Some(rules.current().meta().sha256.clone());
    crashed_journal(dir.path(), sha.clone());
    let journal = dir.path().join("router");
    let metrics = run_until(dir.path(), &rules, &cells, |_| {
        Journal::open(&journal, "RZ00A").is_ok_and(|j| j.queue("ANT|RZ00A%BILL", 0).next == 600)
    })
    .await;
    assert_eq!(metrics.dedupe_hits.get(), 30, "10 messages in 3 cells");
    for cell in ["RZ03A", "GZ00A", "CZSH0"] {
        assert_eq!(copies(&metrics, cell), 590, "{cell}");
    }
}

/// The dead process promised (its lease file) to send no copy after a
/// time ten minutes before the message was stored: so no copy of it can
/// exist, and the replay looks nothing up, even under unknown rules, where
/// it would otherwise ask every cell. A copy placed anyway, which no crash
/// can leave, shows that it was not asked about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_looks_up_nothing_stored_after_the_lease_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, cells, msg, put) = setup(dir.path()).await;
    place(&cells, "RZ02A", &msg, &put, "R").await;
    crashed_journal(dir.path(), None);
    let lapsed = put.stored_ms - 600_000;
    std::fs::write(
        dir.path().join("router/RZ00A.lease"),
        format!("{{\"until_ms\":{lapsed}}}"),
    )
    .unwrap();
    let m = run_until(dir.path(), &rules, &cells, |m| {
        ["RZ03A", "GZ00A", "CZSH0"]
            .iter()
            .all(|c| copies(m, c) >= 1)
    })
    .await;
    assert_eq!(m.dedupe_hits.get(), 0, "nothing looked up");
    assert_eq!(copies(&m, "RZ03A"), 1);
    assert!(cells.0["RZ03A"].get_by_id(&put.id).unwrap().is_some());
    // The router's own lease now runs ahead.
    let lease = cellgate_router::lease::Lease::open(&dir.path().join("router"), "RZ00A").unwrap();
    assert!(lease.until_ms().unwrap() > put.stored_ms);
}
