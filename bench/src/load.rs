//! The load generator: closed-loop clients over HTTP/1.1 keep-alive (one
//! request in flight per connection) or h2c by prior knowledge (one
//! connection carrying several streams, each a closed loop).
//!
//! It drives hyper's connection-level client directly rather than a pooled
//! client, so the number of connections and streams is exactly what the
//! case says and no pool logic runs per request. Every request is the same
//! prebuilt body (a cheap `Bytes` clone) and every answer is read to the
//! end, since a server is not done until its answer is out.
//!
//! Timing: a request counts if its answer arrives inside the measured
//! window (after the warm-up, before the end); its latency is from just
//! before the request is handed to hyper to the last byte of the answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// HTTP/1.1 with keep-alive, or h2c with this many concurrent streams per
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2 { streams: usize },
}

/// One load: where, how, what.
#[derive(Debug, Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub conns: usize,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one load measured.
#[derive(Debug)]
pub struct Outcome {
    /// Answered with 200 inside the window.
    pub ok: u64,
    /// Answered at all, warm-up and window (what the CPU time is spent on).
    pub answered: u64,
    /// Answered with another status inside the window, or failed.
    pub errors: u64,
    /// The first non-200 answer or failure, for the report.
    pub first_error: Option<String>,
    /// Latency of the `ok` requests, in microseconds.
    pub latency_us: Histogram<u64>,
    pub window: Duration,
}

impl Outcome {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }
}

/// A worker's tally; merged into an `Outcome` at the end.
struct Tally {
    ok: u64,
    answered: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

/// The window every worker measures in, fixed before the first connection.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

/// Runs `load` to completion on the current tokio runtime.
pub async fn run(load: &Load) -> anyhow::Result<Outcome> {
    let uri: Uri = match load.proto {
        // h2 carries scheme and authority as pseudo-headers: absolute form.
        Proto::H2 { .. } => format!("http://{}{}", load.addr, load.path).parse()?,
        Proto::H1 => load.path.parse()?,
    };
    let mut template = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .body(Full::new(load.body.clone()))?;
    let h = template.headers_mut();
    if load.proto == Proto::H1 {
        h.insert(header::HOST, HeaderValue::from_str(&load.addr.to_string())?);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (k, v) in &load.headers {
        h.insert(k.clone(), v.clone());
    }
    // Connect everything before the clock starts.
    let mut conns = Vec::with_capacity(load.conns);
    for _ in 0..load.conns {
        let tcp = TcpStream::connect(load.addr)
            .await
            .with_context(|| format!("connect to {}", load.addr))?;
        tcp.set_nodelay(true)?;
        conns.push(tcp);
    }
    let start = Instant::now();
    let window = Window {
        from: start + load.warmup,
        to: start + load.warmup + load.duration,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for tcp in conns {
        match load.proto {
            Proto::H1 => {
                let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                tasks.spawn(worker(send, template_clone(&template), window));
            }
            Proto::H2 { streams } => {
                let (send, conn) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                for _ in 0..streams {
                    tasks.spawn(worker(send.clone(), template_clone(&template), window));
                }
            }
        }
    }
    let mut out = Outcome {
        ok: 0,
        answered: 0,
        errors: 0,
        first_error: None,
        latency_us: histogram()?,
        window: load.duration,
    };
    while let Some(t) = tasks.join_next().await {
        let t = t.context("a load worker panicked")??;
        out.ok += t.ok;
        out.answered += t.answered;
        out.errors += t.errors;
        if out.first_error.is_none() {
            out.first_error = t.first_error;
        }
        out.latency_us.add(&t.hist)?;
    }
    Ok(out)
}

fn template_clone(t: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut r = Request::new(t.body().clone());
    *r.method_mut() = t.method().clone();
    *r.uri_mut() = t.uri().clone();
    *r.headers_mut() = t.headers().clone();
    r
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            ok: 0,
            answered: 0,
            errors: 0,
            first_error: None,
            hist: histogram()?,
        })
    }

    /// Records one answer. Returns false once the window is over.
    fn record(&mut self, w: Window, sent: Instant, status: u16, body: &[u8]) -> bool {
        let done = Instant::now();
        self.answered += 1;
        if done > w.to {
            return false;
        }
        if done < w.from {
            return true;
        }
        if status == 200 {
            self.ok += 1;
            let us = done.duration_since(sent).as_micros().max(1);
            let _ = self.hist.record(u64::try_from(us).unwrap_or(u64::MAX));
        } else {
            self.errors += 1;
            if self.first_error.is_none() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                self.first_error = Some(format!("HTTP {status}: {text}"));
            }
        }
        true
    }

    fn failed(mut self, e: impl std::fmt::Display) -> Tally {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
        self
    }
}

/// An HTTP/1.1 or HTTP/2 connection's request sender, so one worker
/// loop serves both.
trait Sender: Send + 'static {
    fn ready(&mut self) -> impl std::future::Future<Output = hyper::Result<()>> + Send;
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>> + Send;
}

impl Sender for http1::SendRequest<Full<Bytes>> {
    fn ready(&mut self) -> impl std::future::Future<Output = hyper::Result<()>> + Send {
        http1::SendRequest::ready(self)
    }
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>> + Send
    {
        self.send_request(req)
    }
}

impl Sender for http2::SendRequest<Full<Bytes>> {
    fn ready(&mut self) -> impl std::future::Future<Output = hyper::Result<()>> + Send {
        http2::SendRequest::ready(self)
    }
    fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> impl std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>> + Send
    {
        self.send_request(req)
    }
}

/// Sends `template` again and again on one connection (or HTTP/2 stream
/// slot) until the window closes.
async fn worker(
    mut send: impl Sender,
    template: Request<Full<Bytes>>,
    w: Window,
) -> anyhow::Result<Tally> {
    let mut t = Tally::new()?;
    loop {
        if let Err(e) = send.ready().await {
            return Ok(t.failed(e));
        }
        let sent = Instant::now();
        let answer = match send.send(template_clone(&template)).await {
            Ok(a) => a,
            Err(e) => return Ok(t.failed(e)),
        };
        let status = answer.status().as_u16();
        let body = match answer.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(t.failed(e)),
        };
        if !t.record(w, sent, status, &body) {
            return Ok(t);
        }
    }
}
