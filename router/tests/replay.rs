//! A batch journaled before a crash is replayed to the recorded cells, and
//! a destination that already holds the copy gets no second one — over
//! real stores and a real journal file.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellgate_broker_core::{
    Broker, DeliveryConfig, EmbeddedBroker, Message, QueueSelect, Store, StoreConfig,
};
use cellgate_router::journal::{Journal, Pending, QueueProgress};
use cellgate_router::metrics::{RouteLabels, RouterMetrics};
use cellgate_router::{BrokerDirectory, Router};
use cellgate_rules::{CellId, RuleSet, RulesHandle};

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

async fn run_until(router: Arc<Router>, done: impl Fn() -> bool) {
    let h = router.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "the router did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.abort();
    let _ = h.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_is_deduplicated_at_the_destination() {
    let dir = tempfile::tempdir().unwrap();
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
        let store = Store::open(&dir.path().join(&*c.name), cfg).unwrap();
        let b = EmbeddedBroker::new(Arc::new(store), DeliveryConfig::default());
        cells.insert(c.name.to_string(), Arc::new(b));
    }
    // A bill for uid 12375 published in RZ00A: copies to RZ03A, GZ00A, CZSH0.
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
        .send(msg, QueueSelect::Queue(0))
        .await
        .unwrap();
    let dirs = Arc::new(Cells(cells.clone()));
    let router = |metrics: &RouterMetrics| {
        Arc::new(Router {
            rules: rules.clone(),
            brokers: dirs.clone(),
            dir: dir.path().join("router"),
            metrics: metrics.clone(),
        })
    };
    let m1 = RouterMetrics::new(&mut Default::default());
    run_until(router(&m1), || {
        ["RZ03A", "GZ00A", "CZSH0"]
            .iter()
            .all(|t| copies(&m1, t) == 1)
    })
    .await;
    // Back to "journaled, then crashed before moving on": the placement is
    // pending again, recorded to RZ03A only.
    let mut j = Journal::open(&dir.path().join("router"), "RZ00A").unwrap();
    let mut pending = Pending::new(put.id);
    let shape = pending.shape(vec![("RZ03A".into(), "R".into())]);
    pending.push(1, Some(shape));
    j.set(
        "ANT|RZ00A%BILL",
        0,
        QueueProgress {
            next: put.queue_offset,
            pending: Some(pending),
        },
    );
    j.save().unwrap();
    let m2 = RouterMetrics::new(&mut Default::default());
    // Done once the dedupe hit is counted *and* the journal has moved on
    // (the save follows the copies, so the metric alone races it).
    let journal_dir = dir.path().join("router");
    run_until(router(&m2), || {
        m2.dedupe_hits.get() == 1
            && Journal::open(&journal_dir, "RZ00A")
                .is_ok_and(|j| j.queue("ANT|RZ00A%BILL", 0).next == put.queue_offset + 1)
    })
    .await;
    for cell in ["RZ03A", "GZ00A", "CZSH0"] {
        let held = cells[cell].get_by_id(&put.id).unwrap();
        assert!(held.is_some(), "{cell} holds the copy");
        assert_eq!(copies(&m2, cell), 0, "{cell}: no second copy");
    }
    assert_eq!(m2.dedupe_hits.get(), 1, "one dedupe hit, for RZ03A");
}
