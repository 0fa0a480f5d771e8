//! Sending a pass's copies: one `send_record_copies` per destination cell,
//! each on its own task, so destinations (separate brokers) append
//! concurrently with each other and with the reading of the next pass.

use std::sync::Arc;

use cellgate_broker_core::{Broker, CopyOf};
use cellgate_rules::{CellId, RuleSet, COPY_FOR};
use tokio::task::JoinSet;

use crate::metrics::{RouteLabels, RouterMetrics};
use crate::pass::Work;
use crate::{plan, BrokerDirectory, Error};

/// Per batch of a pass: the copy's topic in one destination and the
/// tenant (the metric label); `None` for a name that does not map.
type Names = Vec<Option<(String, String)>>;

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
        let names: Names = work
            .batches
            .iter()
            .map(|b| {
                let s = plan::source_topic(rules, origin, &b.topic).ok()?;
                Some((
                    plan::dest_topic(rules, &s, dest_id)?,
                    s.namespace.to_owned(),
                ))
            })
            .collect();
        sends.push((i, broker, names));
    }
    let source = rules.cell_name(origin).to_owned();
    for (i, broker, names) in sends {
        let work = work.clone();
        let metrics = metrics.clone();
        let source = source.clone();
        set.spawn(async move { send(&work, i, &*broker, &names, &metrics, source).await });
    }
    Ok(())
}

/// Appends the copies of `work` for its `i`-th destination with one
/// `send_record_copies`; on a replay, skips those the destination holds.
async fn send(
    work: &Work,
    i: usize,
    broker: &dyn Broker,
    names: &Names,
    metrics: &RouterMetrics,
    source: String,
) -> Result<(), Error> {
    let Some((dest, items)) = work.dests.get(i) else {
        return Ok(());
    };
    let mut copies = Vec::with_capacity(items.len());
    // The batch of each copy (for its tenant label).
    let mut batch_of = Vec::with_capacity(items.len());
    for it in items {
        let Some(r) = work
            .batches
            .get(it.batch as usize)
            .and_then(|b| b.records.get(it.record as usize))
        else {
            continue;
        };
        let Some((topic, _)) = names.get(it.batch as usize).and_then(Option::as_ref) else {
            metrics.error("bad_name");
            continue;
        };
        // Copies exist only for journaled plans, so only a replay can
        // meet one already there.
        if work.dedupe && broker.get_by_id(&r.id())?.is_some() {
            metrics.dedupe_hits.inc();
            continue;
        }
        copies.push(CopyOf {
            source: r,
            topic,
            set: (COPY_FOR, it.kinds),
            select: plan::select_of(&r),
        });
        batch_of.push(it.batch as usize);
    }
    if copies.is_empty() {
        return Ok(());
    }
    let stored = broker.send_record_copies(&copies).await?;
    // Copies come in batch order: one label lookup per batch, not per copy.
    let mut start = 0;
    while let Some(&b) = batch_of.get(start) {
        let end = start + batch_of[start..].iter().take_while(|x| **x == b).count();
        if let Some((_, tenant)) = names.get(b).and_then(Option::as_ref) {
            let l = RouteLabels {
                tenant: tenant.clone(),
                source: source.clone(),
                target: dest.clone(),
            };
            metrics
                .copies
                .get_or_create(&l)
                .inc_by((end - start) as u64);
            let lag = metrics.lag.get_or_create(&l);
            for (c, s) in copies[start..end].iter().zip(&stored[start..]) {
                lag.observe((s.stored_ms - c.source.stored_ms()).max(0) as f64 / 1000.0);
            }
        }
        start = end;
    }
    Ok(())
}
