//! One message of a publish request: its fields (SPEC §9), their checks,
//! and what the broker is asked to do with it (store now, hold until a
//! time, or hold as a half message of a transaction).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

use cellgate_broker_core::timer::MAX_DELAY;
use cellgate_broker_core::{Message, QueueSelect};
use cellgate_rules::{CellId, RuleSet, TenantId, UnitHeaders};

use super::consume::LOAD_TEST;
use super::{ApiError, ApiResult};
use crate::validate;

/// One message to publish (SPEC §9).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub body: Option<String>,
    pub body_base64: Option<String>,
    pub tag: Option<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    pub uid: Option<String>,
    pub sharding_key: Option<String>,
    pub delay_ms: Option<u64>,
    pub deliver_at_ms: Option<i64>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub transaction: Option<TransactionRequest>,
    /// Load-test traffic (SPEC §7); also set by the `X-Load-Test: true`
    /// header for every message of a request.
    #[serde(default)]
    pub load_test: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionRequest {
    pub producer_group: String,
}

/// What the broker does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Normal,
    /// Held until this time (ms since the epoch).
    Delayed(i64),
    /// A half message of this logical producer group.
    Transactional(String),
}

/// Where a publish goes, resolved once per request.
pub struct Target<'r> {
    pub rules: &'r RuleSet,
    pub tenant: TenantId,
    pub cell: CellId,
    pub logical: &'r str,
    pub physical: String,
    /// The tenant declared the topic ordered.
    pub ordered: bool,
    /// The request carried `X-Load-Test: true`.
    pub load_test: bool,
}

/// A checked message, ready for the broker.
pub struct Built {
    pub msg: Message,
    pub select: QueueSelect,
    pub headers: UnitHeaders,
    pub kind: Kind,
}

/// Where a message sits in its request: field names get a `messages[3].`
/// prefix in a batch. Formatted only when an error names a field, so a
/// valid message costs no string.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Single,
    Batch(usize),
}

impl At {
    fn field(self, name: &str) -> String {
        match self {
            At::Single => name.to_owned(),
            At::Batch(i) => format!("messages[{i}].{name}"),
        }
    }
}

/// The delivery time a request asks for, checked against the 40-day bound.
fn kind(req: &PublishRequest, at: At, now: i64) -> ApiResult<Kind> {
    let f = |name: &str| at.field(name);
    let max = MAX_DELAY.as_millis() as i64;
    let due = match (req.delay_ms, req.deliver_at_ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                f("deliver_at_ms"),
                "give delay_ms or deliver_at_ms, not both",
            ))
        }
        (Some(d), None) if Duration::from_millis(d) > MAX_DELAY => {
            return Err(ApiError::invalid(
                f("delay_ms"),
                format!("must be at most {max} (40 days), got {d}"),
            ))
        }
        (Some(d), None) => Some(now.saturating_add(d as i64)),
        (None, Some(t)) if t > now.saturating_add(max) => {
            return Err(ApiError::invalid(
                f("deliver_at_ms"),
                format!("must be at most 40 days ahead ({}), got {t}", now + max),
            ))
        }
        (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    match (&req.transaction, due) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            f("transaction"),
            "a transactional message cannot also be delayed",
        )),
        (Some(tx), None) => {
            cellgate_rules::names::validate(cellgate_rules::NameKind::Group, &tx.producer_group)
                .map_err(|e| {
                    ApiError::invalid(f("transaction.producer_group"), format!("group name {e}"))
                })?;
            Ok(Kind::Transactional(tx.producer_group.clone()))
        }
        // A time already past is delivered now, like RocketMQ does.
        (None, Some(t)) if t > now => Ok(Kind::Delayed(t)),
        (None, _) => Ok(Kind::Normal),
    }
}

/// Checks one request and builds the message to store.
pub fn build(
    t: &Target<'_>,
    req: PublishRequest,
    at: At,
    max_body: usize,
    born_ms: i64,
) -> ApiResult<Built> {
    let f = |name: &str| at.field(name);
    let kind = kind(&req, at, born_ms)?;
    let body = match (req.body, req.body_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                f("body_base64"),
                "give body or body_base64, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                f("body"),
                "one of body or body_base64 is required",
            ))
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(b)) => B64.decode(b.as_bytes()).map_err(|e| {
            ApiError::invalid(f("body_base64"), format!("is not valid base64: {e}"))
        })?,
    };
    if body.is_empty() {
        return Err(ApiError::invalid(f("body"), "must not be empty"));
    }
    if body.len() > max_body {
        return Err(ApiError::too_large(
            f("body"),
            format!(
                "the message body is {} bytes, over the tenant's limit of {max_body}",
                body.len()
            ),
        ));
    }
    if let Some(tag) = &req.tag {
        validate::tag(tag).map_err(|m| ApiError::invalid(f("tag"), m))?;
    }
    validate::keys(&req.keys).map_err(|(i, m)| ApiError::invalid(f(&format!("keys[{i}]")), m))?;
    validate::properties(&req.properties).map_err(|(k, m)| ApiError::invalid(f(&k), m))?;
    if let Some(uid) = &req.uid {
        validate::printable(uid).map_err(|m| ApiError::invalid(f("uid"), m))?;
    }
    // An ordered topic orders per sharding key; the uid is one when no
    // key is given, and without either there is no order to keep.
    let key = match (req.sharding_key, t.ordered) {
        (Some(k), _) => Some(k),
        (None, true) => Some(req.uid.clone().ok_or_else(|| {
            ApiError::invalid(
                f("sharding_key"),
                "the topic is ordered: give a sharding_key (or a uid) to order by",
            )
        })?),
        (None, false) => None,
    };
    let select = match key {
        Some(k) => {
            validate::sharding_key(&k).map_err(|m| ApiError::invalid(f("sharding_key"), m))?;
            QueueSelect::ShardingKey(k)
        }
        None => QueueSelect::RoundRobin,
    };
    let headers = t
        .rules
        .unit_headers(t.tenant, t.cell, req.uid.as_deref())
        .map_err(|e| ApiError::invalid(f("uid"), format!("uid {e}")))?;
    let mut properties = req.properties;
    headers.write(t.rules, |k, v| {
        properties.insert(k.to_owned(), v.to_owned());
    });
    if let QueueSelect::ShardingKey(k) = &select {
        properties.insert(cellgate_rules::SHARDING_KEY.to_owned(), k.clone());
    }
    if req.load_test || t.load_test {
        properties.insert(LOAD_TEST.to_owned(), "true".to_owned());
    }
    let msg = Message {
        topic: t.physical.clone(),
        body,
        tag: req.tag,
        keys: req.keys,
        properties,
        born_ms,
    };
    Ok(Built {
        msg,
        select,
        headers,
        kind,
    })
}
