//! The writes of concurrent transactions share store calls.
//!
//! A transaction writes its message twice — the half message, then on
//! commit the message in its topic (see `txn.rs`) — and the store's cost
//! is mostly per call: with many producers at once, one `put_many` for
//! every half and commit waiting is far cheaper than one call each. The first committer to find no drain running starts one, as a
//! task of its own, so a caller that gives up (a dropped request) never
//! strands the others; the drain takes everything queued, writes it,
//! answers each waiter, and repeats until the queue is empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::record::Message;
use crate::store::{PutResult, QueueSelect, Store};

/// One write waiting for the shared call.
struct Pending {
    msg: Message,
    select: QueueSelect,
    /// Kept for a commit (the transaction id); new for a half message.
    id: Option<Uuid>,
    done: oneshot::Sender<std::result::Result<PutResult, String>>,
}

/// The commit queue of one broker.
#[derive(Default)]
pub(super) struct Commits {
    /// Mutex: held only to push one commit or to take them all, never
    /// across an await.
    queue: Mutex<Vec<Pending>>,
    /// Whether a drain task is running (set by whoever starts it).
    draining: AtomicBool,
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commits")
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish()
    }
}

// === impl Commits ===

impl Commits {
    /// Stores `msg` (under `id` if given); returns once it is durable,
    /// written together with every other write waiting.
    pub(super) async fn put(
        self: &Arc<Self>,
        store: &Arc<Store>,
        msg: Message,
        select: QueueSelect,
        id: Option<Uuid>,
    ) -> Result<PutResult> {
        let (done, answer) = oneshot::channel();
        self.queue.lock().map_err(|_| Error::Closed)?.push(Pending {
            msg,
            select,
            id,
            done,
        });
        if !self.draining.swap(true, Ordering::AcqRel) {
            let (me, store) = (self.clone(), store.clone());
            tokio::spawn(async move { me.drain(&store).await });
        }
        match answer.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(why)) => Err(Error::Io {
                path: store.dir().to_owned(),
                source: std::io::Error::other(format!("a transaction's write: {why}")),
            }),
            Err(_) => Err(Error::Closed),
        }
    }

    async fn drain(&self, store: &Store) {
        loop {
            let batch = match self.queue.lock() {
                Ok(mut q) => std::mem::take(&mut *q),
                Err(_) => return,
            };
            if batch.is_empty() {
                self.draining.store(false, Ordering::Release);
                // A commit queued between the take and the store above
                // found `draining` set and started nothing: take it over,
                // unless a new drain already has.
                let more = self.queue.lock().map(|q| !q.is_empty()).unwrap_or(false);
                if !more || self.draining.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let mut msgs = Vec::with_capacity(batch.len());
            let mut waiters = Vec::with_capacity(batch.len());
            for p in batch {
                msgs.push((p.msg, p.select, p.id));
                waiters.push(p.done);
            }
            match store.put_many(msgs).await {
                Ok(results) => {
                    for (w, r) in waiters.into_iter().zip(results) {
                        let _ = w.send(Ok(r));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for w in waiters {
                        let _ = w.send(Err(why.clone()));
                    }
                }
            }
        }
    }
}
