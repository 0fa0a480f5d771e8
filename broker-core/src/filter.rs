//! Server-side filters: a tag expression, checked against the consume
//! index's tag hash before any record is read, and a pluggable property
//! predicate (the gateway's unit-header filter).

use std::fmt;
use std::sync::Arc;

use crate::record::{tag_hash, StoredMessage};

/// `*`, or tags joined by `||` (RocketMQ's syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    All,
    Any(Vec<(String, u32)>),
}

impl TagFilter {
    /// Parses `*`, `""` (all) or `A||B||C`; blank parts are ignored.
    pub fn parse(expr: &str) -> TagFilter {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return TagFilter::All;
        }
        let tags: Vec<(String, u32)> = expr
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| (t.to_owned(), tag_hash(Some(t))))
            .collect();
        if tags.is_empty() {
            TagFilter::All
        } else {
            TagFilter::Any(tags)
        }
    }

    /// May a record with this index tag hash match? (No read needed.)
    pub fn may_match(&self, hash: u32) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Any(tags) => tags.iter().any(|(_, h)| *h == hash),
        }
    }

    /// Does the record's actual tag match? (Rules out hash collisions.)
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Any(tags) => tag.is_some_and(|t| tags.iter().any(|(x, _)| x == t)),
        }
    }
}

/// A predicate over a stored message; `true` delivers it.
#[derive(Clone)]
pub struct Predicate(pub Arc<dyn Fn(&StoredMessage) -> bool + Send + Sync>);

impl Predicate {
    pub fn new(f: impl Fn(&StoredMessage) -> bool + Send + Sync + 'static) -> Predicate {
        Predicate(Arc::new(f))
    }
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Predicate(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rocketmq_tag_expressions() {
        assert_eq!(TagFilter::parse("*"), TagFilter::All);
        assert_eq!(TagFilter::parse(""), TagFilter::All);
        let f = TagFilter::parse("TagA || TagB");
        assert!(f.may_match(tag_hash(Some("TagA"))) && f.matches(Some("TagB")));
        assert!(!f.may_match(tag_hash(Some("TagC"))) && !f.matches(None));
        assert!(!f.may_match(0), "no tag never matches a tag list");
    }
}
