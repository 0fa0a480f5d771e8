//! Operations: `/readyz`, `/metrics`, `/v1/rules`, `/v1/topology`.
//! (`/healthz` answers in the router: it needs nothing.)

use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;

use cellgate_rules::RuleSet;

use super::{json, App, Reply};

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn readyz(app: &App) -> Reply {
    if app.draining.load(std::sync::atomic::Ordering::Acquire) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "draining"}),
        );
    }
    json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
}

pub fn metrics(app: &App) -> Reply {
    let text = app.metrics.render(&app.rules);
    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The rules in force and the last reload error. The error's text (which
/// may quote any tenant's rules) only an admin token sees.
pub fn rules(app: &App, admin: bool) -> Reply {
    let rules = app.rules.current();
    let meta = rules.meta();
    let status = app.rules.status();
    let counts = app.rules.counts();
    let last_error = status.last_error.map(|e| {
        let message = if admin {
            e
        } else {
            "the last reload failed; ask the platform team (admin tokens see the details)"
                .to_owned()
        };
        serde_json::json!({ "message": message, "at_ms": status.last_error_at.map(ms) })
    });
    json(
        StatusCode::OK,
        &serde_json::json!({
            "version": meta.version,
            "sha256": meta.sha256,
            "loaded_at_ms": ms(meta.loaded_at),
            "loaded_at": humantime_rfc3339(meta.loaded_at),
            "last_error": last_error,
            "reloads": {
                "swapped": counts.swapped, "unchanged": counts.unchanged,
                "invalid": counts.invalid, "not_reloadable": counts.not_reloadable,
                "io_error": counts.io_error,
            },
        }),
    )
}

fn humantime_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Cells, cities, the shard map, the GZone and takeovers. No tenant data.
pub fn topology(app: &App, rules: &RuleSet) -> Reply {
    let cells: Vec<_> = rules
        .cells()
        .map(|(id, c)| {
            serde_json::json!({
                "name": &*c.name, "zone": format!("{:?}", c.zone), "city": &*c.city,
                "broker": c.broker.to_string(), "served_by": rules.cell_name(rules.serving(id)),
            })
        })
        .collect();
    // The shard map as ranges, like the rules file writes it.
    let mut shards: Vec<serde_json::Value> = Vec::new();
    let mut run: Option<(u8, u8, &str)> = None;
    let flush = |r: (u8, u8, &str), out: &mut Vec<serde_json::Value>| {
        out.push(serde_json::json!({"range": format!("{:02}-{:02}", r.0, r.1), "cell": r.2}));
    };
    for n in 0..100u8 {
        let Some(s) = cellgate_rules::Shard::new(n) else {
            continue;
        };
        let owner = rules.cell_name(rules.shard_owner(s));
        run = match run {
            Some((a, _, c)) if c == owner => Some((a, n, c)),
            Some(r) => {
                flush(r, &mut shards);
                Some((n, n, owner))
            }
            None => Some((n, n, owner)),
        };
    }
    if let Some(r) = run {
        flush(r, &mut shards);
    }
    let takeovers: Vec<_> = rules
        .takeovers()
        .map(|(a, b)| serde_json::json!({"cell": rules.cell_name(a), "by": rules.cell_name(b)}))
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "rules_version": rules.version(),
            "cells": cells,
            "cities": rules.cities().iter().map(|c| serde_json::json!({
                "name": &*c.name, "czone": rules.cell_name(c.czone),
            })).collect::<Vec<_>>(),
            "gzone": rules.cell_name(rules.gzone()),
            "shards": shards,
            "takeovers": takeovers,
            "default_cell": app.default_cell,
        }),
    )
}
