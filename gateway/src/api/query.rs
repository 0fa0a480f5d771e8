//! Query: `GET /v1/topics/{topic}/messages/{id}` and `…/messages?key=K`.
//!
//! Lookups go to the cell's broker, whose id index spans every topic; a
//! message is shown only if it is in the caller's physical topic, so an id
//! from another tenant (or topic) answers the same 404 as an unknown one.

use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;

use cellgate_rules::names::Resource;
use cellgate_rules::{CellId, Permission};

use super::view::MessageView;
use super::{json, ApiError, ApiResult, App, Caller, Reply};

const MAX_RESULTS: usize = 64;

fn resolve(app: &App, c: &Caller<'_>, t: &str, headers: &HeaderMap) -> ApiResult<(CellId, String)> {
    c.require(Permission::Subscribe)?;
    c.topic(t)?;
    let cell = c.cell(headers, app.default_cell.as_deref())?;
    Ok((cell, c.physical(cell, t, Resource::Topic)?))
}

pub fn by_id(
    app: &App,
    c: &Caller<'_>,
    t: &str,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<Reply> {
    let (cell, topic) = resolve(app, c, t, headers)?;
    let id = uuid::Uuid::try_parse(id)
        .map_err(|_| ApiError::invalid("message_id", "is not a message id (a UUID)"))?;
    let broker = app.brokers.get(c.rules, cell)?;
    let found = broker
        .get_by_id(&id)
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

pub fn by_key(app: &App, c: &Caller<'_>, t: &str, req: &Request<Incoming>) -> ApiResult<Reply> {
    let (cell, topic) = resolve(app, c, t, req.headers())?;
    let key = super::query_param(req, "key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::invalid("key", "the query parameter key is required"))?;
    crate::validate::keys(std::slice::from_ref(&key))
        .map_err(|(_, m)| ApiError::invalid("key", m))?;
    let broker = app.brokers.get(c.rules, cell)?;
    let found = broker
        .get_by_key(&topic, &key)
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
