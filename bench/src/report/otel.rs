//! The cost of tracing (issue 7), printed when the `otel` side ran: the
//! three configurations of one repetition side by side, the two
//! goals judged per repetition and on the median, and what the OTLP sink
//! received.
//!
//! - `without`: the `compare` side, which must be a `cellgate` built with
//!   `--no-default-features` (the harness cannot check that);
//! - `off`: the `gateway` side, built with the `otel` feature, no endpoint;
//! - `on`: the `otel` side, the same binary exporting to the sink.

use super::{rate, us, Measurement, Run, Side};

/// "tracing compiled in but off: at most 3% below" the build without it.
const OFF_GOAL: f64 = 0.97;
/// "on, with batch export to a local receiver: at most 15% below".
const ON_GOAL: f64 = 0.85;
/// The SDK's default `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: no export request
/// carries more spans.
const SPANS_PER_EXPORT: u64 = 512;
/// Spans a killed server can still hold: the default
/// `OTEL_BSP_MAX_QUEUE_SIZE` (2,048) plus one batch being exported.
const HELD_AT_KILL: u64 = 2048 + 512;

/// One repetition of a case, all three configurations.
struct Triple<'a> {
    without: &'a Measurement,
    off: &'a Measurement,
    on: &'a Measurement,
}

impl Triple<'_> {
    fn off_ratio(&self) -> f64 {
        self.off.outcome.per_sec() / self.without.outcome.per_sec()
    }

    fn on_ratio(&self) -> f64 {
        self.on.outcome.per_sec() / self.without.outcome.per_sec()
    }
}

fn triples<'a>(run: &'a Run<'_>, case: usize) -> Vec<Triple<'a>> {
    let reps = run.results.iter().map(|m| m.rep + 1).max().unwrap_or(0);
    (0..reps)
        .filter_map(|r| {
            Some(Triple {
                without: run.find(case, r, Side::Compare)?,
                off: run.find(case, r, Side::Gateway)?,
                on: run.find(case, r, Side::Otel)?,
            })
        })
        .collect()
}

/// The median (the mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

pub fn print(run: &Run<'_>) {
    println!(
        "Tracing cost (issue 7): `without` = `compare` (must be built with \
         `--no-default-features`), `off` = `gateway` (the `otel` feature, no endpoint), \
         `on` = `otel` (the same binary, OTLP http/protobuf batch export to the bench's \
         sink at {}). Ratios are taken within one repetition.",
        run.sink.as_deref().unwrap_or("?")
    );
    println!();
    println!("| case | rep | without req/s | off req/s | on req/s | without p99 | off p99 | on p99 | server CPU/req without / off / on | off ÷ without | on ÷ without | on ÷ off |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (ci, c) in run.cases.iter().enumerate() {
        for t in triples(run, ci) {
            let cpu = |m: &Measurement| format!("{:.1}", m.cpu_us(m.server_cpu_ns));
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} µs | **{:.3}×** | **{:.3}×** | {:.3}× |",
                c.label(),
                t.off.rep + 1,
                rate(t.without.outcome.per_sec()),
                rate(t.off.outcome.per_sec()),
                rate(t.on.outcome.per_sec()),
                us(t.without.p99()),
                us(t.off.p99()),
                us(t.on.p99()),
                cpu(t.without),
                cpu(t.off),
                cpu(t.on),
                t.off_ratio(),
                t.on_ratio(),
                t.on.outcome.per_sec() / t.off.outcome.per_sec(),
            );
        }
    }
    println!();
    goals(run);
    println!();
    exports(run);
}

fn goals(run: &Run<'_>) {
    println!("| goal | per repetition | median | met (median)? | every repetition? |");
    println!("| --- | --- | --- | --- | --- |");
    for (ci, c) in run.cases.iter().enumerate() {
        let ts = triples(run, ci);
        let clean = ts
            .iter()
            .all(|t| t.without.outcome.errors + t.off.outcome.errors + t.on.outcome.errors == 0);
        let rows: [(&str, f64, Vec<f64>); 2] = [
            (
                "off ÷ without",
                OFF_GOAL,
                ts.iter().map(Triple::off_ratio).collect(),
            ),
            (
                "on ÷ without",
                ON_GOAL,
                ts.iter().map(Triple::on_ratio).collect(),
            ),
        ];
        for (what, goal, r) in rows {
            let Some(med) = median(&r) else {
                println!(
                    "| {}: {what} ≥ {goal:.2} | no `compare` side | | | |",
                    c.label()
                );
                continue;
            };
            let verdict = |ok: bool| match (ok, clean) {
                (true, true) => "**met**",
                (true, false) => "not met (errors)",
                (false, _) => "**not met**",
            };
            let values: Vec<String> = r.iter().map(|v| format!("{v:.3}×")).collect();
            println!(
                "| {}: {what} ≥ {goal:.2} | {} | {med:.3}× | {} | {} |",
                c.label(),
                values.join(", "),
                verdict(med >= goal),
                verdict(r.iter().all(|v| *v >= goal)),
            );
        }
    }
}

/// What each `otel` load exported, as the sink counted it, and what that
/// says about dropped spans.
fn exports(run: &Run<'_>) {
    println!(
        "OTLP sink, per `otel` server (start to kill). Spans made: one `send` and one \
         `store` per answered request, warm-up included (a batch request is one of each; \
         with the router, `route` spans come on top). At most {SPANS_PER_EXPORT} spans \
         per export request (the SDK's default batch), and up to {HELD_AT_KILL} still \
         queued at kill: spans made beyond both were dropped. Bytes per span made: with \
         nothing dropped, the encoded size of a span (about 414 B for a single publish's, \
         294 B for a batch's, on the build this was written for; more with the router's \
         `route` spans): a lower figure means spans were dropped."
    );
    println!();
    println!("| case | rep | trace exports | trace bytes | bytes/export | other exports (metrics) | other bytes | send+store spans made | bytes / span made | exported at most | dropped at least | sink CPU/export |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for m in run.results.iter().filter(|m| m.side == Side::Otel) {
        let Some(t) = m.sink else { continue };
        let made = 2 * m.outcome.answered;
        let at_most = SPANS_PER_EXPORT * t.trace_reqs;
        let dropped = made.saturating_sub(at_most + HELD_AT_KILL);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.1} µs |",
            run.cases[m.case].label(),
            m.rep + 1,
            t.trace_reqs,
            t.trace_bytes,
            t.trace_bytes / t.trace_reqs.max(1),
            t.other_reqs,
            t.other_bytes,
            made,
            t.trace_bytes as f64 / made.max(1) as f64,
            at_most,
            dropped,
            t.cpu_ns as f64 / 1000.0 / t.trace_reqs.max(1) as f64,
        );
    }
}
