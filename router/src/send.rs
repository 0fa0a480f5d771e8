//! Sending a pass's copies: one `send_record_copies` per destination cell,
//! each on its own task, so destinations (separate brokers) append
//! concurrently with each other and with the reading of the next pass.

use std::sync::Arc;

use cellgate_broker_core::{Broker, CopyOf};
use cellgate_rules::{CellId, RuleSet, ZoneType, COPY_FOR};
use tokio::task::JoinSet;

use crate::dedupe::{self, Ask, Dedupe};
use crate::metrics::{RouteLabels, RouterMetrics};
use crate::pass::Work;
use crate::{plan, BrokerDirectory, Error};

/// One batch's names in one destination.
pub(crate) struct Name {
    /// The copy's physical topic.
    pub topic: String,
    /// The tenant's namespace (the metric label).
    pub tenant: String,
}

/// Per batch of a pass; `None` for a name that does not map.
pub(crate) type Names = Vec<Option<Name>>;

/// Starts the copies of `work` on `set`, one task per destination. Fails,
/// sending nothing, when a destination has no broker: the pass stays
/// journaled and is replayed.
pub(crate) fn spawn(
    rules: &RuleSet,
    origin: CellId,
    brokers: &dyn BrokerDirectory,
    metrics: &RouterMetrics,
    work: &Arc<Work>,
    set: &mut JoinSet<Result<(), Error>>,
) -> Result<(), Error> {
    let mut all = Vec::new();
    if work.dedupe == Dedupe::AnyCell && !work.dests.is_empty() {
        for (id, cell) in rules.cells() {
            // A cell out of reach may hold a copy: replay later.
            let b = brokers
                .broker(rules, id)
                .ok_or_else(|| Error::Unavailable(cell.name.to_string()))?;
            all.push((b, names_in(rules, origin, work, id)));
        }
    }
    let all: Arc<dedupe::AllCells> = all.into();
    let mut sends = Vec::with_capacity(work.dests.len());
    for (i, (dest, _)) in work.dests.iter().enumerate() {
        let Some(dest_id) = rules.cell_id(dest) else {
            metrics.error("unknown_destination");
            continue;
        };
        let Some(broker) = brokers.broker(rules, dest_id) else {
            metrics.error("destination_unavailable");
            return Err(Error::Unavailable(dest.clone()));
        };
        let names = names_in(rules, origin, work, dest_id);
        sends.push((i, broker, names, rules.cell(dest_id).zone));
    }
    let source = rules.cell_name(origin).to_owned();
    for (i, broker, names, zone) in sends {
        let work = work.clone();
        let metrics = metrics.clone();
        let source = source.clone();
        let all = all.clone();
        set.spawn(async move {
            let to = Dest {
                i,
                broker: &*broker,
                names: &names,
                all: &all,
                zone,
            };
            send(&work, to, &metrics, source).await
        });
    }
    Ok(())
}

/// The physical names of `work`'s batches in cell `to`.
fn names_in(rules: &RuleSet, origin: CellId, work: &Work, to: CellId) -> Names {
    work.batches
        .iter()
        .map(|b| {
            let s = plan::source_topic(rules, origin, &b.topic).ok()?;
            Some(Name {
                topic: plan::dest_topic(rules, &s, to)?,
                tenant: s.namespace.to_owned(),
            })
        })
        .collect()
}

/// One destination of a pass.
struct Dest<'a> {
    /// Its index in `Work::dests`.
    i: usize,
    broker: &'a dyn Broker,
    names: &'a Names,
    all: &'a dedupe::AllCells,
    /// The destination's zone type (a route span attribute).
    zone: ZoneType,
}

/// Appends the copies of `work` for one destination with one
/// `send_record_copies`; on a replay, skips those already there.
async fn send(
    work: &Work,
    to: Dest<'_>,
    metrics: &RouterMetrics,
    source: String,
) -> Result<(), Error> {
    let Dest {
        i,
        broker,
        names,
        all,
        zone,
    } = to;
    let Some((dest, items)) = work.dests.get(i) else {
        return Ok(());
    };
    let mut asks = Vec::with_capacity(items.len());
    for it in items {
        let Some(r) = work
            .batches
            .get(it.batch as usize)
            .and_then(|b| b.records.get(it.record as usize))
        else {
            continue;
        };
        let Some(Name { topic, .. }) = names.get(it.batch as usize).and_then(Option::as_ref) else {
            metrics.error("bad_name");
            continue;
        };
        asks.push(Ask {
            batch: it.batch as usize,
            record: r,
            topic,
            kinds: Some(it.kinds),
        });
    }
    // Only a replay can meet a copy already there.
    dedupe::to_copy(work, broker, all, &mut asks).await?;
    let mut copies = Vec::with_capacity(asks.len());
    // The batch of each copy (for its tenant label).
    let mut batch_of = Vec::with_capacity(asks.len());
    for a in &asks {
        let Some(kinds) = a.kinds else {
            metrics.dedupe_hits.inc();
            continue;
        };
        copies.push(CopyOf {
            source: a.record,
            topic: a.topic,
            set: (COPY_FOR, kinds),
            select: plan::select_of(&a.record),
        });
        batch_of.push(a.batch);
    }
    if copies.is_empty() {
        return Ok(());
    }
    // The lease's promise (lease.rs): no send starts after it runs out.
    work.lease.ensure().await?;
    let stored = broker.send_record_copies(&copies).await?;
    let route = (source, dest.clone());
    count(metrics, &route, names, &copies, &batch_of, &stored);
    crate::trace::route_spans(&copies, &stored, &route, zone, names, &batch_of);
    // No message-trace hop per copy: the copy is its own record of the
    // route (the trace endpoint reads it), and a hop each halved the
    // router's throughput (docs/benchmarks.md, router fifth run).
    Ok(())
}

/// The copies and lag metrics of a destination's appended copies (`of`:
/// each copy's batch, for its tenant). Copies come in batch order: one
/// label lookup per batch, not per copy.
fn count(
    metrics: &RouterMetrics,
    (source, target): &(String, String),
    names: &Names,
    copies: &[CopyOf<'_>],
    of: &[usize],
    stored: &[cellgate_broker_core::PutResult],
) {
    let mut start = 0;
    while let Some(&b) = of.get(start) {
        let end = start + of[start..].iter().take_while(|x| **x == b).count();
        if let Some(Name { tenant, .. }) = names.get(b).and_then(Option::as_ref) {
            let l = RouteLabels {
                tenant: tenant.clone(),
                source: source.clone(),
                target: target.clone(),
            };
            metrics
                .copies
                .get_or_create(&l)
                .inc_by((end - start) as u64);
            let lag = metrics.lag.get_or_create(&l);
            let stored = stored.get(start..).unwrap_or_default();
            let lags = copies[start..end]
                .iter()
                .zip(stored)
                .map(|(c, s)| (s.stored_ms - c.source.stored_ms()).max(0) as f64 / 1000.0);
            for secs in lags.clone() {
                lag.observe(secs);
            }
            // The OTLP twin: labels built once for the batch.
            use cellgate_telemetry::Val;
            let labels = [
                ("tenant", Val::Str(tenant)),
                ("source", Val::Str(source)),
                ("target", Val::Str(target)),
            ];
            metrics.otel_lag.record_all(lags, &labels);
        }
        start = end;
    }
}
