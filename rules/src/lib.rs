//! cellgate's rules: the YAML that platform teams edit, and every decision
//! that follows from it.
//!
//! This crate knows YAML, names, shards, unit headers and routing decisions.
//! It knows nothing about HTTP or storage. Its two halves:
//!
//! - **Loading**: [`Sources`] reads a file or a directory, `validate` turns it
//!   into an immutable [`RuleSet`] or a list of *every* problem, each as
//!   `file:line:col: sentence`; [`RulesHandle`] holds the rule set in force,
//!   swaps new versions in atomically and keeps the last good one when a new
//!   file is wrong; [`watch`] reloads on file changes and SIGHUP.
//! - **Deciding**: [`names`] maps logical ↔ physical names, [`RuleSet`]'s
//!   methods (in `unit`) stamp unit headers, evaluate the subscription
//!   predicates and compute the router's copy targets, as pure functions that
//!   do not allocate.

#![forbid(unsafe_code)]

mod diag;
mod diff;
mod error;
pub mod explain;
mod load;
pub mod names;
mod raw;
mod reload;
mod route;
mod ruleset;
mod shard;
mod unit;
mod validate;
pub mod watch;

pub use diag::{Diagnostic, Diagnostics};
pub use diff::RulesDiff;
pub use error::{Error, InputError, NameKind};
pub use load::{load, Sources, MAX_FILE_BYTES};
pub use reload::{restart_required, ReloadCounts, ReloadOutcome, ReloadStatus, RulesHandle};
pub use ruleset::{
    BrokerRef, Cell, CellId, City, Grant, Location, Patterns, Permission, Permissions, Quotas,
    Route, RuleSet, RulesMeta, TargetKind, TargetMask, Telemetry, Tenant, TenantId, ZoneType,
    DEFAULT_MAX_MESSAGE_BYTES,
};
pub use shard::{Shard, UidShardRule};
pub use unit::{
    HeaderError, SubscriptionFilter, SubscriptionKind, Targets, UnitHeaders, COPY_FOR, ORIUNIT,
    RESERVED_PROPERTY_PREFIX, RULES_SHA256, RULES_VERSION, SHARDING_KEY, TARGET_C, TARGET_G,
    TARGET_R,
};
