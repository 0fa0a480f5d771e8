use super::*;

#[test]
fn survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
    assert!(j.fresh());
    assert_eq!(j.queue("ANT|RZ00A%T", 3), QueueProgress::default());
    j.queue_mut("ANT|RZ00A%T", 3).next = 7;
    j.progress.rules = Some("9f2c".into());
    j.save().unwrap();
    assert!(!j.fresh());
    let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
    assert!(!j.fresh());
    assert_eq!(j.queue("ANT|RZ00A%T", 3).next, 7);
    assert_eq!(
        (j.progress.version, j.progress.rules.as_deref()),
        (VERSION, Some("9f2c"))
    );
    // The same through the background and the blocking-thread writes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    j.copied("ANT|RZ00A%T", 3, 7, 9);
    rt.block_on(j.save_in_background()).unwrap();
    rt.block_on(j.save_now()).unwrap();
    assert_eq!(
        Journal::open(dir.path(), "RZ00A")
            .unwrap()
            .queue("ANT|RZ00A%T", 3)
            .next,
        9
    );
    j.progress.rules = None;
    rt.block_on(j.save_now()).unwrap();
    assert_eq!(
        Journal::open(dir.path(), "RZ00A").unwrap().progress.rules,
        None
    );
    drop(j);
    std::fs::write(dir.path().join("RZ00A.json"), b"{broken").unwrap();
    let e = Journal::open(dir.path(), "RZ00A").unwrap_err().to_string();
    assert!(
        e.starts_with("checkpoint ") && e.contains("RZ00A.json: "),
        "{e}"
    );
}

#[test]
fn progress_moves_only_in_order_and_plans_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
    j.queue_mut("T", 0).planned = Some(20);
    assert_eq!(j.queue("T", 0).planned_end(), 20);
    j.copied("T", 0, 10, 20); // not the next batch: ignored
    assert_eq!(j.queue("T", 0).next, 0);
    j.copied("T", 0, 0, 10);
    j.copied("T", 0, 10, 20);
    assert_eq!(j.queue("T", 0).next, 20);
    j.queue_mut("T", 0).planned = Some(30);
    j.unplan();
    assert_eq!(j.queue("T", 0).planned_end(), 20);
}

#[test]
fn older_versions_keep_next_and_lose_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = r#"{"topics":{"T":{"0":{"next":5,"pending":[
        {"offset":6,"id":"01a1fe61-aeda-7449-b2af-88f55d12d84a","dests":[["RZ03A","R"]]}]},
        "1":{"next":9}}}}"#;
    std::fs::write(dir.path().join("RZ00A.json"), v1).unwrap();
    let j = Journal::open(dir.path(), "RZ00A").unwrap();
    assert_eq!((j.queue("T", 0).next, j.queue("T", 1).next), (5, 9));
    assert!(!j.fresh() && j.progress.rules.is_none());
}

/// Background writes start at most once per `WRITE_EVERY`; progress a
/// skipped call did not write, a later call writes.
#[tokio::test(start_paused = true)]
async fn background_writes_are_spaced_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = || {
        Journal::open(dir.path(), "RZ00A")
            .unwrap()
            .queue("T", 0)
            .next
    };
    let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
    j.copied("T", 0, 0, 10);
    j.save_in_background().await.unwrap();
    j.wait_background().await.unwrap();
    assert_eq!(on_disk(), 10);
    j.copied("T", 0, 10, 20);
    tokio::time::advance(WRITE_EVERY / 2).await;
    j.save_in_background().await.unwrap();
    j.wait_background().await.unwrap();
    assert_eq!(on_disk(), 10, "too soon after the last write");
    tokio::time::advance(WRITE_EVERY / 2).await;
    j.save_in_background().await.unwrap();
    j.wait_background().await.unwrap();
    assert_eq!(on_disk(), 20);
    // `save_now` (a rules change) is never held back.
    j.copied("T", 0, 20, 30);
    j.save_now().await.unwrap();
    assert_eq!(on_disk(), 30);
}
