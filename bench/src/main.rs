//! `cellgate-bench`: the gateway benchmark of issue 4.
//!
//! For each case and repetition it starts a fresh plain hyper server
//! (`cellgate-baseline`) and a fresh release `cellgate serve`, one after
//! the other, drives the same load at each from this process, and prints
//! a Markdown table with the gateway's figures as ratios of the baseline's
//! measured next to it. The order of the two alternates between
//! repetitions, so a slow drift in the machine's load does not always
//! favour the same side.
//!
//! Optional sides: `compare` (`--compare-bin`, another `cellgate` build)
//! and `otel` (`--otel-side`, issue 7: the gateway's binary with tracing
//! on, exporting to an OTLP sink this process runs; see `sink.rs`). With
//! both, and `compare` built without the `otel` feature, the report
//! judges the cost of tracing (`report/otel.rs`).
//!
//! Build once, then run (see docs/benchmarks.md):
//! `cargo build --release -p cellgate -p cellgate-bench && target/release/cellgate-bench`

#![forbid(unsafe_code)]

mod cases;
mod load;
mod procs;
mod report;
mod sink;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use cases::{Case, Kind, Shape};
use procs::Server;
use report::{Measurement, Side};
use sink::Sink;

/// The same allocator as the `cellgate` binary: the load generator shares
/// the cores with the server under test, so a cheaper client is a fairer
/// share for both sides.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Gateway publish benchmark (issue 4): cellgate vs a plain hyper server")]
struct Args {
    /// Measured time per load.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before it (connections open, topic created, caches warm).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Repetitions of every case (each against both servers).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Cases to run, comma-separated: async, sync, one-conn, h2c, batch.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "async,sync,one-conn,h2c,batch"
    )]
    cases: Vec<String>,
    /// HTTP/1.1 connections of the multi-connection cases.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// h2c connections…
    #[arg(long, default_value_t = 8)]
    h2_conns: usize,
    /// …and concurrent streams on each.
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    /// Messages per batch request.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Characters in each message's `body` field.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// The gateway's commit-log segment size.
    #[arg(long, default_value = "256MiB")]
    segment_size: String,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Rules to serve; the publish quota is removed from a temp copy.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ldc.yaml"))]
    config: PathBuf,
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Another `cellgate` build (e.g. an older commit's) to run in the same
    /// run as a third side, `compare`: the same cases, next to the others.
    #[arg(long)]
    compare_bin: Option<PathBuf>,
    /// An extra argument for the gateway side's `cellgate serve` (repeat
    /// it for more), e.g. `--gateway-arg=--no-router`; not for `compare`.
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// The same for the `compare` side (e.g. `--compare-arg=--no-router`,
    /// to compare two builds both without the router).
    #[arg(long, allow_hyphen_values = true)]
    compare_arg: Vec<String>,
    /// A command run (with `sh -c`) alongside every gateway load, `{pid}`
    /// replaced by the gateway's pid, e.g.
    /// `perf record -g -p {pid} -o gw.data -- sleep 3`. Awaited after the load.
    #[arg(long)]
    profile: Option<String>,
    /// Which server `--profile` runs alongside: gateway, baseline,
    /// compare or otel.
    #[arg(long, default_value = "gateway")]
    profile_side: String,
    /// Adds a side, `otel`: the gateway side's binary and arguments with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set to an OTLP sink run by this
    /// process (tracing on, batch export). The other gateway sides then
    /// run with the `OTEL_*` endpoint variables removed (tracing off).
    #[arg(long)]
    otel_side: bool,
}

/// The `OTEL_*` variables that decide whether and where a gateway
/// exports: removed from every gateway side when `--otel-side` is given,
/// so `gateway` and `compare` are off and `otel` exports to the sink only.
const OTEL_VARS: [&str; 9] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SDK_DISABLED",
];

/// The environment a side's server starts with (on top of the inherited).
fn side_env(side: Side, sink: Option<&Sink>) -> Vec<(&'static str, Option<String>)> {
    let Some(sink) = sink else {
        return Vec::new();
    };
    let mut env: Vec<_> = OTEL_VARS.iter().map(|k| (*k, None)).collect();
    if side == Side::Otel {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", Some(sink.endpoint())));
    }
    env
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let kinds = a
        .cases
        .iter()
        .map(|c| Kind::parse(c.trim()).with_context(|| format!("unknown case {c:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if a.reps == 0 || a.conns == 0 || a.h2_conns == 0 || a.h2_streams == 0 || a.batch == 0 {
        bail!("--reps, --conns, --h2-conns, --h2-streams and --batch must be at least 1");
    }
    let gateway = procs::sibling("cellgate", a.gateway_bin.clone())?;
    let baseline = procs::sibling("cellgate-baseline", a.baseline_bin.clone())?;
    let compare = match &a.compare_bin {
        Some(p) => Some(procs::sibling("cellgate", Some(p.clone()))?),
        None => None,
    };
    let tmp = tempfile::Builder::new()
        .prefix("cellgate-bench")
        .tempdir()?;
    let config = procs::unthrottled_config(&a.config, tmp.path())?;
    let shape = Shape {
        conns: a.conns,
        h2_conns: a.h2_conns,
        h2_streams: a.h2_streams,
        batch: a.batch,
        body_bytes: a.body_bytes,
    };
    let cases: Vec<Case> = kinds.iter().map(|k| cases::build(*k, &shape)).collect();
    let sink = if a.otel_side {
        Some(Sink::start()?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.client_threads.max(1))
        .enable_all()
        .build()?;
    let fsync_start = procs::fdatasync_rate(tmp.path(), Duration::from_secs(1))?;
    let load_start = report::loadavg();
    let mut results = Vec::new();
    for rep in 0..a.reps {
        for (ci, case) in cases.iter().enumerate() {
            // Rotate the order every repetition, so a drift in the
            // machine's load does not always favour the same side.
            let mut order = vec![Side::Baseline, Side::Gateway];
            if compare.is_some() {
                order.push(Side::Compare);
            }
            if sink.is_some() {
                order.push(Side::Otel);
            }
            let sides = order.len();
            order.rotate_left(rep % sides);
            for side in order {
                let data = tmp.path().join(format!("data-{rep}-{ci}"));
                std::fs::create_dir_all(&data)?;
                let log = tmp.path().join(format!("{}-{rep}-{ci}.log", side.name()));
                let sink_start = sink.as_ref().map(Sink::tally);
                let server = match side {
                    Side::Baseline => Server::start(&baseline, &[], &[], &log)?,
                    Side::Gateway | Side::Compare | Side::Otel => {
                        let mut args =
                            procs::gateway_args(&config, &data, case.flush, &a.segment_size);
                        let extra = match side {
                            Side::Compare => &a.compare_arg,
                            _ => &a.gateway_arg,
                        };
                        args.extend(extra.iter().cloned());
                        let bin = match (&compare, side) {
                            (Some(c), Side::Compare) => c,
                            _ => &gateway,
                        };
                        Server::start(bin, &args, &side_env(side, sink.as_ref()), &log)?
                    }
                };
                let load_avg = report::loadavg();
                let profiler = match (&a.profile, side) {
                    (Some(cmd), s) if s.name() == a.profile_side => Some(
                        std::process::Command::new("sh")
                            .arg("-c")
                            .arg(cmd.replace("{pid}", &server.pid().to_string()))
                            .spawn()?,
                    ),
                    _ => None,
                };
                let l = load::Load {
                    addr: server.addr,
                    proto: case.proto,
                    conns: case.conns,
                    path: case.path.to_owned(),
                    headers: cases::headers(),
                    body: case.body.clone(),
                    warmup: a.warmup,
                    duration: a.duration,
                };
                let pid = server.pid().to_string();
                // The sink's thread is in this process: its CPU time is
                // taken out of the load generator's.
                let sink_cpu = || sink.as_ref().map_or(0, |s| s.tally().cpu_ns);
                let cpu = (procs::cpu_ns(&pid), procs::cpu_ns("self"), sink_cpu());
                let outcome = rt.block_on(load::run(&l))?;
                let sink_cpu = sink_cpu().saturating_sub(cpu.2);
                let cpu = (
                    procs::cpu_ns(&pid).saturating_sub(cpu.0),
                    procs::cpu_ns("self")
                        .saturating_sub(cpu.1)
                        .saturating_sub(sink_cpu),
                );
                if let Some(mut p) = profiler {
                    p.wait()?;
                }
                drop(server);
                // What the sink received from this server, start to kill
                // (spans still queued in the server when killed are lost).
                let sink_tally = match (&sink, sink_start) {
                    (Some(s), Some(start)) => Some(s.tally().since(start)),
                    _ => None,
                };
                let _ = std::fs::remove_dir_all(&data);
                let m = Measurement {
                    case: ci,
                    rep,
                    side,
                    load_avg,
                    server_cpu_ns: cpu.0,
                    client_cpu_ns: cpu.1,
                    outcome,
                    sink: sink_tally.filter(|_| side == Side::Otel),
                };
                eprintln!("{}", m.progress_line(case));
                results.push(m);
            }
        }
    }
    let load_end = report::loadavg();
    let fsync_end = procs::fdatasync_rate(tmp.path(), Duration::from_secs(1))?;
    let command: Vec<String> = std::env::args().collect();
    report::print(&report::Run {
        command: command.join(" "),
        cases: &cases,
        results: &results,
        load_start,
        load_end,
        fdatasync: (fsync_start, fsync_end),
        duration: a.duration,
        warmup: a.warmup,
        client_threads: a.client_threads,
        sink: sink.as_ref().map(Sink::endpoint),
    });
    Ok(())
}
