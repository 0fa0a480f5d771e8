//! broker-core's messages ↔ RocketMQ's.
//!
//! What goes where in a RocketMQ message:
//! - the tag is RocketMQ's tag (`TAGS`), the keys its keys (`KEYS`, joined
//!   by spaces: the gateway refuses keys with spaces), plus the id;
//! - the message id is RocketMQ's client id (`UNIQ_KEY`): a UUIDv7 written
//!   as 32 hex digits, the form RocketMQ's own ids take, so copies keep the
//!   original's id and stock tools find messages by it;
//!   (the id is also kept in the property [`ID`]: a batch send gives its
//!   messages new `UNIQ_KEY`s);
//! - the born time is kept in the property [`BORN_MS`], since a client
//!   cannot set RocketMQ's born timestamp (a copy keeps its original's);
//! - every other property is a user property of the same name. RocketMQ's
//!   system properties are never shown as user properties.

use std::collections::BTreeMap;

use cellgate_broker_core::{Error, Message, StoredMessage};
use cheetah_string::CheetahString;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use rocketmq_model::common::message::{MessageConst, MessageTrait, STRING_HASH_SET};
use uuid::Uuid;

/// The born time of the message (ms since the epoch), as cellgate has it.
pub const BORN_MS: &str = "__BORN_MS";
/// The message id, again: the client replaces `UNIQ_KEY` in batches.
pub const ID: &str = "__ID";

/// On a message sent for the broker's timer to hold: when it is due. The
/// Rust port's timer strips its own properties when it releases a
/// message, so this is how a reader knows the timer released it.
pub const DUE_MS: &str = "__DUE_MS";

/// The RocketMQ message for `m`, with id `id`, due at `deliver_at_ms` if
/// delayed (the broker's timer holds it until then; built just before
/// each send, since the delay is counted from now). Takes `m` so that its
/// body moves into the RocketMQ message instead of being copied.
pub(crate) fn to_rocketmq(
    m: Message,
    id: &Uuid,
    deliver_at_ms: Option<i64>,
) -> Result<RmqMessage, Error> {
    let mut b = RmqMessage::builder().topic(m.topic.as_str()).body(m.body);
    if let Some(tag) = &m.tag {
        b = b.tags(tag.as_str());
    }
    // The id is a key too: the broker's key index is how a message is
    // found by id (`UNIQ_KEY` is not kept in batches).
    let mut keys = m.keys;
    keys.push(id_string(id));
    b = b.keys(keys);
    if let Some(at) = deliver_at_ms {
        // A delay relative to now, not the absolute time: the broker
        // refuses a due time that its own clock has passed (a send that
        // waited for a new topic's route, or a broker clock ahead of
        // ours), and one already due is simply sent now.
        let wait = at.saturating_sub(crate::now_ms());
        if wait > 0 {
            b = b.delay_millis(wait as u64);
        }
    }
    for (k, v) in &m.properties {
        b = b
            .raw_property(k.as_str(), v.as_str())
            .map_err(|_| Error::Unsupported("a property name that RocketMQ reserves"))?;
    }
    let mut out = b.build_unchecked();
    out.put_property(
        CheetahString::from_static_str(MessageConst::PROPERTY_UNIQ_CLIENT_MESSAGE_ID_KEYIDX),
        CheetahString::from_string(id_string(id)),
    );
    out.put_property(
        CheetahString::from_static_str(ID),
        CheetahString::from_string(id.to_string()),
    );
    out.put_property(
        CheetahString::from_static_str(BORN_MS),
        CheetahString::from_string(m.born_ms.to_string()),
    );
    if let Some(at) = deliver_at_ms {
        // Internal, as `ID` and `BORN_MS`: not through the user-property
        // check, which only user names can fail.
        out.put_property(
            CheetahString::from_static_str(DUE_MS),
            CheetahString::from_string(at.to_string()),
        );
    }
    Ok(out)
}

/// A message id as RocketMQ writes it.
pub(crate) fn id_string(id: &Uuid) -> String {
    id.simple().to_string().to_uppercase()
}

/// When the broker's timer released `m` into its topic (a delayed send, or
/// a retry whose back-off ended): its store time there. `None` for a
/// message stored directly.
pub(crate) fn released_ms(m: &MessageExt) -> Option<i64> {
    m.properties().get(DUE_MS).map(|_| m.store_timestamp())
}

/// The stored message `m`, as cellgate's queue `queue` of its topic.
pub(crate) fn from_rocketmq(m: &MessageExt, queue: u16) -> StoredMessage {
    let props = m.properties();
    let id = props
        .get(ID)
        .or_else(|| props.get(MessageConst::PROPERTY_UNIQ_CLIENT_MESSAGE_ID_KEYIDX))
        .and_then(|s| Uuid::try_parse(s.as_str()).ok())
        .or_else(|| Uuid::try_parse(m.msg_id().as_str()).ok())
        .unwrap_or_else(|| {
            // Not ours and not RocketMQ-shaped: a stable id from its place.
            Uuid::from_u64_pair(m.commit_log_offset() as u64, m.store_timestamp() as u64)
        });
    let id_key = id_string(&id);
    let keys = props
        .get(MessageConst::PROPERTY_KEYS)
        .map(|k| {
            k.as_str()
                .split(MessageConst::KEY_SEPARATOR)
                .filter(|s| !s.is_empty() && *s != id_key)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let born_ms = props
        .get(BORN_MS)
        .and_then(|b| b.parse::<i64>().ok())
        .unwrap_or_else(|| m.born_timestamp());
    let properties: BTreeMap<String, String> = props
        .iter()
        .filter(|(k, _)| {
            !STRING_HASH_SET.contains(k.as_str()) && ![BORN_MS, ID, DUE_MS].contains(&k.as_str())
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    StoredMessage {
        id,
        topic: m.topic().to_string(),
        queue,
        queue_offset: m.queue_offset().max(0) as u64,
        log_pos: m.commit_log_offset().max(0) as u64,
        body: m.body().map(|b| b.to_vec()).unwrap_or_default(),
        tag: props
            .get(MessageConst::PROPERTY_TAGS)
            .map(|t| t.to_string())
            .filter(|t| !t.is_empty()),
        keys,
        properties,
        born_ms,
        stored_ms: m.store_timestamp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_rocketmq_shaped_and_parse_back() {
        let id = cellgate_broker_core::message_id(1_700_000_000_000);
        let s = id_string(&id);
        assert_eq!(s.len(), 32);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert_eq!(Uuid::try_parse(&s).unwrap(), id);
    }

    #[test]
    fn a_message_carries_its_fields_as_rocketmq_properties() {
        let m = Message {
            topic: "ANT|RZ00A%T1".into(),
            body: b"hello".to_vec(),
            tag: Some("TagA".into()),
            keys: vec!["k1".into(), "k2".into()],
            properties: [("__UNIT.ORIUNIT".to_string(), "RZ00A".to_string())]
                .into_iter()
                .collect(),
            born_ms: 42,
        };
        let id = cellgate_broker_core::message_id(42);
        let r = to_rocketmq(m, &id, None).unwrap();
        assert_eq!(r.topic().as_str(), "ANT|RZ00A%T1");
        assert_eq!(r.tags(), Some("TagA"));
        let keys = format!("k1 k2 {}", id_string(&id));
        assert_eq!(r.property("KEYS"), Some(keys.as_str()));
        assert_eq!(r.property("__UNIT.ORIUNIT"), Some("RZ00A"));
        assert_eq!(r.property(BORN_MS), Some("42"));
        assert_eq!(r.property("UNIQ_KEY"), Some(id_string(&id).as_str()));
    }

    #[test]
    fn a_due_time_becomes_a_delay_from_now_and_a_passed_one_none() {
        let m = |at| {
            let msg = Message {
                topic: "ANT|RZ00A%T1".into(),
                body: b"x".to_vec(),
                tag: None,
                keys: Vec::new(),
                properties: BTreeMap::new(),
                born_ms: 1,
            };
            to_rocketmq(msg, &cellgate_broker_core::message_id(1), Some(at)).unwrap()
        };
        let now = crate::now_ms();
        let later = m(now + 60_000);
        let wait: i64 = later.property("TIMER_DELAY_MS").unwrap().parse().unwrap();
        assert!((59_000..=60_000).contains(&wait), "{wait}");
        assert_eq!(later.property("TIMER_DELIVER_MS"), None);
        let passed = m(now - 5);
        assert_eq!(passed.property("TIMER_DELAY_MS"), None);
        assert_eq!(passed.property("TIMER_DELIVER_MS"), None);
        // Still marked as timed, so a reader records its release.
        assert_eq!(
            passed.property(DUE_MS),
            Some((now - 5).to_string().as_str())
        );
    }
}
