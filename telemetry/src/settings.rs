//! Where telemetry goes: the standard `OTEL_*` environment variables
//! merged with the rules file's `telemetry` section.
//!
//! The environment wins over the file, variable by variable: the file is
//! the fleet's default, the environment a deployment's override (the way
//! operators already use these variables). Export is off unless an
//! endpoint is set somewhere; `OTEL_TRACES_EXPORTER=none` (or
//! `OTEL_METRICS_EXPORTER=none`, or `OTEL_SDK_DISABLED=true`) turns a
//! signal off even then.

use crate::Error;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default).
    HttpProtobuf,
    /// `grpc`.
    Grpc,
}

/// The rules file's `telemetry` section (every field optional). Its
/// schema lives here, with its checks ([`FileSettings::problems`]); the
/// rules crate parses it and locates the problems in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub endpoint: Option<String>,
    pub traces_endpoint: Option<String>,
    pub metrics_endpoint: Option<String>,
    pub protocol: Option<String>,
    pub traces_exporter: Option<String>,
    pub metrics_exporter: Option<String>,
    pub service_name: Option<String>,
}

/// One signal's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The full URL the exporter posts to (`…/v1/traces` for HTTP).
    pub url: String,
    pub protocol: Protocol,
}

/// The resolved settings: `None` means that signal is not exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub traces: Option<Endpoint>,
    pub metrics: Option<Endpoint>,
    pub service_name: String,
}

/// One signal's names: its environment variables, file field and path.
struct Signal {
    exporter_env: &'static str,
    endpoint_env: &'static str,
    protocol_env: &'static str,
    path: &'static str,
}

const TRACES: Signal = Signal {
    exporter_env: "OTEL_TRACES_EXPORTER",
    endpoint_env: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol_env: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    path: "/v1/traces",
};

const METRICS: Signal = Signal {
    exporter_env: "OTEL_METRICS_EXPORTER",
    endpoint_env: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol_env: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    path: "/v1/metrics",
};

/// `http/protobuf` or `grpc`.
fn parse_protocol(v: &str) -> Result<Protocol, String> {
    match v.trim() {
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "grpc" => Ok(Protocol::Grpc),
        other => Err(format!(
            "{other:?} is not supported: use `http/protobuf` or `grpc`"
        )),
    }
}

/// `otlp` (on) or `none` (off).
fn parse_exporter(v: &str) -> Result<bool, String> {
    match v.trim() {
        "otlp" => Ok(true),
        "none" => Ok(false),
        other => Err(format!("{other:?} is not supported: use `otlp` or `none`")),
    }
}

/// An OTLP endpoint this build can export to.
fn check_url(url: &str) -> Result<(), String> {
    // No TLS client for OTLP is built in (see docs/observability.md): an
    // https endpoint would fail at every export, so it is refused up front.
    if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: this build exports over plain http:// (or h2c gRPC) only; \
             send to a local OpenTelemetry Collector and let it forward over TLS"
        ));
    }
    if !url.starts_with("http://") || url.len() <= "http://".len() {
        return Err(format!("{url:?} must be an http:// URL"));
    }
    Ok(())
}

// === impl FileSettings ===

impl FileSettings {
    /// Every problem of the section, as (field, reason): the same checks
    /// the environment's values get at start.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut check = |field, v: &Option<String>, f: &dyn Fn(&str) -> Result<(), String>| {
            if let Some(Err(why)) = v.as_deref().map(f) {
                out.push((field, why));
            }
        };
        check("protocol", &self.protocol, &|v| parse_protocol(v).map(drop));
        check("traces_exporter", &self.traces_exporter, &|v| {
            parse_exporter(v).map(drop)
        });
        check("metrics_exporter", &self.metrics_exporter, &|v| {
            parse_exporter(v).map(drop)
        });
        check("endpoint", &self.endpoint, &check_url);
        check("traces_endpoint", &self.traces_endpoint, &check_url);
        check("metrics_endpoint", &self.metrics_endpoint, &check_url);
        check("service_name", &self.service_name, &|v| {
            if v.trim().is_empty() {
                Err("is empty".to_owned())
            } else {
                Ok(())
            }
        });
        out
    }
}

// === impl Settings ===

impl Settings {
    /// Off: nothing exported.
    pub fn off() -> Settings {
        Settings {
            traces: None,
            metrics: None,
            service_name: "cellgate".to_owned(),
        }
    }

    /// From the process environment and the file's section.
    pub fn from_env(file: &FileSettings) -> Result<Settings, Error> {
        Settings::resolve(file, |k| std::env::var(k).ok())
    }

    /// From `env` (a lookup, for tests) and the file's section.
    pub fn resolve(
        file: &FileSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, Error> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let service_name = env("OTEL_SERVICE_NAME")
            .or_else(|| file.service_name.clone())
            .unwrap_or_else(|| "cellgate".to_owned());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(Settings {
                service_name,
                ..Settings::off()
            });
        }
        let traces = endpoint(
            &TRACES,
            file,
            &file.traces_exporter,
            &file.traces_endpoint,
            &env,
        )?;
        let metrics = endpoint(
            &METRICS,
            file,
            &file.metrics_exporter,
            &file.metrics_endpoint,
            &env,
        )?;
        Ok(Settings {
            traces,
            metrics,
            service_name,
        })
    }

    pub fn is_on(&self) -> bool {
        self.traces.is_some() || self.metrics.is_some()
    }
}

/// A signal's endpoint, or `None` when it is off.
fn endpoint(
    s: &Signal,
    file: &FileSettings,
    file_exporter: &Option<String>,
    file_endpoint: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Endpoint>, Error> {
    let (exporter, exporter_from) = match env(s.exporter_env) {
        Some(v) => (Some(v), s.exporter_env.to_owned()),
        None => (file_exporter.clone(), "telemetry.*_exporter".to_owned()),
    };
    if let Some(v) = &exporter {
        let on = parse_exporter(v).map_err(|why| Error::Setting {
            name: exporter_from,
            why,
        })?;
        if !on {
            return Ok(None);
        }
    }
    let protocol = protocol(s, file, env)?;
    let base = |b: String| match protocol {
        Protocol::HttpProtobuf => format!("{}{}", b.trim_end_matches('/'), s.path),
        Protocol::Grpc => b,
    };
    // Signal-specific URLs are used verbatim, base URLs get the path.
    let url = env(s.endpoint_env)
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").map(base))
        .or_else(|| file_endpoint.clone())
        .or_else(|| file.endpoint.clone().map(base));
    let Some(url) = url else {
        return Ok(None);
    };
    check_url(&url).map_err(|why| Error::Setting {
        name: "OTLP endpoint".to_owned(),
        why,
    })?;
    Ok(Some(Endpoint { url, protocol }))
}

fn protocol(
    s: &Signal,
    file: &FileSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Protocol, Error> {
    let (v, from) = if let Some(v) = env(s.protocol_env) {
        (v, s.protocol_env)
    } else if let Some(v) = env("OTEL_EXPORTER_OTLP_PROTOCOL") {
        (v, "OTEL_EXPORTER_OTLP_PROTOCOL")
    } else if let Some(v) = &file.protocol {
        (v.clone(), "telemetry.protocol")
    } else {
        return Ok(Protocol::HttpProtobuf);
    };
    parse_protocol(&v).map_err(|why| Error::Setting {
        name: from.to_owned(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(file: &FileSettings, env: &[(&str, &str)]) -> Result<Settings, Error> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(file, |k| env.get(k).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        let s = resolve(&FileSettings::default(), &[]).unwrap();
        assert!(!s.is_on());
        assert_eq!(s.service_name, "cellgate");
    }

    #[test]
    fn a_base_endpoint_turns_both_signals_on_with_their_paths() {
        let s = resolve(
            &FileSettings::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")],
        )
        .unwrap();
        assert_eq!(s.traces.unwrap().url, "http://c:4318/v1/traces");
        assert_eq!(s.metrics.unwrap().url, "http://c:4318/v1/metrics");
    }

    #[test]
    fn signal_endpoints_are_verbatim_and_grpc_takes_the_base_as_is() {
        let s = resolve(
            &FileSettings::default(),
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        let t = s.traces.unwrap();
        assert_eq!(
            (t.url.as_str(), t.protocol),
            ("http://t:1/x", Protocol::Grpc)
        );
        assert!(s.metrics.is_none(), "only traces have an endpoint");
        let s = resolve(
            &FileSettings::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        assert_eq!(s.traces.unwrap().url, "http://g:4317");
    }

    #[test]
    fn none_turns_a_signal_off_and_the_environment_wins_over_the_file() {
        let file = FileSettings {
            endpoint: Some("http://file:4318".into()),
            protocol: Some("grpc".into()),
            service_name: Some("from-file".into()),
            ..FileSettings::default()
        };
        let s = resolve(
            &file,
            &[
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap();
        assert!(s.traces.is_none());
        assert_eq!(s.metrics.unwrap().url, "http://file:4318/v1/metrics");
        assert_eq!(s.service_name, "from-file");
        let s = resolve(&file, &[("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert!(!s.is_on());
    }

    #[test]
    fn bad_values_name_their_setting() {
        let e = resolve(
            &FileSettings::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{e}"
        );
        let e = resolve(
            &FileSettings::default(),
            &[("OTEL_TRACES_EXPORTER", "zipkin")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("zipkin"), "{e}");
        let e = resolve(
            &FileSettings::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let e = resolve(
            &FileSettings {
                endpoint: Some("https://collector:4318".into()),
                ..FileSettings::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("Collector"), "{e}");
    }

    #[test]
    fn the_file_section_gets_the_same_checks() {
        let f = FileSettings {
            protocol: Some("thrift".into()),
            endpoint: Some("https://c:4318".into()),
            traces_exporter: Some("otlp".into()),
            service_name: Some(" ".into()),
            ..FileSettings::default()
        };
        let fields: Vec<&str> = f.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["protocol", "endpoint", "service_name"]);
        assert!(FileSettings::default().problems().is_empty());
    }
}
