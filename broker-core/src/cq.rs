//! The consume queue: per (topic, queue), offset → where the record is.
//!
//! A file of fixed 24-byte entries (little-endian `log_pos u64, size u32,
//! tag_hash u32, stored_ms i64`; the top bit of `size` marks a copy, see
//! [`Entry::copy`]); entry `n` is at byte `24 * n`, so a read by
//! offset is one `pread` and a read by time is a binary search (store
//! times only grow within a queue). Entries are appended by the dispatcher,
//! in log order, only for records already durable under the flush policy.
//! The file is not fsynced: after a crash it is repaired from the log (a
//! partial last entry is cut, entries past the log's end are dropped,
//! missing ones are re-dispatched from the checkpoint).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};

pub const ENTRY: usize = 24;

/// The top bit of an entry's `size` on disk: the record is a copy. The log
/// keeps every record under 2 GiB (`log::Batch::push`), so sizes never
/// reach it.
const COPY_BIT: u32 = 1 << 31;

/// Where one message of a queue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub log_pos: u64,
    pub size: u32,
    pub tag_hash: u32,
    pub stored_ms: i64,
    /// The record is a copy of a message stored elsewhere
    /// ([`crate::Kept::Copy`]): a reader of originals skips it unread.
    pub copy: bool,
}

impl Entry {
    pub(crate) fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[0..8].copy_from_slice(&self.log_pos.to_le_bytes());
        let size = self.size | if self.copy { COPY_BIT } else { 0 };
        b[8..12].copy_from_slice(&size.to_le_bytes());
        b[12..16].copy_from_slice(&self.tag_hash.to_le_bytes());
        b[16..24].copy_from_slice(&self.stored_ms.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Entry {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let size = u32_at(8);
        Entry {
            log_pos: u64_at(0),
            size: size & !COPY_BIT,
            tag_hash: u32_at(12),
            stored_ms: u64_at(16) as i64,
            copy: size & COPY_BIT != 0,
        }
    }
}

#[derive(Debug)]
pub struct ConsumeQueue {
    path: PathBuf,
    file: File,
    /// Entries in the file (the next offset to dispatch).
    len: AtomicU64,
    /// Offsets handed out to appends (ahead of `len` until dispatched).
    /// Changed only under the log's writer lock.
    pub(crate) assigned: AtomicU64,
    /// Written since the last fsync.
    dirty: AtomicBool,
}

impl ConsumeQueue {
    /// Opens or creates the queue file, cutting a partial last entry and any
    /// entry that ends past `log_end`.
    pub fn open(path: &Path, log_end: u64) -> Result<ConsumeQueue> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io(path))?;
        let bytes = file.metadata().map_err(Error::io(path))?.len();
        let q = ConsumeQueue {
            path: path.to_owned(),
            file,
            len: AtomicU64::new(bytes / ENTRY as u64),
            assigned: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
        };
        let mut n = q.len();
        while n > 0 {
            match q.get(n - 1)? {
                Some(e) if e.log_pos + u64::from(e.size) > log_end || e.size == 0 => n -= 1,
                _ => break,
            }
        }
        q.file
            .set_len(n * ENTRY as u64)
            .map_err(Error::io(&q.path))?;
        q.len.store(n, Ordering::Release);
        q.assigned.store(n, Ordering::Release);
        Ok(q)
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the entries for offsets `first..`, given encoded
    /// ([`Entry::encode`], back to back), in one write; offsets already
    /// present are skipped (re-dispatch after recovery is idempotent).
    pub(crate) fn dispatch_many(&self, first: u64, encoded: &[u8]) -> Result<()> {
        let len = self.len();
        let skip = len.saturating_sub(first) as usize;
        let Some(rest) = encoded
            .get(skip.saturating_mul(ENTRY)..)
            .filter(|r| !r.is_empty())
        else {
            return Ok(());
        };
        let count = (rest.len() / ENTRY) as u64;
        let at = first + skip as u64;
        if at > len {
            return Err(Error::Config(format!(
                "consume queue {} would skip from {len} to {at}",
                self.path.display()
            )));
        }
        let whole = &rest[..count as usize * ENTRY];
        self.file
            .write_all_at(whole, at * ENTRY as u64)
            .map_err(Error::io(&self.path))?;
        self.dirty.store(true, Ordering::Release);
        self.len.store(at + count, Ordering::Release);
        Ok(())
    }

    /// fsyncs the file if entries were added since the last sync.
    pub(crate) fn sync_if_dirty(&self) -> Result<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.sync_data() {
                // Still to be synced: the next checkpoint must not vouch
                // for entries no fsync covered.
                self.dirty.store(true, Ordering::Release);
                return Err(Error::io(&self.path)(e));
            }
        }
        Ok(())
    }

    pub fn get(&self, offset: u64) -> Result<Option<Entry>> {
        Ok(self.range(offset, 1)?.into_iter().next())
    }

    /// Up to `max` entries from `from`, in one read.
    pub fn range(&self, from: u64, max: usize) -> Result<Vec<Entry>> {
        let len = self.len();
        if from >= len || max == 0 {
            return Ok(Vec::new());
        }
        let n = (len - from).min(max as u64) as usize;
        let mut buf = vec![0u8; n * ENTRY];
        self.file
            .read_exact_at(&mut buf, from * ENTRY as u64)
            .map_err(Error::io(&self.path))?;
        Ok(buf.chunks_exact(ENTRY).map(Entry::decode).collect())
    }

    /// The first offset whose store time is at or after `ms` (or `len`).
    pub fn offset_at_time(&self, ms: i64) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid)? {
                Some(e) if e.stored_ms < ms => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }
}
