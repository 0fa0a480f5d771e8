//! `cellgate-baseline`: the plain hyper server the gateway benchmark
//! compares against (issue 4). It answers every request with 200 and a
//! small JSON body, after reading the request body to the end, so the
//! comparison is fair: the gateway must read the body too.
//!
//! It is served the way the gateway serves: the same hyper-util `auto`
//! builder (HTTP/1.1 keep-alive and h2c by prior knowledge on one port),
//! TCP_NODELAY, a tokio multi-thread runtime with the default worker count,
//! and it prints `listening on ADDR` on stdout once bound. Everything the
//! gateway does on top of that is what the benchmark measures.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The same allocator as the `cellgate` binary, so the ratio measures the
/// gateway's own work and not the allocator it ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// About the size of nothing in particular: the gateway's publish answer is
/// larger (~250 B), which is part of the gateway's cost.
const ANSWER: &[u8] = br#"{"ok":true}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as the gateway must, and drop it.
    let read = req.into_body().collect().await.map(|c| c.to_bytes().len());
    let mut r = Response::new(Full::new(Bytes::from_static(ANSWER)));
    if read.is_err() {
        *r.status_mut() = http::StatusCode::BAD_REQUEST;
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn listen_addr() -> anyhow::Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(SocketAddr::from(([127, 0, 0, 1], 0))),
        (Some("--listen"), Some(a)) => Ok(a.parse()?),
        _ => anyhow::bail!("usage: cellgate-baseline [--listen ADDR]"),
    }
}

fn main() -> anyhow::Result<()> {
    let addr = listen_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = std::sync::Arc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service_fn(answer));
            let _ = conn.await;
        });
    }
}
