use super::*;

fn id(n: u8) -> uuid::Uuid {
    uuid::Uuid::from_bytes([n; 16])
}

fn three() -> Shape {
    vec![
        ("RZ03A".into(), "R".into()),
        ("GZ00A".into(), "G".into()),
        ("CZSH0".into(), "C".into()),
    ]
}

#[test]
fn survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
    assert_eq!(j.queue("ANT|RZ00A%T", 3), QueueProgress::default());
    let mut p = Pending::new(id(1));
    let s = p.shape(three());
    p.push(250, Some(s));
    p.push(6, None);
    let q = QueueProgress {
        next: 7,
        pending: Some(p),
    };
    j.set("ANT|RZ00A%T", 3, q.clone());
    j.save().unwrap();
    let mut j = Journal::open(dir.path(), "RZ00A").unwrap();
    assert_eq!(j.queue("ANT|RZ00A%T", 3), q);
    assert_eq!(j.pending(), [("ANT|RZ00A%T".to_owned(), 3)]);
    assert_eq!(j.progress.version, VERSION);
    // The same through the off-thread write.
    j.queue_mut("ANT|RZ00A%T", 3).advance(256);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(j.save_off_thread())
        .unwrap();
    let j = Journal::open(dir.path(), "RZ00A").unwrap();
    assert_eq!(
        j.queue("ANT|RZ00A%T", 3),
        QueueProgress {
            next: 263,
            pending: None
        }
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
fn a_plan_is_runs_that_merge_trim_and_expand() {
    let mut p = Pending::new(id(1));
    let a = p.shape(three());
    let b = p.shape(vec![("RZ01A".into(), "R".into())]);
    assert_eq!((a, b, p.shape(three())), (0, 1, 0));
    p.push(2, Some(a));
    p.push(3, Some(a));
    p.push(0, Some(b));
    p.push(1, None);
    p.push(2, Some(b));
    assert_eq!(p.runs, [(5, Some(0)), (1, None), (2, Some(1))]);
    assert_eq!(p.len(), 8);
    let plan: Vec<Option<usize>> = p.plan().map(|s| s.map(Vec::len)).collect();
    assert_eq!(
        plan,
        [
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            Some(3),
            None,
            Some(1),
            Some(1)
        ]
    );
    p.trim(5);
    assert_eq!(p.runs, [(1, None), (2, Some(1))]);
    p.trim(2);
    assert_eq!(p.runs, [(1, Some(1))]);
    let mut q = QueueProgress {
        next: 10,
        pending: Some(p),
    };
    assert_eq!(q.planned_end(), 11);
    q.advance(1);
    assert_eq!(
        q,
        QueueProgress {
            next: 11,
            pending: None
        }
    );
}

#[test]
fn a_version_1_file_is_read_as_runs() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = format!(
        r#"{{"topics":{{"ANT|RZ00A%T":{{"0":{{"next":5,"pending":[
            {{"offset":6,"id":"{a}","dests":[["RZ03A","R"],["GZ00A","G"],["CZSH0","C"]]}},
            {{"offset":7,"id":"{b}","dests":[["RZ01A","R"]]}}]}},
            "1":{{"next":9}}}}}}}}"#,
        a = id(1),
        b = id(2)
    );
    std::fs::write(dir.path().join("RZ00A.json"), v1).unwrap();
    let j = Journal::open(dir.path(), "RZ00A").unwrap();
    let q = j.queue("ANT|RZ00A%T", 0);
    let p = q.pending.clone().unwrap();
    assert_eq!((q.next, p.last_id), (5, id(2)));
    assert_eq!(p.runs, [(1, None), (1, Some(0)), (1, Some(1))]);
    assert_eq!(p.shapes, [three(), vec![("RZ01A".into(), "R".into())]]);
    assert_eq!(q.planned_end(), 8);
    assert_eq!(
        j.queue("ANT|RZ00A%T", 1),
        QueueProgress {
            next: 9,
            pending: None
        }
    );
}
