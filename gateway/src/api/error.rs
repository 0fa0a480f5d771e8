//! The API's error: an HTTP status plus SPEC §9's body,
//! `{"error": {"code", "message", "field"}}`.
//!
//! Every handler returns `Result<_, ApiError>`; the constructors below are
//! the only way to build one, so every error names a code, says what is
//! wrong in a sentence, and (when one field is at fault) which field. The
//! message never contains a token, a body or another tenant's name.

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;

use cellgate_broker_core as broker;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub field: Option<Cow<'static, str>>,
    /// For 429: when to try again.
    pub retry_after: Option<Duration>,
}

// === impl ApiError ===

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400: the request is wrong; `field` says where.
    pub fn invalid(
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message).field(field)
    }

    pub fn unauthenticated(message: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).field("Authorization")
    }

    pub fn forbidden(
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_denied", message).field(field)
    }

    pub fn not_found(
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message).field(field)
    }

    pub fn conflict(
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message).field(field)
    }

    pub fn too_large(
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message).field(field)
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the tenant's publish quota is exhausted; retry after the Retry-After seconds",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// Sets Retry-After.
    pub fn retry(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A route that does not exist.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").field("path")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
        .field("method")
    }

    /// A broker failure, mapped to what the client can act on. Names in the
    /// broker's messages are physical, so they are never passed through.
    pub fn from_broker(e: &broker::Error, field: &'static str) -> Self {
        use broker::Error as B;
        match e {
            B::MessageTooLarge { size, max } => Self::too_large(
                field,
                format!("message is {size} bytes, over the limit of {max}"),
            ),
            B::FieldTooLong { field: f, len, max } => {
                Self::invalid(*f, format!("is {len} bytes, over the limit of {max}"))
            }
            B::UnknownTopic(_) | B::UnknownQueue { .. } => {
                Self::not_found("topic", "the topic does not exist in this cell")
            }
            B::TopicExists { existing, requested, .. } => Self::conflict(
                "topic",
                format!("the topic exists with {existing} queues, not {requested}"),
            ),
            B::BadReceipt => Self::conflict(
                field,
                "the receipt handle has expired: the message was acked, or redelivered after its invisibility time",
            ),
            B::Closed => Self::unavailable("the broker is shutting down"),
            B::LogFailed => {
                tracing::error!(error = %e, "broker failure");
                Self::unavailable(
                    "the cell's broker stopped after a disk failure; it takes no messages until restarted",
                )
            }
            B::Recovering => Self::unavailable("the cell's broker is recovering its state")
                .retry(std::time::Duration::from_secs(1)),
            B::DelayTooLong { .. } => Self::invalid(field, e.to_string()),
            B::UnknownTransaction(_) => {
                Self::not_found("transaction_id", "no transaction with this id in this cell")
            }
            B::TransactionConflict { .. } => Self::conflict("transaction_id", e.to_string()),
            B::Remote { .. } => {
                tracing::warn!(error = %e, "remote broker failure");
                Self::unavailable("the cell's broker did not answer; the error is in the gateway log")
                    .retry(std::time::Duration::from_secs(1))
            }
            B::Unsupported(what) => Self::unavailable(format!(
                "{what} is not supported by this cell's broker backend"
            ))
            .field(field),
            B::Io { .. }
            | B::Corrupt { .. }
            | B::BadBodyRef { .. }
            | B::OutOfRange { .. }
            | B::Config(_) => {
                tracing::error!(error = %e, "broker failure");
                Self::unavailable("the cell's broker failed; the error is in the gateway log")
            }
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut err = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(f) = &self.field {
            err["field"] = serde_json::Value::String(f.to_string());
        }
        serde_json::json!({ "error": err })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} {}: {}", self.status.as_u16(), field, self.message),
            None => write!(f, "{} {}", self.status.as_u16(), self.message),
        }
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A broker whose disk failed says so, and that a retry will not help
    /// until it is restarted (no `Retry-After`).
    #[test]
    fn a_stopped_log_is_a_503_that_says_why() {
        let e = ApiError::from_broker(&broker::Error::LogFailed, "body");
        assert_eq!(e.status.as_u16(), 503);
        let body = e.body();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("disk failure"), "{msg}");
        assert!(msg.contains("restarted"), "{msg}");
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(e.retry_after, None);
    }
}
