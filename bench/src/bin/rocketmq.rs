//! `cellgate-bench-rocketmq`: issue 8's benchmark. In the same run, against
//! one RocketMQ cluster (Apache RocketMQ's Rust port, started here on
//! loopback ports), it publishes
//!
//! - **direct**: rocketmq-client-rust's `DefaultMQProducer`, synchronous
//!   sends from `c` concurrent tasks sharing one producer, as an app would;
//! - **gateway**: `POST /v1/topics/BENCH/messages` from `c` concurrent
//!   HTTP/1.1 keep-alive connections to a release `cellgate serve` whose
//!   cell RZ00A is on that cluster (router off: the publish path only);
//!
//! with the same body size, to the same physical topic, alternating which
//! side goes first per repetition. It prints a Markdown table: throughput
//! of each, the gateway's as a ratio of the direct one, and p50/p99
//! latency with the p99 the gateway adds (goals: ≥ 90 %, ≤ 1 ms).
//!
//! Build once, then run (the RocketMQ binaries on PATH or in
//! `~/.cargo/bin`, as for the tests):
//! `cargo build --release -p cellgate -p cellgate-bench && target/release/cellgate-bench-rocketmq`

#![forbid(unsafe_code)]
// rocketmq-client-rust's futures nest deeply.
#![recursion_limit = "256"]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use rocketmq_client_rust::{
    ClientConfig, ClientRuntime, ClientRuntimeConfig, DefaultMQProducer, TelemetryHandle,
};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

use cellgate_tests::rocketmq::Cluster;
use cellgate_tests::server::ANT;
use cellgate_tests::{edited_example, Server};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Issue 8: publishing through cellgate to RocketMQ vs a direct RocketMQ client")]
struct Args {
    /// Measured time per load.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Repetitions (each runs both sides, the order alternating).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Concurrent senders, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// The direct side picks queues round-robin and sends with
    /// `send_to_queue`, as the gateway does (by default the client picks).
    #[arg(long)]
    direct_to_queue: bool,
    /// Messages per call: above 1, the gateway side posts to
    /// `messages:batch` and the direct side calls `send_batch`.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

/// One side's figures for one load.
#[derive(Debug)]
struct Measured {
    sent: u64,
    secs: f64,
    hist: Histogram<u64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

/// Runs `c` tasks of `one` (a call of `per_call` messages) for `warmup +
/// duration`; measures the latter. Latencies are per call.
async fn drive<F, Fut>(
    c: usize,
    per_call: usize,
    warmup: Duration,
    duration: Duration,
    one: F,
) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let one = Arc::new(one);
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(c);
    for _ in 0..c {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram()?;
            let mut sent = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                one().await?;
                if t0 >= start {
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                    sent += per_call as u64;
                }
            }
            anyhow::Ok((sent, hist))
        }));
    }
    let mut total = Measured {
        sent: 0,
        secs: duration.as_secs_f64(),
        hist: histogram()?,
    };
    for t in tasks {
        let (sent, hist) = t.await??;
        total.sent += sent;
        total.hist.add(hist)?;
    }
    Ok(total)
}

/// A started producer on its own client runtime (kept alive by the owner),
/// with as many client threads as the gateway's backend uses.
async fn direct_producer(name_server: &str) -> anyhow::Result<(DefaultMQProducer, RuntimeOwner)> {
    let owner = RuntimeOwner::plan(RuntimeConfig {
        thread_name: "bench-client".into(),
        worker_threads: cellgate_broker_rocketmq::Config::new(Vec::new()).client_threads,
        ..Default::default()
    })
    .map_err(|e| anyhow!("{e}"))?
    .build()
    .map_err(|e| anyhow!("{e}"))?;
    let client = ClientRuntime::try_new(
        owner.root_context().component("bench"),
        ClientRuntimeConfig::default(),
        TelemetryHandle::noop(),
    )
    .map_err(|e| anyhow!("client runtime: {e}"))?;
    let mut cfg = ClientConfig::default();
    cfg.set_namesrv_addr(name_server.into());
    cfg.set_instance_name("bench-direct".into());
    let mut p = DefaultMQProducer::builder(client)
        .producer_group("BENCH_DIRECT")
        .name_server_addr(name_server)
        .client_config(cfg)
        .build();
    p.start()
        .await
        .map_err(|e| anyhow!("start the producer: {e}"))?;
    Ok((p, owner))
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    // The cellgate binary next to this one (Server looks for it there).
    let me = std::env::current_exe()?;
    if std::env::var_os("CELLGATE_BIN").is_none() {
        std::env::set_var("CELLGATE_BIN", me.with_file_name("cellgate"));
    }
    let cluster = Cluster::start("bench")?;
    let dir = tempfile::tempdir()?;
    let (rules, _) = edited_example(
        dir.path(),
        "ldc.yaml",
        &[
            (
                "{ name: RZ00A, zone: R, city: SH, broker: embedded }",
                &format!(
                    "{{ name: RZ00A, zone: R, city: SH, broker: \"{}\" }}",
                    cluster.reference()
                ),
            ),
            ("publish_rate: 5000", "publish_rate: 100000000"),
        ],
    );
    let server = Server::start(&rules, &dir.path().join("data"), &["--no-router"])?;
    let log = dir.path().join("data/server.log");
    let out = measure(&a, &cluster, &server).await;
    if out.is_err() {
        // What the gateway said about it.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for l in text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
        {
            eprintln!("{l}");
        }
    }
    drop(server);
    out
}

async fn measure(a: &Args, cluster: &Cluster, server: &Server) -> anyhow::Result<()> {
    let n = a.batch.max(1);
    let one = serde_json::json!({ "body": "x".repeat(a.body_bytes), "tag": "TagA" });
    let (url, body) = if n == 1 {
        (server.url("/v1/topics/BENCH/messages"), one.to_string())
    } else {
        let all = serde_json::json!({ "messages": vec![one; n] });
        (
            server.url("/v1/topics/BENCH/messages:batch"),
            all.to_string(),
        )
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let publish = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        move || {
            let req = http
                .post(&url)
                .bearer_auth(ANT)
                .header("X-Cell", "RZ00A")
                .header("content-type", "application/json")
                .body(body.clone());
            async move {
                let r = req.send().await?;
                let st = r.status();
                let body = r.bytes().await?;
                anyhow::ensure!(
                    st == 200,
                    "publish: {st} {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(())
            }
        }
    };
    // The gateway's first publish creates the topic both sides use.
    publish().await?;
    let (producer, _owner) =
        direct_producer(&format!("127.0.0.1:{}", cluster.namesrv_port)).await?;
    let producer = Arc::new(producer);
    let payload = bytes::Bytes::from(vec![b'x'; a.body_bytes]);
    let rr = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let to_queue = a.direct_to_queue;
    let send = move || {
        let (p, payload) = (producer.clone(), payload.clone());
        let q = rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8;
        async move {
            let m = || {
                Message::builder()
                    .topic("ANT|RZ00A%BENCH")
                    .body_slice(&payload)
                    .tags("TagA")
                    .build_unchecked()
            };
            if n > 1 {
                let msgs: Vec<Message> = (0..n).map(|_| m()).collect();
                if to_queue {
                    let mq = MessageQueue::from_parts("ANT|RZ00A%BENCH", "broker-bench", q as i32);
                    p.send_batch_to_queue(msgs, mq).await
                } else {
                    p.send_batch(msgs).await
                }
                .map_err(|e| anyhow!("direct send: {e}"))?;
                return Ok(());
            }
            let m = m();
            if to_queue {
                let mq = MessageQueue::from_parts("ANT|RZ00A%BENCH", "broker-bench", q as i32);
                p.send_to_queue(m, mq)
                    .await
                    .map_err(|e| anyhow!("direct send: {e}"))?;
            } else {
                p.send(m).await.map_err(|e| anyhow!("direct send: {e}"))?;
            }
            Ok(())
        }
    };
    println!("| senders | rep | direct msg/s | gateway msg/s | ratio | direct p50 / p99 ms | gateway p50 / p99 ms | added p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &a.concurrency {
        for rep in 0..a.reps {
            let (direct, gateway) = if rep % 2 == 0 {
                let d = drive(c, n, a.warmup, a.duration, send.clone()).await?;
                let g = drive(c, n, a.warmup, a.duration, publish.clone()).await?;
                (d, g)
            } else {
                let g = drive(c, n, a.warmup, a.duration, publish.clone()).await?;
                let d = drive(c, n, a.warmup, a.duration, send.clone()).await?;
                (d, g)
            };
            println!(
                "| {c} | {rep} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:+.2} |",
                direct.rate(),
                gateway.rate(),
                gateway.rate() / direct.rate(),
                direct.ms(0.5),
                direct.ms(0.99),
                gateway.ms(0.5),
                gateway.ms(0.99),
                gateway.ms(0.99) - direct.ms(0.99),
            );
        }
    }
    Ok(())
}
