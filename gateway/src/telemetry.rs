//! Turning OpenTelemetry export on at start: the rules file's
//! `telemetry` section merged with the `OTEL_*` environment (which wins);
//! see docs/observability.md.

use cellgate_rules::Telemetry;
use cellgate_telemetry::{Installed, Settings};

use crate::Error;

/// Installs the exporters the settings ask for (none by default). Call
/// from inside the runtime: the gRPC exporter needs it.
pub fn install(t: &Telemetry) -> Result<Installed, Error> {
    let settings =
        Settings::from_env(&t.settings).map_err(|e| Error::Config(format!("telemetry: {e}")))?;
    let installed = cellgate_telemetry::install(&settings)
        .map_err(|e| Error::Config(format!("telemetry: {e}")))?;
    let url = |e: &Option<cellgate_telemetry::settings::Endpoint>| {
        e.as_ref().map(|e| format!("{} ({:?})", e.url, e.protocol))
    };
    if settings.is_on() {
        tracing::info!(
            traces = url(&settings.traces).unwrap_or_else(|| "off".into()),
            metrics = url(&settings.metrics).unwrap_or_else(|| "off".into()),
            service = %settings.service_name,
            "OpenTelemetry export on"
        );
    }
    Ok(installed)
}
