//! The OTLP sink of the `otel` side (issue 7): a plain hyper HTTP/1.1
//! server on a loopback port that takes what the gateway's OTLP
//! http/protobuf exporters post (`/v1/traces`, `/v1/metrics`), reads each
//! body to the end, counts requests and bytes, and answers 200 with an
//! empty body (an empty protobuf `Export…ServiceResponse`: full success).
//!
//! It decodes nothing: the receiver's own cost should stay small next to
//! the exporter's, which is what the benchmark measures. It runs on its
//! own thread with a current-thread runtime, so it never takes a worker of
//! the load generator's runtime, and its CPU time is read from that one
//! thread, to be reported apart from the load generator's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The running counters.
#[derive(Debug, Default)]
struct Counts {
    trace_reqs: AtomicU64,
    trace_bytes: AtomicU64,
    /// Everything not posted to `…/v1/traces` (the metrics, every 60 s).
    other_reqs: AtomicU64,
    other_bytes: AtomicU64,
}

/// A snapshot of the counters and of the sink thread's CPU time; the
/// difference of two is what one load sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub trace_reqs: u64,
    pub trace_bytes: u64,
    pub other_reqs: u64,
    pub other_bytes: u64,
    pub cpu_ns: u64,
}

impl Tally {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Tally) -> Tally {
        Tally {
            trace_reqs: self.trace_reqs.saturating_sub(earlier.trace_reqs),
            trace_bytes: self.trace_bytes.saturating_sub(earlier.trace_bytes),
            other_reqs: self.other_reqs.saturating_sub(earlier.other_reqs),
            other_bytes: self.other_bytes.saturating_sub(earlier.other_bytes),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
        }
    }
}

/// The sink; it serves until the process exits.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    counts: Arc<Counts>,
    /// The serving thread's id, for its CPU time (None without /proc).
    tid: Option<String>,
}

impl Sink {
    pub fn start() -> anyhow::Result<Sink> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let c = counts.clone();
        std::thread::Builder::new()
            .name("otlp-sink".to_owned())
            .spawn(move || {
                // `/proc/thread-self` -> `PID/task/TID`.
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
                let _ = tx.send(tid);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("OTLP sink: no runtime: {e}"),
                };
                if let Err(e) = rt.block_on(serve(listener, c)) {
                    eprintln!("OTLP sink stopped: {e:#}");
                }
            })
            .context("start the OTLP sink thread")?;
        let tid = rx
            .recv()
            .map_err(|_| anyhow!("the OTLP sink thread died at start"))?;
        Ok(Sink { addr, counts, tid })
    }

    /// What `OTEL_EXPORTER_OTLP_ENDPOINT` should be.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn tally(&self) -> Tally {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let cpu_ns = self
            .tid
            .as_ref()
            .and_then(|t| std::fs::read_to_string(format!("/proc/self/task/{t}/schedstat")).ok())
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Tally {
            trace_reqs: get(&self.counts.trace_reqs),
            trace_bytes: get(&self.counts.trace_bytes),
            other_reqs: get(&self.counts.other_reqs),
            other_bytes: get(&self.counts.other_bytes),
            cpu_ns,
        }
    }
}

async fn serve(listener: std::net::TcpListener, counts: Arc<Counts>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("OTLP sink: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, counts.clone()));
            // A gateway killed mid-export ends its connection abruptly.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    counts: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let traces = req.uri().path().ends_with("/v1/traces");
    let mut body = req.into_body();
    let mut bytes = 0u64;
    // Frame by frame: counted, never gathered into one buffer.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let (reqs, total) = if traces {
        (&counts.trace_reqs, &counts.trace_bytes)
    } else {
        (&counts.other_reqs, &counts.other_bytes)
    };
    reqs.fetch_add(1, Ordering::Relaxed);
    total.fetch_add(bytes, Ordering::Relaxed);
    let mut r = Response::new(Full::new(Bytes::new()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(r)
}
