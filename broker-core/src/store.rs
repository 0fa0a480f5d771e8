//! The store: commit log + consume queues + key index, and the dispatch
//! that connects them.
//!
//! Data directory layout:
//!
//! ```text
//! log/<20-digit base>        commit-log segments
//! queues/<topic>/<queue>     consume queues (topic names %-encoded)
//! keys.idx                   key and id index
//! topics.json                topics and their queue counts
//! checkpoint.json            a log position below which everything is
//!                            flushed and dispatched (recovery scans from it)
//! ```
//!
//! A record becomes visible to readers (dispatched into its consume queue)
//! only once it is durable under the flush policy, in log order. Dispatch
//! runs off the put path, on its own thread (see `dispatch.rs`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cq::{ConsumeQueue, Entry};
use crate::dispatch::{Dispatcher, Meta, Undispatched};
use crate::error::{Error, Result};
use crate::keys::KeyIndex;
use crate::log::{CommitLog, LogConfig};
use crate::record::{self, Message, Stamp, StoredMessage};

/// How a store behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub log: LogConfig,
    /// Largest body accepted (default 4 MiB).
    pub max_message_bytes: usize,
    /// Create a topic on its first publish (with `default_queues`).
    pub auto_create_topics: bool,
    pub default_queues: u16,
    /// Delete log segments older than this (default 72 h).
    pub retention_age: Duration,
    /// Delete the oldest log segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            log: LogConfig::default(),
            max_message_bytes: 4 << 20,
            auto_create_topics: true,
            default_queues: 4,
            retention_age: Duration::from_secs(72 * 3600),
            retention_bytes: None,
        }
    }
}

/// Which queue a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSelect {
    RoundRobin,
    /// Same key, same queue: FIFO per sharding key.
    ShardingKey(String),
    Queue(u16),
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutResult {
    pub id: Uuid,
    pub queue: u16,
    pub queue_offset: u64,
    pub log_pos: u64,
    pub stored_ms: i64,
}

#[derive(Debug)]
pub(crate) struct Topic {
    pub name: String,
    pub queues: Vec<Arc<ConsumeQueue>>,
    rr: AtomicU32,
}

/// A message checked and placed, before it is encoded.
#[derive(Debug)]
struct Prepared {
    msg: Message,
    topic: Arc<Topic>,
    queue: u16,
    len: usize,
    tag_hash: u32,
}

/// A record found by recovery past the checkpoint, to re-dispatch.
#[derive(Debug)]
struct Redo {
    topic: String,
    queue: u16,
    queue_offset: u64,
    id: Uuid,
    keys: Vec<String>,
    entry: Entry,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    scan_from: u64,
}

/// The embedded broker's storage.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    cfg: StoreConfig,
    /// The writer state is the queue of records not yet dispatched: pushed
    /// under the writer lock, so it is in log order.
    log: Arc<CommitLog<Undispatched>>,
    /// RwLock: every put and read looks a topic up; creation is rare.
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Index entries, written off the put path; also owns the key index.
    dispatch: Arc<Dispatcher>,
    /// Mutex: taken by `close` (or drop) to stop the thread once.
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

thread_local! {
    /// Where a put encodes its records before taking the writer lock;
    /// kept per thread so a put does not allocate for it.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest scratch buffer kept after a put (a 4 MiB message should not
/// pin 4 MiB per thread).
const SCRATCH_KEEP: usize = 1 << 20;

/// Undispatched records past which a put helps dispatch (see `finish`):
/// about 20 MiB of 1 KiB messages.
const MAX_LAG: usize = 16 * 1024;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `%`-encodes a topic name for use as a directory name.
pub(crate) fn dir_name(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' && !out.is_empty() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn redo_of(pos: u64, size: usize, m: StoredMessage) -> Redo {
    Redo {
        entry: Entry {
            log_pos: pos,
            size: size as u32,
            tag_hash: record::tag_hash(m.tag.as_deref()),
            stored_ms: m.stored_ms,
        },
        topic: m.topic,
        queue: m.queue,
        queue_offset: m.queue_offset,
        id: m.id,
        keys: m.keys,
    }
}

// === impl Store ===

impl Store {
    /// Opens the store in `dir`, recovering from a crash if need be.
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let cp: Checkpoint = read_json(&dir.join("checkpoint.json"))?.unwrap_or_default();
        let mut redo = Vec::new();
        let log = Arc::new(CommitLog::open(
            &dir.join("log"),
            cfg.log.clone(),
            cp.scan_from,
            VecDeque::new(),
            |pos, size, m| {
                redo.push(redo_of(pos, size, m));
                Ok(())
            },
        )?);
        let end = log.durable();
        let topic_queues: HashMap<String, u16> =
            read_json(&dir.join("topics.json"))?.unwrap_or_default();
        let mut topics = HashMap::new();
        for (name, n) in topic_queues {
            topics.insert(name.clone(), Arc::new(open_topic(dir, &name, n, end)?));
        }
        let keys = KeyIndex::open(&dir.join("keys.idx"), end)?;
        let store = Store {
            dir: dir.to_owned(),
            cfg,
            log: log.clone(),
            topics: RwLock::new(topics),
            dispatch: Arc::new(Dispatcher::new(log, keys, end)),
            dispatcher: Mutex::new(None),
        };
        let n = redo.len();
        let mut metas = Vec::with_capacity(n.min(4096));
        let mut last = None;
        let mut redo = redo.into_iter().peekable();
        while redo.peek().is_some() {
            metas.clear();
            for r in redo.by_ref().take(4096) {
                metas.push(store.meta_of_redo(r, &mut last)?);
            }
            store.dispatch.write_entries(metas.iter())?;
        }
        for t in store.topics.read().map_err(|_| Error::Closed)?.values() {
            for q in &t.queues {
                q.assigned.store(q.len(), Ordering::Release);
            }
        }
        tracing::info!(dir = %dir.display(), end, redispatched = n, "store open");
        store.write_checkpoint()?;
        let handle = store.dispatch.start()?;
        *store.dispatcher.lock().map_err(|_| Error::Closed)? = Some(handle);
        Ok(store)
    }

    /// A recovered record's meta; creates its topic if the `topics.json`
    /// write that announced it was lost.
    fn meta_of_redo(&self, r: Redo, last: &mut Option<Arc<Topic>>) -> Result<Meta> {
        let topic = match last.as_ref().filter(|t| t.name == r.topic) {
            Some(t) => t.clone(),
            None => {
                let known = self
                    .topics
                    .read()
                    .map_err(|_| Error::Closed)?
                    .get(&r.topic)
                    .cloned();
                let t = match known {
                    Some(t) => t,
                    None => {
                        let n = r.queue.saturating_add(1).max(self.cfg.default_queues);
                        self.create_topic(&r.topic, n)?;
                        self.topic(&r.topic)?
                    }
                };
                *last = Some(t.clone());
                t
            }
        };
        Ok(Meta {
            topic,
            queue: r.queue,
            queue_offset: r.queue_offset,
            id: r.id,
            msg: Message {
                keys: r.keys,
                ..Message::default()
            },
            entry: r.entry,
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates `topic` with `queues` queues; creating it again with the same
    /// count is a no-op.
    pub fn create_topic(&self, topic: &str, queues: u16) -> Result<()> {
        if queues == 0 {
            return Err(Error::Config("a topic needs at least one queue".into()));
        }
        let mut topics = self.topics.write().map_err(|_| Error::Closed)?;
        if let Some(t) = topics.get(topic) {
            let existing = t.queues.len() as u16;
            return if existing == queues {
                Ok(())
            } else {
                Err(Error::TopicExists {
                    topic: topic.to_owned(),
                    existing,
                    requested: queues,
                })
            };
        }
        let t = open_topic(&self.dir, topic, queues, self.log.durable())?;
        topics.insert(topic.to_owned(), Arc::new(t));
        let all: HashMap<&String, u16> = topics
            .iter()
            .map(|(k, v)| (k, v.queues.len() as u16))
            .collect();
        write_json(&self.dir.join("topics.json"), &all)
    }

    /// The number of queues of `topic`, if it exists.
    pub fn queues(&self, topic: &str) -> Option<u16> {
        let topics = self.topics.read().ok()?;
        topics.get(topic).map(|t| t.queues.len() as u16)
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        if let Some(t) = self.topics.read().map_err(|_| Error::Closed)?.get(name) {
            return Ok(t.clone());
        }
        if !self.cfg.auto_create_topics {
            return Err(Error::UnknownTopic(name.to_owned()));
        }
        self.create_topic(name, self.cfg.default_queues)?;
        self.topics
            .read()
            .map_err(|_| Error::Closed)?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(name.to_owned()))
    }

    /// Stores one message; returns once it is durable under the policy.
    pub async fn put(&self, msg: Message, select: QueueSelect) -> Result<PutResult> {
        let prepared = self.prepare(msg, &select, &mut None)?;
        let mut result = None;
        let (end, behind) = self.append([prepared], |r| result = Some(r))?;
        self.finish(end, behind).await?;
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
        let (end, behind) = self.append(prepared, |r| results.push(r))?;
        self.finish(end, behind).await?;
        Ok(results)
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
            msg,
            topic,
            queue,
            len,
        })
    }

    /// Encodes and writes the records (queueing their metas for dispatch);
    /// returns the end of the last and whether dispatch is behind. `out`
    /// gets each record's result.
    fn append<P>(&self, prepared: P, out: impl FnMut(PutResult)) -> Result<(u64, bool)>
    where
        P: IntoIterator<Item = Prepared> + AsRef<[Prepared]>,
    {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            // Encoded outside the writer lock: reading the messages (many
            // small allocations, often cold in cache) is the slow part, and
            // producers on other threads can encode meanwhile.
            for p in prepared.as_ref() {
                record::encode_unsealed(&p.msg, p.len, &mut scratch);
            }
            let r = self.append_encoded(prepared, &scratch, out);
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
        prepared: impl IntoIterator<Item = Prepared>,
        encoded: &[u8],
        mut out: impl FnMut(PutResult),
    ) -> Result<(u64, bool)> {
        let stored_ms = now_ms();
        let (lag, end) = self.log.append_with(|batch, undispatched| {
            let mut at = 0;
            for p in prepared {
                let q = &p.topic.queues[usize::from(p.queue)];
                let offset = q.assigned.load(Ordering::Acquire);
                let stamp = Stamp {
                    id: crate::ids::message_id(stored_ms),
                    queue: p.queue,
                    queue_offset: offset,
                    stored_ms,
                };
                let len = p.len;
                // Always there: `append` encoded exactly `len` bytes each.
                let rec = encoded.get(at..at + len).ok_or(Error::Closed)?;
                at += len;
                let pos = batch.push(len, |buf| {
                    let start = buf.len();
                    buf.extend_from_slice(rec);
                    record::seal(&mut buf[start..], &stamp);
                })?;
                q.assigned.store(offset + 1, Ordering::Release);
                let entry = Entry {
                    log_pos: pos,
                    size: len as u32,
                    tag_hash: p.tag_hash,
                    stored_ms,
                };
                out(PutResult {
                    id: stamp.id,
                    queue: p.queue,
                    queue_offset: offset,
                    log_pos: pos,
                    stored_ms,
                });
                // Encoded: the dispatcher takes the message from here.
                undispatched.push_back(Meta {
                    topic: p.topic,
                    queue: p.queue,
                    queue_offset: offset,
                    id: stamp.id,
                    msg: p.msg,
                    entry,
                });
            }
            Ok(undispatched.len())
        })?;
        Ok((end, lag > MAX_LAG))
    }

    /// Waits until `end` is durable; then, if the dispatcher fell behind,
    /// helps it (waiting for its current batch first): that bounds the
    /// undispatched records, and so the memory they hold.
    async fn finish(&self, end: u64, behind: bool) -> Result<()> {
        self.log.wait_durable(end).await?;
        if behind {
            self.dispatch.dispatch()?;
        }
        Ok(())
    }

    /// A receiver of the dispatched position: it changes whenever new
    /// messages become readable (long polls wait on it).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.dispatch.dispatched.subscribe()
    }

    /// The readable offsets of a queue: `[min, max)`.
    pub fn queue_range(&self, topic: &str, queue: u16) -> Result<(u64, u64)> {
        let q = self.queue(topic, queue)?;
        self.dispatch.catch_up()?;
        let len = q.len();
        let min_pos = self.log.min_pos();
        // The first entry whose record is still retained.
        let (mut lo, mut hi) = (0u64, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match q.get(mid)? {
                Some(e) if e.log_pos < min_pos => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok((lo, len))
    }

    fn queue(&self, topic: &str, queue: u16) -> Result<Arc<ConsumeQueue>> {
        let topics = self.topics.read().map_err(|_| Error::Closed)?;
        let t = topics
            .get(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))?;
        t.queues
            .get(usize::from(queue))
            .cloned()
            .ok_or(Error::UnknownQueue {
                topic: topic.to_owned(),
                queue,
                queues: t.queues.len() as u16,
            })
    }

    /// Up to `max` index entries of a queue from `from`.
    pub fn entries(&self, topic: &str, queue: u16, from: u64, max: usize) -> Result<Vec<Entry>> {
        let q = self.queue(topic, queue)?;
        let len = q.len();
        if from.saturating_add(max as u64) > len && q.assigned.load(Ordering::Acquire) > len {
            // Asked past the dispatched end of a queue that has more.
            self.dispatch.catch_up()?;
        }
        q.range(from, max)
    }

    /// The first offset stored at or after `ms`.
    pub fn offset_at_time(&self, topic: &str, queue: u16, ms: i64) -> Result<u64> {
        let q = self.queue(topic, queue)?;
        self.dispatch.catch_up()?;
        q.offset_at_time(ms)
    }

    /// Reads and verifies the record an entry points at.
    pub fn read(&self, e: &Entry) -> Result<StoredMessage> {
        self.read_at(e.log_pos, e.size as usize)
    }

    fn read_at(&self, pos: u64, size: usize) -> Result<StoredMessage> {
        let mut buf = Vec::new();
        self.log.read(pos, size, &mut buf)?;
        record::decode(&buf, pos).map_err(|why| Error::Corrupt { pos, why })
    }

    fn read_unsized(&self, pos: u64) -> Result<StoredMessage> {
        let mut head = Vec::new();
        self.log.read(pos, 4, &mut head)?;
        match record::frame(&head, self.cfg.log.segment_bytes as usize) {
            Ok(record::Frame::Record(n)) => self.read_at(pos, n),
            Ok(_) => Err(Error::OutOfRange {
                pos,
                min: self.log.min_pos(),
                max: self.log.durable(),
            }),
            Err(why) => Err(Error::Corrupt { pos, why }),
        }
    }

    /// The message with `id`, if retained.
    pub fn get_by_id(&self, id: &Uuid) -> Result<Option<StoredMessage>> {
        self.dispatch.catch_up()?;
        let cands = self
            .dispatch
            .keys
            .lock()
            .map_err(|_| Error::Closed)?
            .by_id(id);
        for pos in cands {
            if let Ok(m) = self.read_unsized(pos) {
                if m.id == *id {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    /// Retained messages of `topic` carrying `key`, oldest first.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Result<Vec<StoredMessage>> {
        self.dispatch.catch_up()?;
        let cands = self
            .dispatch
            .keys
            .lock()
            .map_err(|_| Error::Closed)?
            .by_key(topic, key);
        let mut out = Vec::new();
        for pos in cands {
            if let Ok(m) = self.read_unsized(pos) {
                if m.topic == topic && m.keys.iter().any(|k| k == key) {
                    out.push(m);
                }
            }
        }
        out.sort_by_key(|m| m.log_pos);
        Ok(out)
    }

    /// Writes the recovery checkpoint: everything below it is flushed and
    /// dispatched.
    pub fn write_checkpoint(&self) -> Result<()> {
        // Index files are written without fsync; make what the checkpoint
        // vouches for durable first, or a power loss could lose entries the
        // next recovery would not re-create.
        let scan_from = self.log.flushed().min(self.dispatch.dispatched());
        for t in self.topics.read().map_err(|_| Error::Closed)?.values() {
            for q in &t.queues {
                q.sync_if_dirty()?;
            }
        }
        self.dispatch
            .keys
            .lock()
            .map_err(|_| Error::Closed)?
            .sync()?;
        write_json(&self.dir.join("checkpoint.json"), &Checkpoint { scan_from })
    }

    /// Deletes log segments past the retention age or size.
    pub fn enforce_retention(&self) -> Result<u64> {
        let max_age = self.cfg.retention_age;
        let mut total = self.log.disk_bytes();
        let limit = self.cfg.retention_bytes;
        self.log.retain(|path, size| {
            let old = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
            let big = limit.is_some_and(|l| total > l);
            if old || big {
                total -= size;
            }
            old || big
        })
    }

    /// Flushes, checkpoints and stops.
    pub fn close(&self) -> Result<()> {
        self.stop_dispatcher();
        self.log.close();
        self.dispatch.dispatch()?;
        self.write_checkpoint()
    }

    fn stop_dispatcher(&self) {
        self.dispatch.stop();
        let h = self.dispatcher.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The thread holds the log: stop it, or the log would outlive us.
        self.stop_dispatcher();
    }
}

fn select_queue(topic: &Topic, name: &str, sel: &QueueSelect) -> Result<u16> {
    let n = topic.queues.len() as u32;
    match sel {
        QueueSelect::RoundRobin => Ok((topic.rr.fetch_add(1, Ordering::Relaxed) % n) as u16),
        QueueSelect::ShardingKey(k) => Ok((crc32c::crc32c(k.as_bytes()) % n) as u16),
        QueueSelect::Queue(q) if u32::from(*q) < n => Ok(*q),
        QueueSelect::Queue(q) => Err(Error::UnknownQueue {
            topic: name.to_owned(),
            queue: *q,
            queues: n as u16,
        }),
    }
}

fn open_topic(dir: &Path, name: &str, queues: u16, log_end: u64) -> Result<Topic> {
    let base = dir.join("queues").join(dir_name(name));
    let queues = (0..queues)
        .map(|q| ConsumeQueue::open(&base.join(q.to_string()), log_end).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    Ok(Topic {
        name: name.to_owned(),
        queues,
        rr: AtomicU32::new(0),
    })
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Writes `v` as JSON atomically: a temp file, fsynced, renamed over.
pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(v).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    let f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    std::io::Write::write_all(&mut &f, &bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}
