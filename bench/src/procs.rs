//! The servers under test, as child processes: the release `cellgate
//! serve` and `cellgate-baseline`, each started fresh for a case on a
//! loopback port the OS picks (both print `listening on ADDR` first).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// The gateway's flush policy for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    Async,
    Sync,
}

impl Flush {
    pub fn arg(self) -> &'static str {
        match self {
            Flush::Async => "async",
            Flush::Sync => "sync",
        }
    }
}

/// A running server; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `program args…`, stderr to `log`, and waits for its first
    /// stdout line, `listening on ADDR`. `env` sets (`Some`) or removes
    /// (`None`) environment variables of the child; the rest is inherited.
    pub fn start(
        program: &Path,
        args: &[String],
        env: &[(&str, Option<String>)],
        log: &Path,
    ) -> anyhow::Result<Server> {
        let stderr = std::fs::File::create(log)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            // The gateway logs at info by default; a benchmark wants only
            // problems, and no log line on the request path.
            .env("CELLGATE_LOG", "warn");
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} did not start:\n{text}", program.display());
        };
        server.addr = line
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the binaries are: next to this one (`target/release/`), unless
/// given.
pub fn sibling(name: &str, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join(name))
            .ok_or_else(|| anyhow!("cannot locate the bench executable's directory"))?,
    };
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with \
             `cargo build --release -p cellgate -p cellgate-bench`",
            path.display()
        );
    }
    Ok(path)
}

/// Writes `src` (the reference topology) into `dir` without any publish
/// quota, so the benchmark measures the gateway and not its rate limiter.
/// Tokens and everything else stay as they are.
pub fn unthrottled_config(src: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(src).with_context(|| format!("read {}", src.display()))?;
    let mut removed = 0;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let quota = t.starts_with("publish_rate:") || t.starts_with("publish_burst:");
            removed += usize::from(quota);
            !quota
        })
        .collect();
    if removed == 0 {
        // Not an error: a topology without quotas is already unthrottled.
        eprintln!("note: {} sets no publish quota", src.display());
    }
    let path = dir.join("ldc-unthrottled.yaml");
    std::fs::write(&path, kept.join("\n") + "\n")?;
    Ok(path)
}

/// `cellgate serve` arguments for a case.
pub fn gateway_args(config: &Path, data: &Path, flush: Flush, segment: &str) -> Vec<String> {
    [
        "serve",
        "--config",
        &config.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data.display().to_string(),
        "--flush",
        flush.arg(),
        "--segment-size",
        segment,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// CPU time of a process so far (`"self"` or a pid), in nanoseconds: the
/// sum of its threads' on-CPU time from `/proc/PID/task/*/schedstat`.
/// Threads that have exited are not counted; the servers' threads live as
/// long as the server. 0 where /proc is unavailable.
pub fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// fdatasync/s of 4 KiB appends to a fresh file in `dir`, one writer, for
/// `dur`: the disk's limit that the `sync` case is up against (each
/// acknowledged batch of publishes needs one). Measured in the same run
/// because it moves a lot on a shared virtual disk.
pub fn fdatasync_rate(dir: &Path, dur: Duration) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
