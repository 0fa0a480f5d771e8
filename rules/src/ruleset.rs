//! The compiled, immutable rule set.
//!
//! Everything a per-message decision needs is precomputed here: cells are
//! interned as [`CellId`]s, the shard map is a 100-entry array, takeover is a
//! `serving` array indexed by cell, regexes are compiled once. A `RuleSet` is
//! never mutated after `compile`: a reload builds a new one and swaps it in
//! whole (see [`crate::reload`]), so a reader holding one `Arc<RuleSet>` sees
//! one consistent version for as long as it holds it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

pub use crate::raw::{Permission, TargetKind, ZoneType};
pub use crate::route::{Patterns, Route, TargetMask};
use crate::shard::UidShardRule;

/// A cell, interned. Only meaningful with the `RuleSet` that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellId(pub(crate) u16);

/// A tenant, interned. Only meaningful with the `RuleSet` that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub(crate) u16);

/// The broker behind a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerRef {
    /// The broker-core store inside the cellgate process.
    Embedded,
    /// An Apache RocketMQ cluster, by its name servers (`host:port`).
    RocketMq { name_servers: Vec<String> },
}

impl std::fmt::Display for BrokerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerRef::Embedded => f.write_str("embedded"),
            BrokerRef::RocketMq { name_servers } => {
                write!(f, "rocketmq://{}", name_servers.join(","))
            }
        }
    }
}

/// A position in a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: Arc<str>,
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub name: Box<str>,
    pub zone: ZoneType,
    pub city: Box<str>,
    pub broker: BrokerRef,
    /// Where the cell is declared, for messages about it.
    pub declared_at: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct City {
    pub name: Box<str>,
    pub czone: CellId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Messages per second; `None` is unlimited.
    pub publish_rate: Option<u32>,
    pub publish_burst: Option<u32>,
    pub max_message_bytes: u64,
}

/// Default maximum message size (SPEC §7).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub namespace: Box<str>,
    /// Indexed by `CellId`.
    pub(crate) cells: Box<[bool]>,
    /// The longest name among `cells`: a topic must fit in every cell it
    /// may be copied to.
    pub(crate) longest_cell: usize,
    pub topics: Patterns,
    pub groups: Patterns,
    pub quotas: Quotas,
    pub uid_shard: UidShardRule,
    pub routes: Vec<Route>,
    pub load_test_groups: Patterns,
    /// Logical topics consumed in order: FIFO per sharding key, one
    /// message of a queue in flight per group.
    pub ordered_topics: Patterns,
}

impl Tenant {
    pub fn allows_cell(&self, c: CellId) -> bool {
        self.cells.get(usize::from(c.0)).copied().unwrap_or(false)
    }

    /// Is load-test traffic delivered to `group` (logical name)? (SPEC §7)
    pub fn load_test_allowed(&self, group: &str) -> bool {
        self.load_test_groups.matches(group)
    }

    /// Is `topic` (logical name) an ordered topic?
    pub fn is_ordered(&self, topic: &str) -> bool {
        self.ordered_topics.matches(topic)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
    pub admin: bool,
}

impl Permissions {
    pub fn has(&self, p: Permission) -> bool {
        match p {
            Permission::Publish => self.publish,
            Permission::Subscribe => self.subscribe,
            Permission::Admin => self.admin,
        }
    }
}

/// What a bearer token grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub name: Box<str>,
    /// `None` for a platform admin token, which may act on every tenant.
    pub tenant: Option<TenantId>,
    pub permissions: Permissions,
    pub topics: Option<Patterns>,
    pub groups: Option<Patterns>,
}

impl Grant {
    /// May this token use logical `topic` of `tenant`? Both the tenant's and
    /// the token's own patterns must match.
    pub fn allows_topic(&self, tenant: &Tenant, topic: &str) -> bool {
        tenant.topics.matches(topic) && self.topics.as_ref().is_none_or(|p| p.matches(topic))
    }

    /// May this token use logical `group` of `tenant`?
    pub fn allows_group(&self, tenant: &Tenant, group: &str) -> bool {
        tenant.groups.matches(group) && self.groups.as_ref().is_none_or(|p| p.matches(group))
    }
}

/// Where a rule set came from and which version it is.
#[derive(Debug, Clone)]
pub struct RulesMeta {
    /// Bumped on every successful swap; the first load is 1.
    pub version: u64,
    /// Hex SHA-256 of the source text (of every file, in order, for a directory).
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub source: PathBuf,
}

/// The compiled rules. See the module docs.
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) meta: RulesMeta,
    pub(crate) cells: Vec<Cell>,
    pub(crate) cell_index: HashMap<Box<str>, CellId>,
    pub(crate) cities: Vec<City>,
    /// `czone_of[c]` is the CZone of `c`'s city.
    pub(crate) czone_of: Vec<CellId>,
    pub(crate) shard_owner: [CellId; 100],
    pub(crate) gzone: CellId,
    /// `serving[c]` is the cell that serves `c`: itself, or its takeover.
    pub(crate) serving: Vec<CellId>,
    pub(crate) tenants: Vec<Tenant>,
    pub(crate) tenant_index: HashMap<Box<str>, TenantId>,
    /// Keyed by the SHA-256 of the clear token.
    pub(crate) grants: HashMap<[u8; 32], Grant>,
    pub(crate) telemetry: Telemetry,
}

/// The `telemetry` section as written (all optional; the binary merges it
/// with the `OTEL_*` environment, which wins). Read at start only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Telemetry {
    pub settings: cellgate_telemetry::FileSettings,
    /// Where the section is (None when absent).
    pub declared_at: Option<Location>,
}

// === impl RuleSet ===

impl RuleSet {
    pub fn meta(&self) -> &RulesMeta {
        &self.meta
    }

    pub fn version(&self) -> u64 {
        self.meta.version
    }

    pub fn cell_id(&self, name: &str) -> Option<CellId> {
        self.cell_index.get(name).copied()
    }

    pub fn cell(&self, id: CellId) -> &Cell {
        &self.cells[usize::from(id.0)]
    }

    /// The `telemetry` section (applied at start; see [`Telemetry`]).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Whether `other`'s telemetry settings differ from these.
    pub fn telemetry_changed(&self, other: &RuleSet) -> bool {
        self.telemetry.settings != other.telemetry.settings
    }

    pub fn cell_name(&self, id: CellId) -> &str {
        &self.cell(id).name
    }

    pub fn cells(&self) -> impl ExactSizeIterator<Item = (CellId, &Cell)> {
        self.cells
            .iter()
            .enumerate()
            .map(|(i, c)| (CellId(i as u16), c))
    }

    pub fn cities(&self) -> &[City] {
        &self.cities
    }

    /// The CZone of `cell`'s city.
    pub fn czone_of(&self, cell: CellId) -> CellId {
        self.czone_of[usize::from(cell.0)]
    }

    pub fn gzone(&self) -> CellId {
        self.gzone
    }

    /// The RZone that owns `shard` (0–99) by the shard map, before takeover.
    pub fn shard_owner(&self, shard: crate::Shard) -> CellId {
        self.shard_owner[usize::from(shard.get())]
    }

    /// The cell that serves `cell` now: itself, or the cell that took it over.
    pub fn serving(&self, cell: CellId) -> CellId {
        self.serving[usize::from(cell.0)]
    }

    /// Cells currently taken over, with the cell serving each.
    pub fn takeovers(&self) -> impl Iterator<Item = (CellId, CellId)> + '_ {
        self.cells()
            .map(|(id, _)| (id, self.serving(id)))
            .filter(|(a, b)| a != b)
    }

    pub fn tenant_id(&self, namespace: &str) -> Option<TenantId> {
        self.tenant_index.get(namespace).copied()
    }

    pub fn tenant(&self, id: TenantId) -> &Tenant {
        &self.tenants[usize::from(id.0)]
    }

    pub fn tenants(&self) -> impl ExactSizeIterator<Item = (TenantId, &Tenant)> {
        self.tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (TenantId(i as u16), t))
    }

    /// The grant of a clear bearer token, if the rules know its hash.
    pub fn authenticate(&self, token: &str) -> Option<&Grant> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.grants.get(&digest)
    }

    /// The grant of a credential by its SHA-256: a token's hash, or a TLS
    /// client certificate's fingerprint (SHA-256 of its DER), which the
    /// rules list like a token hash.
    pub fn authenticate_digest(&self, digest: &[u8; 32]) -> Option<&Grant> {
        self.grants.get(digest)
    }

    /// The physical name of `tenant`'s logical `name` in `cell`. The
    /// namespace and cell were validated when the rules were loaded, so only
    /// `name` and the total length are checked here.
    pub fn physical_name(
        &self,
        tenant: TenantId,
        cell: CellId,
        name: &str,
        res: crate::names::Resource,
    ) -> Result<String, crate::names::NameError> {
        let t = self.tenant(tenant);
        let out =
            crate::names::physical_unchecked_prefix(&t.namespace, self.cell_name(cell), name, res)?;
        // A topic is copied to other cells: its name must fit there too.
        let worst = t.namespace.len() + t.longest_cell + name.len() + 2;
        if res == crate::names::Resource::Topic && worst > crate::names::MAX_PHYSICAL_TOPIC {
            return Err(crate::names::NameError {
                part: crate::NameKind::Topic,
                error: crate::InputError::CopyTooLong {
                    max: crate::names::MAX_PHYSICAL_TOPIC,
                    len: worst,
                    cell_len: t.longest_cell,
                },
            });
        }
        Ok(out)
    }

    /// The first route of `tenant` that matches, with its index.
    pub fn route(
        &self,
        tenant: TenantId,
        topic: &str,
        tag: Option<&str>,
    ) -> Option<(usize, &Route)> {
        self.tenant(tenant)
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(topic, tag))
    }
}
