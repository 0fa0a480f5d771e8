//! How a stored message looks to a client: logical names only.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Serialize;

use cellgate_broker_core::StoredMessage;

/// One message in a receive or query answer (SPEC §9).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    pub message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_handle: Option<String>,
    /// The logical topic.
    pub topic: &'a str,
    /// The cell whose broker holds this copy.
    pub cell: &'a str,
    pub tag: Option<&'a str>,
    pub keys: &'a [String],
    /// The payload when it is UTF-8…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
    /// …else base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    pub properties: &'a BTreeMap<String, String>,
    pub born_at_ms: i64,
    pub stored_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_attempt: Option<u32>,
    pub queue: u16,
    pub offset: u64,
}

impl<'a> MessageView<'a> {
    pub fn new(m: &'a StoredMessage, topic: &'a str, cell: &'a str) -> Self {
        let (body, body_base64) = match std::str::from_utf8(&m.body) {
            Ok(s) => (Some(s), None),
            Err(_) => (None, Some(B64.encode(&m.body))),
        };
        MessageView {
            message_id: m.id.to_string(),
            receipt_handle: None,
            topic,
            cell,
            tag: m.tag.as_deref(),
            keys: &m.keys,
            body,
            body_base64,
            properties: &m.properties,
            born_at_ms: m.born_ms,
            stored_at_ms: m.stored_ms,
            delivery_attempt: None,
            queue: m.queue,
            offset: m.queue_offset,
        }
    }
}
