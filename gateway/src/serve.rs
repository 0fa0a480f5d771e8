//! `cellgate serve`: the gateway with one embedded broker per cell, rules
//! hot reload, and graceful shutdown on SIGTERM/SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use cellgate_broker_core::{DeliveryConfig, FlushPolicy, TxnConfig};
use cellgate_router::metrics::RouterMetrics;
use cellgate_router::Router;
use cellgate_rules::watch::{self, WatchOptions};
use cellgate_rules::RulesHandle;
use prometheus_client::registry::Registry;

use crate::api::{ApiLimits, App};
use crate::brokers::{BrokerOptions, Brokers};
use crate::server::{self, Drained, ServerLimits, TlsFiles, TlsSetup};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flush {
    /// Acknowledge after fdatasync (group commit): nothing acknowledged is lost.
    Sync,
    /// Acknowledge once in the page cache; flush every --flush-interval.
    Async,
}

/// `cellgate serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Rules file or directory (watched; reloaded on change and on SIGHUP).
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data directory: one broker directory per cell.
    #[arg(long, default_value = "./data")]
    pub data: PathBuf,
    /// Default cell for requests without X-Cell.
    #[arg(long)]
    pub cell: Option<String>,
    /// PEM certificate chain; with --tls-key, serves HTTPS (h2 and HTTP/1.1 by ALPN).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a certificate.
    #[arg(long, requires = "tls_client_ca")]
    pub tls_require_client_cert: bool,
    #[arg(long, value_enum, default_value = "sync")]
    pub flush: Flush,
    /// Flush interval under --flush async.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Commit-log segment size (e.g. 1GiB, 64MiB).
    #[arg(long, default_value = "1GiB")]
    pub segment_size: bytesize::ByteSize,
    /// Queues of a topic created on first use.
    #[arg(long, default_value_t = 8)]
    pub queues: u16,
    /// Retry back-off levels, comma-separated (default: RocketMQ's 10s … 2h).
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
    pub retry_levels: Vec<Duration>,
    /// Deliveries before a message is dead-lettered.
    #[arg(long, default_value_t = 16)]
    pub max_attempts: u32,
    /// First transaction check-back after a half message is stored.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub txn_first_check: Duration,
    /// Between transaction check-backs.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub txn_check_interval: Duration,
    /// Unanswered check-backs before a transaction is rolled back.
    #[arg(long, default_value_t = 15)]
    pub txn_max_checks: u32,
    /// Retention by age.
    #[arg(long, default_value = "72h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also the keep-alive idle timeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Do not run the router in this process (no cross-cell copies).
    #[arg(long)]
    pub no_router: bool,
    /// Set by `cellgate router`: no message API, only the router.
    #[arg(skip)]
    pub router_only: bool,
}

fn broker_options(a: &ServeArgs) -> BrokerOptions {
    let mut delivery = DeliveryConfig {
        max_attempts: a.max_attempts,
        ..DeliveryConfig::default()
    };
    if !a.retry_levels.is_empty() {
        delivery.retry_levels = a.retry_levels.clone();
    }
    BrokerOptions {
        flush: match a.flush {
            Flush::Sync => FlushPolicy::Sync,
            Flush::Async => FlushPolicy::Async {
                interval: a.flush_interval,
            },
        },
        segment_bytes: a.segment_size.as_u64(),
        default_queues: a.queues,
        delivery,
        transactions: TxnConfig {
            first_check: a.txn_first_check,
            check_every: a.txn_check_interval,
            max_checks: a.txn_max_checks,
        },
        retention: a.retention,
        retention_bytes: None,
    }
}

/// Runs until SIGTERM or SIGINT. `out` gets one line once the listener is
/// bound: `listening on ADDR` (tests and scripts wait for it).
pub fn run(a: ServeArgs, out: &mut dyn Write) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cellgate")
        .build()
        .map_err(|e| Error::Io(format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(a, out))
}

async fn serve(a: ServeArgs, out: &mut dyn Write) -> Result<(), Error> {
    let rules = Arc::new(RulesHandle::open(&a.config)?);
    let current = rules.current();
    if let Some(cell) = &a.cell {
        if current.cell_id(cell).is_none() {
            return Err(Error::Config(format!(
                "--cell {cell}: the rules declare no such cell"
            )));
        }
    }
    // Every startup option is checked before the data directory is touched:
    // opening the brokers pre-allocates a segment per cell (1 GiB each by
    // default), which a typo in a TLS path should not cost.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsSetup::load(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.tls_client_ca.clone(),
            require_client_cert: a.tls_require_client_cert,
        })?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", a.listen)))?;
    let _lock = lock_data_dir(&a.data)?;
    let otel = crate::telemetry::install(current.telemetry())?;
    let brokers = Arc::new(Brokers::open_all(&a.data, broker_options(&a), &current).await?);
    drop(current);
    let limits = ApiLimits {
        ops_only: a.router_only,
        default_queues: a.queues,
        body_timeout: a.body_timeout,
        ..ApiLimits::default()
    };
    let app = Arc::new(App::new(
        rules.clone(),
        brokers,
        a.cell.clone(),
        limits,
        &a.data,
    )?);
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("listener address: {e}")))?;
    let _watcher = watch::spawn(rules.clone(), WatchOptions::default())?;
    let router = (!a.no_router).then(|| {
        let mut registry = Registry::with_prefix("cellgate");
        let metrics = RouterMetrics::new(&mut registry);
        app.metrics().add_registry(registry);
        Arc::new(Router {
            rules: rules.clone(),
            brokers: app.brokers().clone(),
            dir: a.data.join("router"),
            metrics,
        })
        .spawn()
    });
    {
        // After every registry is in place: the bridge reads the families.
        let (metrics, rules) = (app.metrics().clone(), rules.clone());
        cellgate_telemetry::bridge(move || metrics.render(&rules));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "cellgate listening");
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    let limits = ServerLimits {
        max_connections: a.max_connections,
        drain_timeout: a.drain_timeout,
        header_read_timeout: a.header_timeout,
        ..ServerLimits::default()
    };
    let drained = server::serve(listener, app.clone(), tls, limits, shutdown_signal()).await;
    match drained {
        Drained::All => tracing::info!("shutdown: every in-flight request finished"),
        Drained::TimedOut { open } => {
            tracing::warn!(
                open,
                "shutdown: drain timeout reached with connections open"
            )
        }
    }
    if let Some(r) = router {
        // Mid-copy is fine: the journal replays an interrupted batch.
        r.abort();
        let _ = r.await;
    }
    app.brokers().close_remote().await;
    app.brokers().close()?;
    // The SDK's shutdown blocks on its export threads: off the runtime.
    let _ = tokio::task::spawn_blocking(move || otel.shutdown()).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Holds an exclusive lock on `<data>/LOCK` for the life of the process: two
/// processes on one embedded store would corrupt it.
pub(crate) fn lock_data_dir(
    data: &std::path::Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
    std::fs::create_dir_all(data).map_err(|e| Error::Io(format!("{}: {e}", data.display())))?;
    let path = data.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        Error::Io(format!(
            "{}: {e}: another cellgate process is using this data directory",
            path.display()
        ))
    })
}

/// SIGTERM (what orchestrators send) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM: draining"),
                _ = i.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
