//! The report: a Markdown table of every measurement, each gateway row
//! as a ratio of the baseline row measured next to it, and the issue's
//! goals, met only if every repetition meets them.

use std::time::Duration;

use crate::cases::{Case, Kind};
use crate::load::Outcome;
use crate::sink;

mod otel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Baseline,
    Gateway,
    /// `--compare-bin`: another gateway build, reported but not judged
    /// against the baseline.
    Compare,
    /// `--otel-side`: the gateway's binary with tracing on, exporting to
    /// the bench's OTLP sink.
    Otel,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Baseline => "baseline",
            Side::Gateway => "gateway",
            Side::Compare => "compare",
            Side::Otel => "otel",
        }
    }
}

#[derive(Debug)]
pub struct Measurement {
    /// Index into the run's cases.
    pub case: usize,
    pub rep: usize,
    pub side: Side,
    /// The 1-minute load average when the load started.
    pub load_avg: String,
    /// CPU time the server and this process spent over the whole load,
    /// warm-up included.
    pub server_cpu_ns: u64,
    pub client_cpu_ns: u64,
    pub outcome: Outcome,
    /// What the OTLP sink received while this server ran (`otel` only).
    pub sink: Option<sink::Tally>,
}

impl Measurement {
    pub(crate) fn msgs_per_sec(&self, c: &Case) -> f64 {
        self.outcome.per_sec() * c.msgs_per_req as f64
    }

    /// CPU µs per answered request (warm-up included, like the CPU time).
    pub(crate) fn cpu_us(&self, ns: u64) -> f64 {
        ns as f64 / 1000.0 / self.outcome.answered.max(1) as f64
    }

    pub(crate) fn p50(&self) -> u64 {
        self.outcome.latency_us.value_at_quantile(0.5)
    }

    pub(crate) fn p99(&self) -> u64 {
        self.outcome.latency_us.value_at_quantile(0.99)
    }

    pub fn progress_line(&self, c: &Case) -> String {
        let sink = self.sink.map_or(String::new(), |t| {
            format!(
                "; OTLP sink: {} trace exports, {} bytes, {} other, {} bytes",
                t.trace_reqs, t.trace_bytes, t.other_reqs, t.other_bytes
            )
        });
        format!(
            "{} rep {} {}: {:.0} req/s, p50 {}, p99 {}, {} errors, CPU/req {:.1} µs server, {:.1} µs client (load avg {}){sink}",
            c.label(),
            self.rep + 1,
            self.side.name(),
            self.outcome.per_sec(),
            us(self.p50()),
            us(self.p99()),
            self.outcome.errors,
            self.cpu_us(self.server_cpu_ns),
            self.cpu_us(self.client_cpu_ns),
            self.load_avg
        )
    }
}

/// Everything `print` needs.
#[derive(Debug)]
pub struct Run<'a> {
    pub command: String,
    pub cases: &'a [Case],
    pub results: &'a [Measurement],
    pub load_start: String,
    pub load_end: String,
    /// fdatasync/s at the start and at the end of the run.
    pub fdatasync: (f64, f64),
    pub duration: Duration,
    pub warmup: Duration,
    pub client_threads: usize,
    /// The OTLP sink's endpoint, when the `otel` side ran.
    pub sink: Option<String>,
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

pub(crate) fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} µs")
    }
}

pub(crate) fn rate(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

impl Run<'_> {
    pub(crate) fn find(&self, case: usize, rep: usize, side: Side) -> Option<&Measurement> {
        self.results
            .iter()
            .find(|m| m.case == case && m.rep == rep && m.side == side)
    }

    /// (baseline, gateway) of each repetition of a case.
    fn pairs(&self, case: usize) -> Vec<(&Measurement, &Measurement)> {
        let reps = self.results.iter().map(|m| m.rep + 1).max().unwrap_or(0);
        (0..reps)
            .filter_map(|r| {
                Some((
                    self.find(case, r, Side::Baseline)?,
                    self.find(case, r, Side::Gateway)?,
                ))
            })
            .collect()
    }
}

pub fn print(run: &Run<'_>) {
    println!("Command: `{}`", run.command);
    println!();
    println!(
        "Cores: {}; load average (1, 5, 15 min) {} at the start, {} at the end; \
         warm-up {:?}, measured {:?} per load; load generator: {} runtime threads.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run.load_start,
        run.load_end,
        run.warmup,
        run.duration,
        run.client_threads
    );
    println!();
    println!(
        "Disk: {:.0} fdatasync/s at the start, {:.0} at the end (4 KiB appends to a fresh \
         file in the data directory's filesystem, 1 writer, 1 s).",
        run.fdatasync.0, run.fdatasync.1
    );
    println!();
    println!("| case | rep | server | load avg | req/s | msgs/s | p50 | p99 | errors | server CPU/req | client CPU/req | throughput ÷ baseline | p50 ÷ baseline |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (ci, c) in run.cases.iter().enumerate() {
        for (b, g) in run.pairs(ci) {
            let compare = run.find(ci, b.rep, Side::Compare);
            let otel = run.find(ci, b.rep, Side::Otel);
            for m in [Some(b), Some(g), compare, otel].into_iter().flatten() {
                let (tput, p50) = if m.side == Side::Baseline {
                    (String::new(), String::new())
                } else {
                    (
                        format!("**{:.2}×**", m.outcome.per_sec() / b.outcome.per_sec()),
                        format!("{:.2}×", m.p50() as f64 / b.p50().max(1) as f64),
                    )
                };
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} µs | {:.1} µs | {tput} | {p50} |",
                    c.label(),
                    m.rep + 1,
                    m.side.name(),
                    m.load_avg.split(' ').next().unwrap_or("?"),
                    rate(m.outcome.per_sec()),
                    rate(m.msgs_per_sec(c)),
                    us(m.p50()),
                    us(m.p99()),
                    m.outcome.errors,
                    m.cpu_us(m.server_cpu_ns),
                    m.cpu_us(m.client_cpu_ns),
                );
            }
        }
    }
    for m in run.results {
        if let Some(e) = &m.outcome.first_error {
            let c = &run.cases[m.case];
            println!();
            println!(
                "{} rep {} {}: first error: {e}",
                c.label(),
                m.rep + 1,
                m.side.name()
            );
        }
    }
    println!();
    goals(run);
    if run.sink.is_some() {
        println!();
        otel::print(run);
    }
}

fn goals(run: &Run<'_>) {
    println!("| goal | per repetition | met? |");
    println!("| --- | --- | --- |");
    for (ci, c) in run.cases.iter().enumerate() {
        let pairs = run.pairs(ci);
        let tput = |b: &Measurement, g: &Measurement| g.outcome.per_sec() / b.outcome.per_sec();
        let (goal, values, met): (String, Vec<String>, bool) = match c.kind {
            Kind::PublishAsync | Kind::PublishSync | Kind::PublishH2c => {
                let min = match c.kind {
                    Kind::PublishAsync => 0.8,
                    Kind::PublishSync => 0.6,
                    _ => 0.7,
                };
                let r: Vec<f64> = pairs.iter().map(|(b, g)| tput(b, g)).collect();
                (
                    format!("{}: ≥ {min:.2}× baseline req/s", c.label()),
                    r.iter().map(|v| format!("{v:.2}×")).collect(),
                    r.iter().all(|v| *v >= min),
                )
            }
            Kind::PublishOneConn => {
                let r: Vec<f64> = pairs
                    .iter()
                    .map(|(b, g)| g.p50() as f64 / b.p50().max(1) as f64)
                    .collect();
                (
                    format!("{}: p50 ≤ 1.5× baseline p50", c.label()),
                    r.iter().map(|v| format!("{v:.2}×")).collect(),
                    r.iter().all(|v| *v <= 1.5),
                )
            }
            Kind::Batch => {
                let r: Vec<f64> = pairs.iter().map(|(_, g)| g.msgs_per_sec(c)).collect();
                (
                    format!("{}: ≥ 250 k msgs/s", c.label()),
                    r.iter().map(|v| format!("{} msgs/s", rate(*v))).collect(),
                    r.iter().all(|v| *v >= 250_000.0),
                )
            }
        };
        let clean = pairs
            .iter()
            .all(|(b, g)| b.outcome.errors + g.outcome.errors == 0);
        let verdict = match (met && !pairs.is_empty(), clean) {
            (true, true) => "**met**",
            (true, false) => "not met (errors)",
            _ => "**not met**",
        };
        println!("| {goal} | {} | {verdict} |", values.join(", "));
    }
}
