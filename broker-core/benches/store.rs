//! The store's figures for issue 3 ("Benchmarks"), each as a ratio of the
//! disk's raw limits measured first, in the same run, on the same
//! filesystem:
//!
//! 1. raw limits: sequential write (fresh, `posix_fallocate`d and pre-written
//!    file), fdatasync/s of 4 KiB appends, and (after the log is built)
//!    sequential read of the log files and CRC32C speed;
//! 2. appends of 1 KiB messages: `put` with 1 and 64 producers under
//!    `async` (10 ms) and `sync`, and `put_batch` of 32 with 1 producer under
//!    `async`, which also builds a ~1 GiB log;
//! 3. reading that log back through `entries` (32 at a time) + `read`, on
//!    one queue and on all queues;
//! 4. recovery of that log: `Store::open` with the checkpoint `close()`
//!    wrote, and without it (a full scan checking every record's CRC), with
//!    the page cache warm and after evicting the files from it.
//!
//! Run: `cargo bench -p cellgate-broker-core --bench store`. `BENCH_SCALE`
//! (default 1.0) scales message counts, byte volumes and the fdatasync
//! window; `BENCH_DIR` picks the scratch directory (default: a temp dir in
//! the target directory, next to this binary). `BENCH_ONLY=batch` skips
//! the `put` cases (to profile `put_batch` alone). Without `--bench` (e.g.
//! `cargo test --benches`) it runs a tiny smoke pass. Prints markdown.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellgate_broker_core::log::{FlushPolicy, LogConfig};
use cellgate_broker_core::{record, Message, QueueSelect, Store, StoreConfig};
use hdrhistogram::Histogram;
use nix::fcntl::{posix_fadvise, posix_fallocate, PosixFadviseAdvice};
use tokio::runtime::Runtime;

/// The allocator the `cellgate` binary ships with (the store runs inside
/// it): messages are allocated by producers and freed on the dispatcher
/// thread, which glibc's malloc makes expensive.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const MIBF: f64 = MIB as f64;
const TOPIC: &str = "ANT|RZ00A%ORDER_EVENTS";
const QUEUES: u16 = 8;
const BODY: usize = 1024;
const TAGS: [&str; 3] = ["Paid", "Created", "Created"];
const SEGMENT: u64 = 64 * MIB;
const ASYNC: FlushPolicy = FlushPolicy::Async {
    interval: Duration::from_millis(10),
};

struct Bench {
    scale: f64,
    root: tempfile::TempDir,
    body: Vec<u8>,
    rt: Runtime,
}

impl Bench {
    fn n(&self, n: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(1)
    }

    fn dur(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs * self.scale.min(1.0)).max(0.2))
    }

    /// A fresh, empty directory for one case.
    fn case_dir(&self, name: &str) -> PathBuf {
        let d = self.root.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

fn xorshift_fill(buf: &mut [u8], mut seed: u64) {
    for c in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        c.copy_from_slice(&seed.to_le_bytes()[..c.len()]);
    }
}

fn latency_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap()
}

fn us(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us < 10.0 {
        format!("{us:.1} µs")
    } else if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0} k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------- raw limits

#[derive(Debug, Clone, Copy)]
enum Prep {
    Fresh,
    Fallocated,
    Prewritten,
}

/// MiB/s of 256 KiB pwrites of `bytes` into a file prepared as `prep`,
/// fsync included.
fn seq_write(dir: &Path, bytes: u64, prep: Prep) -> f64 {
    let path = dir.join(format!("seq-{prep:?}"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let mut chunk = vec![0u8; 256 * KIB as usize];
    match prep {
        Prep::Fresh => {}
        Prep::Fallocated => {
            posix_fallocate(&f, 0, bytes as i64).unwrap();
            f.sync_all().unwrap();
        }
        Prep::Prewritten => {
            xorshift_fill(&mut chunk, 7);
            let mut off = 0;
            while off < bytes {
                f.write_all_at(&chunk, off).unwrap();
                off += chunk.len() as u64;
            }
            f.sync_all().unwrap();
        }
    }
    xorshift_fill(&mut chunk, 11);
    let t = Instant::now();
    let mut off = 0;
    while off < bytes {
        f.write_all_at(&chunk, off).unwrap();
        off += chunk.len() as u64;
    }
    f.sync_all().unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    off as f64 / MIBF / secs
}

/// 4 KiB write + fdatasync, repeated for `window`: appends to a fresh file,
/// writes into a `posix_fallocate`d one (what a store segment is), or
/// overwrites of a pre-written one.
fn fdatasync_rate(dir: &Path, window: Duration, prep: Prep) -> (f64, Histogram<u64>) {
    let path = dir.join(format!("dsync-{prep:?}"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let cap = 256 * MIB;
    match prep {
        Prep::Fresh => {}
        Prep::Fallocated => {
            posix_fallocate(&f, 0, cap as i64).unwrap();
            f.sync_all().unwrap();
        }
        Prep::Prewritten => {
            let zeros = vec![0u8; MIB as usize];
            for i in 0..cap / MIB {
                f.write_all_at(&zeros, i * MIB).unwrap();
            }
            f.sync_all().unwrap();
        }
    }
    let mut block = vec![0u8; 4096];
    xorshift_fill(&mut block, 3);
    let mut h = latency_hist();
    let (mut n, mut off) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < window && off < cap {
        let t1 = Instant::now();
        f.write_all_at(&block, off).unwrap();
        f.sync_data().unwrap();
        h.saturating_record(t1.elapsed().as_nanos() as u64);
        n += 1;
        off += 4096;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    (n as f64 / secs, h)
}

/// Syncs every file under `dir` and drops it from the page cache.
fn evict(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            evict(&p);
        } else {
            let f = File::open(&p).unwrap();
            f.sync_all().unwrap();
            posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
        }
    }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// MiB/s reading the first `bytes` of the log files in 4 MiB reads.
fn seq_read(files: &[PathBuf], bytes: u64) -> f64 {
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut left = bytes;
    let t = Instant::now();
    for p in files {
        let f = File::open(p).unwrap();
        let len = f.metadata().unwrap().len();
        let mut off = 0;
        while off < len && left > 0 {
            let n = (buf.len() as u64).min(len - off).min(left) as usize;
            f.read_exact_at(&mut buf[..n], off).unwrap();
            black_box(&buf[..n]);
            off += n as u64;
            left -= n as u64;
        }
    }
    (bytes - left) as f64 / MIBF / t.elapsed().as_secs_f64()
}

/// MiB/s of CRC32C over a 4 MiB buffer, `bytes` in all.
fn crc_rate(bytes: u64) -> f64 {
    let mut buf = vec![0u8; 4 * MIB as usize];
    xorshift_fill(&mut buf, 5);
    let t = Instant::now();
    let mut done = 0;
    let mut acc = 0u32;
    while done < bytes {
        acc ^= crc32c::crc32c(black_box(&buf));
        done += buf.len() as u64;
    }
    black_box(acc);
    done as f64 / MIBF / t.elapsed().as_secs_f64()
}

// -------------------------------------------------------------------- store

fn store_cfg(flush: FlushPolicy) -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_bytes: SEGMENT,
            flush,
            preallocate: true,
        },
        default_queues: QUEUES,
        ..StoreConfig::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A 1 KiB message as the gateway would hand it over: physical topic, tag,
/// a business key, the unit headers and one client property.
fn message(i: u64, body: &[u8]) -> Message {
    let properties: BTreeMap<String, String> = [
        ("__UNIT.ORIUNIT", "RZ00A".to_owned()),
        ("__UNIT.TARGET_R", "RZ03A".to_owned()),
        ("__UNIT.RULES_VERSION", "7".to_owned()),
        ("__UNIT.RULES_SHA256", "9f86d081884c7d65".to_owned()),
        ("UID", format!("{}", 12_375 + i % 10_000)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Message {
        topic: TOPIC.to_owned(),
        body: body.to_vec(),
        tag: Some(TAGS[(i % 3) as usize].to_owned()),
        keys: vec![format!("order-{:010}", i)],
        properties,
        born_ms: now_ms(),
    }
}

struct PutRun {
    name: String,
    flush: &'static str,
    producers: usize,
    batch: usize,
    msgs: u64,
    log_bytes: u64,
    secs: f64,
    /// The process's CPU time (every thread, user + system) over the case.
    cpu_secs: f64,
    lat: Histogram<u64>,
}

impl PutRun {
    fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    fn mib_per_s(&self) -> f64 {
        self.log_bytes as f64 / MIBF / self.secs
    }
    /// CPU per message: moves much less than msgs/s when other processes
    /// share the cores.
    fn cpu_per_msg(&self) -> String {
        us((self.cpu_secs * 1e9 / self.msgs as f64) as u64)
    }
}

/// CPU time of this process so far, every thread (live or exited), user
/// and system, from `/proc/self/stat` (in clock ticks of 10 ms: a case runs
/// for at least a few hundred).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd,
    // utime 14th and stime 15th of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// `total` messages from `producers` tasks, `batch` per call (1: `put`),
/// stopping early once a producer has run for `cap`. Returns the run and
/// the store (still open).
#[allow(clippy::too_many_arguments)]
fn put_case(
    b: &Bench,
    name: &str,
    flush: FlushPolicy,
    producers: usize,
    batch: usize,
    total: u64,
    cap: Duration,
) -> (PutRun, Arc<Store>, PathBuf) {
    let dir = b.case_dir(name);
    let store = Arc::new(Store::open(&dir, store_cfg(flush)).unwrap());
    store.create_topic(TOPIC, QUEUES).unwrap();
    let per = (total / producers as u64).max(1);
    let (msgs, log_bytes, secs, cpu_secs, lat) = b.rt.block_on(async {
        let gate = Arc::new(tokio::sync::Barrier::new(producers + 1));
        let tasks: Vec<_> = (0..producers as u64)
            .map(|p| {
                let store = store.clone();
                let gate = gate.clone();
                let body = b.body.clone();
                tokio::spawn(async move {
                    // Messages are built before the clock starts (the
                    // figures are the store's), by the producer's own task:
                    // as in the gateway, where the task that parses a
                    // request builds its message and hands it to the store.
                    // (Built on the main thread, every free of a message
                    // would be a cross-thread free, which a real producer
                    // does not pay.)
                    let msgs: Vec<(Message, u64)> = (0..per)
                        .map(|i| {
                            let m = message(p * per + i, &body);
                            let len = record::encoded_len(&m).unwrap() as u64;
                            (m, len)
                        })
                        .collect();
                    gate.wait().await;
                    let start = Instant::now();
                    let mut h = latency_hist();
                    let (mut n, mut bytes) = (0u64, 0u64);
                    let mut it = msgs.into_iter();
                    loop {
                        if batch == 1 {
                            let Some((m, len)) = it.next() else { break };
                            let t = Instant::now();
                            store.put(m, QueueSelect::RoundRobin).await.unwrap();
                            h.saturating_record(t.elapsed().as_nanos() as u64);
                            n += 1;
                            bytes += len;
                        } else {
                            let mut chunk = Vec::with_capacity(batch);
                            for (m, len) in it.by_ref().take(batch) {
                                bytes += len;
                                chunk.push((m, QueueSelect::RoundRobin));
                            }
                            if chunk.is_empty() {
                                break;
                            }
                            n += chunk.len() as u64;
                            let t = Instant::now();
                            store.put_batch(chunk).await.unwrap();
                            h.saturating_record(t.elapsed().as_nanos() as u64);
                        }
                        if start.elapsed() > cap {
                            break;
                        }
                    }
                    (n, bytes, h)
                })
            })
            .collect();
        gate.wait().await;
        let t0 = Instant::now();
        let cpu0 = process_cpu_secs();
        let (mut n, mut bytes, mut lat) = (0, 0, latency_hist());
        for t in tasks {
            let (tn, tb, th) = t.await.unwrap();
            n += tn;
            bytes += tb;
            lat.add(th).unwrap();
        }
        let cpu = process_cpu_secs() - cpu0;
        (n, bytes, t0.elapsed().as_secs_f64(), cpu, lat)
    });
    let flush_name = match flush {
        FlushPolicy::Sync => "sync",
        FlushPolicy::Async { .. } => "async 10 ms",
    };
    let run = PutRun {
        name: name.to_owned(),
        flush: flush_name,
        producers,
        batch,
        msgs,
        log_bytes,
        secs,
        cpu_secs,
        lat,
    };
    eprintln!(
        "  {name}: {} msgs in {:.2} s = {} msgs/s, {:.0} MiB/s, CPU {} per msg, p50 {} p99 {}",
        run.msgs,
        run.secs,
        rate(run.msgs_per_s()),
        run.mib_per_s(),
        run.cpu_per_msg(),
        us(run.lat.value_at_quantile(0.5)),
        us(run.lat.value_at_quantile(0.99)),
    );
    (run, store, dir)
}

fn close(store: Arc<Store>) {
    store.close().unwrap();
    drop(Arc::into_inner(store));
}

struct ReadRun {
    name: &'static str,
    msgs: u64,
    bytes: u64,
    secs: f64,
}

/// Reads every message of `queues` (taking 32 entries from each queue in
/// turn) through `entries` + `read`.
fn read_case(store: &Store, name: &'static str, queues: &[u16]) -> ReadRun {
    let mut from = vec![0u64; queues.len()];
    let mut done = vec![false; queues.len()];
    let (mut msgs, mut bytes) = (0u64, 0u64);
    let t = Instant::now();
    while done.iter().any(|d| !d) {
        for (i, &q) in queues.iter().enumerate() {
            if done[i] {
                continue;
            }
            let es = store.entries(TOPIC, q, from[i], 32).unwrap();
            if es.is_empty() {
                done[i] = true;
                continue;
            }
            from[i] += es.len() as u64;
            for e in &es {
                let m = store.read(e).unwrap();
                black_box(&m.body);
                msgs += 1;
                bytes += u64::from(e.size);
            }
        }
    }
    let run = ReadRun {
        name,
        msgs,
        bytes,
        secs: t.elapsed().as_secs_f64(),
    };
    eprintln!(
        "  read {name}: {} msgs in {:.2} s = {} msgs/s",
        run.msgs,
        run.secs,
        rate(run.msgs as f64 / run.secs)
    );
    run
}

struct Recovery {
    name: &'static str,
    secs: f64,
}

fn timed_open(dir: &Path, flush: FlushPolicy, expect: u64, name: &'static str) -> Recovery {
    let t = Instant::now();
    let store = Store::open(dir, store_cfg(flush)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let found: u64 = (0..QUEUES)
        .map(|q| store.queue_range(TOPIC, q).unwrap().1)
        .sum();
    assert_eq!(found, expect, "{name}: messages after reopening");
    store.close().unwrap();
    eprintln!("  open ({name}): {secs:.3} s");
    Recovery { name, secs }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let scale: f64 = match std::env::var("BENCH_SCALE") {
        Ok(s) => s.parse().expect("BENCH_SCALE must be a number"),
        Err(_) if bench_mode => 1.0,
        Err(_) => 0.002,
    };
    let exe = std::env::current_exe().unwrap();
    let base = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        // target/<profile>/deps/<bin> -> target/<profile>
        None => exe.ancestors().nth(2).unwrap().to_owned(),
    };
    let root = tempfile::tempdir_in(&base).unwrap();
    let same_fs_as_tmp = std::fs::metadata("/tmp")
        .map(|m| m.dev() == std::fs::metadata(root.path()).unwrap().dev())
        .unwrap_or(false);
    let mut body = vec![0u8; BODY];
    xorshift_fill(&mut body, 1);
    let b = Bench {
        scale,
        root,
        body,
        rt: tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let load_start = loadavg();
    let started = Instant::now();
    eprintln!(
        "store bench: scale {scale}, scratch {}",
        b.root.path().display()
    );

    // 1. Raw limits.
    eprintln!("raw limits");
    let seq_bytes = b.n(512 * MIB).div_ceil(256 * KIB) * 256 * KIB;
    let raw_dir = b.case_dir("raw");
    let seq_fresh = seq_write(&raw_dir, seq_bytes, Prep::Fresh);
    let seq_falloc = seq_write(&raw_dir, seq_bytes, Prep::Fallocated);
    let seq_pre = seq_write(&raw_dir, seq_bytes, Prep::Prewritten);
    eprintln!("  seq write MiB/s: fresh {seq_fresh:.0}, fallocated {seq_falloc:.0}, pre-written {seq_pre:.0}");
    let window = b.dur(2.0);
    let (dsync, dsync_h) = fdatasync_rate(&raw_dir, window, Prep::Fresh);
    let (dsync_fa, dsync_fa_h) = fdatasync_rate(&raw_dir, window, Prep::Fallocated);
    let (dsync_pre, dsync_pre_h) = fdatasync_rate(&raw_dir, window, Prep::Prewritten);
    eprintln!(
        "  fdatasync/s: append {dsync:.0}, fallocated {dsync_fa:.0}, pre-written {dsync_pre:.0}"
    );
    let (seq_best, seq_best_name) = [
        (seq_fresh, "fresh file"),
        (seq_falloc, "fallocated file"),
        (seq_pre, "pre-written file"),
    ]
    .into_iter()
    .fold((0.0, ""), |a, x| if x.0 > a.0 { x } else { a });
    let seq_worst = seq_fresh.min(seq_falloc).min(seq_pre);

    // 2. Appends.
    eprintln!("appends");
    let mut puts = Vec::new();
    let long = Duration::from_secs(3600);
    for (name, flush, producers, total, cap) in [
        ("put, async, 1 producer", ASYNC, 1, b.n(200_000), long),
        ("put, async, 64 producers", ASYNC, 64, b.n(320_000), long),
        (
            "put, sync, 1 producer",
            FlushPolicy::Sync,
            1,
            b.n(10_000),
            b.dur(3.0),
        ),
        (
            "put, sync, 64 producers",
            FlushPolicy::Sync,
            64,
            b.n(200_000),
            b.dur(6.0),
        ),
    ] {
        if std::env::var("BENCH_ONLY").as_deref() == Ok("batch") {
            break;
        }
        let (run, store, _) = put_case(&b, name, flush, producers, 1, total, cap);
        close(store);
        puts.push(run);
    }
    // Many producers sending batches (the gateway's batch publish under
    // load): writes combine across producers, and encoding runs on both
    // cores while one producer writes.
    let (run, store, _) = put_case(
        &b,
        "put_batch of 32, async, 64 producers",
        ASYNC,
        64,
        32,
        b.n(640_000),
        long,
    );
    close(store);
    puts.push(run);
    // put_batch builds the log that the read and recovery parts use.
    let rec_len = record::encoded_len(&message(0, &b.body)).unwrap() as u64;
    let log_target = b.n(GIB);
    let (batch_run, store, dir) = put_case(
        &b,
        "put_batch of 32, async, 1 producer (builds the ~1 GiB log)",
        ASYNC,
        1,
        32,
        log_target / rec_len,
        long,
    );
    let log_msgs = batch_run.msgs;
    let log_bytes = batch_run.log_bytes;
    puts.push(batch_run);

    // 3. Reads, page cache warm (just written).
    eprintln!("reads");
    let reads = [
        read_case(&store, "one queue (queue 0 of 8)", &[0]),
        read_case(
            &store,
            "all 8 queues (32 from each in turn)",
            &(0..QUEUES).collect::<Vec<_>>(),
        ),
    ];
    assert_eq!(reads[1].msgs, log_msgs);
    close(store);

    // 4. Recovery, and the raw read + CRC floor on the same files.
    eprintln!("recovery of {:.0} MiB", log_bytes as f64 / MIBF);
    let files = log_files(&dir);
    let read_warm = seq_read(&files, log_bytes);
    let crc = crc_rate(log_bytes);
    let cp = dir.join("checkpoint.json");
    let mut recs = vec![timed_open(&dir, ASYNC, log_msgs, "checkpoint, cache warm")];
    std::fs::remove_file(&cp).unwrap();
    recs.push(timed_open(
        &dir,
        ASYNC,
        log_msgs,
        "no checkpoint: full scan, cache warm",
    ));
    evict(&dir);
    recs.push(timed_open(
        &dir,
        ASYNC,
        log_msgs,
        "checkpoint, cache evicted",
    ));
    std::fs::remove_file(&cp).unwrap();
    evict(&dir);
    recs.push(timed_open(
        &dir,
        ASYNC,
        log_msgs,
        "no checkpoint: full scan, cache evicted",
    ));
    evict(&dir);
    let read_cold = seq_read(&files, log_bytes);
    eprintln!("  raw read MiB/s: warm {read_warm:.0}, evicted {read_cold:.0}; crc32c {crc:.0}");
    let floor_warm = log_bytes as f64 / MIBF * (1.0 / read_warm + 1.0 / crc);
    let floor_cold = log_bytes as f64 / MIBF * (1.0 / read_cold + 1.0 / crc);

    let total_secs = started.elapsed().as_secs_f64();
    let load_end = loadavg();

    // ------------------------------------------------------------ report
    let gib = log_bytes as f64 / GIB as f64;
    println!();
    println!(
        "Scale {scale}; scratch dir `{}` (under the target dir; same filesystem as /tmp: {}); \
         load average {load_start} at start, {load_end} at end; run took {total_secs:.0} s.",
        b.root.path().display(),
        if same_fs_as_tmp { "yes" } else { "no" },
    );
    println!();
    println!("Raw limits (same run, same filesystem):");
    println!();
    println!("| raw limit | value |");
    println!("| --- | --- |");
    let seq_mib = seq_bytes / MIB;
    println!("| sequential write, fresh file ({seq_mib} MiB in 256 KiB pwrites + fsync) | {seq_fresh:.0} MiB/s |");
    println!("| sequential write, `posix_fallocate`d file (same) | {seq_falloc:.0} MiB/s |");
    println!("| sequential write, pre-written file (overwrite, same) | {seq_pre:.0} MiB/s |");
    println!(
        "| fdatasync/s, 4 KiB appends to a fresh file, 1 writer ({:.1} s) | **{dsync:.0}/s** (p50 {}, p99 {}) |",
        window.as_secs_f64(),
        us(dsync_h.value_at_quantile(0.5)),
        us(dsync_h.value_at_quantile(0.99)),
    );
    println!(
        "| fdatasync/s, 4 KiB writes into a `posix_fallocate`d file, 1 writer | {dsync_fa:.0}/s (p50 {}, p99 {}) |",
        us(dsync_fa_h.value_at_quantile(0.5)),
        us(dsync_fa_h.value_at_quantile(0.99)),
    );
    println!(
        "| fdatasync/s, 4 KiB overwrites of a pre-written (zero-filled) file, 1 writer | {dsync_pre:.0}/s (p50 {}, p99 {}) |",
        us(dsync_pre_h.value_at_quantile(0.5)),
        us(dsync_pre_h.value_at_quantile(0.99)),
    );
    println!(
        "| sequential read of the log files, 4 MiB reads, page cache warm | {read_warm:.0} MiB/s |"
    );
    println!("| sequential read of the log files, evicted (`POSIX_FADV_DONTNEED`) | {read_cold:.0} MiB/s |");
    println!("| CRC32C, 4 MiB buffers in memory | {crc:.0} MiB/s |");
    println!();
    println!(
        "Baselines for the ratios: sequential write = the best of the three ({seq_best_name}, \
         {seq_best:.0} MiB/s); fdatasync = 4 KiB appends ({dsync:.0}/s). Messages: {BODY} B body, \
         {rec_len} B as stored (topic, tag, 1 key, 4 `__UNIT.*` + 1 client property); MiB/s counts \
         stored bytes. Topic of {QUEUES} queues, round robin; 64 MiB pre-allocated segments; a fresh \
         data dir per case."
    );
    println!();
    println!("| append case | msgs | msgs/s | MiB/s | CPU per msg | p50 | p99 | MiB/s ÷ seq write | msgs/s ÷ 1 M | msgs/s ÷ fdatasync/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &puts {
        let per = if r.batch > 1 { " (per batch)" } else { "" };
        let vs_sync = match r.flush {
            "sync" => format!("**{:.1}×**", r.msgs_per_s() / dsync),
            _ => "—".into(),
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {}{per} | {}{per} | **{:.2}×** | {:.2}× | {vs_sync} |",
            r.name,
            r.msgs,
            rate(r.msgs_per_s()),
            r.mib_per_s(),
            r.cpu_per_msg(),
            us(r.lat.value_at_quantile(0.5)),
            us(r.lat.value_at_quantile(0.99)),
            r.mib_per_s() / seq_best,
            r.msgs_per_s() / 1e6,
        );
    }
    println!();
    println!(
        "| read case (log of {:.0} MiB, page cache warm) | msgs | msgs/s | MiB/s | ÷ raw read (warm) |",
        log_bytes as f64 / MIBF
    );
    println!("| --- | --- | --- | --- | --- |");
    for r in &reads {
        let mibs = r.bytes as f64 / MIBF / r.secs;
        println!(
            "| {} | {} | {} | {mibs:.0} | {:.2}× |",
            r.name,
            r.msgs,
            rate(r.msgs as f64 / r.secs),
            mibs / read_warm
        );
    }
    println!();
    println!(
        "| recovery (`Store::open`, log of {:.0} MiB, {log_msgs} msgs) | time | per GiB | ÷ read + CRC floor | ÷ 2 s/GiB goal |",
        log_bytes as f64 / MIBF
    );
    println!("| --- | --- | --- | --- | --- |");
    for r in &recs {
        let floor = if r.name.contains("evicted") {
            floor_cold
        } else {
            floor_warm
        };
        println!(
            "| {} | {:.3} s | {:.3} s | {:.1}× | **{:.2}×** |",
            r.name,
            r.secs,
            r.secs / gib,
            r.secs / floor,
            r.secs / gib / 2.0
        );
    }
    println!();
    println!(
        "Read + CRC floor for this log: {floor_warm:.3} s warm, {floor_cold:.3} s evicted \
         (bytes ÷ raw read + bytes ÷ CRC32C)."
    );
    println!();
    println!("| goal | measured | met? |");
    println!("| --- | --- | --- |");
    for r in puts.iter().filter(|r| r.flush != "sync") {
        let (m, f) = (r.msgs_per_s() / 1e6, r.mib_per_s() / seq_best);
        let fw = r.mib_per_s() / seq_worst;
        println!(
            "| async ≥ 1 M msgs/s or ≥ 0.8× seq write: {} | {m:.2} M msgs/s, {f:.2}× seq write \
             ({fw:.2}× the slowest raw write figure) | {} |",
            r.name,
            if m >= 1.0 || f >= 0.8 {
                "met"
            } else {
                "not met"
            }
        );
    }
    for r in puts
        .iter()
        .filter(|r| r.flush == "sync" && r.producers == 64)
    {
        let x = r.msgs_per_s() / dsync;
        println!(
            "| sync, 64 producers ≥ 20× fdatasync/s | {x:.1}× ({}/s vs {dsync:.0}/s) | {} |",
            rate(r.msgs_per_s()),
            if x >= 20.0 { "met" } else { "not met" }
        );
    }
    for r in &recs {
        let per = r.secs / gib;
        println!(
            "| recovery of 1 GiB < 2 s: {} | {per:.3} s per GiB | {} |",
            r.name,
            if per < 2.0 { "met" } else { "not met" }
        );
    }
}
