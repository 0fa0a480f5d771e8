//! Lookup by message key and by message id.
//!
//! An append-only file of 17-byte entries (`kind u8, hash u64, log_pos u64`)
//! loaded into memory at start. Hashes only narrow the search: a lookup
//! reads each candidate record and checks it, so collisions cost a read,
//! never a wrong answer. Entries are appended in log order, so after a
//! crash the entries past the log's end are a tail, cut by truncation;
//! missing ones are re-dispatched (a duplicate is ignored).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nohash_hasher::BuildNoHashHasher;
use uuid::Uuid;

use crate::error::{Error, Result};

const ENTRY: usize = 17;
/// The largest write buffer kept between batches.
const OUT_KEEP: usize = 4 << 20;
const KIND_KEY: u8 = 0;
const KIND_ID: u8 = 1;

/// Positions of one hash: almost always one, so no allocation for it.
/// `Many` is kept ascending.
#[derive(Debug, Clone)]
enum Positions {
    One(u64),
    Many(Vec<u64>),
}

impl Positions {
    /// Adds `pos` unless present; returns whether it was added. Positions
    /// arrive in log order, so a new one is almost always past the last
    /// and this is O(1); only a re-dispatch after a crash (duplicates)
    /// searches. A hot key (every message of a topic with the same key)
    /// has millions of positions: a linear scan here once made the
    /// dispatcher quadratic (54% of the broker's CPU in issue 6's bench).
    fn add(&mut self, pos: u64) -> bool {
        match self {
            Positions::One(p) if *p == pos => false,
            Positions::One(p) => {
                *self = Positions::Many(if *p < pos {
                    vec![*p, pos]
                } else {
                    vec![pos, *p]
                });
                true
            }
            Positions::Many(v) => match v.last() {
                Some(&last) if last < pos => {
                    v.push(pos);
                    true
                }
                _ => match v.binary_search(&pos) {
                    Ok(_) => false,
                    Err(at) => {
                        v.insert(at, pos);
                        true
                    }
                },
            },
        }
    }

    fn to_vec(&self) -> Vec<u64> {
        match self {
            Positions::One(p) => vec![*p],
            Positions::Many(v) => v.clone(),
        }
    }
}

/// The keys are already hashes: hashing them again would only cost time.
type Map = HashMap<u64, Positions, BuildNoHashHasher<u64>>;

#[derive(Debug)]
pub(crate) struct KeyIndex {
    path: PathBuf,
    /// Arc: the checkpoint fsyncs it outside the index's lock (see
    /// [`KeyIndex::take_sync`]).
    file: Arc<File>,
    keys: Map,
    ids: Map,
    dirty: bool,
    /// Entries encoded for the next write, kept across batches: growing a
    /// fresh buffer per batch showed up in the dispatcher's profile.
    out: Vec<u8>,
}

/// A stable 64-bit hash of a topic and key (two CRC32Cs: stable across
/// releases, unlike std's hasher).
fn key_hash(topic: &str, key: &str) -> u64 {
    key_hash_with(crc32c::crc32c(topic.as_bytes()), topic, key)
}

/// The key-index hashes of one record's keys. The put path computes them
/// (its topic's CRC32C is at hand) so that a record's meta carries no
/// part of the message: the message is freed by the thread that made it,
/// which is much cheaper than a free from the dispatcher thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum KeyHashes {
    #[default]
    None,
    /// Almost every keyed message has one key: no allocation for it.
    One(u64),
    Many(Vec<u64>),
}

impl KeyHashes {
    pub fn of(topic_crc: u32, topic: &str, keys: &[String]) -> KeyHashes {
        KeyHashes::of_iter(topic_crc, topic, keys.iter().map(String::as_str))
    }

    /// [`KeyHashes::of`] for keys read in place (a router's copy), without
    /// an owned string per key.
    pub fn of_iter<'a>(
        topic_crc: u32,
        topic: &str,
        mut keys: impl Iterator<Item = &'a str>,
    ) -> KeyHashes {
        let hash = |k: &str| key_hash_with(topic_crc, topic, k);
        let Some(first) = keys.next() else {
            return KeyHashes::None;
        };
        match keys.next() {
            None => KeyHashes::One(hash(first)),
            Some(second) => {
                let mut all = vec![hash(first), hash(second)];
                all.extend(keys.map(hash));
                KeyHashes::Many(all)
            }
        }
    }

    pub fn as_slice(&self) -> &[u64] {
        match self {
            KeyHashes::None => &[],
            KeyHashes::One(h) => std::slice::from_ref(h),
            KeyHashes::Many(v) => v,
        }
    }
}

/// [`key_hash`] with the topic's CRC32C already known (the put path has it
/// per topic, so it is not computed again per key).
fn key_hash_with(topic_crc: u32, topic: &str, key: &str) -> u64 {
    let a = crc32c::crc32c_append(topic_crc, key.as_bytes());
    let b = crc32c::crc32c_append(crc32c::crc32c(key.as_bytes()), topic.as_bytes());
    (u64::from(a) << 32) | u64::from(b)
}

fn id_hash(id: &Uuid) -> u64 {
    // The id's low half: its counter and random bits.
    id.as_u128() as u64
}

impl KeyIndex {
    pub fn open(path: &Path, log_end: u64) -> Result<KeyIndex> {
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(Error::io(path))?;
        }
        let mut idx = KeyIndex {
            path: path.to_owned(),
            file: Arc::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(Error::io(path))?,
            ),
            keys: Map::default(),
            ids: Map::default(),
            dirty: false,
            out: Vec::new(),
        };
        let mut valid = 0;
        for e in bytes.chunks_exact(ENTRY) {
            let mut h = [0u8; 8];
            h.copy_from_slice(&e[1..9]);
            let mut p = [0u8; 8];
            p.copy_from_slice(&e[9..17]);
            let pos = u64::from_le_bytes(p);
            if pos >= log_end {
                break; // the tail past the log: cut below
            }
            idx.map_mut(e[0])
                .entry(u64::from_le_bytes(h))
                .or_insert(Positions::One(pos))
                .add(pos);
            valid += ENTRY;
        }
        if valid != bytes.len() {
            idx.file.set_len(valid as u64).map_err(Error::io(path))?;
        }
        Ok(idx)
    }

    fn map_mut(&mut self, kind: u8) -> &mut Map {
        if kind == KIND_ID {
            &mut self.ids
        } else {
            &mut self.keys
        }
    }

    fn add(&mut self, kind: u8, hash: u64, pos: u64, out: &mut Vec<u8>) {
        let added = match self.map_mut(kind).entry(hash) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Positions::One(pos));
                true
            }
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().add(pos),
        };
        if added {
            out.push(kind);
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
        }
    }

    /// Indexes records' ids and keys, with one write. Each record comes
    /// with its id, its keys' hashes ([`KeyHashes`]) and its position.
    pub fn insert_many<'a>(
        &mut self,
        records: impl Iterator<Item = (&'a Uuid, &'a [u64], u64)>,
    ) -> Result<()> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for (id, keys, pos) in records {
            self.add(KIND_ID, id_hash(id), pos, &mut out);
            for &k in keys {
                self.add(KIND_KEY, k, pos, &mut out);
            }
        }
        let written = if out.is_empty() {
            Ok(())
        } else {
            self.dirty = true;
            (&*self.file).write_all(&out).map_err(Error::io(&self.path))
        };
        if out.capacity() <= OUT_KEEP {
            self.out = out;
        }
        written
    }

    /// Marks the index as needing an fsync again, after [`PendingSync::run`]
    /// failed.
    pub fn sync_failed(&mut self) {
        self.dirty = true;
    }

    /// What an fsync must cover now, if anything was written since the
    /// last: the caller syncs it after releasing the index's lock. Held
    /// through the fsync, the lock stalled the dispatcher (and so every
    /// record's visibility) for as long as the disk took, tens of ms
    /// under load, at every checkpoint. Entries written meanwhile set
    /// `dirty` again, for the next checkpoint.
    pub fn take_sync(&mut self) -> Option<PendingSync> {
        std::mem::take(&mut self.dirty).then(|| PendingSync {
            file: self.file.clone(),
            path: self.path.clone(),
        })
    }

    /// Candidate positions for `key` in `topic`.
    pub fn by_key(&self, topic: &str, key: &str) -> Vec<u64> {
        self.keys
            .get(&key_hash(topic, key))
            .map(Positions::to_vec)
            .unwrap_or_default()
    }

    /// Candidate positions for message `id`.
    pub fn by_id(&self, id: &Uuid) -> Vec<u64> {
        self.ids
            .get(&id_hash(id))
            .map(Positions::to_vec)
            .unwrap_or_default()
    }
}

/// An fsync of the key index to run outside its lock.
#[derive(Debug)]
pub(crate) struct PendingSync {
    file: Arc<File>,
    path: PathBuf,
}

impl PendingSync {
    /// Fsyncs; on failure the caller must give it back
    /// ([`KeyIndex::sync_failed`]), or the next checkpoint would vouch for
    /// entries no fsync covered.
    pub fn run(&self) -> Result<()> {
        self.file.sync_data().map_err(Error::io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_stay_ascending_without_duplicates_in_any_arrival_order() {
        let mut p = Positions::One(50);
        for pos in [10, 70, 50, 10, 60, 80, 70, 5] {
            p.add(pos);
        }
        assert_eq!(p.to_vec(), [5, 10, 50, 60, 70, 80]);
        let mut q = Positions::One(7);
        assert!(!q.add(7));
        assert!(q.add(3));
        assert!(!q.add(3));
        assert_eq!(q.to_vec(), [3, 7]);
    }

    #[test]
    fn the_key_hash_is_stable() {
        // keys.idx stores these hashes: they must never change.
        let t = "ANT|RZ00A%T1";
        let h = key_hash(t, "order-1");
        let a = crc32c::crc32c(b"ANT|RZ00A%T1order-1");
        let b = crc32c::crc32c(b"order-1ANT|RZ00A%T1");
        assert_eq!(h, (u64::from(a) << 32) | u64::from(b));
        assert_eq!(key_hash_with(crc32c::crc32c(t.as_bytes()), t, "order-1"), h);
        let crc = crc32c::crc32c(t.as_bytes());
        assert_eq!(KeyHashes::of(crc, t, &["order-1".into()]).as_slice(), [h]);
        let two = KeyHashes::of(crc, t, &["order-1".into(), "k2".into()]);
        assert_eq!(two.as_slice(), [h, key_hash(t, "k2")]);
        let three = KeyHashes::of_iter(crc, t, ["order-1", "k2", "k3"].into_iter());
        assert_eq!(three.as_slice(), [h, key_hash(t, "k2"), key_hash(t, "k3")]);
        assert!(KeyHashes::of(crc, t, &[]).as_slice().is_empty());
    }
}
