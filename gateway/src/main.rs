//! The `cellgate` binary. Thin on purpose: parse arguments, set up logging,
//! hand over to the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a publish allocates and frees a
/// dozen small strings and a 1 KiB body, the broker frees them on its
/// dispatcher thread, and glibc's cross-thread frees and chunk
/// consolidation showed as 8–10% of the gateway's CPU (docs/benchmarks.md).
/// Not `unsafe` code: the attribute only names the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CELLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The OpenTelemetry bridge first, on the registry itself: it gets the
    // spans whatever CELLGATE_LOG filters out of the log.
    tracing_subscriber::registry()
        .with(cellgate_telemetry::tracing_layer())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .init();
    let cli = cellgate::cli::Cli::parse();
    // Unlocked handles: `serve` logs to stderr from every runtime thread,
    // and a lock held here for the whole run would block them all.
    let code = cellgate::cli::run(cli, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}
