//! The put path: check and place messages, encode them outside the
//! writer lock, stamp and seal them under it, and wait for durability.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{now_ms, PutResult, QueueSelect, Store, Topic};
use crate::cq::Entry;
use crate::dispatch::{Meta, Undispatched};
use crate::error::{Error, Result};
use crate::keys::KeyHashes;
use crate::log::{Batch, Lead};
use crate::record::{self, Kept, Message, Stamp};

mod copies;

/// A message checked and placed, before it is encoded.
#[derive(Debug)]
struct Prepared {
    msg: Message,
    /// Moved into the record's meta under the writer lock (`None` after).
    topic: Option<Arc<Topic>>,
    /// Likewise: what the key index needs of the message.
    keys: KeyHashes,
    queue: u16,
    len: usize,
    tag_hash: u32,
    /// A copy keeps its origin's message id; others get a new one.
    keep_id: Option<uuid::Uuid>,
    /// Marked as a copy ([`Kept::Copy`]).
    copy: bool,
    /// The log position of an earlier record with the same body: the
    /// record is encoded referring to it (`len` is then that size), and
    /// written whole (`whole_len`) if it would land in another segment.
    body_at: Option<u64>,
    whole_len: usize,
}

/// One message of [`Store::put_one`] (a transaction's commit) or of
/// `put_many` (the router's copies: `body_at` is `None` there).
#[derive(Debug)]
pub(crate) struct Put {
    pub msg: Message,
    pub select: QueueSelect,
    /// Kept (a copy, a transaction's commit) or new.
    pub keep_id: Option<uuid::Uuid>,
    /// A copy of a message stored in another broker ([`Kept::Copy`]).
    pub copy: bool,
    /// The log position of a stored record whose body is `msg.body`, byte
    /// for byte (a commit's half message): the store may write `msg`
    /// referring to that body instead of a second copy (see
    /// `record/shared_body.rs`).
    pub body_at: Option<u64>,
}

thread_local! {
    /// Where a put encodes its records before taking the writer lock;
    /// kept per thread so a put does not allocate for it.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest scratch buffer kept after a put: a router's batch of 2,048
/// copies of 1 KiB messages (2.6 MiB) keeps its buffer, where a limit of
/// 1 MiB made every such batch allocate, fault in and grow a new one; a
/// batch of messages of several MiB should still not pin them per thread.
const SCRATCH_KEEP: usize = 4 << 20;

/// The smallest body a commit shares with its half instead of copying.
const SHARE_BODY_FROM: usize = 256;

/// Undispatched records past which a put helps dispatch (see `finish`):
/// about 20 MiB of 1 KiB messages.
const MAX_LAG: usize = 16 * 1024;

impl Store {
    /// Stores one message; returns once it is durable under the policy.
    pub async fn put(&self, msg: Message, select: QueueSelect) -> Result<PutResult> {
        let prepared = self.prepare(msg, &select, &mut None)?;
        self.put_prepared(prepared).await
    }

    /// [`Store::put`] for a [`Put`]: a transaction's commit.
    pub(crate) async fn put_one(&self, put: Put) -> Result<PutResult> {
        let prepared = self.prepare_put(put, &mut None)?;
        self.put_prepared(prepared).await
    }

    async fn put_prepared(&self, prepared: Prepared) -> Result<PutResult> {
        let mut result = None;
        let appended = self.append([prepared], |r| result = Some(r))?;
        self.finish(appended).await?;
        result.ok_or(Error::Closed)
    }

    /// Stores messages in order, with one write and one durability wait.
    pub async fn put_batch(&self, msgs: Vec<(Message, QueueSelect)>) -> Result<Vec<PutResult>> {
        let mut prepared = Vec::with_capacity(msgs.len());
        let mut last = None;
        for (m, sel) in msgs {
            prepared.push(self.prepare(m, &sel, &mut last)?);
        }
        let mut results = Vec::with_capacity(prepared.len());
        let appended = self.append(prepared, |r| results.push(r))?;
        self.finish(appended).await?;
        Ok(results)
    }

    /// Stores messages that already have an id, each keeping it: copies of
    /// messages stored elsewhere (a router's copy is the same message in
    /// another cell, and the id is how a destination tells a copy it
    /// already holds), or messages moved within this broker; `kept` says
    /// which.
    pub async fn put_copies(
        &self,
        msgs: Vec<(Message, QueueSelect, uuid::Uuid)>,
        kept: Kept,
    ) -> Result<Vec<PutResult>> {
        let msgs = msgs.into_iter().map(|(msg, select, id)| Put {
            msg,
            select,
            keep_id: Some(id),
            copy: kept == Kept::Copy,
            body_at: None,
        });
        self.put_many(msgs).await
    }

    /// Stores messages in order with one write and one durability wait,
    /// each as its [`Put`] says.
    async fn put_many(&self, msgs: impl IntoIterator<Item = Put>) -> Result<Vec<PutResult>> {
        let msgs = msgs.into_iter();
        let mut prepared = Vec::with_capacity(msgs.size_hint().0);
        let mut last = None;
        for put in msgs {
            prepared.push(self.prepare_put(put, &mut last)?);
        }
        let mut results = Vec::with_capacity(prepared.len());
        let appended = self.append(prepared, |r| results.push(r))?;
        self.finish(appended).await?;
        Ok(results)
    }

    /// The queue `sel` picks in `topic` now (creating the topic when
    /// allowed): a delayed or transactional message keeps its queue choice
    /// from publish time to delivery.
    pub fn pick_queue(&self, topic: &str, sel: &QueueSelect) -> Result<u16> {
        let t = self.topic(topic)?;
        select_queue(&t, topic, sel)
    }

    /// [`Store::prepare`] for a [`Put`].
    fn prepare_put(&self, put: Put, last: &mut Option<Arc<Topic>>) -> Result<Prepared> {
        let mut p = self.prepare(put.msg, &put.select, last)?;
        p.keep_id = put.keep_id;
        p.copy = put.copy;
        // Every read of a referring record reads its half too: below a
        // few hundred bytes of body, the bytes saved are not worth that.
        if p.msg.body.len() >= SHARE_BODY_FROM {
            if let Some(at) = put.body_at {
                p.body_at = Some(at);
                p.len = record::encoded_len_at(&p.msg)?;
            }
        }
        Ok(p)
    }

    /// Checks a message and picks its queue; `last` caches the topic of the
    /// previous message of a batch (usually the same).
    fn prepare(
        &self,
        msg: Message,
        sel: &QueueSelect,
        last: &mut Option<Arc<Topic>>,
    ) -> Result<Prepared> {
        if msg.body.len() > self.cfg.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: msg.body.len(),
                max: self.cfg.max_message_bytes,
            });
        }
        let len = record::encoded_len(&msg)?;
        let topic = match last.as_ref().filter(|t| t.name == msg.topic) {
            Some(t) => t.clone(),
            None => {
                let t = self.topic(&msg.topic)?;
                *last = Some(t.clone());
                t
            }
        };
        let queue = select_queue(&topic, &msg.topic, sel)?;
        Ok(Prepared {
            tag_hash: record::tag_hash(msg.tag.as_deref()),
            keys: KeyHashes::of(topic.crc, &topic.name, &msg.keys),
            msg,
            topic: Some(topic),
            queue,
            len,
            keep_id: None,
            copy: false,
            body_at: None,
            whole_len: len,
        })
    }

    /// Encodes and writes the records (queueing their metas for dispatch);
    /// returns the end of the last and whether dispatch is behind. `out`
    /// gets each record's result. The messages are dropped here, after the
    /// writer lock is released, on the caller's thread: an allocator frees
    /// a thread's own allocations far more cheaply than another thread's.
    fn append<P>(&self, prepared: P, out: impl FnMut(PutResult)) -> Result<Appended<'_>>
    where
        P: AsMut<[Prepared]> + AsRef<[Prepared]>,
    {
        self.encode_and_append(
            prepared,
            |_, p, buf| match p.body_at {
                Some(pos) => {
                    let at = record::BodyAt {
                        pos,
                        len: p.msg.body.len() as u32,
                    };
                    record::encode_unsealed_at(&p.msg, at, p.len, buf);
                }
                None => record::encode_unsealed(&p.msg, p.len, buf),
            },
            out,
        )
    }

    /// Encodes each record with `encode(index, prepared, buf)` into this
    /// thread's scratch buffer, marks copies, then appends them all
    /// ([`Store::append_encoded`]). Encoding runs outside the writer lock:
    /// reading the messages (many small allocations, often cold in cache)
    /// is the slow part, and producers on other threads encode meanwhile.
    fn encode_and_append<P>(
        &self,
        mut prepared: P,
        mut encode: impl FnMut(usize, &Prepared, &mut Vec<u8>),
        out: impl FnMut(PutResult),
    ) -> Result<Appended<'_>>
    where
        P: AsMut<[Prepared]> + AsRef<[Prepared]>,
    {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            // One allocation for the batch, not one per doubling.
            scratch.reserve(prepared.as_ref().iter().map(|p| p.len).sum());
            for (i, p) in prepared.as_ref().iter().enumerate() {
                let start = scratch.len();
                encode(i, p, &mut scratch);
                if p.copy {
                    record::mark_copy(&mut scratch[start..]);
                }
            }
            let r = self.append_encoded(prepared.as_mut(), &scratch, out);
            if scratch.capacity() > SCRATCH_KEEP {
                *scratch = Vec::new();
            }
            r
        })
    }

    /// The part of [`Store::append`] under the writer lock: stamps each
    /// record (queue offset, id, time), seals it into the log's pending
    /// bytes and queues its meta.
    fn append_encoded(
        &self,
        prepared: &mut [Prepared],
        encoded: &[u8],
        mut out: impl FnMut(PutResult),
    ) -> Result<Appended<'_>> {
        let stored_ms = now_ms();
        let (lag, end, lead) = self.log.append_deferred(|batch, undispatched| {
            let mut at = 0;
            for p in prepared {
                // Always there: each record is appended once.
                let topic = p.topic.take().ok_or(Error::Closed)?;
                let q = &topic.queues[usize::from(p.queue)];
                let offset = q.assigned.load(Ordering::Acquire);
                let stamp = Stamp {
                    id: p
                        .keep_id
                        .unwrap_or_else(|| crate::ids::message_id(stored_ms)),
                    queue: p.queue,
                    queue_offset: offset,
                    stored_ms,
                };
                // Always there: `append` encoded exactly `p.len` bytes each.
                let rec = encoded.get(at..at + p.len).ok_or(Error::Closed)?;
                at += p.len;
                let (pos, len) = push_prepared(batch, p, rec, &stamp)?;
                q.assigned.store(offset + 1, Ordering::Release);
                let entry = Entry {
                    log_pos: pos,
                    size: len as u32,
                    tag_hash: p.tag_hash,
                    stored_ms,
                    copy: p.copy,
                };
                out(PutResult {
                    id: stamp.id,
                    queue: p.queue,
                    queue_offset: offset,
                    log_pos: pos,
                    stored_ms,
                });
                undispatched.push_back(Meta {
                    topic,
                    queue: p.queue,
                    queue_offset: offset,
                    id: stamp.id,
                    keys: std::mem::take(&mut p.keys),
                    entry,
                });
            }
            Ok(undispatched.len())
        })?;
        Ok(Appended {
            end,
            behind: lag > MAX_LAG,
            lead,
        })
    }

    /// Writes the log if this append leads, after a yield (see
    /// [`CommitLog::append_deferred`]); waits until the records are
    /// durable; then, if the dispatcher fell behind, helps it (waiting for
    /// its current batch first): that bounds the undispatched records, and
    /// so the memory they hold.
    async fn finish(&self, appended: Appended<'_>) -> Result<()> {
        let Appended { end, behind, lead } = appended;
        if let Some(lead) = lead {
            tokio::task::yield_now().await;
            lead.write()?;
        }
        self.log.wait_durable(end).await?;
        if behind {
            self.dispatch.dispatch()?;
        }
        Ok(())
    }
}

/// What an append leaves its caller: the end of its records, whether the
/// dispatcher is behind, and the log's write if the caller leads it.
struct Appended<'a> {
    end: u64,
    behind: bool,
    lead: Option<Lead<'a, Undispatched>>,
}

/// Places one record, sealed with `stamp`: `rec` as encoded, or, for a
/// record that would refer to a body in another segment (`BODY_AT`'s
/// invariant: same segment; rare, the segment rolled since its half),
/// `p.msg` whole, encoded here. Returns its position and size.
fn push_prepared(
    batch: &mut Batch<'_>,
    p: &Prepared,
    rec: &[u8],
    stamp: &Stamp,
) -> Result<(u64, usize)> {
    let whole = match p.body_at {
        Some(body) if !batch.lands_with(body, p.len) => p.whole_len,
        _ => {
            let pos = batch.push(p.len, |buf| {
                let start = buf.len();
                buf.extend_from_slice(rec);
                record::seal(&mut buf[start..], stamp);
            })?;
            return Ok((pos, p.len));
        }
    };
    let pos = batch.push(whole, |buf| {
        let start = buf.len();
        record::encode_unsealed(&p.msg, whole, buf);
        if p.copy {
            record::mark_copy(&mut buf[start..]);
        }
        record::seal(&mut buf[start..], stamp);
    })?;
    Ok((pos, whole))
}

fn select_queue(topic: &Topic, name: &str, sel: &QueueSelect) -> Result<u16> {
    sel.pick(name, topic.queues.len() as u16, &topic.rr)
}
