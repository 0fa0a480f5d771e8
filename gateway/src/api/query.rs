//! Query: `GET /v1/topics/{topic}/messages/{id}`, `…/messages?key=K`,
//! `…/messages?start_ms=A&end_ms=B` (by store time) and the message trace
//! `…/messages/{id}/trace`.
//!
//! Lookups go to the cell's broker, whose id index spans every topic; a
//! message is shown only if it is in the caller's physical topic, so an id
//! from another tenant (or topic) answers the same 404 as an unknown one.

use std::sync::Arc;

use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;

use cellgate_broker_core::Hop;
use cellgate_rules::names::Resource;
use cellgate_rules::{CellId, Permission};

use super::view::MessageView;
use super::{json, ApiError, ApiResult, App, Caller, Reply};

const MAX_RESULTS: usize = 64;
const MAX_TIME_RESULTS: usize = 1024;

fn resolve(app: &App, c: &Caller<'_>, t: &str, headers: &HeaderMap) -> ApiResult<(CellId, String)> {
    c.require(Permission::Subscribe)?;
    c.topic(t)?;
    let cell = c.cell(headers, app.default_cell.as_deref())?;
    Ok((cell, c.physical(cell, t, Resource::Topic)?))
}

fn parse_id(id: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::try_parse(id)
        .map_err(|_| ApiError::invalid("message_id", "is not a message id (a UUID)"))
}

pub async fn by_id(
    app: &App,
    c: &Caller<'_>,
    t: &str,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<Reply> {
    let (cell, topic) = resolve(app, c, t, headers)?;
    let id = parse_id(id)?;
    let broker = app.brokers.get(c.rules, cell)?;
    let found = broker
        .get_by_id(&topic, &id)
        .await
        .map_err(|e| ApiError::from_broker(&e, "message_id"))?
        .filter(|m| m.topic == topic)
        .ok_or_else(|| {
            ApiError::not_found(
                "message_id",
                "no message with this id in this topic and cell",
            )
        })?;
    Ok(json(
        StatusCode::OK,
        &MessageView::new(&found, t, c.rules.cell_name(cell)),
    ))
}

fn time_param(req: &Request<Incoming>, name: &'static str) -> ApiResult<Option<i64>> {
    super::query_param(req, name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::invalid(name, "must be a time in milliseconds since the epoch")
            })
        })
        .transpose()
}

/// `?start_ms=A&end_ms=B[&limit=N]`: messages stored in `[A, B)`, oldest
/// first.
async fn by_time(
    app: &App,
    c: &Caller<'_>,
    t: &str,
    req: &Request<Incoming>,
    start: i64,
) -> ApiResult<Reply> {
    let (cell, topic) = resolve(app, c, t, req.headers())?;
    let end = time_param(req, "end_ms")?.unwrap_or(i64::MAX);
    if end <= start {
        return Err(ApiError::invalid("end_ms", "must be after start_ms"));
    }
    let limit = match super::query_param(req, "limit") {
        None => MAX_RESULTS,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TIME_RESULTS).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("must be 1 to {MAX_TIME_RESULTS}"))
            })?,
    };
    let broker = app.brokers.get(c.rules, cell)?;
    let found = match broker.query_by_time(&topic, start, end, limit).await {
        Ok(f) => f,
        Err(cellgate_broker_core::Error::UnknownTopic(_)) => Vec::new(),
        Err(e) => return Err(ApiError::from_broker(&e, "start_ms")),
    };
    let cell_name = c.rules.cell_name(cell);
    let views: Vec<MessageView<'_>> = found
        .iter()
        .map(|m| MessageView::new(m, t, cell_name))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "messages": views }),
    ))
}

pub async fn by_key(
    app: &App,
    c: &Caller<'_>,
    t: &str,
    req: &Request<Incoming>,
) -> ApiResult<Reply> {
    if let Some(start) = time_param(req, "start_ms")? {
        return by_time(app, c, t, req, start).await;
    }
    let (cell, topic) = resolve(app, c, t, req.headers())?;
    let key = super::query_param(req, "key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "key",
                "give the query parameter key, or start_ms (and end_ms) for a time range",
            )
        })?;
    crate::validate::keys(std::slice::from_ref(&key))
        .map_err(|(_, m)| ApiError::invalid("key", m))?;
    let broker = app.brokers.get(c.rules, cell)?;
    let found = broker
        .get_by_key(&topic, &key)
        .await
        .map_err(|e| ApiError::from_broker(&e, "key"))?;
    let cell_name = c.rules.cell_name(cell);
    let views: Vec<MessageView<'_>> = found
        .iter()
        .filter(|m| m.topic == topic)
        .take(MAX_RESULTS)
        .map(|m| MessageView::new(m, t, cell_name))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "messages": views }),
    ))
}

/// A copy is its own record of the route that made it: the router stores
/// no hop for it (one per copy would halve its throughput), and the trace
/// shows one read off the copy — when it was stored, where, from where.
fn route_hop(m: &cellgate_broker_core::StoredMessage, cell: &str) -> Option<Hop> {
    m.properties.get(cellgate_rules::COPY_FOR)?;
    let source = m.properties.get(cellgate_rules::ORIUNIT)?;
    Some(
        Hop::new(m.id, "route", m.stored_ms, cell, "router")
            .with("source_cell", source.as_str())
            .with("target_cell", cell)
            .with("queue", m.queue.to_string())
            .with("offset", m.queue_offset.to_string()),
    )
}

/// The hops of one message in every cell the tenant may use: a routed
/// message has hops in its origin and in each target.
pub async fn trace(
    app: &App,
    c: &Caller<'_>,
    t: &str,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<Reply> {
    let (home, _) = resolve(app, c, t, headers)?;
    let id = parse_id(id)?;
    let tenant = c.tenant()?;
    let mut cells: Vec<CellId> = c
        .rules
        .cells()
        .map(|(cell, _)| cell)
        .filter(|cell| tenant.allows_cell(*cell))
        .collect();
    // The asked cell first: its hops are the likeliest.
    cells.sort_by_key(|cell| *cell != home);
    let mut owned = false;
    let mut hops = Vec::new();
    // Cells on one RocketMQ cluster share a broker, and its trace holds
    // their hops once: ask each broker once (the first cell asked names
    // the hops a broker recorded without a place).
    let mut asked: Vec<usize> = Vec::new();
    for cell in cells {
        let Ok(broker) = app.brokers.get(c.rules, cell) else {
            continue;
        };
        let physical = c.physical(cell, t, Resource::Topic)?;
        let here = broker.get_by_id(&physical, &id).await.ok().flatten();
        let name = c.rules.cell_name(cell);
        if let Some(m) = here.filter(|m| m.topic == physical) {
            owned = true;
            hops.extend(route_hop(&m, name));
        }
        let key = Arc::as_ptr(&broker) as *const () as usize;
        if asked.contains(&key) {
            continue;
        }
        asked.push(key);
        for mut h in broker.trace_of(&physical, &id).await.unwrap_or_default() {
            if h.place.is_empty() {
                h.place = name.to_owned();
            }
            hops.push(h);
        }
    }
    if !owned {
        return Err(ApiError::not_found(
            "message_id",
            "no message with this id in this topic",
        ));
    }
    hops.sort_by_key(|h| h.at_ms);
    let hops: Vec<serde_json::Value> = hops
        .into_iter()
        .map(|h| {
            serde_json::json!({
                "kind": h.kind, "at_ms": h.at_ms, "cell": h.place,
                "actor": h.actor, "detail": h.detail,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "message_id": id.to_string(), "topic": t, "hops": hops }),
    ))
}
