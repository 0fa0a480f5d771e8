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
//!
//! Here: topics, checkpoint, retention, close. Opening (recovery's
//! re-dispatch) is in `open.rs`, the put path in `put.rs`, reads and
//! lookups in `read.rs`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cq::{ConsumeQueue, Entry};
use crate::dispatch::{Dispatcher, Meta, Undispatched};
use crate::error::{Error, Result};
use crate::keys::{KeyHashes, KeyIndex};
use crate::log::{CommitLog, LogConfig};
use crate::record::RecordMeta;

mod open;
mod put;
pub(crate) use put::Put;
mod read;

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

impl QueueSelect {
    /// The queue of `topic` (with `queues` queues) this selects; `rr` is the
    /// topic's round-robin counter. Every backend picks this way, so a key
    /// maps to the same queue number on each (a copy keeps its original's
    /// queue), and across versions: CRC32C, not the std hasher.
    pub fn pick(&self, topic: &str, queues: u16, rr: &AtomicU32) -> Result<u16> {
        let n = u32::from(queues.max(1));
        match self {
            QueueSelect::RoundRobin => Ok((rr.fetch_add(1, Ordering::Relaxed) % n) as u16),
            QueueSelect::ShardingKey(k) => Ok((crc32c::crc32c(k.as_bytes()) % n) as u16),
            QueueSelect::Queue(q) if *q < queues => Ok(*q),
            QueueSelect::Queue(q) => Err(Error::UnknownQueue {
                topic: topic.to_owned(),
                queue: *q,
                queues,
            }),
        }
    }
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
    /// CRC32C of the name, for the key index's hashes.
    pub crc: u32,
    pub queues: Vec<Arc<ConsumeQueue>>,
    rr: AtomicU32,
}

/// Topics by name. Every put looks its topic up here, and std's SipHash
/// of a topic name cost more than the rest of the lookup (~200
/// instructions per put): names are hashed a word at a time with a
/// multiply-rotate hash (FxHash's) instead. Not keyed, so not flood-proof,
/// which a topic map need not be: topics are few and come from the rules
/// the gateway enforces.
type TopicMap = HashMap<String, Arc<Topic>, BuildHasherDefault<NameHasher>>;

#[derive(Debug, Default)]
struct NameHasher(u64);

impl NameHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in words.by_ref() {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.add(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        let mut a = [0u8; 8];
        a[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(a) ^ ((rest.len() as u64) << 59));
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn finish(&self) -> u64 {
        self.0
    }
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
    topics: RwLock<TopicMap>,
    /// Index entries, written off the put path; also owns the key index.
    dispatch: Arc<Dispatcher>,
    /// Mutex: taken by `close` (or drop) to stop the thread once.
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `checkpoint.json`, rewritten only when the position moves.
    checkpoint: JsonFile,
}

pub(crate) use crate::ids::now_ms;

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

// === impl Store ===

impl Store {
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

    /// Writes the recovery checkpoint: everything below it is flushed and
    /// dispatched.
    pub fn write_checkpoint(&self) -> Result<()> {
        // Index files are written without fsync; make what the checkpoint
        // vouches for durable first, or a power loss could lose entries the
        // next recovery would not re-create.
        let scan_from = self.log.flushed().min(self.dispatch.dispatched());
        let path = self.dir.join("checkpoint.json");
        // Unmoved: what it vouches for was made durable when it was written.
        self.checkpoint.write(&path, &Checkpoint { scan_from }, || {
            for t in self.topics.read().map_err(|_| Error::Closed)?.values() {
                for q in &t.queues {
                    q.sync_if_dirty()?;
                }
            }
            // Fsynced outside the index's lock: the dispatcher takes it
            // for every batch.
            let keys = || self.dispatch.keys.lock().map_err(|_| Error::Closed);
            let Some(pending) = keys()?.take_sync() else {
                return Ok(());
            };
            pending.run().inspect_err(|_| {
                if let Ok(mut k) = keys() {
                    k.sync_failed();
                }
            })
        })
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

fn open_topic(dir: &Path, name: &str, queues: u16, log_end: u64) -> Result<Topic> {
    let base = dir.join("queues").join(dir_name(name));
    let queues = (0..queues)
        .map(|q| ConsumeQueue::open(&base.join(q.to_string()), log_end).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    Ok(Topic {
        name: name.to_owned(),
        crc: crc32c::crc32c(name.as_bytes()),
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
    write_bytes(path, &to_json(path, v)?)
}

fn to_json<T: Serialize>(path: &Path, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    std::io::Write::write_all(&mut &f, bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// A JSON state file that maintenance rewrites only when its content
/// changed since this process last wrote it.
///
/// Why: maintenance runs every second for every cell, and each write is a
/// create, an fsync and a rename. An idle cell wrote three files a second,
/// and those fsyncs, shared with the busy cells' disk, showed up in their
/// publish latency.
#[derive(Debug, Default)]
pub(crate) struct JsonFile {
    /// Mutex: held across the write, so two writers (maintenance and
    /// close) cannot interleave their temp files.
    last: Mutex<Option<Vec<u8>>>,
}

// === impl JsonFile ===

impl JsonFile {
    /// [`JsonFile::write`] of a file that vouches for nothing else.
    pub(crate) fn put<T: Serialize>(&self, path: &Path, v: &T) -> Result<()> {
        self.write(path, v, || Ok(()))
    }

    /// Writes `v` to `path` unless it is what was written last; `before`
    /// runs first, and only when there is something to write (what the
    /// file vouches for must be durable before it says so).
    pub(crate) fn write<T: Serialize>(
        &self,
        path: &Path,
        v: &T,
        before: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let bytes = to_json(path, v)?;
        let mut last = self.last.lock().map_err(|_| Error::Closed)?;
        if last.as_deref() == Some(bytes.as_slice()) {
            return Ok(());
        }
        before()?;
        write_bytes(path, &bytes)?;
        *last = Some(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharding_keys_spread_over_every_queue_and_stay_put() {
        let rr = AtomicU32::new(0);
        let mut hit = [0u32; 8];
        for i in 0..1000 {
            let sel = QueueSelect::ShardingKey(format!("user-{i}"));
            let q = sel.pick("T", 8, &rr).unwrap();
            assert_eq!(sel.pick("T", 8, &rr).unwrap(), q);
            hit[usize::from(q)] += 1;
        }
        assert!(hit.iter().all(|&n| n > 60), "{hit:?}");
        assert_eq!(
            rr.load(Ordering::Relaxed),
            0,
            "a key does not advance round robin"
        );
    }

    #[test]
    fn round_robin_cycles_and_an_absent_queue_is_refused() {
        let rr = AtomicU32::new(0);
        let got: Vec<u16> = (0..5)
            .map(|_| QueueSelect::RoundRobin.pick("T", 3, &rr).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1]);
        assert_eq!(QueueSelect::Queue(2).pick("T", 3, &rr).unwrap(), 2);
        let e = QueueSelect::Queue(3).pick("T", 3, &rr).unwrap_err();
        assert_eq!(e.to_string(), "topic T has 3 queues, there is no queue 3");
    }
}
