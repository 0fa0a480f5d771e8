//! The router's durable progress, one file per source cell.
//!
//! For each source queue (physical topic, queue id) it records `next`, the
//! first offset not yet fully copied, and `pending`: the messages of the
//! batch being copied with the cells their copies go to. The pending
//! placement is written (and fsynced) *before* any copy is appended, so a
//! restart replays an interrupted batch to the same destinations even if a
//! takeover changed in between: dedupe by message id inside one cell cannot
//! see a copy placed in another (rules/src/unit.rs explains the obligation).
//!
//! ## On-disk invariants
//!
//! - `<dir>/<CELL>.json` is replaced whole: written to `<CELL>.json.tmp`,
//!   fsynced, renamed over, and the directory fsynced. A reader sees the old
//!   file or the new one, never a mix.
//! - Every message below `next` has all its copies durably appended.
//! - A message in `pending` may have none, some or all of its copies
//!   appended; replaying it with the recorded destinations, skipping the
//!   destinations that already hold its id, completes it exactly once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// A message being copied, and where its copies go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub offset: u64,
    pub id: uuid::Uuid,
    /// Destination cell → the kinds (`R,G`) its copy is for.
    pub dests: Vec<(String, String)>,
}

/// One source queue's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueProgress {
    pub next: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Placement>,
}

/// A source cell's progress: physical topic → queue → progress.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellProgress {
    pub topics: BTreeMap<String, BTreeMap<u16, QueueProgress>>,
}

/// The file of one source cell.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub progress: CellProgress,
    /// When the file was last written.
    saved: std::time::Instant,
}

/// How stale the file's `next` offsets may get when no placement forces a
/// write (a restart re-reads at most this much, copying nothing twice).
const STALE: std::time::Duration = std::time::Duration::from_secs(1);

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
            saved: std::time::Instant::now(),
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

    pub fn set(&mut self, topic: &str, queue: u16, p: QueueProgress) {
        self.progress
            .topics
            .entry(topic.to_owned())
            .or_default()
            .insert(queue, p);
    }

    /// Saves if the last save is older than a second.
    pub fn save_if_stale(&mut self) -> Result<(), Error> {
        if self.saved.elapsed() >= STALE {
            self.save()?;
        }
        Ok(())
    }

    /// Writes the whole journal durably (see the module docs).
    pub fn save(&mut self) -> Result<(), Error> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.progress).map_err(|e| Error::Checkpoint {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
        assert_eq!(j.queue("ANT|RZ00A%T", 3), QueueProgress::default());
        let p = QueueProgress {
            next: 7,
            pending: vec![Placement {
                offset: 7,
                id: "01a1fe61-aeda-7449-b2af-88f55d12d84a".parse().unwrap(),
                dests: vec![("RZ03A".into(), "R".into())],
            }],
        };
        j.set("ANT|RZ00A%T", 3, p.clone());
        j.save().unwrap();
        let j = Journal::open(dir.path(), "RZ00A").unwrap();
        assert_eq!(j.queue("ANT|RZ00A%T", 3), p);
        drop(j);
        std::fs::write(dir.path().join("RZ00A.json"), b"{broken").unwrap();
        let e = Journal::open(dir.path(), "RZ00A").unwrap_err().to_string();
        assert!(
            e.starts_with("checkpoint ") && e.contains("RZ00A.json: "),
            "{e}"
        );
    }
}
