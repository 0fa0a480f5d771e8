//! The router's promise about time, one file per source cell: no copy
//! from that cell is sent after the time it names.
//!
//! A replay must look up whether a copy exists for every message the dead
//! process may have copied. Without this promise that is every message
//! stored before the replay began: after a long outage, the whole outage,
//! and each step's lookup reads the destinations' traffic from its oldest
//! message to their end (on RocketMQ, docs/rocketmq.md), a cost that grew
//! with the square of the outage. With it, the dead process copied only
//! messages stored before its lease ran out, and its copies were all stored
//! by then plus the time one send may take ([`SEND_BOUND`]): both the
//! messages a replay looks up and the time window its lookups read are
//! bounded, however long the outage.
//!
//! ## On-disk format: `<dir>/<CELL>.lease`
//!
//! ```json
//! {"until_ms":1795350435142}
//! ```
//!
//! `until_ms`: milliseconds since the Unix epoch, by the router's clock.
//!
//! ## Invariants
//!
//! - No copy send starts at or after `until_ms` (`send.rs` asks
//!   [`Lease::ensure`] just before each send; the process that wrote the
//!   file keeps it), so every copy is stored before `until_ms` plus
//!   [`SEND_BOUND`].
//! - The file is replaced whole (written to `<CELL>.lease.tmp`, fsynced,
//!   renamed over, the directory fsynced), and the value in memory that
//!   sends are checked against is raised only once the file holding it is
//!   durable.
//! - No file means no promise: a replay looks up everything stored before
//!   it began, as a router without leases did.
//!
//! The lease is renewed by a task of its own ([`Lease::keep`], started
//! with the cell's task), every second once less than two thirds of
//! [`LEASE`] is left, so a send normally finds it far ahead and checks one
//! atomic. It runs out only when the process dies or its disk stalls.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::now_ms;
use serde::{Deserialize, Serialize};

use crate::Error;

/// How far ahead a renewal promises.
pub const LEASE: Duration = Duration::from_secs(10);

/// How long after the lease ran out a copy may still be stored: a request
/// already sent (3 s at most, 4 tries with the RocketMQ backend), and
/// further requests of a `send_record_copies` call that began before the
/// lease ran out while its disk stalled (a new topic's route wait is up to
/// 15 s). A generous bound: it only widens what a replay reads.
pub const SEND_BOUND: Duration = Duration::from_secs(60);

/// A send renews the lease itself (and waits for it) when less than this
/// is left: normally the background renewal keeps it far ahead.
const SEND_MARGIN: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct OnDisk {
    until_ms: i64,
}

/// A source cell's lease (see the module docs).
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    /// The durable promise, 0 when there is none. An atomic: every send
    /// task reads it, and only a renewal, once its file is durable, raises
    /// it.
    until_ms: AtomicI64,
    /// One renewal at a time (a tokio mutex: held across the write, which
    /// runs on a blocking thread). Whoever waited on it re-checks first.
    renewing: tokio::sync::Mutex<()>,
    /// Numbers each write's temporary file.
    writes: AtomicU64,
}

// === impl Lease ===

impl Lease {
    /// The lease of `cell` in `dir`, as the last process left it.
    pub fn open(dir: &Path, cell: &str) -> Result<Lease, Error> {
        std::fs::create_dir_all(dir).map_err(crate::journal::io(dir))?;
        let path = dir.join(format!("{cell}.lease"));
        let until_ms = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(d) => d.until_ms,
                // A torn or garbled file promises nothing: the replay
                // looks everything up, as with no file. Safe, and the
                // cell is not stopped for good by one bad write.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable router lease; ignored");
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(crate::journal::io(&path)(e)),
        };
        Ok(Lease {
            path,
            until_ms: AtomicI64::new(until_ms),
            renewing: tokio::sync::Mutex::new(()),
            writes: AtomicU64::new(0),
        })
    }

    /// The time no copy is sent after, if one was ever promised.
    pub fn until_ms(&self) -> Option<i64> {
        let t = self.until_ms.load(Ordering::Acquire);
        (t > 0).then_some(t)
    }

    fn left(&self) -> Duration {
        let left = self.until_ms.load(Ordering::Acquire) - now_ms();
        Duration::from_millis(left.max(0) as u64)
    }

    /// Before a send: renews the lease now, and waits for it, unless more
    /// than a small margin is left; fails if it is still not running
    /// after that (a disk slower than the lease).
    pub async fn ensure(self: &Arc<Self>) -> Result<(), Error> {
        if self.left() > SEND_MARGIN {
            return Ok(());
        }
        // In a task of its own: a send cancelled meanwhile does not cut a
        // renewal off halfway (its lock released, its write still going).
        let me = self.clone();
        let renewed = tokio::spawn(async move { me.renew_if(SEND_MARGIN).await }).await;
        crate::journal::join(&self.path, renewed)?;
        if self.left() == Duration::ZERO {
            return Err(Error::Checkpoint {
                path: self.path.clone(),
                source: std::io::Error::other("the router lease ran out while it was renewed"),
            });
        }
        Ok(())
    }

    /// Keeps the lease running while the returned task runs: every second
    /// it renews once less than two thirds of [`LEASE`] is left. Apart
    /// from the cell's steps, which can wait on one send for long.
    pub fn keep(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.renew_if(LEASE * 2 / 3).await {
                    // A send finding the lease short renews it itself, and
                    // fails its step if that fails too.
                    tracing::warn!(error = %e, "router lease renewal");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Renews unless, once this renewal's turn comes, more than `left` is
    /// left (a renewal that ran meanwhile may have done it).
    async fn renew_if(&self, left: Duration) -> Result<(), Error> {
        let _turn = self.renewing.lock().await;
        if self.left() > left {
            return Ok(());
        }
        self.write().await
    }

    /// Writes a lease of [`LEASE`] from now, durably, then keeps to it.
    async fn write(&self) -> Result<(), Error> {
        let until_ms = now_ms() + LEASE.as_millis() as i64;
        let bytes = serde_json::to_vec(&OnDisk { until_ms }).map_err(|e| Error::Checkpoint {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let path = self.path.clone();
        // A temporary file of its own per write: a write whose renewal was
        // cut off may still be running.
        let seq = self.writes.fetch_add(1, Ordering::Relaxed);
        let tmp = format!("{seq}.tmp");
        let written = tokio::task::spawn_blocking(move || {
            crate::journal::write_atomically_via(&path, &bytes, &tmp)
        })
        .await;
        crate::journal::join(&self.path, written)?;
        self.until_ms.fetch_max(until_ms, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A lease file as a process before left it.
    fn left_behind(dir: &Path, until_ms: i64) {
        let bytes = serde_json::to_vec(&OnDisk { until_ms }).unwrap();
        std::fs::write(dir.join("RZ00A.lease"), bytes).unwrap();
    }

    /// What a reopen finds on disk.
    fn on_disk(dir: &Path) -> Option<i64> {
        Lease::open(dir, "RZ00A").unwrap().until_ms()
    }

    #[tokio::test]
    async fn a_lease_is_kept_on_disk_and_renewed_only_when_short() {
        let dir = tempfile::tempdir().unwrap();
        let l = Arc::new(Lease::open(dir.path(), "RZ00A").unwrap());
        assert_eq!(l.until_ms(), None, "no file: no promise");
        let before = now_ms();
        l.ensure().await.unwrap();
        let first = l.until_ms().unwrap();
        assert!(first >= before + LEASE.as_millis() as i64);
        assert_eq!(on_disk(dir.path()), Some(first));
        // Far ahead: a send checks and writes nothing.
        l.ensure().await.unwrap();
        assert_eq!(l.until_ms(), Some(first));
    }

    #[tokio::test]
    async fn a_short_lease_is_renewed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let short = now_ms() + 1_000;
        left_behind(dir.path(), short);
        let l = Arc::new(Lease::open(dir.path(), "RZ00A").unwrap());
        let keeper = l.keep();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while l.until_ms() == Some(short) {
            assert!(std::time::Instant::now() < deadline, "not renewed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        keeper.abort();
        let renewed = l.until_ms().unwrap();
        assert!(renewed > short);
        assert_eq!(on_disk(dir.path()), Some(renewed));
    }

    #[tokio::test]
    async fn a_lapsed_lease_is_renewed_before_a_send() {
        let dir = tempfile::tempdir().unwrap();
        let old = now_ms() - 600_000;
        left_behind(dir.path(), old);
        let l = Arc::new(Lease::open(dir.path(), "RZ00A").unwrap());
        assert_eq!(l.until_ms(), Some(old), "the dead process's promise");
        l.ensure().await.unwrap();
        let now = l.until_ms().unwrap();
        assert!(now > now_ms() + SEND_MARGIN.as_millis() as i64);
        assert_eq!(on_disk(dir.path()), Some(now));
    }

    #[tokio::test]
    async fn a_garbled_lease_file_promises_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("RZ00A.lease"), "{").unwrap();
        let l = Lease::open(dir.path(), "RZ00A").unwrap();
        assert_eq!(l.until_ms(), None);
    }
}
