//! One test per validation error class: the exact sentence and where it points.
#![allow(clippy::unwrap_used)]

use cellgate_rules::{Error, Sources};

const BASE: &str = r#"cities:
  - name: SH
cells:
  - { name: R1, zone: R, city: SH }
  - { name: R2, zone: R, city: SH }
  - { name: G1, zone: G, city: SH }
  - { name: C1, zone: C, city: SH }
shards:
  - { range: "00-49", cell: R1 }
  - { range: "50-99", cell: R2 }
gzone: G1
tenants:
  - namespace: ANT
    tokens:
      - { name: t1, sha256: b54f4f77bcc1a65d4530ec718c0deb6afe7bea90ba6aa18fd19b5e970eb6fcb9, permissions: [publish] }
    cells: ["*"]
"#;

/// Every diagnostic of `text` (named t.yaml), as `t.yaml:L:C: message`.
fn errors(text: &str) -> Vec<String> {
    match Sources::from_text("t.yaml", text).compile(1) {
        Ok(_) => vec![],
        Err(Error::Invalid(d)) => d.iter().map(|d| d.to_string()).collect(),
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

/// `t.yaml:L:C` of the `nth` (0-based) occurrence of `needle` in `text`.
fn at(text: &str, needle: &str, nth: usize) -> String {
    let idx = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in text"))
        .0;
    let before = &text[..idx];
    let line = before.matches('\n').count() + 1;
    let col = idx - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("t.yaml:{line}:{col}")
}

/// Asserts `text` yields exactly one error: `message` at `needle` #`nth`.
fn only(text: &str, needle: &str, nth: usize, message: &str) {
    assert_eq!(
        errors(text),
        vec![format!("{}: {message}", at(text, needle, nth))]
    );
}

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_is_valid() {
    assert_eq!(errors(BASE), Vec::<String>::new());
}

#[test]
fn yaml_syntax_error_is_located() {
    let t = edit("gzone: G1", "gzone: \"G1");
    let e = errors(&t);
    assert_eq!(e.len(), 1, "{e:?}");
    // The open quote runs on until YAML finds something it cannot scan.
    assert_eq!(
        e[0],
        "t.yaml:16:15: did not find expected alphabetic or numeric character, while scanning an alias"
    );
}

#[test]
fn unknown_field_is_an_error() {
    let t = edit(
        "{ name: R2, zone: R, city: SH }",
        "{ name: R2, zone: R, city: SH, colour: red }",
    );
    let e = errors(&t);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.yaml:5:"), "{e:?}");
    assert!(
        e[0].contains("unknown field `colour`, expected one of `name`, `zone`, `city`, `broker`"),
        "{e:?}"
    );
}

#[test]
fn a_duplicate_key_is_located_at_the_repeated_key() {
    let t = format!("{BASE}gzone: G1\n");
    let e = errors(&t);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("{}: ", at(&t, "gzone", 1))),
        "{e:?}"
    );
    assert!(e[0].contains("duplicate field `gzone`"), "{e:?}");
    let t = edit(
        "{ name: R2, zone: R, city: SH }",
        "{ name: R2, zone: R, zone: G, city: SH }",
    );
    let e = errors(&t);
    assert!(
        e[0].starts_with(&format!("{}: ", at(&t, "zone: G", 0))),
        "{e:?}"
    );
}

#[test]
fn unknown_zone_type_is_an_error() {
    let t = edit("zone: G,", "zone: X,");
    let e = errors(&t);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("unknown variant `X`, expected one of"),
        "{e:?}"
    );
}

#[test]
fn bad_names() {
    let t = edit("name: R2,", "name: \"R|2\",");
    let e = errors(&t);
    assert!(e.contains(&format!("{}: cell name \"R|2\" must not contain '|' (at position 1); allowed are A-Z a-z 0-9 _ -", at(&t, "\"R|2\"", 0))), "{e:?}");
    let t = edit("namespace: ANT", &format!("namespace: {}", "N".repeat(65)));
    only(
        &t,
        "NNN",
        0,
        &format!(
            "tenant namespace \"{}\" must be at most 64 characters, got 65",
            "N".repeat(65)
        ),
    );
}

#[test]
fn duplicates() {
    let t = edit("{ name: R2, zone: R", "{ name: R1, zone: R");
    let e = errors(&t);
    assert!(
        e.contains(&format!(
            "{}: cell R1 is declared twice (first at t.yaml:4)",
            at(&t, "R1", 1)
        )),
        "{e:?}"
    );
    let t = edit("  - name: SH\n", "  - name: SH\n  - name: SH\n");
    let e = errors(&t);
    assert!(
        e.contains(&format!(
            "{}: city SH is declared twice (first at t.yaml:2)",
            at(&t, "SH", 1)
        )),
        "{e:?}"
    );
    let t = format!("{BASE}  - namespace: ANT\n    cells: [\"*\"]\n");
    only(
        &t,
        "ANT",
        1,
        "tenant ANT is declared twice (first at t.yaml:13)",
    );
}

#[test]
fn undeclared_city() {
    let t = edit(
        "{ name: R2, zone: R, city: SH }",
        "{ name: R2, zone: R, city: SX }",
    );
    only(&t, "SX", 0, "cell R2: city SX is not a declared city");
}

#[test]
fn city_must_have_exactly_one_czone() {
    let t = edit(
        "  - { name: C1, zone: C, city: SH }\n",
        "  - { name: C1, zone: C, city: SH }\n  - { name: C2, zone: C, city: SH }\n",
    );
    only(&t, "name: SH", 0, "city SH has two CZones (C1, C2)");
    let t = edit("  - { name: C1, zone: C, city: SH }\n", "");
    only(&t, "name: SH", 0, "city SH has no CZone");
}

#[test]
fn shard_overlap_and_gap() {
    let t = edit("range: \"50-99\"", "range: \"37-40\"");
    let e = errors(&t);
    assert_eq!(
        e,
        vec![
            format!(
                "{}: shards 50-99 are not owned by any RZone",
                at(&t, "- { range", 0)
            ),
            format!(
                "{}: shards 37-40 are owned by both R1 and R2",
                at(&t, "\"37-40\"", 0)
            ),
        ]
    );
    let t = edit("range: \"50-99\"", "range: \"37\"");
    assert!(errors(&t).contains(&format!(
        "{}: shard 37 is owned by both R1 and R2",
        at(&t, "\"37\"", 0)
    )));
}

#[test]
fn top_level_must_be_a_mapping() {
    assert_eq!(
        errors("- a\n- b\n"),
        ["t.yaml:1:1: invalid type: sequence, expected a mapping of rules sections (platform_admin, cities, cells, shards, gzone, tenants, takeover, telemetry)"]
    );
}

#[test]
fn shard_range_syntax_and_owner() {
    let t = edit("range: \"50-99\"", "range: \" 50 - 99 \"");
    only(
        &t,
        "\" 50",
        0,
        "shard range \" 50 - 99 \" must be NN or NN-NN with 00 <= NN <= 99",
    );
    let t = edit("range: \"50-99\"", "range: \"50-100\"");
    only(
        &t,
        "\"50-100\"",
        0,
        "shard range \"50-100\" must be NN or NN-NN with 00 <= NN <= 99",
    );
    let t = edit("cell: R2 }", "cell: RZ9 }");
    only(
        &t,
        "RZ9",
        0,
        "shard range 50-99: cell RZ9 is not a declared cell",
    );
    let t = edit("cell: R2 }", "cell: G1 }");
    only(
        &t,
        "G1 }",
        0,
        "shard range 50-99: cell G1 is a GZone; only RZones own shards",
    );
}

#[test]
fn gzone_checks() {
    let t = edit("gzone: G1", "gzone: GZ9");
    only(&t, "GZ9", 0, "GZone GZ9 is not a declared cell");
    let t = edit("gzone: G1", "gzone: R1");
    only(&t, "R1\n", 0, "GZone R1 is an RZone cell, not a GZone");
    let t = edit("gzone: G1\n", "");
    only(
        &t,
        "cities",
        0,
        "no active GZone: set `gzone` to a GZone cell",
    );
}

#[test]
fn token_checks() {
    let t = edit(
        "sha256: b54f4f77bcc1a65d4530ec718c0deb6afe7bea90ba6aa18fd19b5e970eb6fcb9",
        "sha256: ant-demo-token",
    );
    only(&t, "ant-demo-token", 0, "token sha256 must be 64 hex digits, got 14 characters (store the hash, not the token: printf %s TOKEN | sha256sum)");
    let t = edit(
        "b54f4f77bcc1a65d4530ec718c0deb6afe7bea90ba6aa18fd19b5e970eb6fcb9",
        &"g".repeat(64),
    );
    only(&t, "gggg", 0, "token sha256 must be 64 hex digits, got a character that is not a hex digit (store the hash, not the token: printf %s TOKEN | sha256sum)");
    let t = edit("permissions: [publish]", "permissions: []");
    only(
        &t,
        "[]",
        0,
        "token t1 has no permissions (publish, subscribe, admin)",
    );
    let t = format!(
        "{BASE}platform_admin:\n  tokens:\n    - sha256: b54f4f77bcc1a65d4530ec718c0deb6afe7bea90ba6aa18fd19b5e970eb6fcb9\n"
    );
    only(&t, "b54f4f77", 0, "token sha256 is also used at t.yaml:19");
}

#[test]
fn regex_that_does_not_compile() {
    let t = format!("{BASE}    topics: [\"[a-\"]\n");
    only(
        &t,
        "\"[a-\"",
        0,
        "regex \"[a-\" does not compile: unclosed character class",
    );
    let t = format!("{BASE}    routes:\n      - {{ topic: \"(x\", tags: \"a)\", targets: [R] }}\n");
    let e = errors(&t);
    assert_eq!(
        e,
        vec![
            format!(
                "{}: regex \"(x\" does not compile: unclosed group",
                at(&t, "\"(x\"", 0)
            ),
            format!(
                "{}: regex \"a)\" does not compile: unopened group",
                at(&t, "\"a)\"", 0)
            ),
        ]
    );
}

#[test]
fn tenant_cells() {
    let t = edit("cells: [\"*\"]", "cells: [R1, RZ9]");
    only(&t, "RZ9", 0, "tenant ANT: cell RZ9 is not a declared cell");
    let t = edit("cells: [\"*\"]", "cells: []");
    only(
        &t,
        "[]",
        0,
        "tenant ANT has no cells; list them or use \"*\"",
    );
}

#[test]
fn quotas() {
    let t = format!("{BASE}    quotas: {{ publish_rate: 0, max_message_bytes: 999999999999 }}\n");
    assert_eq!(
        errors(&t),
        vec![
            format!(
                "{}: publish_rate must be at least 1 message per second (omit it for no limit)",
                at(&t, "0,", 0)
            ),
            format!(
                "{}: max_message_bytes must be between 1 and 268435456, got 999999999999",
                at(&t, "999999999999", 0)
            ),
        ]
    );
    let t = format!("{BASE}    quotas: {{ publish_burst: 5 }}\n");
    only(
        &t,
        "5 }",
        0,
        "publish_burst needs publish_rate (a burst of an unlimited rate means nothing)",
    );
}

#[test]
fn uid_shard_digits() {
    let t = format!("{BASE}    uid_shard: {{ digits: [3] }}\n");
    only(&t, "[3]", 0, "uid_shard digits must name exactly two positions, e.g. [2, 1] for the last two digits; got 1");
    let t = format!("{BASE}    uid_shard: {{ digits: [2, 2] }}\n");
    only(
        &t,
        "[2, 2]",
        0,
        "uid_shard digits [2, 2] must be two different positions from 1 (the last digit) to 20",
    );
}

#[test]
fn takeover_checks() {
    let with = |entries: &str| format!("{BASE}takeover:\n{entries}");
    let t = with("  - { cell: R9, by: R2 }\n");
    only(&t, "R9", 0, "takeover: R9 is not a declared cell");
    let t = with("  - { cell: R1, by: R1 }\n");
    only(&t, "R1 }\n", 1, "cell R1 cannot take itself over");
    let t = with("  - { cell: R1, by: G1 }\n");
    only(
        &t,
        "G1 }\n",
        0,
        "takeover of R1 by G1: both must be the same zone type (RZone vs GZone)",
    );
    let t = with("  - { cell: R1, by: R2 }\n  - { cell: R1, by: R2 }\n");
    only(
        &t,
        "R1, by",
        1,
        "R1 is taken over twice (first at t.yaml:18)",
    );
    let t = with("  - { cell: R1, by: R2 }\n  - { cell: R2, by: R1 }\n");
    let e = errors(&t);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].ends_with(
            "takeover of R1 by R2: R2 is itself taken over; name the cell that serves it"
        ),
        "{e:?}"
    );
}

#[test]
fn takeover_target_must_be_usable_by_every_tenant_of_the_cell() {
    let t = format!("{BASE}takeover:\n  - {{ cell: R1, by: R2 }}\n")
        .replace("cells: [\"*\"]", "cells: [R1, G1, C1]");
    only(
        &t,
        "[R1, G1, C1]",
        0,
        "tenant ANT: may use R1, which is taken over by R2, but not R2; add R2 to its cells",
    );
}

#[test]
fn patterns_that_only_fail_together_are_reported() {
    let big = r#""BILL|\\w{200}""#;
    let list = [big; 8].join(", ");
    let t = format!("{BASE}    topics: [{list}]\n");
    let e = errors(&t);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "{}: these patterns together do not compile: more than ",
            at(&t, "[\"BILL", 0)
        )),
        "{e:?}"
    );
}

#[test]
fn bad_broker() {
    let t = edit(
        "{ name: R2, zone: R, city: SH }",
        "{ name: R2, zone: R, city: SH, broker: \"rocketmq://\" }",
    );
    only(
        &t,
        "\"rocketmq://\"",
        0,
        "cell R2: broker \"rocketmq://\" must be `embedded` or `rocketmq://host:port[,host:port…]`",
    );
    for bad in [
        "rocketmq://:::1",
        "rocketmq://[]:80",
        "rocketmq://h:0",
        "rocketmq://h:+80",
        "rocketmq://-h:80",
        "rocketmq://a..b:80",
    ] {
        let t = edit(
            "{ name: R2, zone: R, city: SH }",
            &format!("{{ name: R2, zone: R, city: SH, broker: \"{bad}\" }}"),
        );
        assert_eq!(errors(&t).len(), 1, "{bad} accepted");
    }
    let ok = edit(
        "{ name: R2, zone: R, city: SH }",
        "{ name: R2, zone: R, city: SH, broker: \"rocketmq://[::1]:9876\" }",
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
    let ok = edit(
        "{ name: R2, zone: R, city: SH }",
        "{ name: R2, zone: R, city: SH, broker: \"rocketmq://10.0.0.1:9876,ns2:9876\" }",
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let t = BASE
        .replace("city: SH }\n  - { name: R2", "city: SX }\n  - { name: R2")
        .replace("gzone: G1", "gzone: GZ9")
        .replace("range: \"50-99\"", "range: \"37\"")
        .replace("cells: [\"*\"]", "cells: [\"*\"]\n    topics: [\"[a-\"]");
    let e = errors(&t);
    assert_eq!(e.len(), 5, "{e:#?}");
    for want in [
        "city SX",
        "GZ9",
        "shard 37 is owned by both",
        "shards 50-99 are not owned",
        "regex \"[a-\"",
    ] {
        assert!(
            e.iter().any(|l| l.contains(want)),
            "{want} missing from {e:#?}"
        );
    }
    // Sorted by position.
    let lines: Vec<usize> = e
        .iter()
        .map(|l| l.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
}

#[test]
fn a_directory_merges_files_and_names_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let (topo, ten) = BASE.split_at(BASE.find("tenants:").unwrap());
    std::fs::write(dir.path().join("10-topology.yaml"), topo).unwrap();
    std::fs::write(dir.path().join("20-tenants.yml"), ten).unwrap();
    std::fs::write(dir.path().join("README.txt"), "ignored").unwrap();
    let r = cellgate_rules::load(dir.path()).unwrap();
    assert_eq!(r.tenants().len(), 1);
    assert_eq!(r.cells().len(), 4);
    // A second gzone in another file is an error located in that file.
    std::fs::write(dir.path().join("30-more.yaml"), "gzone: G1\n").unwrap();
    let e = cellgate_rules::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "30-more.yaml:1:8: gzone is already set at "
                .to_owned()
                .as_str()
        ) || e.contains("30-more.yaml:1:8: gzone is already set at"),
        "{e}"
    );
    assert!(e.contains("10-topology.yaml:11"), "{e}");
}

#[test]
fn a_directory_with_an_unreadable_yaml_entry_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("10-all.yaml"), BASE).unwrap();
    assert!(cellgate_rules::load(dir.path()).is_ok());
    // A dangling link named like a rules file: loading the rest could drop
    // whatever it held, so nothing loads.
    std::os::unix::fs::symlink(
        dir.path().join("gone.yaml"),
        dir.path().join("20-more.yaml"),
    )
    .unwrap();
    let e = cellgate_rules::load(dir.path()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: No such file or directory (os error 2)",
            dir.path().join("20-more.yaml").display()
        )
    );
    std::fs::remove_file(dir.path().join("20-more.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("30-dir.yaml")).unwrap();
    let e = cellgate_rules::load(dir.path()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: not a regular file",
            dir.path().join("30-dir.yaml").display()
        )
    );
}

#[test]
fn an_oversized_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.yaml");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(cellgate_rules::MAX_FILE_BYTES + 1).unwrap();
    let e = cellgate_rules::load(&p).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: 16777217 bytes, over the limit of 16777216",
            p.display()
        )
    );
}
