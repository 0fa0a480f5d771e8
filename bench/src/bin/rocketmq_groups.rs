//! `cellgate-bench-rocketmq-groups`: what it costs when gateways share a
//! consumer group on RocketMQ (docs/rocketmq.md, "Several gateways serving
//! one group at once").
//!
//! Against one RocketMQ cluster (Apache RocketMQ's Rust port, started here
//! on loopback ports), per repetition, it publishes `--messages` messages
//! over the 8 queues of a fresh topic and drains them with the RocketMQ
//! backend (the gateway's consumption path, below HTTP), every receive
//! acked message by message:
//!
//! - **one gateway**: one backend, `--consumers` receiving tasks;
//! - **shared**: the same number of tasks split over two backends (two
//!   gateways), each acking through its own.
//!
//! It prints a Markdown table: messages per second, deliveries beyond one
//! per message (must be 0), and the shared rate as a ratio of the one
//! gateway's.
//!
//! `cargo build --release -p cellgate-bench && target/release/cellgate-bench-rocketmq-groups`

#![forbid(unsafe_code)]
// rocketmq-client-rust's futures nest deeply.
#![recursion_limit = "256"]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use cellgate_broker_core::{Broker, ConsumeMode, Message, QueueSelect, ReceiveOptions};
use cellgate_broker_rocketmq::{Config, RocketMqBroker};
use cellgate_tests::rocketmq::Cluster;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Issue 8: consuming one group through one RocketMQ backend vs two sharing it")]
struct Args {
    /// Messages per case.
    #[arg(long, default_value_t = 4000)]
    messages: usize,
    /// Repetitions (each runs both cases, the order alternating).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Receiving tasks per case (split over the two backends when shared).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Messages per receive.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// One case's outcome.
struct Outcome {
    rate: f64,
    extra: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cluster = Cluster::start("bench-groups")?;
    let ns = vec![format!("127.0.0.1:{}", cluster.namesrv_port)];
    let backends = [
        Arc::new(RocketMqBroker::connect(Config::new(ns.clone())).await?),
        Arc::new(RocketMqBroker::connect(Config::new(ns)).await?),
    ];
    println!("| case | rep | messages | msg/s | extra deliveries | ÷ one gateway |");
    println!("|---|---:|---:|---:|---:|---:|");
    for rep in 0..a.reps {
        let mut one = None;
        let mut shared = None;
        for i in 0..2 {
            let is_shared = (i + rep) % 2 == 1;
            let topic = format!("ANT|RZ00A%BG{rep}{i}");
            let group = format!("ANT|RZ00A%GBG{rep}{i}");
            publish(&backends[0], &topic, a.messages).await?;
            let used = if is_shared {
                &backends[..]
            } else {
                &backends[..1]
            };
            let o = drain(used, &topic, &group, &a).await?;
            if is_shared {
                shared = Some(o);
            } else {
                one = Some(o);
            }
        }
        if let (Some(one), Some(shared)) = (one, shared) {
            println!(
                "| one gateway | {rep} | {} | {:.0} | {} | |",
                a.messages, one.rate, one.extra
            );
            println!(
                "| shared by two | {rep} | {} | {:.0} | {} | {:.2} |",
                a.messages,
                shared.rate,
                shared.extra,
                shared.rate / one.rate
            );
        }
    }
    Ok(())
}

async fn publish(b: &RocketMqBroker, topic: &str, n: usize) -> anyhow::Result<()> {
    for start in (0..n).step_by(256) {
        let batch = (start..n.min(start + 256))
            .map(|i| {
                let m = Message {
                    topic: topic.to_owned(),
                    body: vec![b'x'; 512],
                    tag: None,
                    keys: Vec::new(),
                    properties: Default::default(),
                    born_ms: 0,
                };
                (m, QueueSelect::ShardingKey(format!("k{i}")))
            })
            .collect();
        b.send_batch(batch).await?;
    }
    Ok(())
}

/// Receives and acks until every message has come and a receive finds
/// nothing; the rate counts up to the last delivery.
async fn drain(
    backends: &[Arc<RocketMqBroker>],
    topic: &str,
    group: &str,
    a: &Args,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.consumers {
        let b = backends[c % backends.len()].clone();
        let (topic, group, batch) = (topic.to_owned(), group.to_owned(), a.batch);
        tasks.push(tokio::spawn(async move {
            let opts = ReceiveOptions {
                max_messages: batch,
                wait: Duration::from_millis(500),
                invisible: Duration::from_secs(60),
                ..ReceiveOptions::default()
            };
            let (mut got, mut last) = (Vec::new(), started);
            loop {
                let ds = b.receive(&group, &topic, opts.clone()).await?;
                if ds.is_empty() {
                    return anyhow::Ok((got, last));
                }
                last = Instant::now();
                for d in ds {
                    b.ack(&group, &topic, &ConsumeMode::Clustering, &d.receipt)
                        .await?;
                    got.push(d.message.id);
                }
            }
        }));
    }
    let mut seen: HashMap<_, usize> = HashMap::new();
    let mut end = started;
    for t in tasks {
        let (got, last) = t.await??;
        end = end.max(last);
        for id in got {
            *seen.entry(id).or_default() += 1;
        }
    }
    anyhow::ensure!(
        seen.len() == a.messages,
        "{} of {} messages came",
        seen.len(),
        a.messages
    );
    let delivered: usize = seen.values().sum();
    Ok(Outcome {
        rate: a.messages as f64 / end.duration_since(started).as_secs_f64(),
        extra: delivered - a.messages,
    })
}
