//! Reading a JSON request body within bounds.
//!
//! The body is read through `http_body_util::Limited`, so a client can never
//! make the gateway buffer more than the limit: a `Content-Length` over it
//! is refused before reading, a chunked body is cut off when it crosses it.
//! Reading has its own deadline, so a client that trickles a body is cut
//! off too. JSON errors name the field by its path (`messages[3].tag`),
//! through serde_path_to_error.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::{ApiError, ApiResult};

/// Reads the whole body, up to `limit` bytes and within `timeout`.
pub async fn read(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> ApiResult<Bytes> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_) => Err(ApiError::new(
            http::StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body did not arrive in time",
        )
        .field("body")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(_)) => Err(ApiError::invalid(
            "body",
            "the request body could not be read",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::too_large(
        "body",
        format!("the request body is over the limit of {limit} bytes"),
    )
}

/// Parses JSON; an empty body reads as `{}`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // serde would read a struct from a JSON array too; the API takes objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "body",
            "the request body must be a JSON object",
        ));
    }
    // Fast path: plain serde_json. Tracking the path of every value costs
    // on every request, and the path only matters for the error, so a body
    // that fails is parsed again, with tracking, to name the field. Both
    // parses are deterministic over the same bytes: same error, same field.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // "." is the root; "?" is where a syntax error left the path unknown.
        let field = if path == "." || path == "?" || path.is_empty() {
            "body".to_owned()
        } else {
            path
        };
        let message = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("malformed JSON: {inner}")
            }
            _ => inner.to_string(),
        };
        ApiError::invalid(field, message)
    })
}

/// Reads a request's body and parses it.
pub async fn json<T: DeserializeOwned>(
    req: http::Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> ApiResult<T> {
    let (parts, body) = req.into_parts();
    let bytes = read(body, &parts.headers, limit, timeout).await?;
    parse(&bytes)
}
