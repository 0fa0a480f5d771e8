//! Hot reload over real files: swap, rejection with line:col, last good kept,
//! restart-only settings refused, file watching, SIGHUP, and 1,000 reloads
//! under concurrent readers.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellgate_rules::watch::{self, WatchOptions};
use cellgate_rules::{Error, ReloadOutcome, RulesHandle, Shard};

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ldc.yaml"))
        .unwrap()
}

/// Writes `text` to `path` the way editors do: a temp file renamed over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn setup() -> (tempfile::TempDir, PathBuf, Arc<RulesHandle>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, example()).unwrap();
    let h = Arc::new(RulesHandle::open(&path).unwrap());
    (dir, path, h)
}

fn owner(h: &RulesHandle, shard: u8) -> String {
    let r = h.current();
    r.cell_name(r.shard_owner(Shard::new(shard).unwrap()))
        .to_owned()
}

const MOVE_SHARDS: (&str, &str) = (
    "  - { range: \"25-49\", cell: RZ01A }\n  - { range: \"50-74\", cell: RZ02A }",
    "  - { range: \"25-49\", cell: RZ02A }\n  - { range: \"50-74\", cell: RZ01A }",
);

#[test]
fn valid_then_invalid_swaps_then_keeps_last_good() {
    let (_dir, path, h) = setup();
    assert_eq!(h.current().version(), 1);
    assert_eq!(owner(&h, 30), "RZ01A");

    let v2 = example().replace(MOVE_SHARDS.0, MOVE_SHARDS.1);
    std::fs::write(&path, &v2).unwrap();
    let ReloadOutcome::Swapped { version, diff } = h.reload().unwrap() else {
        panic!("not swapped")
    };
    assert_eq!(version, 2);
    assert_eq!(
        diff.changes(),
        [
            "shards 25-49 moved RZ01A -> RZ02A",
            "shards 50-74 moved RZ02A -> RZ01A"
        ]
    );
    assert_eq!(owner(&h, 30), "RZ02A");
    assert_eq!(h.current().meta().sha256.len(), 64);

    // Invalid: an unknown GZone on line 36 of the file.
    let bad = v2.replace("gzone: GZ00A", "gzone: GZ9");
    let line = bad.lines().position(|l| l == "gzone: GZ9").unwrap() + 1;
    std::fs::write(&path, &bad).unwrap();
    let err = h.reload().unwrap_err();
    let want = format!(
        "{}:{line}:8: GZone GZ9 is not a declared cell",
        path.display()
    );
    assert!(matches!(err, Error::Invalid(_)));
    assert_eq!(err.to_string(), want);
    // The last good rule set is still in force, and the error is recorded.
    assert_eq!(h.current().version(), 2);
    assert_eq!(owner(&h, 30), "RZ02A");
    assert_eq!(h.status().last_error.as_deref(), Some(want.as_str()));
    assert!(h.status().last_error_at.is_some());

    // Same bytes as in force: nothing to do, no new version.
    std::fs::write(&path, &v2).unwrap();
    assert!(matches!(
        h.reload().unwrap(),
        ReloadOutcome::Unchanged { version: 2 }
    ));
    assert_eq!(h.status().last_error, None);
    let c = h.counts();
    assert_eq!((c.swapped, c.invalid, c.unchanged), (1, 1, 1));
}

#[test]
fn broker_change_needs_a_restart() {
    let (_dir, path, h) = setup();
    let text = example().replace(
        "{ name: RZ01A, zone: R, city: SH, broker: embedded }",
        "{ name: RZ01A, zone: R, city: SH, broker: \"rocketmq://127.0.0.1:9876\" }",
    );
    std::fs::write(&path, &text).unwrap();
    let err = h.reload().unwrap_err();
    assert!(matches!(err, Error::NotReloadable(_)), "{err}");
    let line = text
        .lines()
        .position(|l| l.contains("RZ01A, zone"))
        .unwrap()
        + 1;
    // Located at the cell's first key.
    assert_eq!(
        err.to_string(),
        format!(
            "{}:{line}:7: cell RZ01A: broker cannot change at run time (embedded -> \
             rocketmq://127.0.0.1:9876); restart cellgate to apply it",
            path.display()
        )
    );
    assert_eq!(h.current().version(), 1);
    assert_eq!(h.counts().not_reloadable, 1);
}

#[test]
fn telemetry_change_needs_a_restart_and_the_last_good_stays() {
    let (_dir, path, h) = setup();
    let text = format!(
        "{}\ntelemetry:\n  endpoint: http://collector:4318\n",
        example()
    );
    std::fs::write(&path, &text).unwrap();
    let err = h.reload().unwrap_err();
    assert!(matches!(err, Error::NotReloadable(_)), "{err}");
    let line = text.lines().position(|l| l == "telemetry:").unwrap() + 2;
    assert!(
        err.to_string()
            .starts_with(&format!("{}:{line}:", path.display())),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("telemetry cannot change at run time"),
        "{err}"
    );
    assert_eq!(h.current().version(), 1);
    assert_eq!(h.current().telemetry().settings.endpoint, None);
    // A rules file that starts with the section loads with it.
    let fresh = RulesHandle::open(&path).unwrap();
    assert_eq!(
        fresh.current().telemetry().settings.endpoint.as_deref(),
        Some("http://collector:4318")
    );
}

#[tokio::test]
async fn watcher_reports_a_directory_it_cannot_watch() {
    let (dir, _path, h) = setup();
    drop(dir); // removes the directory the rules live in
    let opts = WatchOptions {
        debounce: Duration::from_millis(50),
        sighup: false,
    };
    let e = watch::spawn(h.clone(), opts).unwrap_err();
    let msg = e.to_string();
    let want = format!("cannot watch {}: ", h.path().display());
    assert!(msg.starts_with(&want), "{msg}");
    assert!(msg.contains("No path was found"), "{msg}");
}

#[test]
fn missing_file_keeps_last_good() {
    let (_dir, path, h) = setup();
    std::fs::remove_file(&path).unwrap();
    let err = h.reload().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(h.current().version(), 1);
    assert_eq!(h.counts().io_error, 1);
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_on_file_change_and_keeps_last_good() {
    let (_dir, path, h) = setup();
    let opts = WatchOptions {
        debounce: Duration::from_millis(50),
        sighup: false,
    };
    let _w = watch::spawn(h.clone(), opts).unwrap();
    replace_file(&path, &example().replace(MOVE_SHARDS.0, MOVE_SHARDS.1));
    wait_for("version 2", || h.current().version() == 2).await;
    assert_eq!(owner(&h, 30), "RZ02A");
    replace_file(&path, "cells: [\n");
    wait_for("a reload error", || h.status().last_error.is_some()).await;
    assert_eq!(h.current().version(), 2);
    assert!(h
        .status()
        .last_error
        .unwrap()
        .starts_with(&format!("{}:2:1: ", path.display())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reading_the_file_does_not_trigger_another() {
    // inotify reports opens and reads; a watcher that took them for changes
    // would reload forever, a few times a second.
    let (_dir, path, h) = setup();
    let opts = WatchOptions {
        debounce: Duration::from_millis(20),
        sighup: false,
    };
    let _w = watch::spawn(h.clone(), opts).unwrap();
    wait_for("the start-up check", || h.counts().unchanged == 1).await;
    // Readers of the file (like the reload itself) are not changes.
    for _ in 0..5 {
        let _ = std::fs::read_to_string(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(h.counts().unchanged, 1, "{:?}", h.counts());
    assert_eq!(h.current().version(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let (_dir, path, h) = setup();
    // Debounce so long that only SIGHUP can trigger the reload in this test.
    let opts = WatchOptions {
        debounce: Duration::from_secs(3600),
        sighup: true,
    };
    let _w = watch::spawn(h.clone(), opts).unwrap();
    // The watcher's first look at start finds nothing new.
    wait_for("the start-up check", || h.counts().unchanged == 1).await;
    std::fs::write(&path, example().replace(MOVE_SHARDS.0, MOVE_SHARDS.1)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.current().version(), 1);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for("version 2 after SIGHUP", || h.current().version() == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_before_the_watch_starts_is_not_missed() {
    let (_dir, path, h) = setup();
    std::fs::write(&path, example().replace(MOVE_SHARDS.0, MOVE_SHARDS.1)).unwrap();
    let opts = WatchOptions {
        debounce: Duration::from_secs(3600),
        sighup: false,
    };
    let _w = watch::spawn(h.clone(), opts).unwrap();
    wait_for("version 2 from the start-up check", || {
        h.current().version() == 2
    })
    .await;
}

/// Two rule sets that differ in five places at once. A reader that ever sees
/// a mix of them has seen a partly applied rule set.
fn variant(b: bool) -> String {
    let text = example();
    if !b {
        return text;
    }
    text.replace(MOVE_SHARDS.0, MOVE_SHARDS.1)
        .replace("takeover: []", "takeover:\n  - { cell: RZ03A, by: RZ02A }")
        .replace(
            "      - topic: \".*\"\n        targets: [R, G, C]\n    load_test_groups",
            "      - topic: \".*\"\n        targets: [G]\n    load_test_groups",
        )
        .replace(
            "  - namespace: BETA",
            "  - namespace: GAMMA\n    cells: [RZ00A]\n  - namespace: BETA",
        )
        .replace("publish_rate: 5000", "publish_rate: 7000")
}

#[test]
fn readers_never_see_a_partly_applied_rule_set_across_1000_reloads() {
    let (_dir, path, h) = setup();
    let done = Arc::new(AtomicBool::new(false));
    let observed = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (h, done, observed) = (h.clone(), done.clone(), observed.clone());
            std::thread::spawn(move || {
                let mut last_version = 0;
                let mut seen = [false; 2];
                while !done.load(Ordering::Relaxed) {
                    let r = h.current();
                    assert!(r.version() >= last_version, "version went backwards");
                    last_version = r.version();
                    let ant = r.tenant(r.tenant_id("ANT").unwrap());
                    let facts = [
                        r.cell_name(r.shard_owner(Shard::new(30).unwrap())) == "RZ02A",
                        r.takeovers().count() == 1,
                        !ant.routes[0].targets.r,
                        r.tenant_id("GAMMA").is_some(),
                        ant.quotas.publish_rate == Some(7000),
                    ];
                    assert!(
                        facts.iter().all(|f| *f == facts[0]),
                        "partly applied: {facts:?} at v{}",
                        r.version()
                    );
                    // Odd versions are variant A (false), even ones variant B.
                    assert_eq!(
                        facts[0],
                        r.version() % 2 == 0,
                        "v{} is the wrong variant",
                        r.version()
                    );
                    seen[usize::from(facts[0])] = true;
                    observed.fetch_add(1, Ordering::Relaxed);
                    // Two cores: leave the writer room to run.
                    std::thread::yield_now();
                }
                seen
            })
        })
        .collect();
    for i in 0..1000 {
        std::fs::write(&path, variant(i % 2 == 0)).unwrap();
        assert!(matches!(h.reload().unwrap(), ReloadOutcome::Swapped { .. }));
    }
    done.store(true, Ordering::Relaxed);
    let mut seen_any = [false; 2];
    for r in readers {
        let s = r.join().unwrap();
        seen_any = [seen_any[0] || s[0], seen_any[1] || s[1]];
    }
    assert_eq!(h.current().version(), 1001);
    assert!(
        seen_any[0] && seen_any[1],
        "readers saw only one variant: {seen_any:?}"
    );
    assert!(observed.load(Ordering::Relaxed) > 1000);
}
