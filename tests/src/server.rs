//! A real `cellgate serve` process on a loopback port the OS picks, and a
//! small JSON client for it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The demo tokens of examples/ldc.yaml.
pub const ANT: &str = "ant-demo-token";
pub const BETA: &str = "beta-demo-token";
pub const ADMIN: &str = "admin-demo-token";

/// A running `cellgate serve`. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub config: PathBuf,
    /// stderr goes here (`CELLGATE_LOG=info`), for post-mortems.
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts `cellgate serve --config CONFIG --data DATA --listen 127.0.0.1:0`
    /// plus `extra`, with 4 MiB segments unless `extra` says otherwise, and
    /// waits for its `listening on` line.
    pub fn start(config: &Path, data: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Self::start_command("serve", config, data, extra)
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_env(
        config: &Path,
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let mut s = Self::start_args(config, data, extra);
        s.insert(0, "serve".into());
        Self::spawn_env(config, data, s, env)
    }

    fn start_args(config: &Path, data: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--config".into(),
            config.display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        if !extra.contains(&"--segment-size") {
            args.extend(["--segment-size".into(), "4MiB".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Like [`Server::start`] for another subcommand that serves (`router`).
    pub fn start_command(
        command: &str,
        config: &Path,
        data: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let mut args = Self::start_args(config, data, extra);
        args.insert(0, command.into());
        Self::spawn_env(config, data, args, &[])
    }

    fn spawn_env(
        config: &Path,
        data: &Path,
        args: Vec<String>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(data)?;
        let log = data.join("server.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut child = Command::new(crate::cellgate_bin())
            .args(&args)
            .env("CELLGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawn cellgate serve")?;
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
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("cellgate serve did not start:\n{log_text}");
            }
        };
        let addr: SocketAddr = line
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(Server {
            child: Some(child),
            addr,
            data: data.to_owned(),
            config: config.to_owned(),
            log,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// Starts the same command again (same data dir; a new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let s = Self::spawn_env(&self.config, &self.data, self.args.clone(), &env)?;
        *self = s;
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("not running"))?;
        kill(Pid::from_raw(pid), sig)?;
        Ok(())
    }

    /// SIGTERM, then waits up to `bound` for the exit.
    pub fn terminate(&mut self, bound: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let mut c = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("cellgate did not exit within {bound:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // A failing test's server log, so that a CI failure says why (the
        // log's directory goes with the test).
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- the server's log, last 40 lines ---\n{tail}\n---");
        }
    }
}

/// A JSON client for one server, one token and one cell.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub cell: Option<String>,
}

impl Api {
    pub fn new(server: &Server, token: &str, cell: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: server.url(""),
            token: Some(token.to_owned()),
            cell: Some(cell.to_owned()),
        }
    }

    pub fn cell(&self, cell: &str) -> Api {
        Api {
            cell: Some(cell.to_owned()),
            ..self.clone()
        }
    }

    pub fn token(&self, token: Option<&str>) -> Api {
        Api {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(c) = &self.cell {
            r = r.header("X-Cell", c);
        }
        r
    }

    /// Sends and returns (status, JSON body or Null).
    pub async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, v))
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> anyhow::Result<(u16, Value)> {
        self.send(
            self.req(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    /// Publishes and expects 200.
    pub async fn publish(&self, topic: &str, body: &Value) -> anyhow::Result<Value> {
        let (st, v) = self
            .post(&format!("/v1/topics/{topic}/messages"), body)
            .await?;
        if st != 200 {
            bail!("publish answered {st}: {v}");
        }
        Ok(v)
    }

    /// Receives (expects 200) and returns the messages.
    pub async fn receive(
        &self,
        group: &str,
        topic: &str,
        body: &Value,
    ) -> anyhow::Result<Vec<Value>> {
        let (st, v) = self
            .post(&format!("/v1/groups/{group}/topics/{topic}/receive"), body)
            .await?;
        if st != 200 {
            bail!("receive answered {st}: {v}");
        }
        Ok(v["messages"].as_array().cloned().unwrap_or_default())
    }

    /// Acks the messages' handles (expects 200).
    pub async fn ack(&self, group: &str, topic: &str, msgs: &[Value]) -> anyhow::Result<()> {
        let handles: Vec<Value> = msgs.iter().map(|m| m["receipt_handle"].clone()).collect();
        let (st, v) = self
            .post(
                &format!("/v1/groups/{group}/topics/{topic}/ack"),
                &serde_json::json!({ "receipt_handles": handles }),
            )
            .await?;
        if st != 200 {
            bail!("ack answered {st}: {v}");
        }
        Ok(())
    }
}
