//! Lookup by message key and by message id.
//!
//! An append-only file of 17-byte entries (`kind u8, hash u64, log_pos u64`)
//! loaded into memory at start. Hashes only narrow the search: a lookup
//! reads each candidate record and checks it, so collisions cost a read,
//! never a wrong answer. Like the consume queues, the file is repaired from
//! the log after a crash (entries past the log's end dropped, missing ones
//! re-dispatched; duplicates are harmless).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};

const ENTRY: usize = 17;
const KIND_KEY: u8 = 0;
const KIND_ID: u8 = 1;

#[derive(Debug)]
pub(crate) struct KeyIndex {
    path: PathBuf,
    file: File,
    map: HashMap<(u8, u64), Vec<u64>>,
}

/// A stable 64-bit hash of a topic and key (two CRC32Cs: stable across
/// releases, unlike std's hasher).
fn key_hash(topic: &str, key: &str) -> u64 {
    let a = crc32c::crc32c_append(crc32c::crc32c(topic.as_bytes()), key.as_bytes());
    let b = crc32c::crc32c_append(crc32c::crc32c(key.as_bytes()), topic.as_bytes());
    (u64::from(a) << 32) | u64::from(b)
}

fn id_hash(id: &Uuid) -> u64 {
    let b = id.as_bytes();
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[8..16]);
    u64::from_le_bytes(a)
}

impl KeyIndex {
    pub fn open(path: &Path, log_end: u64) -> Result<KeyIndex> {
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(Error::io(path))?;
        }
        let mut map: HashMap<(u8, u64), Vec<u64>> = HashMap::new();
        let mut keep = Vec::with_capacity(bytes.len());
        for e in bytes.chunks_exact(ENTRY) {
            let mut h = [0u8; 8];
            h.copy_from_slice(&e[1..9]);
            let mut p = [0u8; 8];
            p.copy_from_slice(&e[9..17]);
            let pos = u64::from_le_bytes(p);
            if pos < log_end {
                map.entry((e[0], u64::from_le_bytes(h)))
                    .or_default()
                    .push(pos);
                keep.extend_from_slice(e);
            }
        }
        // Rewrite without the cut entries (and a partial last one).
        std::fs::write(path, &keep).map_err(Error::io(path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(Error::io(path))?;
        Ok(KeyIndex {
            path: path.to_owned(),
            file,
            map,
        })
    }

    fn add(&mut self, kind: u8, hash: u64, pos: u64, out: &mut Vec<u8>) {
        let v = self.map.entry((kind, hash)).or_default();
        if v.contains(&pos) {
            return;
        }
        v.push(pos);
        out.push(kind);
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&pos.to_le_bytes());
    }

    /// Indexes one record's id and keys.
    pub fn insert(&mut self, topic: &str, id: &Uuid, keys: &[String], pos: u64) -> Result<()> {
        let mut out = Vec::with_capacity(ENTRY * (1 + keys.len()));
        self.add(KIND_ID, id_hash(id), pos, &mut out);
        for k in keys {
            self.add(KIND_KEY, key_hash(topic, k), pos, &mut out);
        }
        self.file.write_all(&out).map_err(Error::io(&self.path))
    }

    /// Candidate positions for `key` in `topic`.
    pub fn by_key(&self, topic: &str, key: &str) -> Vec<u64> {
        self.map
            .get(&(KIND_KEY, key_hash(topic, key)))
            .cloned()
            .unwrap_or_default()
    }

    /// Candidate positions for message `id`.
    pub fn by_id(&self, id: &Uuid) -> Vec<u64> {
        self.map
            .get(&(KIND_ID, id_hash(id)))
            .cloned()
            .unwrap_or_default()
    }
}
