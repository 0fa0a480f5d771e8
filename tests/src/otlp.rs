//! A real OTLP receiver for the tests: HTTP/protobuf (`/v1/traces`,
//! `/v1/metrics`, decoded with opentelemetry-proto) and gRPC
//! (opentelemetry-proto's generated `TraceService`, served over h2c by
//! hyper), each on 127.0.0.1:0, collecting what cellgate exports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// What the receiver got.
#[derive(Debug, Default)]
pub struct Received {
    pub spans: Vec<Span>,
    /// Metric names with how many data points each came with.
    pub metrics: HashMap<String, usize>,
    /// Requests that failed to decode (must stay 0).
    pub bad: usize,
}

pub type Shared = Arc<Mutex<Received>>;

/// An OTLP/HTTP receiver on 127.0.0.1:0: `/v1/traces` and `/v1/metrics`,
/// protobuf bodies.
pub async fn receiver() -> (String, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver");
    let addr = listener.local_addr().expect("receiver");
    let got: Shared = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        record(&g, &path, &body);
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

fn record(g: &Shared, path: &str, body: &[u8]) {
    let mut g = g.lock().expect("receiver");
    match path {
        "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
            Ok(r) => {
                for rs in r.resource_spans {
                    for ss in rs.scope_spans {
                        g.spans.extend(ss.spans);
                    }
                }
            }
            Err(_) => g.bad += 1,
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(r) => {
                for rm in r.resource_metrics {
                    for sm in rm.scope_metrics {
                        for m in sm.metrics {
                            use opentelemetry_proto::tonic::metrics::v1::metric::Data;
                            let n = match &m.data {
                                Some(Data::Sum(s)) => s.data_points.len(),
                                Some(Data::Gauge(s)) => s.data_points.len(),
                                Some(Data::Histogram(h)) => h.data_points.len(),
                                _ => 0,
                            };
                            *g.metrics.entry(m.name).or_default() += n;
                        }
                    }
                }
            }
            Err(_) => g.bad += 1,
        },
        _ => g.bad += 1,
    }
}

pub fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(v) => Some(v.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// Waits until `done` holds for the spans received so far.
pub async fn spans_until(got: &Shared, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let g = got.lock().expect("receiver");
            assert_eq!(g.bad, 0, "the receiver could not decode a request");
            if done(&g.spans) {
                return g.spans.clone();
            }
            if Instant::now() > deadline {
                let names: Vec<_> = g.spans.iter().map(|s| s.name.clone()).collect();
                panic!("timed out waiting for {what}; got spans {names:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gRPC side of the receiver: opentelemetry-proto's generated
/// `TraceService`, served over h2c by hyper.
#[derive(Debug)]
struct GrpcTraces(Shared);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for GrpcTraces
{
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut g = self.0.lock().expect("receiver");
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                g.spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

pub async fn grpc_receiver() -> (String, Shared) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver");
    let addr = listener.local_addr().expect("receiver");
    let got: Shared = Arc::default();
    let svc = TraceServiceServer::new(GrpcTraces(got.clone()));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

/// Lower-case hex of an id.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
