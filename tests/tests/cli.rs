//! `cellgate rules check|explain|diff` through the real binary and real files.
#![allow(clippy::unwrap_used)]

use cellgate_tests::{cellgate, edited_example, example};

fn ldc() -> String {
    example("ldc.yaml").display().to_string()
}

#[test]
fn check_accepts_the_reference_topology() {
    let r = cellgate(&["rules", "check", &ldc()]).unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains(": ok: 7 cells in 2 cities, 2 tenants, sha256 "),
        "{r:?}"
    );
}

#[test]
fn check_lists_every_problem_as_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let (path, text) = edited_example(
        dir.path(),
        "bad.yaml",
        &[
            ("gzone: GZ00A", "gzone: GZ9"),
            (
                "{ range: \"50-74\", cell: RZ02A }",
                "{ range: \"50-80\", cell: RZ02A }",
            ),
            ("topics: [\".*\"]", "topics: [\"[a-\"]"),
        ],
    );
    let r = cellgate(&["rules", "check", &path.display().to_string()]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let p = path.display();
    let want = [
        format!(
            "{p}:{}:14: shards 75-80 are owned by both RZ02A and RZ03A",
            line_of("\"75-99\"")
        ),
        format!(
            "{p}:{}:8: GZone GZ9 is not a declared cell",
            line_of("gzone: GZ9")
        ),
        format!(
            "{p}:{}:14: regex \"[a-\" does not compile: unclosed character class",
            line_of("[\"[a-\"]")
        ),
    ];
    let got: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(got, want, "{r:?}");
    assert_eq!(r.stdout, "");
}

#[test]
fn check_reports_a_missing_file() {
    let r = cellgate(&["rules", "check", "/nonexistent/rules.yaml"]).unwrap();
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .starts_with("/nonexistent/rules.yaml: No such file or directory"),
        "{r:?}"
    );
}

#[test]
fn explain_the_worked_example() {
    let args = [
        "rules",
        "explain",
        &ldc(),
        "--tenant",
        "ANT",
        "--cell",
        "RZ00A",
        "--topic",
        "BILL",
        "--group",
        "G1",
        "--uid",
        "12375",
        "--tag",
        "Paid",
    ];
    let r = cellgate(&args).unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    for want in [
        "physical topic   ANT|RZ00A%BILL",
        "physical group   ANT|RZ00A%G1",
        "retry topic      %RETRY%ANT|RZ00A%G1",
        "dead letters     %DLQ%ANT|RZ00A%G1",
        "uid shard        75 (owned by RZ03A)",
        "  __UNIT.TARGET_R        RZ03A",
        "  RZ00A -> RZ03A  for R      ANT|RZ03A%BILL",
        "  rzone  RZ03A",
        "  czone  CZSH0",
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "missing {want:?} in\n{}",
            r.stdout
        );
    }

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let r = cellgate(&json_args).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["physical_topic"], "ANT|RZ00A%BILL");
    let copies: Vec<&str> = v["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["target"].as_str().unwrap())
        .collect();
    assert_eq!(copies, ["RZ03A", "GZ00A", "CZSH0"]);
    assert_eq!(v["receivers"][0], serde_json::json!(["local", ["RZ00A"]]));
    assert_eq!(
        v["unit_headers"][4],
        serde_json::json!(["__UNIT.RULES_VERSION", "1"])
    );
}

#[test]
fn explain_refuses_bad_input_clearly() {
    let base = |tenant: &str, cell: &str, topic: &str| {
        cellgate(&[
            "rules",
            "explain",
            &ldc(),
            "--tenant",
            tenant,
            "--cell",
            cell,
            "--topic",
            topic,
        ])
        .unwrap()
    };
    let r = base("NOPE", "RZ00A", "T1");
    assert_eq!((r.code, r.stderr.trim()), (Some(1), "unknown tenant NOPE"));
    let r = base("ANT", "RZ9", "T1");
    assert_eq!((r.code, r.stderr.trim()), (Some(1), "unknown cell RZ9"));
    let r = base("ANT", "RZ00A", "a|b");
    assert_eq!(
        (r.code, r.stderr.trim()),
        (
            Some(1),
            "topic name must not contain '|' (at position 1); allowed are A-Z a-z 0-9 _ -"
        )
    );
    let r = cellgate(&[
        "rules",
        "explain",
        &ldc(),
        "--tenant",
        "ANT",
        "--cell",
        "RZ00A",
        "--topic",
        "T1",
        "--uid",
        "",
    ])
    .unwrap();
    assert_eq!(
        (r.code, r.stderr.trim()),
        (Some(1), "uid must not be empty")
    );
    let r = base("ANT", "RZ00A", "TBW102");
    assert_eq!(
        (r.code, r.stderr.trim()),
        (Some(1), "topic name is a reserved name")
    );
}

#[test]
fn explain_shows_takeover_and_refused_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = edited_example(
        dir.path(),
        "failover.yaml",
        &[
            ("takeover: []", "takeover:\n  - { cell: RZ03A, by: RZ02A }"),
            (
                "    topics: [\".*\"]\n    groups: [\".*\"]",
                "    topics: [\"ORDER_.*\"]\n    groups: [\"G_.*\"]",
            ),
        ],
    );
    let p = path.display().to_string();
    let r = cellgate(&[
        "rules", "explain", &p, "--tenant", "ANT", "--cell", "RZ00A", "--topic", "BILL", "--group",
        "X", "--uid", "12375",
    ])
    .unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    for want in [
        "uid shard        75 (owned by RZ03A, taken over by RZ02A)",
        "  __UNIT.TARGET_R        RZ02A",
        "  RZ00A -> RZ02A  for R      ANT|RZ02A%BILL",
        "  rzone  RZ02A",
        "  warning: tenant ANT's topic patterns do not allow this topic; the gateway refuses it",
        "  warning: tenant ANT's group patterns do not allow this group; the gateway refuses it",
    ] {
        assert!(
            r.stdout.lines().any(|l| l == want),
            "missing {want:?} in\n{}",
            r.stdout
        );
    }
}

#[test]
fn diff_reports_changes_and_restart_only_settings() {
    let dir = tempfile::tempdir().unwrap();
    let same = cellgate(&["rules", "diff", &ldc(), &ldc()]).unwrap();
    assert_eq!((same.code, same.stdout.trim()), (Some(0), "no changes"));

    let (new, _) = edited_example(
        dir.path(),
        "new.yaml",
        &[
            ("takeover: []", "takeover:\n  - { cell: RZ03A, by: RZ02A }"),
            (
                "{ name: CZHZ0, zone: C, city: HZ, broker: embedded }",
                "{ name: CZHZ0, zone: C, city: HZ, broker: \"rocketmq://127.0.0.1:9876\" }",
            ),
        ],
    );
    let r = cellgate(&["rules", "diff", &ldc(), &new.display().to_string()]).unwrap();
    assert_eq!(r.code, Some(1), "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "cell CZHZ0: broker embedded -> rocketmq://127.0.0.1:9876"
    );
    assert_eq!(lines[1], "takeover of RZ03A by RZ02A started");
    assert!(lines[2].starts_with("restart required: ") && lines[2].ends_with("cell CZHZ0: broker cannot change at run time (embedded -> rocketmq://127.0.0.1:9876); restart cellgate to apply it"), "{r:?}");

    std::fs::write(&new, "cells: [").unwrap();
    let r = cellgate(&["rules", "diff", &ldc(), &new.display().to_string()]).unwrap();
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.starts_with(&format!(
            "{}:2:1: did not find expected node content",
            new.display()
        )),
        "{r:?}"
    );
}

#[test]
fn serve_refuses_bad_startup_options_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let base = [
        "serve",
        "--config",
        &ldc(),
        "--data",
        &data,
        "--listen",
        "127.0.0.1:0",
    ];
    let with = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        cellgate(&args).unwrap()
    };
    let r = with(&["--cell", "NOPE"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("--cell NOPE: the rules declare no such cell"),
        "{r:?}"
    );
    let r = with(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("TLS: /nonexistent/cert.pem: "), "{r:?}");
    // Refused before the data directory is touched: opening the brokers
    // would pre-allocate a 1 GiB segment per cell.
    assert!(
        !dir.path().join("data").exists(),
        "a refused start created the data directory"
    );
}
