//! Dead-letter re-drive and the message trace on RocketMQ.
//!
//! - **Re-drive** reads `%DLQ%<group>` as group `<group>%REDRIVE` (so its
//!   progress is a committed offset in the broker, like any group's) and
//!   sends each message back to the topic in its `__ORIGIN_TOPIC`, under a
//!   new id, as the embedded broker does; then acks it. At least once: a
//!   crash between the send and the ack re-drives that message again.
//! - **Trace hops** are messages of the topic [`TRACE_TOPIC`], one per
//!   batch of hops of one message, with the message id as the key and the
//!   hops as JSON in the body: the way RocketMQ keeps its own message trace
//!   (`RMQ_SYS_TRACE_TOPIC`, keyed by message id). A trace is read with a
//!   query by key, so it lives as long as the broker retains that topic.
//!   Recording is fire-and-forget: a hop that cannot be stored is logged
//!   and dropped, and never fails the call that made it.

use std::collections::BTreeMap;
use std::time::Duration;

use cellgate_broker_core::broker::{dlq_topic, revive};
use cellgate_broker_core::{
    message_id, ConsumeMode, Hop, Message, QueueSelect, ReceiveOptions, Result,
};
use uuid::Uuid;

use crate::convert::to_rocketmq;
use crate::error::remote;
use crate::send::Outgoing;
use crate::{now_ms, RocketMqBroker};

/// Where trace hops are kept (one topic per cluster, one queue each per
/// broker is plenty: hops are read by key, never by offset).
pub const TRACE_TOPIC: &str = "CELLGATE_TRACE";

// === impl RocketMqBroker: re-drive and trace ===

impl RocketMqBroker {
    pub(crate) async fn redrive_impl(&self, group: &str, max: usize) -> Result<usize> {
        let dlq = dlq_topic(group);
        let redriver = format!("{group}%REDRIVE");
        let opts = ReceiveOptions {
            max_messages: max,
            wait: Duration::ZERO,
            ..ReceiveOptions::default()
        };
        let got = self.receive_impl(&redriver, &dlq, opts).await?;
        let mut n = 0;
        for d in got {
            // Not a dead letter of ours: left for an operator.
            let Some(again) = revive(d.message) else {
                continue;
            };
            self.send_all(vec![Outgoing::new(again, QueueSelect::RoundRobin)])
                .await?;
            self.settle_impl(&redriver, &dlq, &ConsumeMode::Clustering, &d.receipt, true)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores `hops` in the background, one trace message per message id.
    /// The trace topic exists from `connect` on; the client picks its queue.
    pub(crate) fn record_hops(&self, hops: Vec<Hop>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut by_id: BTreeMap<Uuid, Vec<Hop>> = BTreeMap::new();
        for h in hops {
            by_id.entry(h.message_id).or_default().push(h);
        }
        let mut out = Vec::with_capacity(by_id.len());
        for (id, hops) in by_id {
            let body = match serde_json::to_vec(&hops) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "trace hops not encoded");
                    continue;
                }
            };
            let m = Message {
                topic: TRACE_TOPIC.to_owned(),
                body,
                tag: None,
                keys: vec![id.to_string()],
                properties: BTreeMap::new(),
                born_ms: now_ms(),
            };
            match to_rocketmq(&m, &message_id(m.born_ms), None) {
                Ok(rm) => out.push(rm),
                Err(e) => tracing::warn!(%id, error = %e, "trace hops not encoded"),
            }
        }
        // A clone of the send producer: it shares the client instance.
        let producer = self.client.producer.clone();
        rt.spawn(async move {
            for m in out {
                if let Err(e) = producer.send(m).await {
                    tracing::warn!(error = %remote("store trace hops", &e), "trace hops dropped");
                }
            }
        });
    }

    /// The hops recorded for message `id`, oldest first.
    pub(crate) async fn hops_of(&self, id: &Uuid) -> Result<Vec<Hop>> {
        let mut hops = Vec::new();
        for m in self.by_key(TRACE_TOPIC, &id.to_string()).await? {
            match serde_json::from_slice::<Vec<Hop>>(&m.body) {
                Ok(h) => hops.extend(h.into_iter().filter(|h| h.message_id == *id)),
                Err(e) => tracing::warn!(%id, error = %e, "a trace message that is not hops"),
            }
        }
        hops.sort_by_key(|h| h.at_ms);
        Ok(hops)
    }
}
