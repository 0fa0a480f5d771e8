//! The HTTP(S) server: accept loop, connection limits, HTTP/1.1 keep-alive,
//! HTTP/2 (h2c by prior knowledge, and over TLS by ALPN), graceful shutdown.
//!
//! Every resource a client can hold is bounded, so a slow or hostile client
//! cannot exhaust the gateway:
//! - connections: a semaphore; over the limit a new connection is closed at
//!   once (accepting and closing beats leaving it in the kernel backlog,
//!   where it would time out with no answer);
//! - TLS handshake time, and HTTP/1 header time (hyper's header read
//!   timeout, which also closes a keep-alive connection idle that long);
//! - header bytes (HTTP/1 read buffer, HTTP/2 header list size) and HTTP/2
//!   concurrent streams;
//! - body bytes and body time, and the whole request's time: in the app.

mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::api::{App, Peer};

pub use tls::{TlsFiles, TlsSetup};

/// Bounds on what one client may hold.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// Time to send a request's headers; also the keep-alive idle timeout.
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// HTTP/1 read buffer, which bounds the header block.
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its in-flight requests.
    All,
    /// The drain timeout passed with connections still open; they were cut.
    TimedOut { open: usize },
}

fn conn_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish (up to `drain_timeout`) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsSetup>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let builder = Arc::new(conn_builder(&limits));
    let graceful = GracefulShutdown::new();
    // A semaphore, not a counter: the permit travels with the connection's
    // task and is released however the task ends.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            app.metrics().connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (app, builder, tls) = (app.clone(), builder.clone(), tls.clone());
        let handshake = limits.tls_handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let peer = Peer {
                        addr,
                        client_cert: None,
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service(app, peer));
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(tls) => serve_tls(stream, addr, tls, handshake, app, builder, watcher).await,
            }
        });
    }
    drop(listener);
    app.set_draining();
    tokio::select! {
        () = graceful.shutdown() => Drained::All,
        () = tokio::time::sleep(limits.drain_timeout) => {
            Drained::TimedOut { open: slots_in_use(&slots, limits.max_connections) }
        }
    }
}

fn slots_in_use(slots: &Semaphore, max: usize) -> usize {
    max.saturating_sub(slots.available_permits())
}

async fn serve_tls(
    stream: TcpStream,
    addr: SocketAddr,
    tls: TlsSetup,
    handshake: Duration,
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let stream = match tokio::time::timeout(handshake, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let client_cert = tls::client_cert_sha256(stream.get_ref().1);
    let peer = Peer { addr, client_cert };
    let conn = builder.serve_connection(TokioIo::new(stream), service(app, peer));
    let _ = watcher.watch(conn.into_owned()).await;
}

/// The per-connection service: hands each request to the app with the
/// connection's peer.
#[derive(Clone)]
struct Service {
    app: Arc<App>,
    peer: Arc<Peer>,
}

fn service(app: Arc<App>, peer: Peer) -> Service {
    Service {
        app,
        peer: Arc::new(peer),
    }
}

type Reply = hyper::Response<http_body_util::Full<bytes::Bytes>>;

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Reply;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let s = self.clone();
        Box::pin(async move { Ok(s.app.handle(req, &s.peer).await) })
    }
}
