//! Issue 6's figures, in one run, on the embedded broker (`async` flush,
//! 10 ms; 1 KiB bodies):
//!
//! 1. scheduled delivery: 100k messages scheduled over a 10 s window that
//!    starts once all of them are pending; for each, its lateness — the
//!    store time in its destination topic minus its due time, and the time
//!    a long-polling consumer received it minus its due time — p50, p99
//!    and max;
//! 2. transactional publish + commit throughput against normal publish,
//!    64 concurrent producers, alternated (normal, transactional, normal,
//!    …; two rounds, `BENCH_ROUNDS` more) so each ratio compares
//!    neighbours; the median ratio last.
//!
//! Run: `cargo bench -p cellgate-broker-core --bench message_types`;
//! `BENCH_SCALE` scales the counts; `BENCH_ONLY=txn` runs part 2 alone.
//! Without `--bench` it runs a smoke pass.
//! Prints markdown.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{
    Broker, Decision, DeliveryConfig, EmbeddedBroker, Message, QueueSelect, ReceiveOptions, Store,
    StoreConfig,
};
use hdrhistogram::Histogram;

const BODY: usize = 1024;
const PRODUCERS: usize = 64;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn scale() -> f64 {
    let full = std::env::args().any(|a| a == "--bench");
    let s: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    if full {
        s
    } else {
        0.01
    }
}

fn broker(dir: &std::path::Path) -> Arc<EmbeddedBroker> {
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
    let store = Store::open(dir, cfg).unwrap();
    let b = Arc::new(EmbeddedBroker::new(
        Arc::new(store),
        DeliveryConfig::default(),
    ));
    drop(b.start(Duration::from_millis(500)));
    b
}

fn msg(topic: &str) -> Message {
    Message {
        topic: topic.to_owned(),
        body: vec![b'x'; BODY],
        tag: Some("TagA".into()),
        keys: vec!["k".into()],
        born_ms: now_ms(),
        ..Message::default()
    }
}

fn pct(h: &Histogram<u64>) -> String {
    format!(
        "{} / {} / {} ms",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    )
}

async fn lateness(b: Arc<EmbeddedBroker>, n: usize) {
    let window = 10_000i64;
    // Due times start after every message is pending (scheduling 100k
    // takes a second or two here).
    let base = now_ms() + 4_000;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(PRODUCERS)) {
        let (b, chunk) = (b.clone(), chunk.to_vec());
        tokio::spawn(async move {
            for i in chunk {
                let due = base + (i as i64 * window) / n as i64;
                b.schedule(msg("DELAYED"), QueueSelect::RoundRobin, due)
                    .await
                    .unwrap();
            }
        });
    }
    while b.scheduled_pending() < n && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending = b.scheduled_pending();
    let took = started.elapsed();
    assert!(now_ms() < base, "scheduling took longer than the lead time");
    let (mut stored, mut received) = (
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    );
    let mut got = 0;
    let opts = ReceiveOptions {
        max_messages: 256,
        wait: Duration::from_secs(1),
        invisible: Duration::from_secs(600),
        ..ReceiveOptions::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(window as u64);
    while got < n && Instant::now() < deadline {
        let ds = b.receive("G", "DELAYED", opts.clone()).await.unwrap();
        let at = now_ms();
        for d in ds {
            let due: i64 = d.message.properties["__DELIVER_AT_MS"].parse().unwrap();
            stored
                .record((d.message.stored_ms - due).max(0) as u64)
                .unwrap();
            received.record((at - due).max(0) as u64).unwrap();
            got += 1;
        }
    }
    println!("### Scheduled delivery\n");
    println!(
        "{n} messages scheduled in {:.2} s ({pending} pending at once), due over {} s.\n",
        took.as_secs_f64(),
        window / 1000
    );
    println!("| measure | delivered | p50 / p99 / max lateness |");
    println!("| --- | --- | --- |");
    println!(
        "| store time in the topic − due time | {got} | {} |",
        pct(&stored)
    );
    println!(
        "| consumer receive time − due time | {got} | {} |\n",
        pct(&received)
    );
}

async fn throughput(b: Arc<EmbeddedBroker>, n: usize, txn: bool, topic: &'static str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PRODUCERS {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / PRODUCERS {
                if txn {
                    let r = b
                        .send_transactional(msg(topic), QueueSelect::RoundRobin, "PG")
                        .await
                        .unwrap();
                    b.end_transaction(&r.id, Decision::Commit).await.unwrap();
                } else {
                    b.send(msg(topic), QueueSelect::RoundRobin).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (n / PRODUCERS * PRODUCERS) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let s = scale();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        // `BENCH_ONLY=txn` skips part 1 (for profiling part 2 alone).
        if std::env::var("BENCH_ONLY").as_deref() != Ok("txn") {
            let b = broker(&dir.path().join("delay"));
            lateness(b, ((100_000.0 * s) as usize).max(100)).await;
        }
        let b = broker(&dir.path().join("txn"));
        let n = ((100_000.0 * s) as usize).max(PRODUCERS);
        println!("### Transactional publish + commit vs normal publish\n");
        println!("| round | normal publish | transactional publish + commit | ratio |");
        println!("| --- | --- | --- | --- |");
        // Alternated, so that a busy spell of a shared machine hits both
        // kinds; more rounds (`BENCH_ROUNDS`) make the median steadier.
        let rounds: usize = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let mut ratios = Vec::new();
        for round in 1..=rounds.max(1) {
            let normal = throughput(b.clone(), n, false, "PLAIN").await;
            let txn = throughput(b.clone(), n, true, "TXN").await;
            ratios.push(txn / normal);
            println!(
                "| {round} | {normal:.0} msgs/s | {txn:.0} txns/s | {:.2}× |",
                txn / normal
            );
        }
        ratios.sort_by(f64::total_cmp);
        println!("\nmedian ratio: {:.2}×", ratios[ratios.len() / 2]);
    });
}
