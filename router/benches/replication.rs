//! The router's figures for issue 5, in one run:
//!
//! 1. the broker's own append throughput: `put_batch` of 32 × 1 KiB
//!    messages (unit headers stamped as the gateway does) into the source
//!    cell's embedded store, `async` flush;
//! 2. replication throughput: the router copying those messages (each to
//!    RZ03A, GZ00A and CZSH0: uid 12375 in RZ00A) — copies/s, as a ratio of
//!    (1) (goal ≥ 0.8);
//! 3. replication lag at half the rate of (2): a paced producer, then, for
//!    every copy, its store time in the target minus the original's store
//!    time (ms resolution) — p50 and p99 (goal: p99 < 20 ms). The router
//!    and seven fresh stores start with the producer, so the first second
//!    (the warm-up: topics and segments created, caches and the key
//!    indexes' tables growing from empty) is reported on its own line, and
//!    the goal is judged on the copies of the messages published after it.
//!
//! Run: `cargo bench -p cellgate-router --bench replication`; `BENCH_SCALE`
//! scales the message counts, `BENCH_LAG_RATE` pins the lag case's rate
//! (msgs/s) instead of half the measured one. Without `--bench` (`cargo test --benches`)
//! it runs a tiny smoke pass. Prints markdown.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellgate_broker_core::{
    Broker, DeliveryConfig, EmbeddedBroker, FlushPolicy, LogConfig, Message, QueueSelect, Store,
    StoreConfig,
};
use cellgate_router::metrics::RouterMetrics;
use cellgate_router::{BrokerDirectory, Router};
use cellgate_rules::{CellId, RuleSet, RulesHandle};

/// The allocator the `cellgate` binary ships with: the router runs inside
/// it (`serve`, `router`), so both the baseline and the replication are
/// measured with it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "ANT|RZ00A%BILL";
const BODY: usize = 1024;
const BATCH: usize = 32;

struct Cells(HashMap<String, Arc<EmbeddedBroker>>);

impl BrokerDirectory for Cells {
    fn broker(&self, rules: &RuleSet, cell: CellId) -> Option<Arc<dyn Broker>> {
        self.0
            .get(rules.cell_name(cell))
            .map(|b| b.clone() as Arc<dyn Broker>)
    }
}

fn open_cells(rules: &RuleSet, dir: &Path) -> Cells {
    let mut map = HashMap::new();
    for (_, c) in rules.cells() {
        let cfg = StoreConfig {
            log: LogConfig {
                segment_bytes: 256 << 20,
                flush: FlushPolicy::Async {
                    interval: Duration::from_millis(10),
                },
                preallocate: true,
            },
            default_queues: 8,
            ..StoreConfig::default()
        };
        let store = Store::open(&dir.join(&*c.name), cfg).unwrap();
        map.insert(
            c.name.to_string(),
            Arc::new(EmbeddedBroker::new(
                Arc::new(store),
                DeliveryConfig::default(),
            )),
        );
    }
    Cells(map)
}

/// `n` messages as the gateway would store them for uid 12375 in RZ00A.
fn messages(rules: &RuleSet, n: usize) -> Vec<(Message, QueueSelect)> {
    let tenant = rules.tenant_id("ANT").unwrap();
    let cell = rules.cell_id("RZ00A").unwrap();
    let h = rules.unit_headers(tenant, cell, Some("12375")).unwrap();
    let mut props = BTreeMap::new();
    h.write(rules, |k, v| {
        props.insert(k.to_owned(), v.to_owned());
    });
    (0..n)
        .map(|i| {
            let m = Message {
                topic: TOPIC.to_owned(),
                body: vec![b'x'; BODY],
                tag: Some("TagA".into()),
                keys: vec![format!("order-{i}")],
                properties: props.clone(),
                born_ms: 0,
            };
            (m, QueueSelect::RoundRobin)
        })
        .collect()
}

fn copies(m: &RouterMetrics) -> u64 {
    ["RZ03A", "GZ00A", "CZSH0"]
        .iter()
        .map(|t| {
            m.copies
                .get_or_create(&cellgate_router::metrics::RouteLabels {
                    tenant: "ANT".into(),
                    source: "RZ00A".into(),
                    target: (*t).into(),
                })
                .get()
        })
        .sum()
}

fn router(rules: &Arc<RulesHandle>, cells: Cells, dir: &Path) -> (Arc<Router>, RouterMetrics) {
    let metrics = RouterMetrics::new(&mut prometheus_client::registry::Registry::default());
    let r = Arc::new(Router {
        rules: rules.clone(),
        brokers: Arc::new(cells),
        dir: dir.join("router"),
        metrics: metrics.clone(),
    });
    (r, metrics)
}

async fn wait_copies(m: &RouterMetrics, want: u64) {
    while copies(m) < want {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = if full {
        ((200_000.0 * scale) as usize).max(BATCH)
    } else {
        2_000
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rules = Arc::new(RulesHandle::open(&root.join("examples/ldc.yaml")).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();

    // 1 + 2: append, then replicate the same messages.
    let (append_rate, copy_rate) = rt.block_on(async {
        let current = rules.current();
        let cells = open_cells(&current, &tmp.path().join("a"));
        let src = cells.0["RZ00A"].clone();
        let msgs = messages(&current, n);
        let t = Instant::now();
        let mut it = msgs.into_iter().peekable();
        while it.peek().is_some() {
            let batch: Vec<_> = it.by_ref().take(BATCH).collect();
            src.send_batch(batch).await.unwrap();
        }
        let append_rate = n as f64 / t.elapsed().as_secs_f64();
        let (r, m) = router(&rules, cells, &tmp.path().join("a"));
        let t = Instant::now();
        let h = r.spawn();
        wait_copies(&m, 3 * n as u64).await;
        let copy_rate = 3.0 * n as f64 / t.elapsed().as_secs_f64();
        h.abort();
        (append_rate, copy_rate)
    });

    // 3: lag at half the replication rate.
    // `BENCH_LAG_RATE` (msgs/s) pins the rate instead, for comparing two
    // builds at the same load: the measured rate moves by ±20% between
    // runs, and the lag with it.
    let msgs_per_s = std::env::var("BENCH_LAG_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(copy_rate / 2.0 / 3.0);
    let lag_n = if full {
        ((msgs_per_s * 3.0 * scale) as usize).max(1000)
    } else {
        500
    };
    // One second at the same rate before the measured messages.
    let warm_n = if full { msgs_per_s as usize } else { 100 };
    let lags = rt.block_on(async {
        let current = rules.current();
        let cells = open_cells(&current, &tmp.path().join("b"));
        let brokers: HashMap<String, Arc<EmbeddedBroker>> = cells.0.clone();
        let (r, m) = router(&rules, cells, &tmp.path().join("b"));
        // Built before the router starts and the clock ticks: building
        // them takes a few hundred ms, and an interval created before that
        // would fire every missed tick at once (its default), a burst of
        // tens of thousands of messages that the lag would then measure.
        let mut it = messages(&current, warm_n + lag_n).into_iter().peekable();
        let h = r.spawn();
        let src = brokers["RZ00A"].clone();
        let mut origin = HashMap::new();
        let per_tick = 8usize;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(per_tick as f64 / msgs_per_s));
        let mut sent = 0;
        while it.peek().is_some() {
            tick.tick().await;
            let batch: Vec<_> = it.by_ref().take(per_tick).collect();
            for r in src.send_batch(batch).await.unwrap() {
                origin.insert(r.id, (r.stored_ms, sent >= warm_n));
                sent += 1;
            }
        }
        wait_copies(&m, 3 * (warm_n + lag_n) as u64).await;
        h.abort();
        let (mut lags, mut warm) = (Vec::new(), Vec::new());
        for cell in ["RZ03A", "GZ00A", "CZSH0"] {
            let b = &brokers[cell];
            let topic = format!("ANT|{cell}%BILL");
            for q in 0..8 {
                for c in b.read(&topic, q, 0, usize::MAX).unwrap_or_default() {
                    let (stored, measured) = origin[&c.id];
                    let lag = c.stored_ms - stored;
                    if measured {
                        lags.push(lag)
                    } else {
                        warm.push(lag)
                    }
                }
            }
        }
        lags.sort_unstable();
        warm.sort_unstable();
        (lags, warm)
    });
    let (lags, warm) = lags;

    println!("| case | messages | rate | ratio |");
    println!("| --- | --- | --- | --- |");
    println!("| broker append, `put_batch` of {BATCH} × 1 KiB, async | {n} | {:.0} msgs/s | 1.00 (baseline) |", append_rate);
    println!(
        "| replication, 3 copies per message | {} copies | {:.0} copies/s | **{:.2}×** (goal ≥ 0.80) |",
        3 * n,
        copy_rate,
        copy_rate / append_rate
    );
    println!();
    println!(
        "Lag at half the replication rate ({:.0} msgs/s, {:.0} copies/s), the {} copies of the messages published after the warm-up: p50 {} ms, p99 {} ms, max {} ms (goal: p99 < 20 ms)",
        msgs_per_s,
        msgs_per_s * 3.0,
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    );
    println!();
    println!(
        "Warm-up before it (the first {warm_n} messages, same rate; router and stores just started), {} copies: p50 {} ms, p99 {} ms, max {} ms (not judged)",
        warm.len(),
        percentile(&warm, 0.5),
        percentile(&warm, 0.99),
        warm.last().copied().unwrap_or(0)
    );
}
