//! What the crash tests share: a child process (this test binary, running
//! one test) killed mid-stream.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs this test binary's test `name` as a child with `envs`, hands each
/// line it prints to `count` (true: an acknowledged step), and SIGKILLs
/// it after `steps` counted lines. Panics if the child stops before.
pub fn run_child_until_killed(
    name: &str,
    envs: &[(&str, String)],
    steps: usize,
    mut count: impl FnMut(&str) -> bool,
) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut counted = 0;
    for line in out.lines() {
        if count(&line.unwrap()) {
            counted += 1;
            if counted == steps {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(counted, steps, "the child stopped early");
}
