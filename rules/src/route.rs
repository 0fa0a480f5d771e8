//! Routing rules and the patterns they match with: a tenant's routes pick,
//! per topic and tag, which unit-header targets (R, G, C) are replicated.

use regex::{Regex, RegexSet};

use crate::raw::TargetKind;

/// A list of whole-name regexes; matches when any matches. Compares by source.
#[derive(Debug, Clone)]
pub struct Patterns {
    pub(crate) src: Vec<String>,
    pub(crate) set: RegexSet,
}

impl Patterns {
    pub fn matches(&self, s: &str) -> bool {
        self.set.is_match(s)
    }

    pub fn sources(&self) -> &[String] {
        &self.src
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.src == other.src
    }
}

/// The targets a route enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetMask {
    pub r: bool,
    pub g: bool,
    pub c: bool,
}

impl TargetMask {
    pub fn has(&self, k: TargetKind) -> bool {
        match k {
            TargetKind::R => self.r,
            TargetKind::G => self.g,
            TargetKind::C => self.c,
        }
    }

    pub fn set(&mut self, k: TargetKind) {
        match k {
            TargetKind::R => self.r = true,
            TargetKind::G => self.g = true,
            TargetKind::C => self.c = true,
        }
    }

    /// The kinds either mask has.
    pub fn union(self, o: TargetMask) -> TargetMask {
        TargetMask {
            r: self.r || o.r,
            g: self.g || o.g,
            c: self.c || o.c,
        }
    }

    /// The kinds of `self` that `o` lacks.
    pub fn minus(self, o: TargetMask) -> TargetMask {
        TargetMask {
            r: self.r && !o.r,
            g: self.g && !o.g,
            c: self.c && !o.c,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == TargetMask::default()
    }

    /// `"R,G,C"`-style, `"none"` when empty. Static, so writing it as a
    /// property does not allocate.
    pub fn as_str(&self) -> &'static str {
        match (self.r, self.g, self.c) {
            (false, false, false) => "none",
            (true, false, false) => "R",
            (false, true, false) => "G",
            (false, false, true) => "C",
            (true, true, false) => "R,G",
            (true, false, true) => "R,C",
            (false, true, true) => "G,C",
            (true, true, true) => "R,G,C",
        }
    }

    /// Reads [`TargetMask::as_str`]'s output back; `None` for anything else
    /// (including `"none"`, which no copy carries).
    pub fn parse(s: &str) -> Option<TargetMask> {
        let mut m = TargetMask::default();
        for part in s.split(',') {
            let k = match part {
                "R" => TargetKind::R,
                "G" => TargetKind::G,
                "C" => TargetKind::C,
                _ => return None,
            };
            if m.has(k) {
                return None;
            }
            m.set(k);
        }
        Some(m)
    }
}

impl std::fmt::Display for TargetMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A routing rule: messages of matching topic (and tag) are replicated to the
/// enabled targets. The first matching route of a tenant wins.
#[derive(Debug, Clone)]
pub struct Route {
    pub topic_src: String,
    pub tags_src: Option<String>,
    pub(crate) topic: Regex,
    pub(crate) tags: Option<Regex>,
    pub targets: TargetMask,
}

impl Route {
    pub fn matches(&self, topic: &str, tag: Option<&str>) -> bool {
        self.topic.is_match(topic)
            && self
                .tags
                .as_ref()
                .is_none_or(|t| t.is_match(tag.unwrap_or("")))
    }
}

impl PartialEq for Route {
    fn eq(&self, o: &Self) -> bool {
        (&self.topic_src, &self.tags_src, self.targets) == (&o.topic_src, &o.tags_src, o.targets)
    }
}
