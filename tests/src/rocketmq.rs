//! RocketMQ test beds: name servers and brokers of Apache RocketMQ's Rust
//! port (`rocketmq-namesrv-rust`, `rocketmq-broker-rust` 1.0.0), started on
//! loopback ports the OS picks, each with its own temporary `ROCKETMQ_HOME`,
//! `HOME` and store directory; and the example topology with its cells
//! spread over two such clusters.
//!
//! The binaries are looked up in `$ROCKETMQ_BIN_DIR`, then on `PATH`, then
//! in `~/.cargo/bin` (where `.ci/run` installs them). A missing binary fails
//! the test with the install command: a RocketMQ test never passes without
//! RocketMQ.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const INSTALL: &str =
    "cargo install --locked rocketmq-namesrv@1.0.0 rocketmq-broker@1.0.0 (see .ci/run)";

/// The path of a RocketMQ binary.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("ROCKETMQ_BIN_DIR") {
        dirs.push(d.into());
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found; install it with {INSTALL}"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A broker's listen port P such that P-2 (its fast channel, not
/// configurable) is free too.
fn broker_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if p > 1026 && TcpListener::bind(("127.0.0.1", p - 2)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair for a broker")
}

fn wait_port(port: u16, child: &mut Child, log: &Path, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if let Some(st) = child.try_wait()? {
            bail!("exited with {st}:\n{}", tail(log));
        }
        if Instant::now() > until {
            bail!("port {port} not open after {within:?}:\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One name server and one broker.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub namesrv_port: u16,
    pub dir: tempfile::TempDir,
    pub store: tempfile::TempDir,
    namesrv: Child,
    broker: Child,
}

/// A child killed when dropped, until taken.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("taken only at the end")
    }

    fn take(&mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Starts a cluster and waits until it serves a send. Tried up to
    /// three times: the ports are the OS's picks, released before the
    /// servers bind them, so a test starting clusters beside another can
    /// lose one to a race; and a cluster that does not serve within the
    /// probe's bound is a test bed problem, not the test's subject.
    pub fn start(name: &str) -> anyhow::Result<Cluster> {
        let mut last = None;
        for _ in 0..3 {
            match Cluster::start_once(name).and_then(|c| c.warm().map(|()| c)) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
    }

    /// Sends one message through the backend, trying for up to 45 s (a
    /// lost registration race costs one registration period, 10 s here,
    /// per try; see `RocketMqBroker::create`). A
    /// broker says "started" before it serves well: the first one started
    /// after a build (its binary not yet in the page cache) can take
    /// seconds over its first requests, and a test's first publish is not
    /// the place to find that out. The probe topic has no `%`, so it is
    /// never taken for a cellgate topic.
    fn warm(&self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.namesrv_port);
        // On a thread of its own: tests call this from inside a runtime.
        let probe = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                use cellgate_broker_core::{Broker, Message, QueueSelect};
                let until = Instant::now() + Duration::from_secs(45);
                let cfg = cellgate_broker_rocketmq::Config::new(vec![addr]);
                let b = cellgate_broker_rocketmq::RocketMqBroker::connect(cfg).await?;
                let msg = Message {
                    topic: "CELLGATE_PROBE".into(),
                    body: b"probe".to_vec(),
                    ..Message::default()
                };
                loop {
                    match b.send(msg.clone(), QueueSelect::Queue(0)).await {
                        Ok(_) => return Ok(()),
                        Err(e) if Instant::now() > until => {
                            bail!("the cluster does not serve: {e}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        });
        let served = probe
            .join()
            .map_err(|_| anyhow::anyhow!("the probe panicked"))?;
        // The logs say why, which a CI run's output must carry.
        served.with_context(|| {
            format!(
                "broker log:\n{}\nname server log:\n{}",
                tail(&self.dir.path().join("broker.log")),
                tail(&self.dir.path().join("namesrv.log"))
            )
        })
    }

    fn start_once(name: &str) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("rmq-").tempdir()?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        // The broker refuses writes (and so refuses to start) when the
        // store's file system is over 90% full, which shared build machines
        // often are; a test store is small, so tmpfs when there is one.
        let store_dir = match Path::new("/dev/shm").is_dir() {
            true => tempfile::Builder::new()
                .prefix("rmq-store-")
                .tempdir_in("/dev/shm")?,
            false => tempfile::Builder::new().prefix("rmq-store-").tempdir()?,
        };
        let store = store_dir.path().to_owned();
        let ns_port = free_port()?;
        let ns_log = dir.path().join("namesrv.log");
        let namesrv = Command::new(binary("rocketmq-namesrv-rust")?)
            .args([
                "--listenPort",
                &ns_port.to_string(),
                "--bindAddress",
                "127.0.0.1",
            ])
            .arg("--rocketmqHome")
            .arg(&home)
            .env("ROCKETMQ_HOME", &home)
            .env("HOME", &home)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&ns_log)?)
            .spawn()
            .context("starting the name server")?;
        // Until the cluster is built, a failure must not leave it running.
        let mut namesrv = KillOnDrop(Some(namesrv));
        wait_port(ns_port, namesrv.child(), &ns_log, Duration::from_secs(20))?;
        let port = broker_port()?;
        let ha = free_port()?;
        let conf = dir.path().join("broker.toml");
        std::fs::write(&conf, broker_toml(name, ns_port, port, ha, &store))?;
        let log = dir.path().join("broker.log");
        let out = std::fs::File::create(&log)?;
        let broker = Command::new(binary("rocketmq-broker-rust")?)
            .arg("-c")
            .arg(&conf)
            .env("ROCKETMQ_HOME", &home)
            .env("HOME", &home)
            .current_dir(dir.path())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the broker")?;
        let mut broker = KillOnDrop(Some(broker));
        wait_port(port, broker.child(), &log, Duration::from_secs(30))?;
        let until = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&log)?.contains("started successfully") {
            if Instant::now() > until {
                bail!("broker did not register:\n{}", tail(&log));
            }
            if let Some(st) = broker.child().try_wait()? {
                bail!("broker exited with {st}:\n{}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Cluster {
            name: name.to_owned(),
            namesrv_port: ns_port,
            dir,
            store: store_dir,
            namesrv: namesrv.take(),
            broker: broker.take(),
        })
    }

    /// The rules' broker reference of this cluster.
    pub fn reference(&self) -> String {
        format!("rocketmq://127.0.0.1:{}", self.namesrv_port)
    }
}

/// A small footprint (spike, `broker-small.toml`), 40-day timers, and
/// transaction timings that keep `transactionTimeout` above
/// `transactionOpBatchInterval` (below it, the broker re-commits).
fn broker_toml(name: &str, ns: u16, port: u16, ha: u16, store: &Path) -> String {
    let store = store.display();
    format!(
        r#"[broker]
listenPort = {port}
brokerIp1 = "127.0.0.1"
namesrvAddr = "127.0.0.1:{ns}"
storePathRootDir = "{store}"
autoCreateTopicEnable = true
autoCreateSubscriptionGroup = true
enablePropertyFilter = true
registerNameServerPeriod = 10000
transactionCheckInterval = 2000
transactionTimeout = 3000
transactionOpBatchInterval = 500

[broker.brokerIdentity]
brokerName = "broker-{name}"
brokerClusterName = "Cellgate{name}"
brokerId = 0

[broker.brokerServerConfig]
bindAddress = "127.0.0.1"

[broker.topicQueueConfig]
defaultTopicQueueNums = 8

[store]
storePathRootDir = "{store}"
haListenAddress = "127.0.0.1"
haListenPort = {ha}
mappedFileSizeCommitLog = 16777216
mappedFileSizeConsumeQueue = 60000
maxHashSlotNum = 10000
maxIndexNum = 40000
brokerRole = "ASYNC_MASTER"
flushDiskType = "ASYNC_FLUSH"
timerWheelEnable = true
timerMaxDelaySec = 3456000
"#
    )
}

impl Drop for Cluster {
    /// SIGTERM, then SIGKILL after 10 s: a broker has been seen to hang on
    /// SIGTERM (spike, "Shutdown").
    fn drop(&mut self) {
        for child in [&mut self.broker, &mut self.namesrv] {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Two tests of one scenario, `async fn body(Backend)`: `$embedded` on the
/// embedded broker, `$rocketmq` on two RocketMQ clusters (on two worker
/// threads: the clusters' clients block briefly). Attributes before the
/// names (doc comments) go on the RocketMQ test. A leading `multi_thread;`
/// runs the embedded test on two worker threads too (tests that kill or
/// signal a server while requests are in flight).
#[macro_export]
macro_rules! on_both_backends {
    (multi_thread; $(#[$meta:meta])* $embedded:ident, $rocketmq:ident, $body:path) => {
        $crate::on_both_backends!(
            @with [flavor = "multi_thread", worker_threads = 2]
            $(#[$meta])* $embedded, $rocketmq, $body
        );
    };
    ($(#[$meta:meta])* $embedded:ident, $rocketmq:ident, $body:path) => {
        $crate::on_both_backends!(@with [] $(#[$meta])* $embedded, $rocketmq, $body);
    };
    (@with [$($flavor:tt)*] $(#[$meta:meta])* $embedded:ident, $rocketmq:ident, $body:path) => {
        #[tokio::test($($flavor)*)]
        async fn $embedded() {
            $body($crate::rocketmq::Backend::Embedded).await;
        }

        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $rocketmq() {
            $body($crate::rocketmq::Backend::RocketMq).await;
        }
    };
}

/// Which broker backs the cells of an end-to-end test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    /// The SH cells on one RocketMQ cluster, the HZ cells on another.
    RocketMq,
}

/// The example topology on a backend: the rules file to serve, and the
/// clusters (stopped when dropped).
#[derive(Debug)]
pub struct Bed {
    pub config: PathBuf,
    pub text: String,
    pub clusters: Vec<Cluster>,
}

impl Bed {
    /// `examples/ldc.yaml` with `edits`, written to `dir/ldc.yaml`; on
    /// RocketMQ, every cell's broker points at its city's cluster.
    pub fn new(backend: Backend, dir: &Path, edits: &[(&str, &str)]) -> anyhow::Result<Bed> {
        let mut edits: Vec<(String, String)> = edits
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let mut clusters = Vec::new();
        if backend == Backend::RocketMq {
            let sh = Cluster::start("sh")?;
            let hz = Cluster::start("hz")?;
            for (cell, city, c) in [
                ("RZ00A", "SH", &sh),
                ("RZ01A", "SH", &sh),
                ("GZ00A", "SH", &sh),
                ("CZSH0", "SH", &sh),
                ("RZ02A", "HZ", &hz),
                ("RZ03A", "HZ", &hz),
                ("CZHZ0", "HZ", &hz),
            ] {
                let zone = &cell[..1];
                let from =
                    format!("{{ name: {cell}, zone: {zone}, city: {city}, broker: embedded }}");
                let to = format!(
                    "{{ name: {cell}, zone: {zone}, city: {city}, broker: \"{}\" }}",
                    c.reference()
                );
                edits.push((from, to));
            }
            clusters = vec![sh, hz];
        }
        let refs: Vec<(&str, &str)> = edits
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (config, text) = crate::edited_example(dir, "ldc.yaml", &refs);
        Ok(Bed {
            config,
            text,
            clusters,
        })
    }
}

/// `cellgate serve` on the example topology with every cell on `backend`
/// (see [`Bed`]), with `extra` arguments. Keep the `Bed`: it owns the
/// clusters.
pub fn start_on(backend: Backend, extra: &[&str]) -> (tempfile::TempDir, Bed, crate::Server) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let bed = Bed::new(backend, dir.path(), &[]).unwrap_or_else(|e| panic!("test bed: {e:#}"));
    let s = crate::Server::start(&bed.config, &dir.path().join("data"), extra)
        .unwrap_or_else(|e| panic!("cellgate serve did not start: {e:#}"));
    (dir, bed, s)
}
