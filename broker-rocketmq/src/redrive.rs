//! Dead-letter re-drive on RocketMQ.
//!
//! Re-drive reads `%DLQ%<group>` as group `<group>%REDRIVE` (so its
//!   progress is a committed offset in the broker, like any group's) and
//!   sends each message back to the topic in its `__ORIGIN_TOPIC`, under a
//!   new id, as the embedded broker does; then acks it. At least once: a
//!   crash between the send and the ack re-drives that message again.

use std::time::Duration;

use cellgate_broker_core::broker::{dlq_topic, revive};
use cellgate_broker_core::{ConsumeMode, QueueSelect, ReceiveOptions, Result};

use crate::send::Outgoing;
use crate::RocketMqBroker;

// === impl RocketMqBroker: re-drive ===

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
}
