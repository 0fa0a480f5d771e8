//! One commit-log segment: a pre-allocated file named by the log position of
//! its first byte (20 digits, so names sort by position).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, posix_fadvise, posix_fallocate, FallocateFlags, PosixFadviseAdvice};

use crate::error::{Error, Result};

#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub size: u64,
    pub path: PathBuf,
    pub file: File,
}

impl Segment {
    pub fn file_name(base: u64) -> String {
        format!("{base:020}")
    }

    /// Parses a segment file name back to its base position.
    pub fn parse_name(name: &str) -> Option<u64> {
        (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
            .then(|| name.parse().ok())
            .flatten()
    }

    /// Creates segment `base` of `size` bytes. Pre-allocation matters: on
    /// these disks writing freshly allocated pages is several times slower
    /// than writing allocated ones.
    pub fn create(dir: &Path, base: u64, size: u64, preallocate: bool) -> Result<Segment> {
        let path = dir.join(Self::file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let len = i64::try_from(size).map_err(|_| Error::Config("segment too large".into()))?;
        if preallocate {
            if let Err(e) = posix_fallocate(&file, 0, len) {
                tracing::debug!(path = %path.display(), error = %e, "posix_fallocate failed; sparse segment");
                file.set_len(size).map_err(Error::io(&path))?;
            }
        } else {
            file.set_len(size).map_err(Error::io(&path))?;
        }
        Ok(Segment {
            base,
            size,
            path,
            file,
        })
    }

    pub fn open(path: &Path, base: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(Error::io(path))?;
        let size = file.metadata().map_err(Error::io(path))?.len();
        Ok(Segment {
            base,
            size,
            path: path.to_owned(),
            file,
        })
    }

    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    pub fn write_at(&self, pos: u64, bytes: &[u8]) -> Result<()> {
        fail::fail_point!("segment::write_at", |ms| Err(injected(&self.path, ms)));
        self.file
            .write_all_at(bytes, pos - self.base)
            .map_err(Error::io(&self.path))
    }

    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<usize> {
        let off = pos - self.base;
        let want = buf.len().min((self.size.saturating_sub(off)) as usize);
        self.file
            .read_exact_at(&mut buf[..want], off)
            .map_err(Error::io(&self.path))?;
        Ok(want)
    }

    /// Hints that `[pos, pos + len)` (clamped to the segment) will be read
    /// soon, so the kernel starts reading it now. Only a hint: errors are
    /// ignored.
    pub fn will_need(&self, pos: u64, len: u64) {
        let off = pos.saturating_sub(self.base);
        let len = len.min(self.size.saturating_sub(off));
        if len == 0 {
            return;
        }
        let (Ok(o), Ok(l)) = (i64::try_from(off), i64::try_from(len)) else {
            return;
        };
        let _ = posix_fadvise(&self.file, o, l, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    }

    pub fn sync(&self) -> Result<()> {
        fail::fail_point!("segment::sync", |ms| Err(injected(&self.path, ms)));
        self.file.sync_data().map_err(Error::io(&self.path))
    }

    /// Zeroes `[pos, end)`: after a crash, bytes past the last good record
    /// may hold old records that a later scan must never resurrect.
    pub fn zero_from(&self, pos: u64) -> Result<()> {
        let off = pos - self.base;
        let len = self.size - off;
        if len == 0 {
            return Ok(());
        }
        let (o, l) = (off as i64, len as i64);
        if fallocate(&self.file, FallocateFlags::FALLOC_FL_ZERO_RANGE, o, l).is_ok() {
            return self.sync();
        }
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if fallocate(&self.file, punch, o, l).is_ok() {
            return self.sync();
        }
        let zeros = vec![0u8; 1 << 20];
        let mut at = off;
        while at < self.size {
            let n = zeros.len().min((self.size - at) as usize);
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(Error::io(&self.path))?;
            at += n as u64;
        }
        self.sync()
    }
}

/// The error a fail point returns (tests only: see `log`'s docs), after
/// blocking for `ms` milliseconds if given (`return(300)`): a slow
/// failure, which other appenders queue behind.
#[cfg(feature = "failpoints")]
fn injected(path: &Path, ms: Option<String>) -> crate::error::Error {
    if let Some(ms) = ms.and_then(|m| m.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    Error::io(path)(std::io::Error::other("injected by a fail point"))
}
