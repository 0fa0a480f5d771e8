//! Checks on what clients put in a message (SPEC §3): tags, keys,
//! properties, sharding keys. Each returns the sentence for a 400.
//!
//! Why these rules: RocketMQ's property encoding joins entries with the
//! control characters `\u0001` and `\u0002` and silently drops empty values,
//! it joins keys with spaces, and `||` separates tags in a filter. So values
//! are non-empty printable ASCII, keys and tags have no spaces, and a tag
//! has no `|`. Names RocketMQ uses for its own properties are refused like
//! the `__` prefix, so a message means the same on every backend.

use std::collections::BTreeMap;

pub const MAX_TAG: usize = 64;
pub const MAX_KEYS: usize = 32;
pub const MAX_KEY: usize = 128;
pub const MAX_PROPERTIES: usize = 128;
pub const MAX_PROPERTY_BYTES: usize = 16 * 1024;
pub const MAX_PROPERTY_NAME: usize = 128;
/// A sharding key must be shorter than this.
pub const MAX_SHARDING_KEY: usize = 64;

/// Property names RocketMQ's MessageConst keeps for itself.
const ROCKETMQ_PROPERTIES: &[&str] = &[
    "KEYS",
    "TAGS",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "BUYER_ID",
    "ORIGIN_MESSAGE_ID",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "RECONSUME_TIME",
    "MSG_REGION",
    "TRACE_ON",
    "UNIQ_KEY",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "TRANSACTION_CHECK_TIMES",
    "CHECK_IMMUNITY_TIME_IN_SECONDS",
    "INSTANCE_ID",
    "CORRELATION_ID",
    "REPLY_TO_CLIENT",
    "TTL",
    "ARRIVE_TIME",
    "PUSH_REPLY_TIME",
    "CLUSTER",
    "MSG_TYPE",
    "SHARDING_KEY",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_SEC",
    "TIMER_DELAY_MS",
];

/// Non-empty printable ASCII (space allowed).
pub fn printable(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some((i, c)) = s.char_indices().find(|(_, c)| !(' '..='~').contains(c)) {
        return Err(format!(
            "must be printable ASCII without control characters; {c:?} at byte {i} is not"
        ));
    }
    Ok(())
}

/// Printable ASCII without spaces.
fn word(s: &str) -> Result<(), String> {
    printable(s)?;
    if s.contains(' ') {
        return Err("must not contain spaces".into());
    }
    Ok(())
}

pub fn tag(t: &str) -> Result<(), String> {
    word(t)?;
    if t.contains('|') {
        return Err("must not contain `|` (it separates tags in a filter)".into());
    }
    if t.len() > MAX_TAG {
        return Err(format!(
            "must be at most {MAX_TAG} characters, got {}",
            t.len()
        ));
    }
    Ok(())
}

/// A tag filter: `*`, or tags joined by `||`.
pub fn tag_expression(expr: &str) -> Result<(), String> {
    let expr = expr.trim();
    if expr.is_empty() || expr == "*" {
        return Ok(());
    }
    for part in expr.split("||") {
        tag(part.trim()).map_err(|m| format!("tag {:?} {m}", part.trim()))?;
    }
    Ok(())
}

/// On error, the index of the bad key.
pub fn keys(keys: &[String]) -> Result<(), (usize, String)> {
    if keys.len() > MAX_KEYS {
        return Err((
            MAX_KEYS,
            format!("at most {MAX_KEYS} keys, got {}", keys.len()),
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        word(k).map_err(|m| (i, m))?;
        if k.len() > MAX_KEY {
            return Err((
                i,
                format!("must be at most {MAX_KEY} characters, got {}", k.len()),
            ));
        }
    }
    Ok(())
}

pub fn sharding_key(k: &str) -> Result<(), String> {
    printable(k)?;
    if k.len() >= MAX_SHARDING_KEY {
        return Err(format!(
            "must be shorter than {MAX_SHARDING_KEY} bytes, got {}",
            k.len()
        ));
    }
    Ok(())
}

/// On error, the field (`properties` or `properties.NAME`) and the reason.
pub fn properties(props: &BTreeMap<String, String>) -> Result<(), (String, String)> {
    if props.len() > MAX_PROPERTIES {
        return Err((
            "properties".into(),
            format!("at most {MAX_PROPERTIES} properties, got {}", props.len()),
        ));
    }
    let total: usize = props.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_PROPERTY_BYTES {
        return Err((
            "properties".into(),
            format!("properties may total at most {MAX_PROPERTY_BYTES} bytes, got {total}"),
        ));
    }
    for (k, v) in props {
        let name_field = || {
            let shown: String = k.chars().take(MAX_PROPERTY_NAME).collect();
            format!("properties.{shown}")
        };
        word(k).map_err(|m| (name_field(), format!("property name {m}")))?;
        if k.len() > MAX_PROPERTY_NAME {
            return Err((
                name_field(),
                format!("property name must be at most {MAX_PROPERTY_NAME} characters"),
            ));
        }
        if k.starts_with("__") {
            return Err((
                name_field(),
                "property names starting with `__` are reserved for cellgate".into(),
            ));
        }
        if ROCKETMQ_PROPERTIES.contains(&k.as_str()) {
            return Err((
                name_field(),
                "this property name is reserved by RocketMQ".into(),
            ));
        }
        printable(v).map_err(|m| (name_field(), format!("property value {m}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_rocketmq_would_mangle() {
        assert!(tag("TagA").is_ok());
        assert!(tag("A|B").unwrap_err().contains('|'));
        assert!(tag("").is_err() && tag("a b").is_err() && tag(&"x".repeat(65)).is_err());
        assert!(tag_expression("A || B").is_ok() && tag_expression("*").is_ok());
        assert!(tag_expression("A ||| B").is_err());
        assert!(sharding_key(&"k".repeat(63)).is_ok());
        assert!(sharding_key(&"k".repeat(64)).is_err());
        assert_eq!(keys(&["a".into(), "b c".into()]).unwrap_err().0, 1);
        let p = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(properties(&p("a", "b")).is_ok());
        assert_eq!(properties(&p("__X", "b")).unwrap_err().0, "properties.__X");
        assert!(properties(&p("a", "")).unwrap_err().1.contains("empty"));
        assert!(properties(&p("a", "x\u{1}")).is_err());
        assert!(properties(&p("TAGS", "x")).is_err());
    }
}
