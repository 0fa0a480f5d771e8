//! The router's durable progress, one file per source cell.
//!
//! ## On-disk format: `<dir>/<CELL>.json`, version 2
//!
//! ```json
//! {"version":2,"topics":{"ANT|RZ00A%BILL":{"3":{"next":1200,"pending":{
//!   "shapes":[[["RZ03A","R"],["GZ00A","G"],["CZSH0","C"]]],
//!   "runs":[[250,0],[6,null]],
//!   "last_id":"01a1fe61-aeda-7449-b2af-88f55d12d84a"}}}}}
//! ```
//!
//! Per source queue (physical topic, queue id): `next`, the first offset
//! not known to be fully copied, and `pending`, the plan of the messages
//! from `next` on that were read and planned but are not known to be
//! copied yet. The plan is compact: `runs` of consecutive offsets, each
//! `[count, shape]`, where `shape` indexes `shapes` (destination cell and
//! the kinds its copy is for, per destination) or is `null` (no copy: a
//! local-only message, a copy, no headers, or an offset past retention).
//! `last_id` is the id of the message at the last planned offset. A pass
//! adds about one run per queue however many messages it planned, so a
//! write costs the same for 1 message or 256 (version 1 listed every
//! message with its id and destinations).
//!
//! ## Invariants
//!
//! - The file is replaced whole: written to `<CELL>.json.tmp`, fsynced,
//!   renamed over, and the directory fsynced. A reader sees the old file or
//!   the new one, never a mix.
//! - Every message below `next` has all its copies durably appended.
//! - The plan of a message is durable before any of its copies is
//!   appended. A planned message may have none, some or all of its copies;
//!   replaying the recorded shape, skipping the destinations that already
//!   hold its id, completes it exactly once, even if a takeover changed
//!   meanwhile: dedupe by message id inside one cell cannot see a copy
//!   placed in another (rules/src/unit.rs explains the obligation).
//! - The plan covers `[next, next + Σ count)` without a gap; the router
//!   reads a queue's next batch from its end.
//! - Offsets name the same messages only while the source keeps its log:
//!   a replay that finds another id (or none) at the last planned offset
//!   knows the source lost its tail, and plans what it reads again under
//!   the rules in force, skipping destinations that hold the id.
//!
//! A version 1 file (`pending` a list of `{offset, id, dests}`) is read and
//! converted; the next write is version 2.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Where one message's copies go: per destination cell, the kinds (`R`,
/// `G,C` …) its copy is for.
pub type Shape = Vec<(String, String)>;

/// The plan of the pending messages of one queue (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub shapes: Vec<Shape>,
    /// `(count, shape)`: consecutive offsets with the same plan.
    pub runs: Vec<(u64, Option<u32>)>,
    pub last_id: uuid::Uuid,
}

impl Pending {
    pub fn new(last_id: uuid::Uuid) -> Pending {
        Pending {
            shapes: Vec::new(),
            runs: Vec::new(),
            last_id,
        }
    }

    /// How many offsets the plan covers.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.0).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index of `shape`, added if new.
    pub fn shape(&mut self, shape: Shape) -> u32 {
        match self.shapes.iter().position(|s| *s == shape) {
            Some(i) => i as u32,
            None => {
                self.shapes.push(shape);
                (self.shapes.len() - 1) as u32
            }
        }
    }

    /// Plans `count` more offsets with `shape`.
    pub fn push(&mut self, count: u64, shape: Option<u32>) {
        if count == 0 {
            return;
        }
        match self.runs.last_mut() {
            Some((n, s)) if *s == shape => *n += count,
            _ => self.runs.push((count, shape)),
        }
    }

    /// Forgets the first `n` offsets' plan (copied).
    pub fn trim(&mut self, mut n: u64) {
        let mut drop = 0;
        for (count, _) in &mut self.runs {
            if n < *count {
                *count -= n;
                break;
            }
            n -= *count;
            drop += 1;
        }
        self.runs.drain(..drop);
    }

    /// The shape of each planned offset, in order.
    pub fn plan(&self) -> impl Iterator<Item = Option<&Shape>> + '_ {
        self.runs.iter().flat_map(move |&(n, s)| {
            let shape = s.and_then(|i| self.shapes.get(i as usize));
            std::iter::repeat_n(shape, n as usize)
        })
    }
}

/// One source queue's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "compat::AnyQueueProgress")]
pub struct QueueProgress {
    pub next: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

impl QueueProgress {
    /// The first offset not planned yet.
    pub fn planned_end(&self) -> u64 {
        self.next + self.pending.as_ref().map_or(0, Pending::len)
    }

    /// The first `n` planned offsets are copied.
    pub fn advance(&mut self, n: u64) {
        self.next += n;
        if let Some(p) = &mut self.pending {
            p.trim(n);
            if p.is_empty() {
                self.pending = None;
            }
        }
    }
}

/// A source cell's progress: physical topic → queue → progress.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellProgress {
    #[serde(default)]
    pub version: u32,
    pub topics: BTreeMap<String, BTreeMap<u16, QueueProgress>>,
}

/// The file of one source cell.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub progress: CellProgress,
    /// When the file was last written.
    saved: Instant,
}

/// How stale the file's `next` offsets may get when no plan forces a write
/// (a restart replays at most this much, all dedupe hits).
const STALE: Duration = Duration::from_secs(1);

const VERSION: u32 = 2;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Checkpoint {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens (or starts) the journal of `cell` in `dir`.
    pub fn open(dir: &Path, cell: &str) -> Result<Journal, Error> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("{cell}.json"));
        let progress = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CellProgress::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Journal {
            path,
            progress,
            saved: Instant::now(),
        })
    }

    pub fn queue(&self, topic: &str, queue: u16) -> QueueProgress {
        self.progress
            .topics
            .get(topic)
            .and_then(|q| q.get(&queue))
            .cloned()
            .unwrap_or_default()
    }

    pub fn queue_mut(&mut self, topic: &str, queue: u16) -> &mut QueueProgress {
        self.progress
            .topics
            .entry(topic.to_owned())
            .or_default()
            .entry(queue)
            .or_default()
    }

    pub fn set(&mut self, topic: &str, queue: u16, p: QueueProgress) {
        *self.queue_mut(topic, queue) = p;
    }

    /// Every queue with a pending plan.
    pub fn pending(&self) -> Vec<(String, u16)> {
        let mut out = Vec::new();
        for (topic, queues) in &self.progress.topics {
            for (q, p) in queues {
                if p.pending.is_some() {
                    out.push((topic.clone(), *q));
                }
            }
        }
        out
    }

    /// Whether the last write is older than a second.
    pub fn stale(&self) -> bool {
        self.saved.elapsed() >= STALE
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.progress.version = VERSION;
        serde_json::to_vec(&self.progress).map_err(|e| Error::Checkpoint {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Writes the whole journal durably (see the module docs).
    pub fn save(&mut self) -> Result<(), Error> {
        let bytes = self.bytes()?;
        write_atomically(&self.path, &bytes)?;
        self.saved = Instant::now();
        Ok(())
    }

    /// [`Journal::save`] on a blocking thread: its fsyncs would otherwise
    /// stall a runtime worker, and with it the copies in flight there.
    pub async fn save_off_thread(&mut self) -> Result<(), Error> {
        let bytes = self.bytes()?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| Error::Checkpoint {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })??;
        self.saved = Instant::now();
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Reading version 1 files.
mod compat {
    use serde::Deserialize;

    use super::{Pending, QueueProgress};

    /// A version 1 pending message: its offset, id and destinations.
    #[derive(Debug, Deserialize)]
    pub struct Placement {
        offset: u64,
        id: uuid::Uuid,
        dests: Vec<(String, String)>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    enum AnyPending {
        V2(Pending),
        V1(Vec<Placement>),
    }

    #[derive(Debug, Deserialize)]
    pub struct AnyQueueProgress {
        next: u64,
        #[serde(default)]
        pending: Option<AnyPending>,
    }

    impl From<AnyQueueProgress> for QueueProgress {
        fn from(q: AnyQueueProgress) -> QueueProgress {
            let pending = match q.pending {
                None => None,
                Some(AnyPending::V2(p)) => Some(p),
                Some(AnyPending::V1(list)) => from_placements(q.next, list),
            };
            QueueProgress {
                next: q.next,
                pending,
            }
        }
    }

    /// Version 1 listed only the messages with copies, in offset order,
    /// from `next` on.
    fn from_placements(next: u64, list: Vec<Placement>) -> Option<Pending> {
        let last = list.last()?.id;
        let mut p = Pending::new(last);
        let mut at = next;
        for pl in list {
            p.push(pl.offset.saturating_sub(at), None);
            let shape = p.shape(pl.dests);
            p.push(1, Some(shape));
            at = pl.offset + 1;
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests;
