//! Consumer-group progress per (group, topic, queue): what is committed,
//! what is in flight and when it becomes visible again, and what was
//! completed out of order.
//!
//! Every offset below `next` is exactly one of: below `committed`, in
//! `inflight`, or in `done`. `committed` advances over `done` offsets, so
//! acked and filtered-out messages never stay behind as lag.
//!
//! State is kept in memory and written to `groups/<group>/<topic>.json`
//! (atomically, fsynced) by [`Groups::persist`], which the broker runs every
//! 100 ms and on close: a crash loses at most that window of acks, which
//! then come back as redeliveries (at least once), never as losses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{dir_name, read_json, write_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InFlight {
    pub attempt: u32,
    pub visible_at: i64,
    pub nonce: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueState {
    pub committed: u64,
    pub next: u64,
    pub inflight: BTreeMap<u64, InFlight>,
    pub done: BTreeSet<u64>,
}

impl QueueState {
    /// Marks `offset` finished (acked, filtered out or dead-lettered).
    pub fn complete(&mut self, offset: u64) {
        self.inflight.remove(&offset);
        if offset >= self.committed {
            self.done.insert(offset);
        }
        while self.committed < self.next && !self.inflight.contains_key(&self.committed) {
            self.done.remove(&self.committed);
            self.committed += 1;
        }
    }

    /// Skips to `offset` (retention removed what was before it, or a reset).
    pub fn jump_to(&mut self, offset: u64) {
        self.committed = offset;
        self.next = offset;
        self.inflight.clear();
        self.done.clear();
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    queues: Vec<QueueState>,
}

#[derive(Debug)]
struct Entry {
    queues: Vec<QueueState>,
    dirty: bool,
}

/// All groups' progress.
#[derive(Debug)]
pub(crate) struct Groups {
    dir: PathBuf,
    /// Mutex: receive, ack and nack each hold it briefly; the records are
    /// read outside it.
    map: Mutex<HashMap<(String, String), Entry>>,
}

impl Groups {
    pub fn new(dir: &Path) -> Groups {
        Groups {
            dir: dir.join("groups"),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, group: &str, topic: &str) -> PathBuf {
        self.dir
            .join(dir_name(group))
            .join(format!("{}.json", dir_name(topic)))
    }

    /// Runs `f` on the state of (group, topic), loading it first if needed
    /// and growing it to `queues` queues. Marks it dirty.
    pub fn with<T>(
        &self,
        group: &str,
        topic: &str,
        queues: u16,
        f: impl FnOnce(&mut Vec<QueueState>) -> T,
    ) -> Result<T> {
        let mut map = self.map.lock().map_err(|_| Error::Closed)?;
        let key = (group.to_owned(), topic.to_owned());
        if !map.contains_key(&key) {
            let file: GroupFile = read_json(&self.path(group, topic))?.unwrap_or_default();
            map.insert(
                key.clone(),
                Entry {
                    queues: file.queues,
                    dirty: false,
                },
            );
        }
        let e = map.get_mut(&key).ok_or(Error::Closed)?;
        while e.queues.len() < usize::from(queues) {
            e.queues.push(QueueState::default());
        }
        e.dirty = true;
        Ok(f(&mut e.queues))
    }

    /// Writes every changed group to disk.
    pub fn persist(&self) -> Result<()> {
        let dirty: Vec<((String, String), GroupFile)> = {
            let mut map = self.map.lock().map_err(|_| Error::Closed)?;
            map.iter_mut()
                .filter(|(_, e)| e.dirty)
                .map(|(k, e)| {
                    e.dirty = false;
                    (
                        k.clone(),
                        GroupFile {
                            queues: e.queues.clone(),
                        },
                    )
                })
                .collect()
        };
        for ((group, topic), file) in dirty {
            let path = self.path(&group, &topic);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
            }
            write_json(&path, &file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_advances_over_out_of_order_completions() {
        let mut q = QueueState {
            next: 5,
            ..QueueState::default()
        };
        for o in 0..5 {
            q.inflight.insert(
                o,
                InFlight {
                    attempt: 1,
                    visible_at: 0,
                    nonce: o,
                },
            );
        }
        q.complete(2);
        q.complete(1);
        assert_eq!(q.committed, 0);
        q.complete(0);
        assert_eq!(q.committed, 3);
        assert!(q.done.is_empty());
        q.complete(4);
        q.complete(3);
        assert_eq!(q.committed, 5);
    }
}
