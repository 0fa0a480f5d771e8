//! Dispatch: making durable records readable, off the put path.
//!
//! A put encodes its record and queues a [`Meta`] for it under the log's
//! writer lock (so metas are in log order), and returns once the record is
//! durable under the flush policy. It writes no index entry itself: the
//! consume-queue entry (24 bytes) and the key-index entries of each record
//! are written by the dispatcher thread, in log order, in batches. The
//! thread wakes when the durable position moves, dispatches everything
//! durable, then sleeps [`WINDOW`] before looking again, so under load one
//! batch holds many records and costs one write per consume queue plus one
//! for the key index (per-record writes cost more than the log append).
//!
//! Readers only see dispatched entries: a consume queue's length moves
//! only after its entries are written. A reader that wants the newest
//! entries (`queue_range`, `entries` past the end, lookups by id or key)
//! first dispatches what is durable itself ([`Dispatcher::catch_up`]), so a
//! message whose put returned is visible to any later read, as before.
//!
//! ## Invariants
//!
//! - `dispatched` (the end of the last dispatched record) never passes the
//!   log's durable position; entries are appended in log order, per queue
//!   with no gap.
//! - Index files lag the log, and are not fsynced per batch. The
//!   checkpoint never passes `dispatched`, and recovery re-dispatches every
//!   record from the checkpoint (a consume queue skips offsets it has, the
//!   key index ignores duplicates), so a crash loses no index entry.
//! - A batch that fails to write stays queued and is retried whole.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::cq::{ConsumeQueue, Entry, ENTRY};
use crate::error::{Error, Result};
use crate::keys::{KeyHashes, KeyIndex};
use crate::log::CommitLog;
use crate::store::Topic;

/// How long the dispatcher waits after a batch before taking the next:
/// the batching window, and the added delay before a consumer waiting on
/// new messages sees them (readers that ask do not wait: they catch up).
pub(crate) const WINDOW: Duration = Duration::from_micros(500);

/// A stored record not yet in its consume queue.
#[derive(Debug)]
pub(crate) struct Meta {
    pub topic: Arc<Topic>,
    pub queue: u16,
    pub queue_offset: u64,
    pub id: Uuid,
    /// The hashes the key index needs, not the message: the put path frees
    /// the message on its own thread once it is encoded. Freeing it here
    /// instead (about 15 allocations made by the producer's thread) cost
    /// more than all the rest of dispatch: a free from another thread is
    /// the allocator's slow path, in glibc and in mimalloc alike.
    pub keys: KeyHashes,
    pub entry: Entry,
}

impl Meta {
    fn end(&self) -> u64 {
        self.entry.log_pos + u64::from(self.entry.size)
    }
}

/// The log's caller state: metas queued by puts, in log order.
pub(crate) type Undispatched = VecDeque<Meta>;

/// Metas taken from the log but not yet durable (or whose write failed).
#[derive(Debug, Default)]
struct Carry {
    metas: VecDeque<Meta>,
    /// An empty queue to swap into the writer state, so taking the queued
    /// metas is O(1) under the writer lock.
    spare: VecDeque<Meta>,
    buffers: Buffers,
}

/// Encoding buffers kept from one batch to the next.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// One per queue run: (queue, first offset, encoded entries).
    runs: Vec<(Arc<ConsumeQueue>, u64, Vec<u8>)>,
    /// Emptied run buffers.
    free: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct Dispatcher {
    log: Arc<CommitLog<Undispatched>>,
    /// Mutex: also serialises dispatch, which must stay in log order.
    carry: Mutex<Carry>,
    /// Mutex: inserts come from dispatch, lookups are rare.
    pub keys: Mutex<KeyIndex>,
    /// The end of the last dispatched record; consumers wait on it.
    pub dispatched: watch::Sender<u64>,
    stop: AtomicBool,
    wake: Notify,
}

// === impl Dispatcher ===

impl Dispatcher {
    pub fn new(log: Arc<CommitLog<Undispatched>>, keys: KeyIndex, end: u64) -> Dispatcher {
        Dispatcher {
            log,
            carry: Mutex::new(Carry::default()),
            keys: Mutex::new(keys),
            dispatched: watch::channel(end).0,
            stop: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    pub fn dispatched(&self) -> u64 {
        *self.dispatched.borrow()
    }

    /// Dispatches now if anything durable is not dispatched yet.
    pub fn catch_up(&self) -> Result<()> {
        if self.dispatched() < self.log.durable() {
            self.dispatch()?;
        }
        Ok(())
    }

    /// Moves every durable, undispatched record into its consume queue and
    /// the key index. Returns how many.
    pub fn dispatch(&self) -> Result<usize> {
        let mut carry = self.carry.lock().map_err(|_| Error::Closed)?;
        let c = &mut *carry;
        // Everything queued so far is later in the log than the carry.
        let mut taken = std::mem::take(&mut c.spare);
        self.log.with_state(|q| std::mem::swap(q, &mut taken))?;
        c.metas.append(&mut taken);
        c.spare = taken;
        let durable = self.log.durable();
        let n = c.metas.iter().take_while(|m| m.end() <= durable).count();
        let Some(end) = n.checked_sub(1).map(|i| c.metas[i].end()) else {
            return Ok(0);
        };
        self.write_entries(c.metas.range(..n), &mut c.buffers)?;
        c.metas.drain(..n);
        self.dispatched.send_replace(end);
        Ok(n)
    }

    /// Appends the records' index entries: one write per consume queue and
    /// one for the key index, however many records.
    pub fn write_entries<'a>(
        &self,
        metas: impl Iterator<Item = &'a Meta> + Clone,
        buffers: &mut Buffers,
    ) -> Result<()> {
        let Buffers { runs, free } = buffers;
        for m in metas.clone() {
            let q =
                m.topic
                    .queues
                    .get(usize::from(m.queue))
                    .ok_or_else(|| Error::UnknownQueue {
                        topic: m.topic.name.clone(),
                        queue: m.queue,
                        queues: m.topic.queues.len() as u16,
                    })?;
            let run = runs.iter_mut().find(|(rq, first, es)| {
                Arc::ptr_eq(rq, q) && *first + (es.len() / ENTRY) as u64 == m.queue_offset
            });
            match run {
                Some((.., es)) => es.extend_from_slice(&m.entry.encode()),
                None => {
                    let mut es = free.pop().unwrap_or_default();
                    es.extend_from_slice(&m.entry.encode());
                    runs.push((q.clone(), m.queue_offset, es));
                }
            }
        }
        let written = runs
            .iter()
            .try_for_each(|(q, first, es)| q.dispatch_many(*first, es));
        for (_, _, mut es) in runs.drain(..) {
            es.clear();
            free.push(es);
        }
        written?;
        let mut keys = self.keys.lock().map_err(|_| Error::Closed)?;
        keys.insert_many(metas.map(|m| (&m.id, m.keys.as_slice(), m.entry.log_pos)))
    }

    /// Starts the dispatcher thread.
    pub fn start(self: &Arc<Self>) -> Result<std::thread::JoinHandle<()>> {
        let d = self.clone();
        std::thread::Builder::new()
            .name("cellgate-dispatch".into())
            .spawn(move || d.run())
            .map_err(|e| Error::Io {
                path: "cellgate-dispatch thread".into(),
                source: e,
            })
    }

    /// Asks the thread to stop; it exits after its current batch.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn run(&self) {
        // The thread only waits on a watch channel: a runtime without I/O
        // or timer drivers is enough.
        let rt = match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "dispatcher cannot start; readers will dispatch");
                return;
            }
        };
        loop {
            rt.block_on(async {
                tokio::select! {
                    () = self.log.durable_moved() => {}
                    () = self.wake.notified() => {}
                }
            });
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.dispatch() {
                tracing::error!(error = %e, "dispatch failed; will retry");
            }
            std::thread::sleep(WINDOW);
        }
    }
}
