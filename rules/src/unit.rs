//! Unit headers (SPEC §3), subscription predicates (SPEC §4) and the router's
//! target set (SPEC §5): the per-message decisions, as pure functions over a
//! [`RuleSet`]. None of them allocates.
//!
//! ## Takeover, and why no message is lost or delivered twice
//!
//! Which cell consumes a message for a kind (R, G or C) is decided **once**
//! and written into the message, so later rule changes can never make two
//! cells accept it, or none:
//!
//! - The gateway resolves takeover when it stamps: `TARGET_R` is the cell
//!   that *serves* the uid's shard at publish time (the owner, or the cell
//!   that took the owner over); likewise `TARGET_G` and `TARGET_C`.
//! - An original message (no `__UNIT.COPY_FOR`) is accepted by a kind's
//!   subscribers in its origin cell iff that kind's header names the origin:
//!   a literal comparison, independent of the rules in force.
//! - For every other target, the router appends a copy to the cell that
//!   serves the header's cell *when the router reads it* (so a message stamped
//!   under an older rule set follows its headers, redirected by the takeover
//!   now in force) and marks the copy with `__UNIT.COPY_FOR` = the kinds it
//!   was placed for. A copy is accepted for exactly those kinds, by the
//!   subscribers of the cell it was placed in, whatever the rules say later.
//!   A copy is never copied again.
//!
//! So each (message, kind) is accepted in exactly one cell: the origin, or
//! the single cell the router placed the copy for that kind in. A takeover
//! that ends leaves the copies placed under it consumable where they are.
//!
//! One obligation falls on the router: placement must be idempotent. If it
//! copies a message, crashes before checkpointing and reads the message
//! again under a *different* takeover, `router_targets` names a different
//! destination; dedupe by message id inside one cell cannot see the first
//! copy in another. So the router records (origin, message id) → placed
//! destinations before appending and reuses that record on a retry.

use std::str::FromStr;

use crate::error::InputError;
use crate::ruleset::{CellId, RuleSet, TargetKind, TargetMask, TenantId};

pub const ORIUNIT: &str = "__UNIT.ORIUNIT";
pub const TARGET_G: &str = "__UNIT.TARGET_G";
pub const TARGET_C: &str = "__UNIT.TARGET_C";
pub const TARGET_R: &str = "__UNIT.TARGET_R";
pub const RULES_VERSION: &str = "__UNIT.RULES_VERSION";
/// The first 16 hex digits of the SHA-256 of the rules that stamped the
/// headers. `RULES_VERSION` counts reloads in one process; this one is the
/// same in every gateway that loaded the same rules, so any cell can tell a
/// message stamped under rules other than its own.
pub const RULES_SHA256: &str = "__UNIT.RULES_SHA256";
/// Set by the router on a copy: the kinds (`R`, `G`, `C`, comma-separated)
/// the copy was placed for.
pub const COPY_FOR: &str = "__UNIT.COPY_FOR";
/// A message's sharding key, set by the gateway, so a router copy takes the
/// same queue choice in its cell (RocketMQ 5's name for it).
pub const SHARDING_KEY: &str = "__SHARDINGKEY";
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
    /// `Some` on a router copy: the kinds it was placed for.
    pub copy_for: Option<TargetMask>,
}

impl UnitHeaders {
    /// The headers of a copy placed for `kinds`.
    pub fn as_copy(&self, kinds: TargetMask) -> UnitHeaders {
        UnitHeaders {
            copy_for: Some(kinds),
            ..*self
        }
    }

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
        put(
            RULES_SHA256,
            rules.meta.sha256.get(..16).unwrap_or_default(),
        );
        if let Some(kinds) = self.copy_for {
            put(COPY_FOR, kinds.as_str());
        }
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
    #[error("property {0} must list R, G or C, comma-separated")]
    BadCopyFor(&'static str),
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

    /// The target kind a subscription kind consumes; `None` for `local`.
    pub fn target(self) -> Option<TargetKind> {
        match self {
            Self::Local => None,
            Self::Rzone => Some(TargetKind::R),
            Self::Gzone => Some(TargetKind::G),
            Self::Czone => Some(TargetKind::C),
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

/// Up to three copy destinations, each with the kinds its copy is for,
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    len: u8,
    items: [Option<(CellId, TargetMask)>; 3],
}

impl Targets {
    fn push(&mut self, cell: CellId, kind: TargetKind) {
        for (c, mask) in self.items.iter_mut().flatten() {
            if *c == cell {
                mask.set(kind);
                return;
            }
        }
        let mut mask = TargetMask::default();
        mask.set(kind);
        self.items[usize::from(self.len)] = Some((cell, mask));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each destination cell once, with the kinds its copy is for.
    pub fn iter(&self) -> impl Iterator<Item = (CellId, TargetMask)> + '_ {
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
            Some(uid) => {
                let owner = self.shard_owner(self.tenant(tenant).uid_shard.shard(uid)?);
                Some(self.serving(owner))
            }
            None => None,
        };
        Ok(UnitHeaders {
            ori: cell,
            target_g: self.serving(self.gzone()),
            target_c: self.serving(self.czone_of(cell)),
            target_r,
            rules_version: self.version(),
            copy_for: None,
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
        let copy_for = match get(COPY_FOR) {
            None => None,
            Some(v) => Some(TargetMask::parse(v).ok_or(HeaderError::BadCopyFor(COPY_FOR))?),
        };
        Ok(UnitHeaders {
            ori: cell(ORIUNIT)?,
            target_g: cell(TARGET_G)?,
            target_c: cell(TARGET_C)?,
            target_r,
            rules_version,
            copy_for,
        })
    }

    /// Would a `kind` subscriber in cell `me` receive a message with `h`,
    /// found in `me`'s physical topic? (SPEC §4; takeover is already in the
    /// headers, see the module docs.) Needs no rules: it is the same under
    /// every version.
    pub fn accepts(&self, kind: SubscriptionKind, me: CellId, h: &UnitHeaders) -> bool {
        match (kind.target(), h.copy_for) {
            (None, copy_for) => copy_for.is_none() && h.ori == me,
            (Some(k), Some(kinds)) => kinds.has(k),
            (Some(k), None) => h.target(k) == Some(me),
        }
    }

    /// The copies to make of a message read from `origin`'s topic (SPEC
    /// §5). Only an original (`ORIUNIT` == `origin`, no `COPY_FOR`) is
    /// copied. For each kind the tenant's first matching route enables whose
    /// header names another cell, the copy goes to the cell serving that one
    /// now; kinds going to one cell share one copy. A destination the tenant
    /// may not use is skipped. The destination may be `origin` itself when
    /// `origin` has taken over the header's cell since publish.
    pub fn router_targets(
        &self,
        tenant: TenantId,
        topic: &str,
        tag: Option<&str>,
        origin: CellId,
        h: &UnitHeaders,
    ) -> Targets {
        let mut out = Targets::default();
        if h.ori != origin || h.copy_for.is_some() {
            return out;
        }
        let Some((_, route)) = self.route(tenant, topic, tag) else {
            return out;
        };
        let t = self.tenant(tenant);
        for kind in [TargetKind::R, TargetKind::G, TargetKind::C] {
            let Some(named) = h.target(kind).filter(|_| route.targets.has(kind)) else {
                continue;
            };
            let dest = self.serving(named);
            if named != origin && t.allows_cell(dest) {
                out.push(dest, kind);
            }
        }
        out
    }

    /// [`RuleSet::accepts`] over raw message properties, for a broker to
    /// evaluate while it scans (the broker knows nothing of cells). It does
    /// not depend on the rules in force, so a long-lived subscription keeps
    /// it across reloads.
    pub fn subscription_filter(&self, kind: SubscriptionKind, me: CellId) -> SubscriptionFilter {
        SubscriptionFilter {
            kind,
            me: self.cell_name(me).into(),
        }
    }
}

/// See [`RuleSet::subscription_filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionFilter {
    pub kind: SubscriptionKind,
    pub me: Box<str>,
}

impl SubscriptionFilter {
    /// `get(property)` reads the message's properties.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let copy_for = get(COPY_FOR);
        match (self.kind.target(), copy_for) {
            (None, copy_for) => copy_for.is_none() && get(ORIUNIT) == Some(&*self.me),
            (Some(k), Some(kinds)) => TargetMask::parse(kinds).is_some_and(|m| m.has(k)),
            (Some(_), None) => get(self.kind.header()) == Some(&*self.me),
        }
    }
}
