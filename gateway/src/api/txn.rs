//! Transactions (SPEC §9): `POST /v1/transactions/{id}/commit`,
//! `…/rollback`, and the check-back long poll
//! `POST /v1/producer-groups/{group}/transaction-checks`.
//!
//! A transaction lives in the cell it was published in (`X-Cell` or the
//! default cell), and its check-backs stay there. A transaction id of
//! another tenant answers the same 404 as an unknown one.

use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use cellgate_broker_core::{Broker, Decision, Hop, TxnInfo, TxnState};
use cellgate_rules::names::{self, Resource};
use cellgate_rules::Permission;

use super::view::MessageView;
use super::{body, json, now_ms, ApiError, ApiResult, App, Caller, Reply};

const SMALL_BODY: usize = 64 << 10;
const MAX_CHECKS: usize = 256;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChecksRequest {
    max_messages: Option<usize>,
    wait_ms: Option<u64>,
}

fn state_view(info: &TxnInfo, logical_topic: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "transaction_id": info.id.to_string(),
        "message_id": info.id.to_string(),
        "topic": logical_topic,
        "state": info.state.as_str(),
        "checks": info.checks,
    });
    if let TxnState::RolledBack { reason } = &info.state {
        v["reason"] = reason.clone().into();
    }
    v
}

/// The caller's logical name of a physical topic, if it is theirs.
fn own_topic<'a>(c: &Caller<'_>, physical: &'a str) -> Option<&'a str> {
    let p = names::parse_physical(physical, Resource::Topic).ok()?;
    (p.namespace == &*c.tenant().ok()?.namespace).then_some(p.name)
}

/// A transaction, its logical topic and its cell's broker, if it is the
/// caller's: another tenant's answers the same 404 as an unknown one.
async fn find(
    app: &App,
    c: &Caller<'_>,
    id: &str,
    headers: &http::HeaderMap,
) -> ApiResult<(TxnInfo, String, Arc<dyn Broker>, cellgate_rules::CellId)> {
    let cell = c.cell(headers, app.default_cell.as_deref())?;
    let id = uuid::Uuid::try_parse(id)
        .map_err(|_| ApiError::invalid("transaction_id", "is not a transaction id (a UUID)"))?;
    let broker = app.brokers.get(c.rules, cell)?;
    let unknown =
        || ApiError::not_found("transaction_id", "no transaction with this id in this cell");
    let info = broker
        .transaction(&id)
        .await
        .map_err(|e| ApiError::from_broker(&e, "transaction_id"))?
        .ok_or_else(unknown)?;
    let logical = own_topic(c, &info.topic).ok_or_else(unknown)?.to_owned();
    c.topic(&logical)?;
    Ok((info, logical, broker, cell))
}

/// `GET /v1/transactions/{id}`: where a transaction stands.
pub async fn state(
    app: &App,
    c: &Caller<'_>,
    id: &str,
    headers: &http::HeaderMap,
) -> ApiResult<Reply> {
    c.require(Permission::Publish)?;
    let (info, logical, _, _) = find(app, c, id, headers).await?;
    Ok(json(StatusCode::OK, &state_view(&info, &logical)))
}

/// Commit (`commit = true`) or roll back.
pub async fn decide(
    app: &App,
    c: &Caller<'_>,
    id: &str,
    req: Request<Incoming>,
    commit: bool,
) -> ApiResult<Reply> {
    c.require(Permission::Publish)?;
    let (info, logical, broker, cell) = find(app, c, id, req.headers()).await?;
    let id = info.id;
    let decision = if commit {
        Decision::Commit
    } else {
        Decision::Rollback
    };
    let info = broker
        .end_transaction(&id, decision)
        .await
        .map_err(|e| ApiError::from_broker(&e, "transaction_id"))?;
    if app.trace_messages {
        let kind = if commit { "commit" } else { "rollback" };
        let cell_name = c.rules.cell_name(cell);
        broker.record_trace(vec![Hop::new(id, kind, now_ms(), cell_name, &c.grant.name)]);
    }
    Ok(json(StatusCode::OK, &state_view(&info, &logical)))
}

/// Long-polls the check-backs of a producer group.
pub async fn checks(
    app: &App,
    c: &Caller<'_>,
    group: &str,
    req: Request<Incoming>,
) -> ApiResult<Reply> {
    c.require(Permission::Publish)?;
    names::validate(cellgate_rules::NameKind::Group, group)
        .map_err(|e| ApiError::invalid("producer_group", format!("group name {e}")))?;
    c.group(group).map_err(|e| e.field("producer_group"))?;
    let cell = c.cell(req.headers(), app.default_cell.as_deref())?;
    let physical = c.physical(cell, group, Resource::Group)?;
    let r: ChecksRequest = if req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v == "0")
    {
        ChecksRequest::default()
    } else {
        body::json(req, SMALL_BODY, app.limits.body_timeout).await?
    };
    let (max, wait) = super::count_and_wait(app, r.max_messages, MAX_CHECKS, r.wait_ms)?;
    let broker = app.brokers.get(c.rules, cell)?;
    let got = broker
        .transaction_checks(&physical, max, wait)
        .await
        .map_err(|e| ApiError::from_broker(&e, "producer_group"))?;
    let cell_name = c.rules.cell_name(cell);
    let checks: Vec<serde_json::Value> = got
        .iter()
        .filter_map(|chk| {
            let logical = own_topic(c, &chk.info.topic)?;
            let mut v = state_view(&chk.info, logical);
            v["message"] = serde_json::to_value(MessageView::new(&chk.message, logical, cell_name))
                .unwrap_or_default();
            Some(v)
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "producer_group": group, "cell": cell_name, "checks": checks }),
    ))
}
