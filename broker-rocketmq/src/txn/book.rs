//! The book of transactions this process knows: their state, where their
//! half messages are, and the check-backs waiting for the app's long poll.
//! See the parent module for how it is used.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use cellgate_broker_core::{Decision, Error, Result, TxnCheck, TxnInfo, TxnState};
use cheetah_string::CheetahString;
use rocketmq_client_rust::LocalTransactionState;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::{MessageConst, MessageTrait};
use uuid::Uuid;

use crate::client::RouteCache;
use crate::convert::from_rocketmq;

/// Decided transactions kept for lookups and idempotent decisions; the
/// oldest decided ones go first beyond this.
const KEEP_DECIDED: usize = 100_000;

/// Where END_TRANSACTION must point: the half message as the broker last
/// stored it.
#[derive(Debug, Clone)]
pub(crate) struct Half {
    pub addr: CheetahString,
    pub broker_name: CheetahString,
    pub commit_log_offset: i64,
    pub queue_offset: i64,
    pub uniq_key: CheetahString,
    pub transaction_id: Option<CheetahString>,
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
    pub(crate) queued: tokio::sync::Notify,
}

// === impl Book ===

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, info: TxnInfo, half: Half) {
        let mut g = self.lock();
        g.txns.insert(
            info.id,
            Entry {
                info,
                half: Some(half),
            },
        );
        if g.txns.len() > KEEP_DECIDED {
            // Down to 90 %, so the scan is paid once per 10 % of inserts,
            // not on every insert past the bound.
            let old: Vec<Uuid> = g
                .txns
                .iter()
                .filter(|(_, e)| !matches!(e.info.state, TxnState::Pending))
                .map(|(id, _)| *id)
                .take(g.txns.len() - KEEP_DECIDED * 9 / 10)
                .collect();
            for id in old {
                g.txns.remove(&id);
            }
        }
    }

    /// Answers one check-back of the broker.
    pub(crate) fn on_check(
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

    pub(crate) fn take(&self, group: &str, max: usize) -> Vec<TxnCheck> {
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
    pub(crate) fn decide(&self, id: &Uuid, decision: Decision) -> Result<(TxnInfo, Option<Half>)> {
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

    pub(crate) fn get(&self, id: &Uuid) -> Option<TxnInfo> {
        self.lock().txns.get(id).map(|e| e.info.clone())
    }
}
