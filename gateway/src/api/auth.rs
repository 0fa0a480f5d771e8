//! Who is calling, for which tenant, in which cell.
//!
//! The namespace always comes from the credential: a tenant token acts on
//! its own tenant only. A platform admin token, which may act on every
//! tenant, names the tenant in `X-Namespace`; a tenant token that sends a
//! different `X-Namespace` is refused rather than silently ignored.

use http::HeaderMap;

use cellgate_rules::names::{self, Resource};
use cellgate_rules::{CellId, Grant, NameKind, Permission, RuleSet, Tenant, TenantId};

use super::{ApiError, ApiResult, Peer};

pub const X_CELL: &str = "x-cell";
pub const X_NAMESPACE: &str = "x-namespace";

/// An authenticated request's identity, borrowed from one rules snapshot.
#[derive(Debug)]
pub struct Caller<'r> {
    pub rules: &'r RuleSet,
    pub grant: &'r Grant,
    tenant: Option<TenantId>,
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> ApiResult<Option<&'h str>> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::invalid(header_field(name), "must be printable ASCII")),
    }
}

fn header_field(name: &'static str) -> &'static str {
    match name {
        X_CELL => "X-Cell",
        X_NAMESPACE => "X-Namespace",
        _ => "Authorization",
    }
}

// === impl Caller ===

impl<'r> Caller<'r> {
    /// Checks the bearer token (or, without one, the TLS client certificate).
    pub fn authenticate(rules: &'r RuleSet, headers: &HeaderMap, peer: &Peer) -> ApiResult<Self> {
        let grant = match header(headers, "authorization")? {
            Some(v) => {
                let token = v
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
                    .filter(|t| !t.is_empty())
                    .ok_or(ApiError::unauthenticated(
                        "the Authorization header must be `Bearer <token>`",
                    ))?;
                rules
                    .authenticate(token)
                    .ok_or(ApiError::unauthenticated("the token is not known"))?
            }
            None => match peer.client_cert {
                Some(fp) => rules.authenticate_digest(&fp).ok_or(ApiError::unauthenticated(
                    "the client certificate is not mapped to a tenant, and there is no bearer token",
                ))?,
                None => return Err(ApiError::unauthenticated("a bearer token is required")),
            },
        };
        let asked = header(headers, X_NAMESPACE)?;
        let tenant = match (grant.tenant, asked) {
            (Some(own), None) => Some(own),
            (Some(own), Some(ns)) => {
                if *rules.tenant(own).namespace != *ns {
                    return Err(ApiError::forbidden(
                        "X-Namespace",
                        "the token belongs to another namespace",
                    ));
                }
                Some(own)
            }
            (None, Some(ns)) => Some(rules.tenant_id(ns).ok_or_else(|| {
                ApiError::not_found("X-Namespace", "no tenant has this namespace")
            })?),
            (None, None) => None,
        };
        Ok(Caller {
            rules,
            grant,
            tenant,
        })
    }

    pub fn is_admin(&self) -> bool {
        self.grant.tenant.is_none()
    }

    /// The tenant acted on.
    pub fn tenant_id(&self) -> ApiResult<TenantId> {
        self.tenant.ok_or_else(|| {
            ApiError::invalid(
                "X-Namespace",
                "a platform admin token must name the tenant in X-Namespace",
            )
        })
    }

    pub fn tenant(&self) -> ApiResult<&'r Tenant> {
        Ok(self.rules.tenant(self.tenant_id()?))
    }

    pub fn require(&self, p: Permission) -> ApiResult<()> {
        if self.grant.permissions.has(p) {
            return Ok(());
        }
        let name = match p {
            Permission::Publish => "publish",
            Permission::Subscribe => "subscribe",
            Permission::Admin => "admin",
        };
        Err(ApiError::forbidden(
            "Authorization",
            format!("the token lacks the {name} permission"),
        ))
    }

    /// A logical topic the caller may use.
    pub fn topic(&self, name: &str) -> ApiResult<()> {
        names::validate(NameKind::Topic, name)
            .map_err(|e| ApiError::invalid("topic", format!("topic name {e}")))?;
        if !self.grant.allows_topic(self.tenant()?, name) {
            return Err(ApiError::forbidden(
                "topic",
                "the token may not use this topic",
            ));
        }
        Ok(())
    }

    /// A logical group the caller may use.
    pub fn group(&self, name: &str) -> ApiResult<()> {
        names::validate(NameKind::Group, name)
            .map_err(|e| ApiError::invalid("group", format!("group name {e}")))?;
        if !self.grant.allows_group(self.tenant()?, name) {
            return Err(ApiError::forbidden(
                "group",
                "the token may not use this group",
            ));
        }
        Ok(())
    }

    /// The cell of the request: `X-Cell`, else the gateway's default.
    pub fn cell(&self, headers: &HeaderMap, default: Option<&str>) -> ApiResult<CellId> {
        let name = match header(headers, X_CELL)? {
            Some(c) => c,
            None => default.ok_or_else(|| {
                ApiError::invalid(
                    "X-Cell",
                    "the X-Cell header is required: this gateway has no default cell",
                )
            })?,
        };
        let cell = self
            .rules
            .cell_id(name)
            .ok_or_else(|| ApiError::not_found("X-Cell", "no cell has this name"))?;
        if !self.tenant()?.allows_cell(cell) {
            return Err(ApiError::forbidden(
                "X-Cell",
                "the tenant may not use this cell",
            ));
        }
        Ok(cell)
    }

    /// `NS|CELL%NAME` for a name already checked by `topic` or `group`.
    pub fn physical(&self, cell: CellId, name: &str, res: Resource) -> ApiResult<String> {
        let field = match res {
            Resource::Topic => "topic",
            Resource::Group => "group",
        };
        self.rules
            .physical_name(self.tenant_id()?, cell, name, res)
            .map_err(|e| ApiError::invalid(field, e.to_string()))
    }
}
