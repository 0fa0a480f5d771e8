//! The commit log: every record of a broker, appended in one sequence of
//! segments.
//!
//! ## Writing
//!
//! Appenders place their records under the writer lock, which assigns log
//! positions (and, through the caller's state `S`, queue offsets) in one
//! order; the store encodes before taking it and only stamps, checksums
//! and copies under it. The first appender that finds nobody writing becomes the leader:
//! it takes everything encoded so far, writes it with one `pwrite` per
//! segment touched, outside the lock, and repeats until nothing is pending.
//! Other appenders wait for `written` to pass their records (a
//! `Progress`, see `progress.rs`: it wakes only the waiters a write covers). So
//! under load many records share one system call, and with one producer
//! each append is one `pwrite`. An async leader with little pending, whose
//! previous write carried other appenders' records, yields once before it
//! writes ([`CommitLog::append_deferred`], [`Lead`]), so that the producers
//! queued on its thread join the write. Write buffers are reused. Under `sync`
//! appenders do not write at all: the flusher writes everything placed
//! since its last round in one go, right before its fsync (the append is
//! acknowledged only after that fsync anyway).
//!
//! ## Flushing
//!
//! A flusher thread turns `written` into `flushed` with `fdatasync`: on
//! request (policy `sync`: an appender is acknowledged only once `flushed`
//! passes its records, and every append waiting meanwhile shares the next
//! fsync — group commit) or at an interval (policy `async`: acknowledged
//! once written to the page cache). Under `sync`, when the last fsync
//! released several appenders, the flusher waits (at most half an fsync)
//! for about as many to ask again before it starts the next one, so one
//! fsync covers most of them rather than the first few.
//!
//! ## Failed writes and fsyncs
//!
//! A failed `pwrite` drops nothing: its records go back in front of the
//! pending ones, `written` stays below them, and the flusher tries again
//! every round (the interval, or 200 ms under `sync`) until it succeeds.
//! The leader whose write failed gets the error, though its records may
//! still be stored by a later try: like a timeout, an error is no proof
//! that a message was not stored. Every other appender waits for the
//! write that succeeds; none is acknowledged before it.
//!
//! A failed fsync is not tried again: the kernel may have dropped the
//! pages it could not write and report the next fsync clean (PostgreSQL's
//! "fsyncgate"). The log stops instead: every appender waiting, and every
//! later append, gets [`Error::LogFailed`], and a restart recovers from
//! what the disk holds (checksums find what did not land). Tests:
//! `broker-core/tests/faults.rs` (fail points `segment::write_at` and
//! `segment::sync`).
//!
//! ## Invariants
//!
//! - Positions only grow; `flushed <= written <= next`.
//! - A record lies within one segment; a segment's unused tail starts with
//!   `END_OF_SEGMENT` (or zeroes, which read as the end of the log).
//! - After recovery every byte from the end of the last valid record to the
//!   end of its segment is zero, and no later segment exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::record::{self, RecordMeta};
use crate::segment::Segment;

mod progress;
mod recover;
use progress::Progress;
use recover::recover;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// After an fdatasync covers it (group commit).
    Sync,
    /// Once written to the page cache; flushed every `interval`.
    Async { interval: Duration },
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub flush: FlushPolicy,
    pub preallocate: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            flush: FlushPolicy::Sync,
            preallocate: true,
        }
    }
}

/// Records encoded but not yet written.
#[derive(Debug, Default)]
struct Pending {
    chunks: Vec<(Arc<Segment>, u64, Vec<u8>)>,
    /// An empty list to swap with `chunks` when a write takes them: a fresh
    /// one grew on every append.
    spare_chunks: Vec<(Arc<Segment>, u64, Vec<u8>)>,
    /// Emptied buffers of earlier writes, reused: a fresh 64 KiB buffer per
    /// write cost more in `malloc`, page faults and zeroing than the copy.
    spare: Vec<Vec<u8>>,
}

/// The largest record, whatever the segment size (see [`Batch::push`]).
const MAX_RECORD: u64 = (1 << 31) - 1;

/// Buffers kept for reuse, and the largest one kept.
const SPARE_BUFFERS: usize = 4;
const SPARE_MAX_BYTES: usize = 8 << 20;

#[derive(Debug)]
struct Writer<S> {
    active: Arc<Segment>,
    /// The next position to assign.
    next: u64,
    pending: Pending,
    writing: bool,
    /// Appends that found a write under way since the current lead
    /// began, and whether the last lead's write carried any: see
    /// [`CommitLog::append_deferred`].
    followers: u32,
    joined: bool,
    /// Leads so far (wrapping): every few, a lead yields anyway, to notice
    /// when appenders become concurrent.
    leads: u32,
    state: S,
}

/// A lead with less than this pending yields before writing; a batch this
/// large already shares its `pwrite` among many records.
const YIELD_BELOW: usize = 16 << 10;
/// A lead yields at least once in this many, even when the last one
/// gathered nobody.
const PROBE_EVERY: u32 = 64;

/// What an append closure uses to place records.
#[derive(Debug)]
pub struct Batch<'a> {
    log: &'a LogShared,
    active: &'a mut Arc<Segment>,
    next: &'a mut u64,
    pending: &'a mut Pending,
}

impl Batch<'_> {
    /// Reserves `len` bytes for one record, rolling to a new segment when it
    /// does not fit, and lets `fill` encode it; returns its position.
    pub fn push(&mut self, len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Result<u64> {
        let len64 = len as u64;
        // A record fits its segment (with the end marker after it), and
        // stays under 2 GiB: a consume-queue entry keeps its size in 31
        // bits (`cq::Entry::copy`).
        let max = (self.log.cfg.segment_bytes - 4).min(MAX_RECORD);
        if len64 > max {
            return Err(Error::MessageTooLarge {
                size: len,
                max: max as usize,
            });
        }
        if *self.next + len64 + 4 > self.active.end() {
            // Mark the tail unused, then start the next segment there.
            let marker = record::END_OF_SEGMENT.to_le_bytes().to_vec();
            if self.active.end() - *self.next >= 4 {
                self.append_bytes(marker);
            }
            let seg = self.log.create_segment(self.active.end())?;
            *self.next = seg.base;
            *self.active = seg;
        }
        let pos = *self.next;
        let buf = self.chunk_for_current();
        let before = buf.len();
        fill(buf);
        debug_assert_eq!(buf.len() - before, len);
        *self.next += len64;
        Ok(pos)
    }

    /// Whether a record of `len` bytes pushed now lands in the segment
    /// that holds position `pos` (no roll in between).
    pub fn lands_with(&self, pos: u64, len: usize) -> bool {
        pos >= self.active.base && *self.next + len as u64 + 4 <= self.active.end()
    }

    fn chunk_for_current(&mut self) -> &mut Vec<u8> {
        let starts_new = match self.pending.chunks.last() {
            Some((seg, start, bytes)) => {
                !Arc::ptr_eq(seg, self.active) || start + bytes.len() as u64 != *self.next
            }
            None => true,
        };
        if starts_new {
            let buf = self
                .pending
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(64 * 1024));
            self.pending
                .chunks
                .push((self.active.clone(), *self.next, buf));
        }
        let last = self.pending.chunks.len() - 1;
        &mut self.pending.chunks[last].2
    }

    fn append_bytes(&mut self, bytes: Vec<u8>) {
        let n = bytes.len() as u64;
        self.chunk_for_current().extend_from_slice(&bytes);
        *self.next += n;
    }
}

/// What the writer, the flusher and readers share.
#[derive(Debug)]
struct LogShared {
    dir: PathBuf,
    cfg: LogConfig,
    /// RwLock: readers look segments up on every read; only a roll or a
    /// retention pass writes.
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// Oldest retained position.
    min: AtomicU64,
}

impl LogShared {
    fn create_segment(&self, base: u64) -> Result<Arc<Segment>> {
        let seg = Arc::new(Segment::create(
            &self.dir,
            base,
            self.cfg.segment_bytes,
            self.cfg.preallocate,
        )?);
        self.segments
            .write()
            .map_err(|_| Error::Closed)?
            .insert(base, seg.clone());
        Ok(seg)
    }

    fn segment_at(&self, pos: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read().ok()?;
        segs.range(..=pos).next_back().map(|(_, s)| s.clone())
    }
}

/// Flush requests and shutdown, for the flusher thread.
#[derive(Debug, Default)]
struct FlushSignal {
    /// Mutex + Condvar: the flusher is a plain thread (fsync blocks), woken
    /// by appenders that need durability.
    wanted: Mutex<bool>,
    cv: Condvar,
    /// A flush is requested and not yet started: later requests need not
    /// take the lock and wake the flusher again (under `sync` every
    /// appender requests one).
    requested: AtomicBool,
    stop: AtomicBool,
}

/// The commit log; `S` is caller state updated under the writer lock.
#[derive(Debug)]
pub struct CommitLog<S> {
    shared: Arc<LogShared>,
    /// Mutex: assigning positions must be serial; held only to encode.
    /// Arc: under `sync` the flusher thread writes what appenders placed.
    writer: Arc<Mutex<Writer<S>>>,
    written: Arc<Progress>,
    flushed: Arc<Progress>,
    signal: Arc<FlushSignal>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

// === impl CommitLog ===

impl<S: Send + 'static> CommitLog<S> {
    /// Opens (or creates) the log in `dir`. Scans from `scan_from` (a record
    /// boundary known durable, e.g. a checkpoint) to the end, calling
    /// `on_record(pos, len, meta)` for every valid record, zeroes a torn or
    /// corrupt tail, and starts the flusher.
    pub fn open(
        dir: &Path,
        cfg: LogConfig,
        scan_from: u64,
        state: S,
        on_record: impl FnMut(u64, usize, RecordMeta) -> Result<()>,
    ) -> Result<CommitLog<S>> {
        if cfg.segment_bytes < record::HEADER as u64 + 4 {
            return Err(Error::Config(format!(
                "segment_bytes {} is too small",
                cfg.segment_bytes
            )));
        }
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let shared = Arc::new(LogShared {
            dir: dir.to_owned(),
            cfg,
            segments: RwLock::new(BTreeMap::new()),
            min: AtomicU64::new(0),
        });
        let mut bases = Vec::new();
        for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
            let name = e.map_err(Error::io(dir))?.file_name();
            if let Some(b) = Segment::parse_name(&name.to_string_lossy()) {
                bases.push(b);
            }
        }
        bases.sort_unstable();
        let end = match bases.first() {
            None => {
                shared.create_segment(0)?;
                0
            }
            Some(&first) => {
                for &b in &bases {
                    let seg = Segment::open(&dir.join(Segment::file_name(b)), b)?;
                    shared
                        .segments
                        .write()
                        .map_err(|_| Error::Closed)?
                        .insert(b, Arc::new(seg));
                }
                shared.min.store(first, Ordering::Relaxed);
                recover(&shared, scan_from.max(first), on_record)?
            }
        };
        let active = shared.segment_at(end).ok_or(Error::Closed)?;
        let log = CommitLog {
            shared,
            writer: Arc::new(Mutex::new(Writer {
                active,
                next: end,
                pending: Pending::default(),
                writing: false,
                followers: 0,
                joined: false,
                leads: 0,
                state,
            })),
            written: Arc::new(Progress::new(end)),
            flushed: Arc::new(Progress::new(end)),
            signal: Arc::new(FlushSignal::default()),
            flusher: Mutex::new(None),
        };
        log.start_flusher();
        Ok(log)
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.cfg
    }

    /// Runs `f` under the writer lock to encode records (through `Batch`)
    /// and update the caller state; writes them (leading the write if
    /// nobody is) and returns `f`'s result and the end of its records.
    /// Durability is awaited separately ([`CommitLog::wait_durable`]).
    pub fn append_with<T>(
        &self,
        f: impl FnOnce(&mut Batch<'_>, &mut S) -> Result<T>,
    ) -> Result<(T, u64)> {
        let (out, end, lead) = self.append_deferred(f)?;
        if let Some(lead) = lead {
            lead.write()?;
        }
        Ok((out, end))
    }

    /// [`CommitLog::append_with`], but the write may be the caller's to
    /// start: when no write is under way and a yield looks worth it, the
    /// caller gets the [`Lead`]. An async appender yields before it writes, so that the appenders queued
    /// behind it place their records first and one `pwrite` carries them
    /// all. Led inline, a write carried the records placed during the
    /// previous one only: one or two when producers do more than append
    /// (a transaction's book keeping), and a `pwrite` of one small record
    /// costs several times its bytes.
    pub fn append_deferred<T>(
        &self,
        f: impl FnOnce(&mut Batch<'_>, &mut S) -> Result<T>,
    ) -> Result<(T, u64, Option<Lead<'_, S>>)> {
        let mut w = self.writer.lock().map_err(|_| Error::Closed)?;
        // Under the lock, so that an append either is refused or placed
        // its records before the failure was declared (concurrently).
        if self.flushed.failed() {
            return Err(Error::LogFailed);
        }
        let w_ref = &mut *w;
        let mut batch = Batch {
            log: &self.shared,
            active: &mut w_ref.active,
            next: &mut w_ref.next,
            pending: &mut w_ref.pending,
        };
        let out = f(&mut batch, &mut w_ref.state)?;
        let end = w.next;
        // Under `sync` the acknowledgement waits for the next fsync anyway:
        // the flusher writes everything placed meanwhile in one `pwrite`
        // right before it, instead of one per appender.
        if w.writing || self.shared.cfg.flush == FlushPolicy::Sync {
            w.followers = w.followers.saturating_add(1);
            return Ok((out, end, None));
        }
        w.writing = true;
        w.followers = 0;
        w.leads = w.leads.wrapping_add(1);
        let pending: usize = w.pending.chunks.iter().map(|(.., b)| b.len()).sum();
        // Small, and the last lead's write carried others' records too
        // (or, every few leads, to find out whether it would): worth a
        // yield. A large batch gains little, and would make its followers
        // wait for every other producer's encoding; one producer alone
        // skips the yield 63 times in 64.
        let wait = pending < YIELD_BELOW && (w.joined || w.leads % PROBE_EVERY == 0);
        if !wait {
            lead_writes(&self.writer, w, &self.written)?;
            return Ok((out, end, None));
        }
        Ok((
            out,
            end,
            Some(Lead {
                log: self,
                done: false,
            }),
        ))
    }

    /// Runs `f` on the caller state under the writer lock.
    pub fn with_state<T>(&self, f: impl FnOnce(&mut S) -> T) -> Result<T> {
        let mut w = self.writer.lock().map_err(|_| Error::Closed)?;
        Ok(f(&mut w.state))
    }

    /// Waits until `end` is written (and, under `sync`, flushed).
    pub async fn wait_durable(&self, end: u64) -> Result<()> {
        if self.durable() >= end {
            // The common case under `async`: the appender wrote it itself.
            return Ok(());
        }
        let reached = if self.shared.cfg.flush == FlushPolicy::Sync {
            // The flusher writes it, then fsyncs.
            self.request_flush();
            self.flushed.wait(end).await
        } else {
            self.written.wait(end).await
        };
        reached.map_err(|_| Error::LogFailed)
    }

    /// The position up to which records are acknowledged under the policy.
    pub fn durable(&self) -> u64 {
        self.durable_progress().get()
    }

    fn durable_progress(&self) -> &Progress {
        match self.shared.cfg.flush {
            FlushPolicy::Sync => &self.flushed,
            FlushPolicy::Async { .. } => &self.written,
        }
    }

    /// Resolves after the durable position ([`CommitLog::durable`]) moves
    /// (at once if it moved since the last call returned). For one caller:
    /// the store's dispatcher.
    pub async fn durable_moved(&self) {
        self.durable_progress().moved().await;
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.get()
    }

    pub fn min_pos(&self) -> u64 {
        self.shared.min.load(Ordering::Relaxed)
    }

    /// The base of the retained segment holding `pos`, if any.
    pub fn segment_base(&self, pos: u64) -> Option<u64> {
        self.shared.segment_at(pos).map(|s| s.base)
    }

    /// Reads the record of `len` bytes at `pos` into `buf`.
    pub fn read(&self, pos: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let max = self.written.get();
        let min = self.min_pos();
        if pos < min || pos + len as u64 > max {
            return Err(Error::OutOfRange { pos, min, max });
        }
        let seg = self
            .shared
            .segment_at(pos)
            .ok_or(Error::OutOfRange { pos, min, max })?;
        buf.resize(len, 0);
        let n = seg.read_at(pos, buf)?;
        if n < len {
            return Err(Error::OutOfRange { pos, min, max });
        }
        Ok(())
    }

    fn request_flush(&self) {
        // SeqCst: our records are written before this; a flusher that
        // clears the flag reads `written` after clearing it.
        if self.signal.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(mut w) = self.signal.wanted.lock() {
            *w = true;
            self.signal.cv.notify_one();
        }
    }

    fn start_flusher(&self) {
        let shared = self.shared.clone();
        let signal = self.signal.clone();
        let writer = self.writer.clone();
        let written = self.written.clone();
        let flushed = self.flushed.clone();
        let h = std::thread::Builder::new()
            .name("cellgate-flush".into())
            .spawn(move || flush_loop(&shared, &signal, &writer, &written, &flushed));
        match h {
            Ok(h) => {
                if let Ok(mut f) = self.flusher.lock() {
                    *f = Some(h);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot start the flusher thread"),
        }
    }

    /// Flushes everything written and stops the flusher.
    pub fn close(&self) {
        self.signal.stop.store(true, Ordering::Relaxed);
        self.request_flush();
        let h = self.flusher.lock().ok().and_then(|mut f| f.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Deletes whole segments, oldest first, while `expired(segment)` says
    /// so; never the active one. Returns the new oldest position.
    pub fn retain(&self, mut expired: impl FnMut(&Path, u64) -> bool) -> Result<u64> {
        let active = self.writer.lock().map_err(|_| Error::Closed)?.active.base;
        let mut segs = self.shared.segments.write().map_err(|_| Error::Closed)?;
        while let Some((&base, seg)) = segs.iter().next() {
            if base == active || !expired(&seg.path, seg.size) {
                break;
            }
            std::fs::remove_file(&seg.path).map_err(Error::io(&seg.path))?;
            segs.remove(&base);
        }
        let min = segs.keys().next().copied().unwrap_or(active);
        self.shared.min.store(min, Ordering::Relaxed);
        Ok(min)
    }

    /// Total bytes of all segments.
    pub fn disk_bytes(&self) -> u64 {
        self.shared
            .segments
            .read()
            .map(|s| s.values().map(|s| s.size).sum())
            .unwrap_or(0)
    }
}

impl<S> Drop for CommitLog<S> {
    fn drop(&mut self) {
        self.signal.stop.store(true, Ordering::Relaxed);
        if let Ok(mut w) = self.signal.wanted.lock() {
            *w = true;
            self.signal.cv.notify_one();
        }
        let h = self.flusher.lock().ok().and_then(|mut f| f.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

/// The flusher: fdatasync on request (sync) or every interval (async).
fn flush_loop<S>(
    shared: &LogShared,
    signal: &FlushSignal,
    writer: &Mutex<Writer<S>>,
    written: &Progress,
    flushed: &Progress,
) {
    let interval = match shared.cfg.flush {
        FlushPolicy::Sync => Duration::from_millis(200),
        FlushPolicy::Async { interval } => interval,
    };
    let sync = shared.cfg.flush == FlushPolicy::Sync;
    // What the last fsync took and how many appenders it released.
    let (mut last_fsync, mut released) = (Duration::ZERO, 0usize);
    loop {
        let stop = {
            let Ok(mut wanted) = signal.wanted.lock() else {
                return;
            };
            if !*wanted {
                wanted = match signal.cv.wait_timeout(wanted, interval) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            *wanted = false;
            signal.requested.store(false, Ordering::SeqCst);
            signal.stop.load(Ordering::Relaxed)
        };
        if sync && !stop && released > 1 {
            gather(flushed, released, last_fsync / 2);
        }
        // Appenders do not write under `sync`: write what they placed.
        // Under `async` records are left pending with no write under way
        // only by a failed write: try it again here, or the appenders
        // waiting behind it would wait for the next append to lead.
        match writer.lock() {
            Ok(mut w) if !w.writing && !w.pending.chunks.is_empty() => {
                w.writing = true;
                if let Err(e) = lead_writes(writer, w, written) {
                    tracing::error!(error = %e, "log write failed; will retry");
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
        let target = written.get();
        let from = flushed.get();
        if target > from {
            // Every segment holding bytes in (from, target].
            let dirty: Vec<Arc<Segment>> = match shared.segments.read() {
                Ok(segs) => segs
                    .range(..target)
                    .filter(|(_, s)| s.end() > from)
                    .map(|(_, s)| s.clone())
                    .collect(),
                Err(_) => return,
            };
            let t = Instant::now();
            match dirty.iter().try_for_each(|s| s.sync()) {
                Ok(()) => {
                    last_fsync = t.elapsed();
                    released = flushed.advance(target);
                }
                Err(e) => {
                    // After a failed fsync the kernel may have dropped the
                    // dirty pages it could not write and will report the
                    // next fsync clean: trying again proves nothing.
                    // Nothing more is acknowledged; a restart recovers
                    // from what the disk holds.
                    tracing::error!(
                        error = %e,
                        "fdatasync failed: the log takes no more appends until the broker restarts"
                    );
                    flushed.fail();
                    written.fail();
                    return;
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Group commit under load: the appenders the last fsync released are
/// about to append again, and the first of them wakes the flusher. Starting
/// the next fsync at once would cover only those few and make the rest wait
/// for the one after. So wait (up to `cap`, half an fsync) until about as
/// many are waiting again. With one appender there is nothing to gather.
fn gather(flushed: &Progress, released: usize, cap: Duration) {
    flushed.gather(released, cap);
}

/// The duty to write the log's pending records, held by the appender that
/// found no write under way ([`CommitLog::append_deferred`]). Appenders
/// after it wait for its write, so a lead dropped unwritten (its future
/// cancelled) writes on drop. A future holding one must be polled to the
/// end or dropped: one kept pending and unpolled stalls every appender.
#[must_use = "the appenders after this one wait for its write"]
pub struct Lead<'a, S> {
    log: &'a CommitLog<S>,
    done: bool,
}

// === impl Lead ===

impl<S> Lead<'_, S> {
    /// Writes everything pending (see `lead_writes`).
    pub fn write(mut self) -> Result<()> {
        self.done = true;
        self.lead()
    }

    fn lead(&self) -> Result<()> {
        let w = self.log.writer.lock().map_err(|_| Error::Closed)?;
        lead_writes(&self.log.writer, w, &self.log.written)
    }
}

impl<S> std::fmt::Debug for Lead<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lead")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S> Drop for Lead<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.lead() {
                tracing::error!(error = %e, "writing the log on a dropped lead failed");
            }
        }
    }
}

/// Writes everything pending as the leader (the caller set `writing` and
/// holds the lock): one `pwrite` per chunk, outside the lock, repeated
/// until nothing is pending; advances `written`. Clears `writing`.
fn lead_writes<'a, S>(
    writer: &'a Mutex<Writer<S>>,
    mut w: MutexGuard<'a, Writer<S>>,
    written: &Progress,
) -> Result<()> {
    loop {
        let spare = std::mem::take(&mut w.pending.spare_chunks);
        let mut chunks = std::mem::replace(&mut w.pending.chunks, spare);
        let upto = w.next;
        drop(w);
        let res = chunks
            .iter()
            .try_for_each(|(seg, pos, bytes)| seg.write_at(*pos, bytes));
        w = writer.lock().map_err(|_| Error::Closed)?;
        if let Err(e) = res {
            // Nothing is dropped: the chunks go back in front of what was
            // placed meanwhile, for the next write (the next lead's, or
            // under `sync` the flusher's) to try again (rewriting what did
            // land is harmless: the same bytes at the same positions).
            // `written` stays below them, so no appender of theirs is
            // acknowledged, and no later write can move it past them.
            let newer = std::mem::replace(&mut w.pending.chunks, chunks);
            w.pending.chunks.extend(newer);
            w.writing = false;
            return Err(e);
        }
        for (_, _, mut buf) in chunks.drain(..) {
            if w.pending.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_MAX_BYTES {
                buf.clear();
                w.pending.spare.push(buf);
            }
        }
        w.pending.spare_chunks = chunks;
        written.advance(upto);
        if w.pending.chunks.is_empty() {
            w.writing = false;
            w.joined = w.followers > 0;
            return Ok(());
        }
    }
}
