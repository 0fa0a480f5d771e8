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
//! only once it is durable under the flush policy, in log order.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cq::{ConsumeQueue, Entry};
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
struct Topic {
    queues: Vec<Arc<ConsumeQueue>>,
    rr: AtomicU32,
}

/// A stored record not yet in its consume queue.
#[derive(Debug, Clone)]
struct Meta {
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
    log: CommitLog<VecDeque<Meta>>,
    /// RwLock: every put and read looks a topic up; creation is rare.
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Mutex: dispatch must be serial to keep each queue in order.
    dispatch_lock: Mutex<()>,
    /// Mutex: inserts come from dispatch, lookups are rare.
    keys: Mutex<KeyIndex>,
    /// The end of the last dispatched record; consumers wait on it.
    dispatched: watch::Sender<u64>,
    stop: Arc<AtomicBool>,
}

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

fn meta_of(pos: u64, size: usize, m: StoredMessage) -> Meta {
    Meta {
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
        let log = CommitLog::open(
            &dir.join("log"),
            cfg.log.clone(),
            cp.scan_from,
            VecDeque::new(),
            |pos, size, m| {
                redo.push(meta_of(pos, size, m));
                Ok(())
            },
        )?;
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
            log,
            topics: RwLock::new(topics),
            dispatch_lock: Mutex::new(()),
            keys: Mutex::new(keys),
            dispatched: watch::channel(end).0,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let n = redo.len();
        for chunk in redo.chunks(4096) {
            store.dispatch_batch(chunk)?;
        }
        for t in store.topics.read().map_err(|_| Error::Closed)?.values() {
            for q in &t.queues {
                q.assigned.store(q.len(), Ordering::Release);
            }
        }
        tracing::info!(dir = %dir.display(), end, redispatched = n, "store open");
        store.write_checkpoint()?;
        Ok(store)
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
        let mut r = self.put_batch(vec![(msg, select)]).await?;
        r.pop().ok_or(Error::Closed)
    }

    /// Stores messages in order, with one write and one durability wait.
    pub async fn put_batch(&self, msgs: Vec<(Message, QueueSelect)>) -> Result<Vec<PutResult>> {
        let mut prepared = Vec::with_capacity(msgs.len());
        for (m, sel) in msgs {
            if m.body.len() > self.cfg.max_message_bytes {
                return Err(Error::MessageTooLarge {
                    size: m.body.len(),
                    max: self.cfg.max_message_bytes,
                });
            }
            let len = record::encoded_len(&m)?;
            let topic = self.topic(&m.topic)?;
            let queue = select_queue(&topic, &m.topic, &sel)?;
            prepared.push((m, topic, queue, len));
        }
        let stored_ms = now_ms();
        let (results, end) = self.log.append_with(|batch, undispatched| {
            let mut out = Vec::with_capacity(prepared.len());
            for (m, topic, queue, len) in &prepared {
                let q = &topic.queues[usize::from(*queue)];
                let offset = q.assigned.load(Ordering::Acquire);
                let stamp = Stamp {
                    id: crate::ids::message_id(stored_ms),
                    queue: *queue,
                    queue_offset: offset,
                    stored_ms,
                };
                let pos = batch.push(*len, |buf| record::encode(m, &stamp, *len, buf))?;
                q.assigned.store(offset + 1, Ordering::Release);
                undispatched.push_back(Meta {
                    topic: m.topic.clone(),
                    queue: *queue,
                    queue_offset: offset,
                    id: stamp.id,
                    keys: m.keys.clone(),
                    entry: Entry {
                        log_pos: pos,
                        size: *len as u32,
                        tag_hash: record::tag_hash(m.tag.as_deref()),
                        stored_ms,
                    },
                });
                out.push(PutResult {
                    id: stamp.id,
                    queue: *queue,
                    queue_offset: offset,
                    log_pos: pos,
                    stored_ms,
                });
            }
            Ok(out)
        })?;
        self.log.wait_durable(end).await?;
        self.dispatch()?;
        Ok(results)
    }

    /// Moves every durable, undispatched record into its consume queue.
    fn dispatch(&self) -> Result<()> {
        let _serial = self.dispatch_lock.lock().map_err(|_| Error::Closed)?;
        let durable = self.log.durable();
        let ready: Vec<Meta> = self.log.with_state(|q| {
            let n = q
                .iter()
                .take_while(|m| m.entry.log_pos + u64::from(m.entry.size) <= durable)
                .count();
            q.drain(..n).collect()
        })?;
        let Some(last) = ready.last() else {
            return Ok(());
        };
        let end = last.entry.log_pos + u64::from(last.entry.size);
        self.dispatch_batch(&ready)?;
        self.dispatched.send_replace(end);
        Ok(())
    }

    /// Appends the records' index entries: one write per consume queue and
    /// one for the key index, however many records (per-record writes
    /// would cost more than the log append itself).
    fn dispatch_batch(&self, metas: &[Meta]) -> Result<()> {
        // One run per queue; the topic map is consulted (and locked) once
        // per queue in the batch, not once per record.
        /// Consecutive entries of one queue: (topic, queue, its file, first offset, entries).
        type Run<'a> = (&'a str, u16, Arc<ConsumeQueue>, u64, Vec<Entry>);
        let mut runs: Vec<Run<'_>> = Vec::new();
        for m in metas {
            let run = runs.iter_mut().find(|(t, q, _, first, es)| {
                *t == m.topic && *q == m.queue && *first + es.len() as u64 == m.queue_offset
            });
            match run {
                Some((.., es)) => es.push(m.entry),
                None => runs.push((
                    &m.topic,
                    m.queue,
                    self.queue_for(m)?,
                    m.queue_offset,
                    vec![m.entry],
                )),
            }
        }
        for (_, _, q, first, entries) in &runs {
            q.dispatch_many(*first, entries)?;
        }
        let mut keys = self.keys.lock().map_err(|_| Error::Closed)?;
        keys.insert_many(
            metas
                .iter()
                .map(|m| (m.topic.as_str(), &m.id, m.keys.as_slice(), m.entry.log_pos)),
        )
    }

    fn queue_for(&self, m: &Meta) -> Result<Arc<ConsumeQueue>> {
        let topic = self
            .topics
            .read()
            .map_err(|_| Error::Closed)?
            .get(&m.topic)
            .cloned();
        let topic = match topic {
            Some(t) => t,
            None => {
                // Recovery: a topic whose topics.json write was lost.
                let n = m.queue.saturating_add(1).max(self.cfg.default_queues);
                self.create_topic(&m.topic, n)?;
                return self.queue_for(m);
            }
        };
        topic
            .queues
            .get(usize::from(m.queue))
            .cloned()
            .ok_or_else(|| Error::UnknownQueue {
                topic: m.topic.clone(),
                queue: m.queue,
                queues: topic.queues.len() as u16,
            })
    }

    /// A receiver of the dispatched position: it changes whenever new
    /// messages become readable (long polls wait on it).
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.dispatched.subscribe()
    }

    /// The readable offsets of a queue: `[min, max)`.
    pub fn queue_range(&self, topic: &str, queue: u16) -> Result<(u64, u64)> {
        let q = self.queue(topic, queue)?;
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
        self.queue(topic, queue)?.range(from, max)
    }

    /// The first offset stored at or after `ms`.
    pub fn offset_at_time(&self, topic: &str, queue: u16, ms: i64) -> Result<u64> {
        self.queue(topic, queue)?.offset_at_time(ms)
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
        let cands = self.keys.lock().map_err(|_| Error::Closed)?.by_id(id);
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
        let cands = self
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
        let scan_from = self.log.flushed().min(*self.dispatched.borrow());
        for t in self.topics.read().map_err(|_| Error::Closed)?.values() {
            for q in &t.queues {
                q.sync_if_dirty()?;
            }
        }
        self.keys.lock().map_err(|_| Error::Closed)?.sync()?;
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
        self.stop.store(true, Ordering::Relaxed);
        self.log.close();
        self.dispatch()?;
        self.write_checkpoint()
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
