//! Logical and physical names (SPEC §2).
//!
//! A physical name is `NS|CELL%NAME`. Every part is 1–64 characters of
//! `[A-Za-z0-9_-]`, so the separators `|` and `%` can never occur inside a
//! part and the mapping is a bijection: [`parse_physical`] undoes
//! [`physical`] for every name that [`physical`] accepts, and refuses every
//! string that [`physical`] could not have produced. Names are refused, never
//! escaped or truncated.
//!
//! The length limits are RocketMQ's: a topic within 127 characters, a group
//! within 120 (127 minus `%RETRY%`), so that the retry and dead-letter topics
//! `%RETRY%<group>` and `%DLQ%<group>` always fit in 255.

use crate::error::{InputError, NameKind};

/// Longest logical name, namespace or cell name.
pub const MAX_PART: usize = 64;
/// Longest physical topic (RocketMQ's topic limit).
pub const MAX_PHYSICAL_TOPIC: usize = 127;
/// Longest physical group (127 minus `%RETRY%`).
pub const MAX_PHYSICAL_GROUP: usize = 120;
/// Longest retry or dead-letter topic.
pub const MAX_RETRY_TOPIC: usize = 255;

pub const RETRY_PREFIX: &str = "%RETRY%";
pub const DLQ_PREFIX: &str = "%DLQ%";

/// Prefixes a logical topic or group may not start with. The `%` ones are
/// already impossible by the character set; they are listed so the rule reads
/// like the spec.
const RESERVED_PREFIXES: &[&str] = &["%RETRY%", "%DLQ%", "%LMQ%", "rmq_sys_", "CID_RMQ_SYS_"];

/// RocketMQ's system topics and groups (TopicValidator, MixAll).
const RESERVED_NAMES: &[&str] = &[
    "TBW102",
    "SCHEDULE_TOPIC_XXXX",
    "BenchmarkTest",
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "RMQ_SYS_TRACE_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "SELF_TEST_TOPIC",
    "OFFSET_MOVED_EVENT",
    "DefaultHeartBeatSyncerTopic",
    "TOOLS_CONSUMER",
    "FILTERSRV_CONSUMER",
    "__MONITOR_CONSUMER",
    "CLIENT_INNER_PRODUCER",
    "SELF_TEST_P_GROUP",
    "SELF_TEST_C_GROUP",
    "CID_ONSAPI_PERMISSION",
    "CID_ONSAPI_OWNER",
    "CID_ONSAPI_PULL",
    "CID_RMQ_SYS_TRANS",
    "DEFAULT_PRODUCER",
    "DEFAULT_CONSUMER",
];

/// Checks one part of a name: 1–64 characters of `[A-Za-z0-9_-]`, and for
/// topics and groups not a reserved name.
pub fn validate(kind: NameKind, s: &str) -> Result<(), InputError> {
    if s.is_empty() {
        return Err(InputError::Empty);
    }
    if let Some((at, ch)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(InputError::BadChar { at, ch });
    }
    // Checked after the character set so the length is in characters (all ASCII).
    if s.len() > MAX_PART {
        return Err(InputError::TooLong {
            max: MAX_PART,
            len: s.len(),
        });
    }
    let reserved = match kind {
        NameKind::Topic | NameKind::Group => is_reserved(s),
        // Every physical name starts with the namespace, so a reserved
        // prefix there would make all of a tenant's names system names.
        NameKind::Namespace => RESERVED_PREFIXES.iter().any(|p| s.starts_with(p)),
        NameKind::Cell | NameKind::City => false,
    };
    if reserved {
        return Err(InputError::Reserved);
    }
    Ok(())
}

/// True for RocketMQ's system names and reserved prefixes.
pub fn is_reserved(s: &str) -> bool {
    RESERVED_NAMES.contains(&s) || RESERVED_PREFIXES.iter().any(|p| s.starts_with(p))
}

/// Which physical resource a name denotes; it sets the length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
}

impl Resource {
    fn kind(self) -> NameKind {
        match self {
            Resource::Topic => NameKind::Topic,
            Resource::Group => NameKind::Group,
        }
    }

    fn max(self) -> usize {
        match self {
            Resource::Topic => MAX_PHYSICAL_TOPIC,
            Resource::Group => MAX_PHYSICAL_GROUP,
        }
    }
}

/// Which part of a physical name was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameError {
    pub part: NameKind,
    pub error: InputError,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} name {}", self.part, self.error)
    }
}

impl std::error::Error for NameError {}

/// `NS|CELL%NAME`, after checking every part and the total length.
///
/// The only allocation is the returned string.
pub fn physical(ns: &str, cell: &str, name: &str, res: Resource) -> Result<String, NameError> {
    let part = |part, r: Result<(), InputError>| r.map_err(|error| NameError { part, error });
    part(NameKind::Namespace, validate(NameKind::Namespace, ns))?;
    part(NameKind::Cell, validate(NameKind::Cell, cell))?;
    physical_unchecked_prefix(ns, cell, name, res)
}

/// [`physical`] for a namespace and cell that are already known to be valid
/// (they come from a compiled rule set): only `name` and the length are
/// checked. Crate-private so the trust cannot leak.
pub(crate) fn physical_unchecked_prefix(
    ns: &str,
    cell: &str,
    name: &str,
    res: Resource,
) -> Result<String, NameError> {
    validate(res.kind(), name).map_err(|error| NameError {
        part: res.kind(),
        error,
    })?;
    let len = ns.len() + cell.len() + name.len() + 2;
    if len > res.max() {
        return Err(NameError {
            part: res.kind(),
            error: InputError::PhysicalTooLong {
                max: res.max(),
                len,
            },
        });
    }
    let mut out = String::with_capacity(len);
    out.push_str(ns);
    out.push('|');
    out.push_str(cell);
    out.push('%');
    out.push_str(name);
    Ok(out)
}

/// The parts of a physical name, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Physical<'a> {
    pub namespace: &'a str,
    pub cell: &'a str,
    pub name: &'a str,
}

/// Splits `NS|CELL%NAME` and checks every part as [`physical`] would, so that
/// only names [`physical`] can produce are accepted.
pub fn parse_physical(s: &str, res: Resource) -> Result<Physical<'_>, NameError> {
    let not_physical = NameError {
        part: res.kind(),
        error: InputError::NotPhysical,
    };
    let (namespace, rest) = s.split_once('|').ok_or(not_physical)?;
    let (cell, name) = rest.split_once('%').ok_or(not_physical)?;
    // Re-validate through the constructor so the two can never disagree.
    physical(namespace, cell, name, res)?;
    Ok(Physical {
        namespace,
        cell,
        name,
    })
}

/// `%RETRY%<physical group>`.
pub fn retry_topic(physical_group: &str) -> String {
    format!("{RETRY_PREFIX}{physical_group}")
}

/// `%DLQ%<physical group>`.
pub fn dlq_topic(physical_group: &str) -> String {
    format!("{DLQ_PREFIX}{physical_group}")
}

/// The physical group a retry or dead-letter topic belongs to, if `s` is one.
pub fn parse_retry_or_dlq(s: &str) -> Option<(&'static str, Physical<'_>)> {
    let (prefix, rest) = if let Some(rest) = s.strip_prefix(RETRY_PREFIX) {
        (RETRY_PREFIX, rest)
    } else {
        (DLQ_PREFIX, s.strip_prefix(DLQ_PREFIX)?)
    };
    parse_physical(rest, Resource::Group)
        .ok()
        .map(|p| (prefix, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_unwraps_the_spec_example() {
        let t = physical("ANT", "CELL1", "T1", Resource::Topic).unwrap();
        assert_eq!(t, "ANT|CELL1%T1");
        let p = parse_physical(&t, Resource::Topic).unwrap();
        assert_eq!((p.namespace, p.cell, p.name), ("ANT", "CELL1", "T1"));
        let g = physical("ANT", "CELL1", "G1", Resource::Group).unwrap();
        assert_eq!(retry_topic(&g), "%RETRY%ANT|CELL1%G1");
        assert_eq!(dlq_topic(&g), "%DLQ%ANT|CELL1%G1");
        let (prefix, p) = parse_retry_or_dlq("%DLQ%ANT|CELL1%G1").unwrap();
        assert_eq!((prefix, p.name), (DLQ_PREFIX, "G1"));
    }

    #[test]
    fn refuses_separators_reserved_and_long_names() {
        let e = physical("A|B", "C", "T", Resource::Topic).unwrap_err();
        assert_eq!(e.part, NameKind::Namespace);
        assert_eq!(e.error, InputError::BadChar { at: 1, ch: '|' });
        let e = physical("A", "C", "TBW102", Resource::Topic).unwrap_err();
        assert_eq!(e.error, InputError::Reserved);
        let e = physical("A", "C", "rmq_sys_x", Resource::Group).unwrap_err();
        assert_eq!(e.error, InputError::Reserved);
        let long = "x".repeat(65);
        let e = physical("A", "C", &long, Resource::Topic).unwrap_err();
        assert_eq!(e.error, InputError::TooLong { max: 64, len: 65 });
        let e = physical("A", "", "T", Resource::Topic).unwrap_err();
        assert_eq!((e.part, e.error), (NameKind::Cell, InputError::Empty));
        let x = "x".repeat(60);
        // 60 + 60 + 5 + 2 = 127 fits a topic but not a group.
        assert!(physical(&x, &x, "TTTTT", Resource::Topic).is_ok());
        let e = physical(&x, &x, "TTTTT", Resource::Group).unwrap_err();
        assert_eq!(e.error, InputError::PhysicalTooLong { max: 120, len: 127 });
        assert_eq!(
            e.to_string(),
            "group name is too long: the physical name would be 127 characters, over the limit of 120"
        );
    }

    #[test]
    fn parse_refuses_what_physical_cannot_produce() {
        for s in [
            "", "A", "A|B", "A%B|C", "|B%C", "A|%C", "A|B%", "A|B%C%D", "A|B|C%D",
        ] {
            assert!(parse_physical(s, Resource::Topic).is_err(), "{s:?}");
        }
        assert!(parse_retry_or_dlq("%RETRY%nope").is_none());
    }
}
