//! The router's durable progress, one file per source cell.
//!
//! ## On-disk format: `<dir>/<CELL>.json`, version 3
//!
//! ```json
//! {"version":3,
//!  "rules":"9f2c…",
//!  "topics":{"ANT|RZ00A%BILL":{"0":{"next":1200},"1":{"next":1187}}}}
//! ```
//!
//! Per source queue (physical topic, queue id), `next`: every message
//! below it has all its copies durably appended. `rules`: the sha256 of the
//! rules that every message from `next` on was planned under, if it may
//! have copies yet; absent when that is not known (the plans were made
//! under several rule sets).
//!
//! No plan is written per message or per step. A message's destinations
//! are a pure function of the message and the rules
//! (`RuleSet::router_targets`), so a replay under the rules `rules` names
//! makes the same plan, and a destination that already holds the message
//! id is skipped. When the rules change, the router first lets every copy
//! it planned under the old rules finish, then writes `next` and the new
//! `rules` (fsynced) before it plans under the new ones. After a restart
//! under other rules than the file names (or none), the replay cannot know
//! where the old plans sent a copy, so it skips each kind of copy that
//! *any* cell already holds a copy for (by id and `__UNIT.COPY_FOR`).
//!
//! ## Invariants
//!
//! - The file is replaced whole: written to `<CELL>.json.tmp`, fsynced,
//!   renamed over, and the directory fsynced. A reader sees the old file or
//!   the new one, never a mix.
//! - Every message below `next` has all its copies durably appended; `next`
//!   is written in the background as copies complete (a restart replays at
//!   most what was copied since, deduplicated).
//! - `rules`, when present, names the rules every plan from `next` on was
//!   made under: it is written (and fsynced) before the first plan under
//!   other rules, and replaced by the new rules only once no copy planned
//!   under the old ones is outstanding.
//! - No file at all means no copy was ever made from this cell by a router
//!   with this directory: the first start replays nothing.
//!
//! A version 1 file (which journaled each message's destinations in
//! `pending` before copying) is read: its `next` is kept and its rules are
//! unknown, so the first replay checks every cell.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::Error;

/// One source queue's progress.
/// (Version 1 also had `pending`, the plan of the batch in flight: ignored
/// when read.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueProgress {
    /// Durable: every message below has all its copies appended.
    pub next: u64,
    /// In memory: the first offset not planned yet, when past `next`.
    #[serde(skip)]
    pub planned: Option<u64>,
}

impl QueueProgress {
    /// The first offset not planned yet.
    pub fn planned_end(&self) -> u64 {
        self.planned.unwrap_or(self.next).max(self.next)
    }
}

/// A source cell's progress: physical topic → queue → progress.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellProgress {
    #[serde(default)]
    pub version: u32,
    /// The sha256 of the rules every plan from `next` on was made under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    pub topics: BTreeMap<String, BTreeMap<u16, QueueProgress>>,
}

/// The file of one source cell.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub progress: CellProgress,
    /// No file existed: nothing was ever copied from this cell.
    fresh: bool,
    /// Progress made since the last write was started.
    dirty: bool,
    /// The background write in progress.
    writing: Option<JoinHandle<Result<(), Error>>>,
    /// When the last background write started.
    last_write: Option<tokio::time::Instant>,
}

/// The least time between two background writes. Back to back, a busy
/// router wrote its journal hundreds of times a second (a create, two
/// fsyncs and a rename each: 5% of its CPU, and fsyncs that the stores'
/// own flushes then queued behind). What a write leaves out is replayed
/// after a crash and deduplicated, so this bounds only the replay.
pub const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

const VERSION: u32 = 3;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
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
        let (progress, fresh) = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut p: CellProgress =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    })?;
                if p.version < VERSION {
                    // Older files journaled plans, not the rules.
                    p.rules = None;
                }
                (p, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (CellProgress::default(), true),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Journal {
            path,
            progress,
            fresh,
            dirty: false,
            writing: None,
            last_write: None,
        })
    }

    /// Whether no copy was ever made from this cell (no file at open, and
    /// none written since).
    pub fn fresh(&self) -> bool {
        self.fresh
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

    /// The copies of `[from, end)` of a queue are all appended.
    pub fn copied(&mut self, topic: &str, queue: u16, from: u64, end: u64) {
        let q = self.queue_mut(topic, queue);
        // Always so: batches of a queue complete in order.
        if q.next == from {
            q.next = end;
            self.dirty = true;
        }
    }

    /// Forgets what was planned and not copied: it is planned again.
    pub fn unplan(&mut self) {
        for q in self
            .progress
            .topics
            .values_mut()
            .flat_map(|t| t.values_mut())
        {
            q.planned = None;
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.progress.version = VERSION;
        serde_json::to_vec(&self.progress).map_err(|e| Error::Checkpoint {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Writes the whole journal durably (see the module docs), now.
    pub fn save(&mut self) -> Result<(), Error> {
        let bytes = self.bytes()?;
        write_atomically(&self.path, &bytes)?;
        self.fresh = false;
        Ok(())
    }

    /// Waits for the background write, then writes the journal durably on
    /// a blocking thread (its fsyncs would stall a runtime worker, and the
    /// copies in flight there).
    pub async fn save_now(&mut self) -> Result<(), Error> {
        self.wait_background().await?;
        self.dirty = false;
        let bytes = self.bytes()?;
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await;
        join(&self.path, written)?;
        self.fresh = false;
        Ok(())
    }

    /// Starts a background write of the progress made since the last one,
    /// unless one is running; reports a finished write's failure. `next`
    /// needs no write before copies go on (a restart replays what the file
    /// does not cover, deduplicated), so this keeps fsyncs off the copies'
    /// path; and at most one write starts per [`WRITE_EVERY`] (a later
    /// call writes what this one left).
    pub async fn save_in_background(&mut self) -> Result<(), Error> {
        if self.writing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.wait_background().await?;
        }
        if self.writing.is_some() || !self.dirty {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if self
            .last_write
            .is_some_and(|t| now.duration_since(t) < WRITE_EVERY)
        {
            return Ok(());
        }
        self.last_write = Some(now);
        self.dirty = false;
        let bytes = self.bytes()?;
        let path = self.path.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_atomically(&path, &bytes)
        }));
        self.fresh = false;
        Ok(())
    }

    async fn wait_background(&mut self) -> Result<(), Error> {
        match self.writing.take() {
            Some(w) => join(&self.path, w.await),
            None => Ok(()),
        }
    }
}

/// The result of a write task for `path`: its own, or its failure to run.
pub(crate) fn join(
    path: &Path,
    r: Result<Result<(), Error>, tokio::task::JoinError>,
) -> Result<(), Error> {
    r.map_err(|e| Error::Checkpoint {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomically_via(path, bytes, "tmp")
}

/// [`write_atomically`] through `<path>.<suffix>`.
pub(crate) fn write_atomically_via(path: &Path, bytes: &[u8], suffix: &str) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".");
    tmp.push(suffix);
    let tmp = PathBuf::from(tmp);
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

#[cfg(test)]
mod tests;
