//! Unit headers (SPEC §3), subscription predicates (SPEC §4) and the router's
//! target set (SPEC §5): the per-message decisions, as pure functions over a
//! [`RuleSet`]. None of them allocates.
//!
//! Takeover is applied when a header is *read*, never when it is written: the
//! gateway stamps the shard's owner in `TARGET_R` even while that owner is
//! taken over, and both the router and the predicates redirect through
//! [`RuleSet::serving`]. A message stamped under an older rule set therefore
//! follows its headers, redirected by the takeover in force when it is read.
//! Exactly one cell serves each target at any version, so no message is
//! accepted by two cells' subscribers of one kind.

use std::str::FromStr;

use crate::error::InputError;
use crate::ruleset::{CellId, RuleSet, TargetKind, TenantId};

pub const ORIUNIT: &str = "__UNIT.ORIUNIT";
pub const TARGET_G: &str = "__UNIT.TARGET_G";
pub const TARGET_C: &str = "__UNIT.TARGET_C";
pub const TARGET_R: &str = "__UNIT.TARGET_R";
pub const RULES_VERSION: &str = "__UNIT.RULES_VERSION";
/// Client properties may not start with this (SPEC §3).
pub const RESERVED_PROPERTY_PREFIX: &str = "__";

/// The routing headers of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitHeaders {
    pub ori: CellId,
    pub target_g: CellId,
    pub target_c: CellId,
    pub target_r: Option<CellId>,
    pub rules_version: u64,
}

impl UnitHeaders {
    /// Calls `put` once per header, in a fixed order. Allocation-free.
    pub fn write(&self, rules: &RuleSet, mut put: impl FnMut(&'static str, &str)) {
        put(ORIUNIT, rules.cell_name(self.ori));
        put(TARGET_G, rules.cell_name(self.target_g));
        put(TARGET_C, rules.cell_name(self.target_c));
        if let Some(r) = self.target_r {
            put(TARGET_R, rules.cell_name(r));
        }
        put(
            RULES_VERSION,
            itoa::Buffer::new().format(self.rules_version),
        );
    }

    /// The header a target kind reads.
    pub fn target(&self, kind: TargetKind) -> Option<CellId> {
        match kind {
            TargetKind::R => self.target_r,
            TargetKind::G => Some(self.target_g),
            TargetKind::C => Some(self.target_c),
        }
    }
}

/// Why stored headers could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("property {0} is missing")]
    Missing(&'static str),
    #[error("property {0} names a cell the rules do not declare")]
    UnknownCell(&'static str),
    #[error("property {0} is not a number")]
    BadVersion(&'static str),
}

/// The four subscription kinds of SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionKind {
    Local,
    Rzone,
    Gzone,
    Czone,
}

impl SubscriptionKind {
    pub const ALL: [SubscriptionKind; 4] = [Self::Local, Self::Rzone, Self::Gzone, Self::Czone];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Rzone => "rzone",
            Self::Gzone => "gzone",
            Self::Czone => "czone",
        }
    }

    /// The header this kind filters on.
    pub fn header(self) -> &'static str {
        match self {
            Self::Local => ORIUNIT,
            Self::Rzone => TARGET_R,
            Self::Gzone => TARGET_G,
            Self::Czone => TARGET_C,
        }
    }
}

impl FromStr for SubscriptionKind {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, InputError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(InputError::Unknown)
    }
}

impl std::fmt::Display for SubscriptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Up to three copy targets, without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    len: u8,
    items: [Option<(CellId, TargetKind)>; 3],
}

impl Targets {
    fn push(&mut self, cell: CellId, kind: TargetKind) {
        if self.iter().any(|(c, _)| c == cell) {
            return;
        }
        self.items[usize::from(self.len)] = Some((cell, kind));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each target cell once, with the first header kind that chose it.
    pub fn iter(&self) -> impl Iterator<Item = (CellId, TargetKind)> + '_ {
        self.items.iter().flatten().copied()
    }
}

// === impl RuleSet: per-message decisions ===

impl RuleSet {
    /// The headers the gateway stamps on a publish from `cell` (SPEC §3).
    pub fn unit_headers(
        &self,
        tenant: TenantId,
        cell: CellId,
        uid: Option<&str>,
    ) -> Result<UnitHeaders, InputError> {
        let target_r = match uid {
            Some(uid) => Some(self.shard_owner(self.tenant(tenant).uid_shard.shard(uid)?)),
            None => None,
        };
        Ok(UnitHeaders {
            ori: cell,
            target_g: self.gzone(),
            target_c: self.czone_of(cell),
            target_r,
            rules_version: self.version(),
        })
    }

    /// Reads stored headers back, through `get(property name)`.
    pub fn read_unit_headers<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<UnitHeaders, HeaderError> {
        let cell = |name: &'static str| -> Result<CellId, HeaderError> {
            let v = get(name).ok_or(HeaderError::Missing(name))?;
            self.cell_id(v).ok_or(HeaderError::UnknownCell(name))
        };
        let target_r = match get(TARGET_R) {
            Some(_) => Some(cell(TARGET_R)?),
            None => None,
        };
        let rules_version = get(RULES_VERSION)
            .ok_or(HeaderError::Missing(RULES_VERSION))?
            .parse()
            .map_err(|_| HeaderError::BadVersion(RULES_VERSION))?;
        Ok(UnitHeaders {
            ori: cell(ORIUNIT)?,
            target_g: cell(TARGET_G)?,
            target_c: cell(TARGET_C)?,
            target_r,
            rules_version,
        })
    }

    /// Would a `kind` subscriber in cell `me` receive a message with `h`,
    /// found in `me`'s physical topic? (SPEC §4, takeover included.)
    pub fn accepts(&self, kind: SubscriptionKind, me: CellId, h: &UnitHeaders) -> bool {
        match kind {
            SubscriptionKind::Local => h.ori == me,
            SubscriptionKind::Rzone => h.target_r.is_some_and(|r| self.serving(r) == me),
            SubscriptionKind::Gzone => self.serving(h.target_g) == me,
            SubscriptionKind::Czone => self.serving(h.target_c) == me,
        }
    }

    /// The cells to copy a message to (SPEC §5): for an original message
    /// (`ORIUNIT` == `origin`), the targets the tenant's first matching route
    /// enables, redirected by takeover, minus the origin. A copy (`ORIUNIT`
    /// != `origin`) is never copied again.
    pub fn router_targets(
        &self,
        tenant: TenantId,
        topic: &str,
        tag: Option<&str>,
        origin: CellId,
        h: &UnitHeaders,
    ) -> Targets {
        let mut out = Targets::default();
        if h.ori != origin {
            return out;
        }
        let Some((_, route)) = self.route(tenant, topic, tag) else {
            return out;
        };
        for kind in [TargetKind::R, TargetKind::G, TargetKind::C] {
            if !route.targets.has(kind) {
                continue;
            }
            if let Some(t) = h.target(kind).map(|t| self.serving(t)) {
                if t != origin {
                    out.push(t, kind);
                }
            }
        }
        out
    }

    /// A predicate over the raw header value, for a broker to evaluate while
    /// it scans (the broker knows nothing of cells). Owns what it needs.
    pub fn subscription_filter(&self, kind: SubscriptionKind, me: CellId) -> SubscriptionFilter {
        let accepted = match kind {
            SubscriptionKind::Local => vec![self.cell_name(me).into()],
            _ => self
                .cells()
                .filter(|(id, _)| self.serving(*id) == me)
                .map(|(_, c)| c.name.clone())
                .collect(),
        };
        SubscriptionFilter {
            header: kind.header(),
            accepted,
        }
    }
}

/// See [`RuleSet::subscription_filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionFilter {
    pub header: &'static str,
    /// `me`, plus every cell `me` has taken over (not for `local`).
    pub accepted: Vec<Box<str>>,
}

impl SubscriptionFilter {
    pub fn matches(&self, header_value: Option<&str>) -> bool {
        header_value.is_some_and(|v| self.accepted.iter().any(|a| &**a == v))
    }
}
