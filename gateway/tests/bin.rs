//! The `cellgate` binary starts, and parses its arguments. (Having an
//! integration test here also makes `cargo test --workspace` build the
//! binary that the `tests` crate drives.)
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn version_and_usage() {
    let bin = env!("CARGO_BIN_EXE_cellgate");
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cellgate "));
    let out = Command::new(bin)
        .args(["rules", "explain"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tenant <TENANT>"));
}

#[test]
fn in_process_check_matches_the_binary() {
    use clap::Parser;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ldc.yaml");
    let cli = cellgate::cli::Cli::parse_from(["cellgate", "rules", "check", file]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(cellgate::cli::run(cli, &mut out, &mut err), 0);
    let bin = Command::new(env!("CARGO_BIN_EXE_cellgate"))
        .args(["rules", "check", file])
        .output()
        .unwrap();
    assert_eq!(out, bin.stdout);
}
