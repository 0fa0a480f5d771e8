//! The HTTP API v1 (SPEC §9): routing, and the state every handler shares.
//!
//! A request takes one snapshot of the rules (`RulesHandle::current`) and
//! uses it from authentication to the answer, so a request that starts
//! after a reload sees only the new rules and one in flight finishes under
//! the version it started with.

mod auth;
mod body;
mod consume;
mod error;
mod message;
mod ops;
mod otel;
mod publish;
mod query;
mod quota;
mod receipt;
mod txn;
mod view;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Request;

use cellgate_rules::RulesHandle;

use crate::brokers::Brokers;
use crate::metrics::Metrics;
pub use auth::Caller;
pub use error::{ApiError, ApiResult};

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SHA-256 of the verified TLS client certificate.
    pub client_cert: Option<[u8; 32]>,
}

/// Request limits that are not per tenant.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body of a batch (single publishes are bounded by the
    /// tenant's `max_message_bytes`).
    pub max_batch_request_bytes: usize,
    pub max_batch_messages: usize,
    /// Time to receive a request body.
    pub body_timeout: Duration,
    /// Time for a whole request, long-poll wait excluded.
    pub request_timeout: Duration,
    pub max_wait: Duration,
    /// Queues of a topic created by its first publish or receive.
    pub default_queues: u16,
    /// Only the operations endpoints (a standalone router process).
    pub ops_only: bool,
    /// Record the message trace (`GET …/messages/{id}/trace`).
    pub trace_messages: bool,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_batch_request_bytes: 16 << 20,
            max_batch_messages: 1024,
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            default_queues: 8,
            ops_only: false,
            trace_messages: true,
        }
    }
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct App {
    rules: Arc<RulesHandle>,
    brokers: Arc<Brokers>,
    default_cell: Option<String>,
    limits: ApiLimits,
    receipts: receipt::ReceiptKey,
    quotas: quota::Quotas,
    /// Single publishes to a cell, combined into batches under load.
    combiners: crate::combine::Combiners,
    metrics: Metrics,
    /// Set once shutdown begins: `/readyz` turns 503 so load balancers stop
    /// sending new requests while in-flight ones drain.
    draining: AtomicBool,
    /// Record message trace hops (publish, deliver, ack, …).
    trace_messages: bool,
}

type Reply = Response<Full<Bytes>>;

/// The route a request matched, as a metric label (never the raw path,
/// which would let clients create unbounded label values).
#[derive(Debug, Clone, Copy)]
enum Route<'p> {
    Publish(&'p str),
    PublishBatch(&'p str),
    GetById(&'p str, &'p str),
    GetByKey(&'p str),
    Trace(&'p str, &'p str),
    TxnState(&'p str),
    Commit(&'p str),
    Rollback(&'p str),
    TxnChecks(&'p str),
    Receive(&'p str, &'p str),
    Ack(&'p str, &'p str),
    Nack(&'p str, &'p str),
    Reset(&'p str, &'p str),
    Lag(&'p str, &'p str),
    Healthz,
    Readyz,
    Metrics,
    Rules,
    Topology,
}

impl Route<'_> {
    fn label(self) -> &'static str {
        match self {
            Route::Publish(_) => "publish",
            Route::PublishBatch(_) => "publish_batch",
            Route::GetById(..) => "get_message",
            Route::GetByKey(_) => "query_by_key",
            Route::Trace(..) => "trace",
            Route::TxnState(_) => "transaction",
            Route::Commit(_) => "commit",
            Route::Rollback(_) => "rollback",
            Route::TxnChecks(_) => "transaction_checks",
            Route::Receive(..) => "receive",
            Route::Ack(..) => "ack",
            Route::Nack(..) => "nack",
            Route::Reset(..) => "reset",
            Route::Lag(..) => "lag",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Rules => "rules",
            Route::Topology => "topology",
        }
    }
}

/// Matches method and path. Names are `[A-Za-z0-9_-]`, so path segments
/// need no percent-decoding: an encoded segment fails name validation.
fn route<'p>(method: &Method, path: &'p str) -> Result<Route<'p>, ApiError> {
    // No route has more than 6 segments: split into an array, not a Vec.
    let mut segs = [""; 6];
    let mut n = 0;
    for s in path.trim_start_matches('/').split('/') {
        let slot = segs.get_mut(n).ok_or_else(ApiError::no_route)?;
        *slot = s;
        n += 1;
    }
    let r = match &segs[..n] {
        ["v1", "topics", t, "messages"] => match *method {
            Method::POST => Route::Publish(t),
            Method::GET => Route::GetByKey(t),
            _ => return Err(ApiError::method_not_allowed()),
        },
        ["v1", "topics", t, "messages:batch"] => post(method, Route::PublishBatch(t))?,
        ["v1", "topics", t, "messages", id] => get(method, Route::GetById(t, id))?,
        ["v1", "topics", t, "messages", id, "trace"] => get(method, Route::Trace(t, id))?,
        ["v1", "transactions", id] => get(method, Route::TxnState(id))?,
        ["v1", "transactions", id, "commit"] => post(method, Route::Commit(id))?,
        ["v1", "transactions", id, "rollback"] => post(method, Route::Rollback(id))?,
        ["v1", "producer-groups", g, "transaction-checks"] => post(method, Route::TxnChecks(g))?,
        ["v1", "groups", g, "topics", t, action] => match *action {
            "receive" => post(method, Route::Receive(g, t))?,
            "ack" => post(method, Route::Ack(g, t))?,
            "nack" => post(method, Route::Nack(g, t))?,
            "reset" => post(method, Route::Reset(g, t))?,
            "lag" => get(method, Route::Lag(g, t))?,
            _ => return Err(ApiError::no_route()),
        },
        ["healthz"] => get(method, Route::Healthz)?,
        ["readyz"] => get(method, Route::Readyz)?,
        ["metrics"] => get(method, Route::Metrics)?,
        ["v1", "rules"] => get(method, Route::Rules)?,
        ["v1", "topology"] => get(method, Route::Topology)?,
        _ => return Err(ApiError::no_route()),
    };
    Ok(r)
}

fn post<'p>(m: &Method, r: Route<'p>) -> Result<Route<'p>, ApiError> {
    if *m == Method::POST {
        Ok(r)
    } else {
        Err(ApiError::method_not_allowed())
    }
}

fn get<'p>(m: &Method, r: Route<'p>) -> Result<Route<'p>, ApiError> {
    if *m == Method::GET || *m == Method::HEAD {
        Ok(r)
    } else {
        Err(ApiError::method_not_allowed())
    }
}

// === impl App ===

impl App {
    pub fn new(
        rules: Arc<RulesHandle>,
        brokers: Arc<Brokers>,
        default_cell: Option<String>,
        limits: ApiLimits,
        data_dir: &Path,
    ) -> Result<App, crate::Error> {
        let trace_messages = limits.trace_messages;
        Ok(App {
            rules,
            brokers,
            default_cell,
            limits,
            receipts: receipt::ReceiptKey::load_or_create(data_dir)?,
            quotas: quota::Quotas::default(),
            combiners: crate::combine::Combiners::default(),
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            trace_messages,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn brokers(&self) -> &Arc<Brokers> {
        &self.brokers
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Answers one request. Never fails: errors become SPEC §9 bodies.
    pub async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Reply {
        let started = Instant::now();
        // The route borrows the path while the request moves on: a clone of
        // the URI shares its bytes instead of copying the path.
        let uri = req.uri().clone();
        let (label, reply) = match route(req.method(), uri.path()) {
            Err(e) => ("unmatched", error_reply(&e)),
            Ok(r) => {
                let label = r.label();
                let reply = self
                    .dispatch(r, req, peer)
                    .await
                    .unwrap_or_else(|e| error_reply(&e));
                (label, reply)
            }
        };
        self.metrics
            .request(label, reply.status().as_u16(), started.elapsed());
        reply
    }

    async fn dispatch(
        &self,
        r: Route<'_>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> ApiResult<Reply> {
        let rules = self.rules.current();
        match r {
            Route::Healthz => {
                return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
            }
            Route::Readyz => return Ok(ops::readyz(self)),
            Route::Metrics => return Ok(ops::metrics(self)),
            // Operators and probes read these without a token; a token, if
            // sent, must be valid, and only an admin token sees the text of
            // a reload error.
            Route::Rules | Route::Topology
                if !req.headers().contains_key(http::header::AUTHORIZATION) =>
            {
                return Ok(match r {
                    Route::Rules => ops::rules(self, false),
                    _ => ops::topology(self, &rules),
                });
            }
            _ => {}
        }
        if self.limits.ops_only && !matches!(r, Route::Rules | Route::Topology) {
            return Err(ApiError::no_route());
        }
        let caller = Caller::authenticate(&rules, req.headers(), peer)?;
        let deadline = self.limits.request_timeout;
        let work = async {
            match r {
                Route::Publish(t) => publish::one(self, &caller, t, req).await,
                Route::PublishBatch(t) => publish::batch(self, &caller, t, req).await,
                // Boxed: the rarer routes' futures would otherwise size
                // every request's future.
                Route::GetById(t, id) => {
                    Box::pin(query::by_id(self, &caller, t, id, req.headers())).await
                }
                Route::GetByKey(t) => Box::pin(query::by_key(self, &caller, t, &req)).await,
                Route::Trace(t, id) => {
                    Box::pin(query::trace(self, &caller, t, id, req.headers())).await
                }
                Route::TxnState(id) => txn::state(self, &caller, id, req.headers()).await,
                Route::Commit(id) => txn::decide(self, &caller, id, req, true).await,
                Route::Rollback(id) => txn::decide(self, &caller, id, req, false).await,
                Route::TxnChecks(g) => txn::checks(self, &caller, g, req).await,
                Route::Receive(g, t) => consume::receive(self, &caller, g, t, req).await,
                Route::Ack(g, t) => consume::settle(self, &caller, g, t, req, true).await,
                Route::Nack(g, t) => consume::settle(self, &caller, g, t, req, false).await,
                Route::Reset(g, t) => consume::reset(self, &caller, g, t, req).await,
                Route::Lag(g, t) => Box::pin(consume::lag(self, &caller, g, t, &req)).await,
                Route::Rules => Ok(ops::rules(self, caller.is_admin())),
                Route::Topology => Ok(ops::topology(self, &rules)),
                Route::Healthz | Route::Readyz | Route::Metrics => Err(ApiError::no_route()),
            }
        };
        // A receive may wait up to max_wait on top of the usual bound.
        let bound = deadline + self.limits.max_wait;
        match tokio::time::timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took longer than the gateway's request timeout",
            )),
        }
    }
}

/// Checks a request's `max_messages` (default 16, 1..=`max`) and
/// `wait_ms` (default 0, at most the gateway's long-poll bound).
pub(crate) fn count_and_wait(
    app: &App,
    max_messages: Option<usize>,
    max: usize,
    wait_ms: Option<u64>,
) -> ApiResult<(usize, Duration)> {
    let n = max_messages.unwrap_or(16);
    if !(1..=max).contains(&n) {
        return Err(ApiError::invalid(
            "max_messages",
            format!("must be 1 to {max}, got {n}"),
        ));
    }
    let wait = wait_ms.unwrap_or(0);
    let max_wait = app.limits.max_wait.as_millis() as u64;
    if wait > max_wait {
        return Err(ApiError::invalid(
            "wait_ms",
            format!("must be at most {max_wait}, got {wait}"),
        ));
    }
    Ok((n, Duration::from_millis(wait)))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A query parameter, percent-decoded (`?key=a%26b` is `a&b`).
pub(crate) fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, v: &impl serde::Serialize) -> Reply {
    // Room for a publish answer (~250 B) without regrowing; to_vec starts
    // at 128 bytes.
    let mut bytes = Vec::with_capacity(512);
    if serde_json::to_writer(&mut bytes, v).is_err() {
        bytes.clear();
        bytes.extend_from_slice(b"{}");
    }
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error_reply(e: &ApiError) -> Reply {
    let mut r = json(e.status, &e.body());
    if let Some(after) = e.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}
