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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
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
use crate::convert::{from_rocketmq, to_rocketmq};
use crate::error::remote;
use crate::{now_ms, RocketMqBroker};

/// Decided transactions kept for lookups and idempotent decisions; the
/// oldest decided ones go first beyond this.
const KEEP_DECIDED: usize = 100_000;

/// Where END_TRANSACTION must point: the half message as the broker last
/// stored it.
#[derive(Debug, Clone)]
struct Half {
    addr: CheetahString,
    broker_name: CheetahString,
    commit_log_offset: i64,
    queue_offset: i64,
    uniq_key: CheetahString,
    transaction_id: Option<CheetahString>,
}

#[derive(Debug)]
struct Entry {
    info: TxnInfo,
    half: Option<Half>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By id; ids are time-ordered (UUIDv7), so the first are the oldest.
    txns: BTreeMap<Uuid, Entry>,
    /// Producer group → check-backs the app has not fetched yet, oldest
    /// first; a transaction appears once however often the broker asked.
    pending: HashMap<String, BTreeMap<Uuid, TxnCheck>>,
}

/// The transactions this process knows.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// A std mutex: the client calls the listener synchronously (on a
    /// blocking thread), and no section awaits.
    inner: Mutex<Inner>,
    /// Wakes long polls when a check-back is queued.
    queued: tokio::sync::Notify,
}

/// The transaction producers, one per group. An async mutex: starting a
/// producer awaits, and it happens once per group.
#[derive(Default)]
pub(crate) struct Producers(pub tokio::sync::Mutex<HashMap<String, TransactionMQProducer>>);

impl std::fmt::Debug for Producers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producers").finish_non_exhaustive()
    }
}

// === impl Book ===

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, info: TxnInfo, half: Half) {
        let mut g = self.lock();
        g.txns.insert(
            info.id,
            Entry {
                info,
                half: Some(half),
            },
        );
        if g.txns.len() > KEEP_DECIDED {
            let old: Vec<Uuid> = g
                .txns
                .iter()
                .filter(|(_, e)| !matches!(e.info.state, TxnState::Pending))
                .map(|(id, _)| *id)
                .take(g.txns.len() - KEEP_DECIDED)
                .collect();
            for id in old {
                g.txns.remove(&id);
            }
        }
    }

    /// Answers one check-back of the broker.
    fn on_check(
        &self,
        routes: &RouteCache,
        group: &str,
        msg: &MessageExt,
        max_checks: u32,
    ) -> LocalTransactionState {
        let props = msg.properties();
        let prop = |name: &str| props.get(name).map(|v| v.as_str().to_owned());
        let topic =
            prop(MessageConst::PROPERTY_REAL_TOPIC).unwrap_or_else(|| msg.topic().to_string());
        let qid: i32 = prop(MessageConst::PROPERTY_REAL_QUEUE_ID)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| msg.queue_id());
        let broker = msg.broker_name();
        let queue = routes
            .read()
            .ok()
            .and_then(|m| m.get(&topic).cloned())
            .and_then(|r| {
                r.queues.iter().position(|q| {
                    q.queue_id == qid && (broker.is_empty() || q.broker_name.as_str() == broker)
                })
            })
            .unwrap_or(qid.max(0) as usize) as u16;
        let mut message = from_rocketmq(msg, queue);
        message.topic = topic.clone();
        let half = Half {
            addr: CheetahString::from_string(msg.store_host().to_string()),
            broker_name: CheetahString::from_string(msg.broker_name().to_owned()),
            commit_log_offset: msg.commit_log_offset(),
            queue_offset: msg.queue_offset(),
            uniq_key: prop(MessageConst::PROPERTY_UNIQ_CLIENT_MESSAGE_ID_KEYIDX)
                .map(CheetahString::from_string)
                .unwrap_or_default(),
            transaction_id: msg.transaction_id().cloned(),
        };
        let id = message.id;
        let mut g = self.lock();
        let e = g.txns.entry(id).or_insert_with(|| Entry {
            info: TxnInfo {
                id,
                topic,
                producer_group: group.to_owned(),
                state: TxnState::Pending,
                checks: 0,
            },
            half: None,
        });
        e.half = Some(half);
        let answer = match &e.info.state {
            TxnState::Committed => LocalTransactionState::CommitMessage,
            TxnState::RolledBack { .. } => LocalTransactionState::RollbackMessage,
            TxnState::Pending | TxnState::Deciding if e.info.checks >= max_checks => {
                e.info.state = TxnState::RolledBack {
                    reason: format!("no decision after {max_checks} check-backs"),
                };
                LocalTransactionState::RollbackMessage
            }
            TxnState::Pending | TxnState::Deciding => {
                e.info.checks += 1;
                let check = TxnCheck {
                    info: e.info.clone(),
                    message,
                };
                g.pending
                    .entry(group.to_owned())
                    .or_default()
                    .insert(id, check);
                self.queued.notify_waiters();
                return LocalTransactionState::Unknown;
            }
        };
        if let Some(p) = g.pending.get_mut(group) {
            p.remove(&id);
        }
        answer
    }

    fn take(&self, group: &str, max: usize) -> Vec<TxnCheck> {
        let mut g = self.lock();
        let Some(p) = g.pending.get_mut(group) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some((_, c)) = p.pop_first() else { break };
            out.push(c);
        }
        out
    }

    /// Records `decision`; the half to end, unless it was decided already.
    fn decide(&self, id: &Uuid, decision: Decision) -> Result<(TxnInfo, Option<Half>)> {
        let mut g = self.lock();
        let e = g.txns.get_mut(id).ok_or(Error::UnknownTransaction(*id))?;
        match (&e.info.state, decision) {
            (TxnState::Committed, Decision::Commit)
            | (TxnState::RolledBack { .. }, Decision::Rollback) => {
                return Ok((e.info.clone(), None))
            }
            (TxnState::Committed, Decision::Rollback)
            | (TxnState::RolledBack { .. }, Decision::Commit) => {
                let reason = match &e.info.state {
                    TxnState::RolledBack { reason } => reason.clone(),
                    _ => String::new(),
                };
                return Err(Error::TransactionConflict {
                    id: *id,
                    state: e.info.state.as_str(),
                    reason,
                });
            }
            (TxnState::Pending | TxnState::Deciding, Decision::Commit) => {
                e.info.state = TxnState::Committed
            }
            (TxnState::Pending | TxnState::Deciding, Decision::Rollback) => {
                e.info.state = TxnState::RolledBack {
                    reason: "rolled back by the producer".into(),
                }
            }
        }
        let out = (e.info.clone(), e.half.clone());
        let group = e.info.producer_group.clone();
        if let Some(p) = g.pending.get_mut(&group) {
            p.remove(id);
        }
        Ok(out)
    }

    fn get(&self, id: &Uuid) -> Option<TxnInfo> {
        self.lock().txns.get(id).map(|e| e.info.clone())
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
        let mut m = to_rocketmq(&msg, &id, None)?;
        m.put_property(
            CheetahString::from_static_str(MessageConst::PROPERTY_TRANSACTION_PREPARED),
            CheetahString::from_static_str("true"),
        );
        m.put_property(
            CheetahString::from_static_str(MessageConst::PROPERTY_PRODUCER_GROUP),
            CheetahString::from_string(group.to_owned()),
        );
        let res = self
            .client
            .producer
            .send_to_queue(m, qr.mq(&msg.topic))
            .await
            .map_err(|e| remote("send a half message", &e))?
            .ok_or(Error::Remote {
                op: "send a half message",
                detail: "the client returned no send result".into(),
            })?;
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
            topic: msg.topic.clone(),
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
