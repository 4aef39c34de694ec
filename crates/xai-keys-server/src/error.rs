//! The gateway's one error type and its stable JSON shape.
//!
//! Every refusal the gateway answers itself goes through [`ApiError`], so clients see one
//! envelope everywhere, the reference's: `{"success": false, "error": <message>, "code": <code>}`,
//! plus `reason` (a typed authentication reason) and `retry_after` where they apply. Messages name
//! what is wrong and what to do; none ever carries a key.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use xai_keys_core::error::{Error as CoreError, ErrorClass};

/// A refusal or failure answered by the gateway.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// A typed reason (`missing_credentials`, `expired`, …) for authentication refusals.
    pub reason: Option<&'static str>,
    /// Seconds to wait, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Extra fields merged into the body (never secrets).
    pub extra: Option<Box<Map<String, Value>>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            reason: None,
            retry_after: None,
            extra: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::bad_request("invalid_payload", message)
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn with_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(name.to_string(), value.into());
        self
    }

    /// The store cannot be used right now (unreadable, mismatched, locked).
    pub fn store_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
        .with_retry_after(5)
    }

    /// An unexpected internal failure; the detail goes to the log, not to the client.
    pub fn internal(context: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(context, error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("internal error while {context}; the gateway log has the details"),
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("success".into(), false.into());
        m.insert("error".into(), self.message.clone().into());
        m.insert("code".into(), self.code.into());
        if let Some(r) = self.reason {
            m.insert("reason".into(), r.into());
        }
        if let Some(s) = self.retry_after {
            m.insert("retry_after".into(), s.into());
        }
        if let Some(extra) = &self.extra {
            for (k, v) in extra.iter() {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Value::Object(m)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let status = match e.class() {
            ErrorClass::Invalid => StatusCode::BAD_REQUEST,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
            ErrorClass::Conflict => StatusCode::CONFLICT,
            ErrorClass::Integrity | ErrorClass::Io => StatusCode::SERVICE_UNAVAILABLE,
        };
        let code = match &e {
            // The reference's codes for the admin API.
            CoreError::PermanentDisabled => "permanent_keys_disabled",
            CoreError::NotFound(_) => "not_found",
            _ if e.class() == ErrorClass::Invalid && e.code() == "invalid_input" => {
                "invalid_payload"
            }
            _ if matches!(e.class(), ErrorClass::Integrity | ErrorClass::Io) => "store_unavailable",
            _ => e.code(),
        };
        let message = match &e {
            // The reference's message, without repeating what the caller put in the path: a
            // secret pasted where its id belongs must not be echoed back.
            CoreError::NotFound(_) => {
                "API key not found: no key matches the id in the path; list ids with GET /admin/api-keys"
                    .to_string()
            }
            _ => e.to_string(),
        };
        let mut err = ApiError::new(status, code, message);
        if matches!(e.class(), ErrorClass::Integrity | ErrorClass::Io) {
            tracing::error!(error = %e, code = e.code(), "store operation failed");
            err = err.with_retry_after(5).with_field("cause", e.code());
        }
        if code == "permanent_keys_disabled" {
            err.status = StatusCode::BAD_REQUEST;
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// A success envelope: `{"success": true, …fields}` with `status`.
pub fn success(status: StatusCode, fields: Value) -> Response {
    let mut m = Map::new();
    m.insert("success".into(), true.into());
    if let Value::Object(f) = fields {
        for (k, v) in f {
            m.insert(k, v);
        }
    }
    let mut resp = (status, Json(Value::Object(m))).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_has_the_reference_fields() {
        let e = ApiError::bad_request("invalid_payload", "bad").with_reason("x");
        assert_eq!(
            e.body(),
            json!({"success": false, "error": "bad", "code": "invalid_payload", "reason": "x"})
        );
    }

    #[test]
    fn core_errors_map_to_statuses() {
        let e: ApiError = CoreError::NotFound("abc".into()).into();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, "not_found");
        let e: ApiError = CoreError::PermanentDisabled.into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
