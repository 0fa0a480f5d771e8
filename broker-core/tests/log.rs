//! The commit log over real files: append and read back across segment
//! rolls, reopen, a torn tail, group commit under `sync`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cellgate_broker_core::log::{Batch, CommitLog, FlushPolicy, Lead, LogConfig};
use cellgate_broker_core::record::{self, Message, Stamp};
use cellgate_broker_core::Error;
use uuid::Uuid;

fn cfg(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        flush,
        preallocate: true,
    }
}

fn msg(i: usize) -> Message {
    Message {
        topic: "ANT|RZ00A%T1".into(),
        body: format!("body-{i}-{}", "x".repeat(i % 300)).into_bytes(),
        tag: Some("TagA".into()),
        keys: vec![format!("k{i}")],
        ..Message::default()
    }
}

/// (pos, len) of each record placed.
type Placed = Vec<(u64, usize)>;
type Log = CommitLog<Placed>;

/// Opens the log, collecting (pos, len) of every record the recovery scan sees.
fn open(dir: &Path, flush: FlushPolicy) -> (Log, Vec<(u64, usize)>) {
    let mut seen = Vec::new();
    let log = CommitLog::open(dir, cfg(flush), 0, Vec::new(), |pos, len, _| {
        seen.push((pos, len));
        Ok(())
    })
    .unwrap();
    (log, seen)
}

/// An append closure placing record `i` and noting its (pos, len).
fn placing(i: usize) -> impl FnOnce(&mut Batch<'_>, &mut Placed) -> Result<(u64, usize), Error> {
    let m = msg(i);
    let len = record::encoded_len(&m).unwrap();
    let stamp = Stamp {
        id: Uuid::now_v7(),
        queue: 0,
        queue_offset: i as u64,
        stored_ms: 0,
    };
    move |b, placed| {
        let pos = b.push(len, |buf| record::encode(&m, &stamp, len, buf))?;
        placed.push((pos, len));
        Ok((pos, len))
    }
}

/// Places record `i` (not yet written); returns its end and the lead, if
/// the write is the caller's.
fn place(log: &Log, i: usize) -> (u64, Option<Lead<'_, Placed>>) {
    let (_, end, lead) = log.append_deferred(placing(i)).unwrap();
    (end, lead)
}

async fn append(log: &Log, i: usize) -> (u64, usize) {
    let (placed, end) = log.append_with(placing(i)).unwrap();
    log.wait_durable(end).await.unwrap();
    placed
}

/// An appender that leads the write may yield first (so others join its
/// `pwrite`); if its future is dropped there, the lead still writes on
/// drop, or the appenders placed after it would wait forever.
#[tokio::test]
async fn a_dropped_lead_still_writes_for_its_followers() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(
        dir.path(),
        FlushPolicy::Async {
            interval: Duration::from_millis(10),
        },
    );
    // Alone, an appender writes inline but yields every few leads, to
    // find out whether others would join: wait for such a lead.
    let mut first = None;
    for i in 0..256 {
        match place(&log, i) {
            (end, Some(lead)) => {
                first = Some((end, lead));
                break;
            }
            (end, None) => assert!(log.durable() >= end, "written inline"),
        }
    }
    let (end, lead) = first.expect("a lead that leaves the write to its caller");
    assert!(log.durable() < end, "a lead's records wait for its write");
    // A follower: a write is under way, so it only waits.
    let (follower_end, second) = place(&log, 100);
    assert!(second.is_none(), "one lead at a time");
    drop(second);
    assert!(log.durable() < follower_end);
    drop(lead);
    tokio::time::timeout(Duration::from_secs(5), log.wait_durable(follower_end))
        .await
        .expect("the dropped lead wrote the follower's record")
        .unwrap();
    // Both records are on disk: a reopen's scan sees them.
    drop(log);
    let (_, seen) = open(dir.path(), FlushPolicy::Sync);
    assert_eq!(
        seen.last().map(|&(pos, len)| pos + len as u64),
        Some(follower_end)
    );
    assert!(seen.iter().any(|&(pos, len)| pos + len as u64 == end));
}

#[tokio::test]
async fn appends_roll_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut placed = Vec::new();
    {
        let (log, seen) = open(dir.path(), FlushPolicy::Sync);
        assert!(seen.is_empty());
        for i in 0..100 {
            placed.push(append(&log, i).await);
        }
        // Read every record back through the log.
        for (i, &(pos, len)) in placed.iter().enumerate() {
            let mut buf = Vec::new();
            log.read(pos, len, &mut buf).unwrap();
            let d = record::decode(&buf, pos).unwrap();
            assert_eq!(d.body, msg(i).body);
            assert_eq!(d.queue_offset, i as u64);
        }
        assert!(log.disk_bytes() >= 4096 * 3, "several segments");
    }
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments >= 3, "{segments}");
    let (log, seen) = open(dir.path(), FlushPolicy::Sync);
    assert_eq!(seen, placed, "recovery sees exactly the appended records");
    // Appending continues after the last record.
    let (pos, _) = append(&log, 100).await;
    assert!(pos > placed.last().unwrap().0);
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let placed: Vec<(u64, usize)> = {
        let (log, _) = open(dir.path(), FlushPolicy::Sync);
        let mut p = Vec::new();
        for i in 0..5 {
            p.push(append(&log, i).await);
        }
        p
    };
    // Tear the last record: flip a byte in its body.
    let (pos, len) = placed[4];
    let seg = dir.path().join(format!("{:020}", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(pos as usize) + len - 1] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let (log, seen) = open(dir.path(), FlushPolicy::Sync);
    assert_eq!(seen, placed[..4].to_vec());
    let bytes = std::fs::read(&seg).unwrap();
    assert!(bytes[pos as usize..].iter().all(|b| *b == 0), "tail zeroed");
    // The next append takes the torn record's place.
    assert_eq!(append(&log, 9).await.0, pos);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_appends_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), FlushPolicy::Sync);
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    append(&log, t * 10 + i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    drop(log);
    let (_, seen) = open(
        dir.path(),
        FlushPolicy::Async {
            interval: Duration::from_millis(10),
        },
    );
    assert_eq!(seen.len(), 640);
}

/// `Batch::lands_with` is exactly "`push` will not roll": at the exact fit
/// (`next + len + 4 == end`), one byte over it, and everywhere between.
/// The store relies on it to keep a commit in its half's segment.
#[tokio::test]
async fn lands_with_agrees_with_the_roll_at_every_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(
        dir.path(),
        FlushPolicy::Async {
            interval: Duration::from_millis(10),
        },
    );
    const SEG: u64 = 4096;
    let mut prev = 0u64;
    let mut next = 0u64;
    let (mut exact, mut over) = (0, 0);
    for i in 0..400u64 {
        // Aim at the boundaries: once at the exact fit, once a byte over,
        // otherwise a length that varies.
        let left = SEG - next % SEG;
        let len = match i % 3 {
            0 if (72..600).contains(&left) => (left - 4) as usize,
            1 if (72..600).contains(&left) => (left - 3) as usize,
            _ => 68 + (i as usize * 37) % 400,
        };
        let (landed, pos) = log
            .append_with(|b, _| {
                let lands = b.lands_with(prev, len);
                let pos = b.push(len, |buf| buf.resize(buf.len() + len, 1))?;
                Ok((lands, pos))
            })
            .unwrap()
            .0;
        assert_eq!(
            landed,
            pos / SEG == prev / SEG,
            "record {i}: len {len} after {prev}, placed at {pos}"
        );
        if len as u64 + 4 == left {
            exact += 1;
        }
        if len as u64 + 3 == left {
            over += 1;
        }
        prev = pos;
        next = pos + len as u64;
    }
    assert!(
        exact > 0 && over > 0,
        "boundaries hit: {exact} exact, {over} over"
    );
}
