//! Helpers for cellgate's end-to-end tests: find the real `cellgate` binary
//! and the example files, run it, capture what it prints.
//!
//! The binary is the one cargo built for this test run, next to the test
//! executable (`target/<profile>/cellgate`): `cargo test --workspace` builds
//! it once because the gateway package has integration tests. Set
//! `CELLGATE_BIN` to test another build.

// The RocketMQ client's futures nest deeply (the test bed's probe).
#![recursion_limit = "256"]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `examples/<name>`.
pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// Writes `examples/ldc.yaml` with `edits` applied into `dir/name` and
/// returns the path and the text. Panics if an edit finds nothing to
/// replace: a silent no-op would make the test meaningless.
pub fn edited_example(
    dir: &std::path::Path,
    name: &str,
    edits: &[(&str, &str)],
) -> (PathBuf, String) {
    let mut text = std::fs::read_to_string(example("ldc.yaml")).unwrap_or_default();
    for (from, to) in edits {
        assert!(text.contains(from), "examples/ldc.yaml has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, &text) {
        panic!("cannot write {}: {e}", path.display());
    }
    (path, text)
}

/// The `cellgate` binary built for this test run.
pub fn cellgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CELLGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/cellgate
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(format!("cellgate{}", std::env::consts::EXE_SUFFIX)))
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` so cargo builds it",
        bin.display()
    );
    bin
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `cellgate ARGS…` to completion.
pub fn cellgate(args: &[&str]) -> anyhow::Result<Run> {
    let out = Command::new(cellgate_bin())
        .args(args)
        .env("CELLGATE_LOG", "warn")
        .output()?;
    Ok(out.into())
}

pub mod otlp;
pub mod rocketmq;
pub mod server;
pub use server::{Api, Server};

/// Starts `cellgate serve` on the example topology in a fresh temp data
/// directory (kept alive by the returned guard).
pub fn start_example(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let s = Server::start(&example("ldc.yaml"), &dir.path().join("data"), extra)
        .unwrap_or_else(|e| panic!("cellgate serve did not start: {e:#}"));
    (dir, s)
}

/// Milliseconds since the epoch, as the API's `*_ms` fields.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
