//! Transactional messages over RocketMQ's half messages.
//!
//! - **Half message.** The shared producer sends it to the chosen queue
//!   with `TRAN_MSG=true` and `PGROUP=<producer group>`: the broker keeps it
//!   in its half topic, invisible, until an END_TRANSACTION names it.
//! - **Check-backs.** The broker asks a producer of the group: a client
//!   that sends heartbeats under `PGROUP`. So the first transactional send
//!   of a group in this process, or the first long poll for its
//!   check-backs, starts a `TransactionMQProducer` of that group whose
//!   listener answers from the [`Book`]: a decided transaction gets its
//!   decision; an undecided one is queued for the app's long poll (SPEC §9)
//!   and answered "unknown"; after `max_checks` unanswered check-backs it
//!   is rolled back, and the book records why.
//! - **Decisions** send END_TRANSACTION at once to the broker that holds
//!   the half, with the half's latest coordinates (the send's, or the last
//!   check-back's: the broker renews a half message at every check-back).
//!   The call is one-way: if it is lost, the next check-back carries the
//!   decision. A decision that races a check-back may commit the message
//!   twice, as in RocketMQ (at least once).
//! - **The book lives in this process.** After a restart a transaction is
//!   known again from its next check-back; until then, deciding it is a 404.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::{
    Decision, Error, Message, PutResult, QueueSelect, Result, TxnCheck, TxnInfo, TxnState,
};
use cheetah_string::CheetahString;
use rocketmq_client_rust::{LocalTransactionState, TransactionListener, TransactionMQProducer};
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::{MessageConst, MessageTrait};
use rocketmq_model::common::sys_flag::message_sys_flag::MessageSysFlag;
use rocketmq_protocol::common::message::message_decoder::decode_message_id;
use rocketmq_protocol::protocol::header::end_transaction_request_header::EndTransactionRequestHeader;
use rocketmq_protocol::RpcRequestHeader;
use uuid::Uuid;

use crate::client::RouteCache;
use crate::convert::to_rocketmq;
use crate::error::remote;
use crate::{now_ms, RocketMqBroker};

mod book;

pub(crate) use book::Book;
use book::Half;

/// The transaction producers, one per group. An async mutex: starting a
/// producer awaits, and it happens once per group.
#[derive(Default)]
pub(crate) struct Producers(pub tokio::sync::Mutex<HashMap<String, TransactionMQProducer>>);

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producers").finish_non_exhaustive()
    }
}

/// The listener of one group's transaction producer.
struct CheckListener {
    broker: std::sync::Weak<Shared>,
    group: String,
}

/// What the listener needs of the broker, shared with it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub book: Book,
    pub routes: RouteCache,
    pub max_checks: u32,
}

impl TransactionListener for CheckListener {
    /// Never called: halves go through the shared producer, not this one.
    fn execute_local_transaction(
        &self,
        _msg: &dyn MessageTrait,
        _arg: Option<&(dyn std::any::Any + Send + Sync)>,
    ) -> LocalTransactionState {
        LocalTransactionState::Unknown
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState {
        match self.broker.upgrade() {
            Some(s) => s.book.on_check(&s.routes, &self.group, msg, s.max_checks),
            None => LocalTransactionState::Unknown,
        }
    }
}

// === impl RocketMqBroker: transactions ===

impl RocketMqBroker {
    /// Starts the group's transaction producer unless it runs already.
    async fn ensure_txn_producer(&self, group: &str) -> Result<()> {
        let mut producers = self.txn_producers.0.lock().await;
        if producers.contains_key(group) {
            return Ok(());
        }
        let listener = CheckListener {
            broker: Arc::downgrade(&self.txn),
            group: group.to_owned(),
        };
        let p = self.client.start_txn_producer(group, listener).await?;
        producers.insert(group.to_owned(), p);
        Ok(())
    }

    pub(crate) async fn send_half(
        &self,
        msg: Message,
        select: QueueSelect,
        group: &str,
    ) -> Result<PutResult> {
        self.ensure_txn_producer(group).await?;
        let id = cellgate_broker_core::message_id(now_ms());
        let route = self.route_or_create(&msg.topic).await?;
        let q = usize::from(select.pick(&msg.topic, route.queues.len() as u16, &self.rr)?);
        let qr = route
            .queues
            .get(q)
            .ok_or_else(|| Error::UnknownTopic(msg.topic.clone()))?;
        let mq = qr.mq(&msg.topic);
        let topic = msg.topic.clone();
        let mut m = to_rocketmq(msg, &id, None)?;
        m.put_property(
            CheetahString::from_static_str(MessageConst::PROPERTY_TRANSACTION_PREPARED),
            CheetahString::from_static_str("true"),
        );
        m.put_property(
            CheetahString::from_static_str(MessageConst::PROPERTY_PRODUCER_GROUP),
            CheetahString::from_string(group.to_owned()),
        );
        let res = crate::send::send_to_queue(&self.client.producer, "send a half message", m, &mq)
            .await?;
        let commit_log_offset = res
            .offset_msg_id
            .as_deref()
            .and_then(|o| decode_message_id(o).ok())
            .map(|m| m.offset)
            .ok_or(Error::Remote {
                op: "send a half message",
                detail: "the send result has no offset message id".into(),
            })?;
        let half = Half {
            addr: qr.addr.clone(),
            broker_name: qr.broker_name.clone(),
            commit_log_offset,
            queue_offset: res.queue_offset as i64,
            uniq_key: res.msg_id.clone().unwrap_or_default(),
            transaction_id: res.transaction_id.map(CheetahString::from_string),
        };
        let info = TxnInfo {
            id,
            topic,
            producer_group: group.to_owned(),
            state: TxnState::Pending,
            checks: 0,
        };
        self.txn.book.insert(info, half);
        Ok(PutResult {
            id,
            queue: q as u16,
            queue_offset: 0,
            log_pos: 0,
            stored_ms: now_ms(),
        })
    }

    pub(crate) async fn end_txn(&self, id: &Uuid, decision: Decision) -> Result<TxnInfo> {
        let (info, half) = self.txn.book.decide(id, decision)?;
        let Some(h) = half else { return Ok(info) };
        let header = EndTransactionRequestHeader {
            topic: info.topic.as_str().into(),
            producer_group: info.producer_group.as_str().into(),
            tran_state_table_offset: h.queue_offset,
            commit_log_offset: h.commit_log_offset,
            commit_or_rollback: match decision {
                Decision::Commit => MessageSysFlag::TRANSACTION_COMMIT_TYPE,
                Decision::Rollback => MessageSysFlag::TRANSACTION_ROLLBACK_TYPE,
            },
            from_transaction_check: false,
            msg_id: h.uniq_key.clone(),
            transaction_id: h.transaction_id.clone(),
            rpc_request_header: RpcRequestHeader {
                broker_name: Some(h.broker_name.clone()),
                ..Default::default()
            },
        };
        if let Err(e) = self
            .client
            .handle()
            .end_transaction(
                &h.addr,
                header,
                CheetahString::new(),
                self.client.cfg.timeout_ms,
            )
            .await
        {
            // The decision stands: the next check-back carries it.
            tracing::warn!(%id, error = %remote("end a transaction", &e), "END_TRANSACTION not sent");
        }
        self.bump();
        Ok(info)
    }

    pub(crate) fn txn_info(&self, id: &Uuid) -> Option<TxnInfo> {
        self.txn.book.get(id)
    }

    pub(crate) async fn txn_checks(
        &self,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<TxnCheck>> {
        // A poller makes this process a check-back target for the group.
        self.ensure_txn_producer(group).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let queued = self.txn.book.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let got = self.txn.book.take(group, max);
            if !got.is_empty() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, queued).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}
