//! The YAML schema exactly as platform teams write it.
//!
//! Every struct denies unknown fields: a typo is an error with a position,
//! never a silently ignored setting. These types only describe *shape*;
//! meaning is checked in `validate` and lives in [`crate::RuleSet`].
//! docs/rules.md documents every field here, keep the two in step.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of rules sections (platform_admin, cities, cells, shards, gzone, tenants, takeover, telemetry)"
)]
pub(crate) struct RawRules {
    #[serde(default)]
    pub platform_admin: Option<RawAdmin>,
    #[serde(default)]
    pub cities: Vec<RawCity>,
    #[serde(default)]
    pub cells: Vec<RawCell>,
    #[serde(default)]
    pub shards: Vec<RawShards>,
    #[serde(default)]
    pub gzone: Option<String>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub takeover: Vec<RawTakeover>,
    #[serde(default)]
    /// Its schema and checks are the telemetry crate's.
    pub telemetry: Option<cellgate_telemetry::FileSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub tokens: Vec<RawAdminToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdminToken {
    #[serde(default)]
    pub name: Option<String>,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCity {
    pub name: String,
}

/// `R`, `G` or `C` (or spelt out: `RZone`, `GZone`, `CZone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum ZoneType {
    #[serde(rename = "R", alias = "RZone")]
    R,
    #[serde(rename = "G", alias = "GZone")]
    G,
    #[serde(rename = "C", alias = "CZone")]
    C,
}

impl ZoneType {
    /// "an RZone", "a GZone", "a CZone".
    pub fn with_article(self) -> &'static str {
        match self {
            ZoneType::R => "an RZone",
            ZoneType::G => "a GZone",
            ZoneType::C => "a CZone",
        }
    }
}

impl std::fmt::Display for ZoneType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ZoneType::R => "RZone",
            ZoneType::G => "GZone",
            ZoneType::C => "CZone",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCell {
    pub name: String,
    pub zone: ZoneType,
    pub city: String,
    #[serde(default = "default_broker")]
    pub broker: String,
}

fn default_broker() -> String {
    "embedded".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShards {
    /// `"00-24"` or `"37"`.
    pub range: String,
    pub cell: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    pub namespace: String,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    /// Cell names, or `"*"` for every cell.
    pub cells: Vec<String>,
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub quotas: RawQuotas,
    #[serde(default)]
    pub uid_shard: Option<RawUidShard>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub load_test_groups: Vec<String>,
    #[serde(default)]
    pub ordered_topics: Vec<String>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Publish,
    Subscribe,
    Admin,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    #[serde(default)]
    pub name: Option<String>,
    pub sha256: String,
    pub permissions: Vec<Permission>,
    /// Narrows the tenant's topic patterns for this token.
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// Narrows the tenant's group patterns for this token.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuotas {
    /// Messages per second, per gateway process. Absent: unlimited.
    #[serde(default)]
    pub publish_rate: Option<u32>,
    /// Burst above the rate. Absent: one second's worth.
    #[serde(default)]
    pub publish_burst: Option<u32>,
    /// Absent: 4 MiB.
    #[serde(default)]
    pub max_message_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUidShard {
    /// Positions counted from the right, 1 = last digit: `[2, 1]` (the
    /// default) reads the last two digits, Ant's RPC layer uses `[3, 2]`.
    pub digits: Vec<u8>,
}

/// Which unit-header targets a route replicates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum TargetKind {
    #[serde(rename = "R", alias = "rzone", alias = "RZone")]
    R,
    #[serde(rename = "G", alias = "gzone", alias = "GZone")]
    G,
    #[serde(rename = "C", alias = "czone", alias = "CZone")]
    C,
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetKind::R => "R",
            TargetKind::G => "G",
            TargetKind::C => "C",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Regex over the logical topic, matched against the whole name.
    pub topic: String,
    /// Regex over the tag, whole-match; a message without a tag matches as "".
    #[serde(default)]
    pub tags: Option<String>,
    pub targets: Vec<TargetKind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTakeover {
    /// The cell that is out of service.
    pub cell: String,
    /// The cell that serves its shards and targets meanwhile.
    pub by: String,
}
