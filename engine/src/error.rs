//! Errors that leave the engine as Kubernetes `Status` objects.
//!
//! Every failure a client can cause maps to the apiserver's reason and code, so kubectl and
//! kubeclient print and branch on them exactly as they do against a real cluster.

use serde_json::{json, Value};

/// One field-level cause inside a `Status` (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause { reason: "FieldValueInvalid", message: message.into(), field: field.into() }
    }
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause { reason: "FieldValueRequired", message: message.into(), field: field.into() }
    }
    pub fn not_supported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause { reason: "FieldValueNotSupported", message: message.into(), field: field.into() }
    }
    pub fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause { reason: "FieldValueDuplicate", message: message.into(), field: field.into() }
    }
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause { reason: "FieldValueForbidden", message: message.into(), field: field.into() }
    }
}

/// An API error: the content of a `Status` with `status: Failure`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status; boxed, as most errors have none and results stay small.
    pub details: Option<Box<Details>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    pub name: Option<String>,
    pub group: Option<String>,
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    fn about(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: Some(name.to_string()),
            group: Some(group.to_string()),
            kind: Some(plural.to_string()),
            causes: vec![],
        }));
        self
    }
    /// The field causes, if any.
    pub fn causes(&self) -> &[Cause] {
        self.details.as_ref().map(|d| d.causes.as_slice()).unwrap_or_default()
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{}\" not found", qualified(group, plural), name))
            .about(group, plural, name)
    }
    /// 404 with a message of the caller's.
    pub fn not_found_message(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }
    pub fn route_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", qualified(group, plural), name))
            .about(group, plural, name)
    }
    pub fn conflict(group: &str, plural: &str, name: &str, why: impl Into<String>) -> Self {
        let why = why.into();
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} \"{}\": {}", qualified(group, plural), name, why),
        )
        .about(group, plural, name)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    /// 413 with the reason given (a patch whose result would be too large).
    pub fn too_large_because(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: limit is {limit}"))
    }
    /// A PATCH body of a type this kind takes no patch in.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::unsupported_body(
            content_type,
            &["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"],
        )
    }
    /// A body in none of the `accepted` media types (415, as the apiserver words it).
    pub fn unsupported_body(content_type: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}; got {content_type}",
                accepted.join(", ")
            ),
        )
    }
    /// 422 with field causes, worded as the apiserver words validation failures.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{}\" is invalid: [{}]", qualified(group, kind), name, summary.join(", ")),
        );
        if causes.len() == 1 {
            e.message = format!("{} \"{}\" is invalid: {}", qualified(group, kind), name, summary[0]);
        }
        e.details = Some(Box::new(Details {
            name: Some(name.to_string()),
            group: Some(group.to_string()),
            kind: Some(kind.to_string()),
            causes,
        }));
        e
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// An error another API server answered (a Kubernetes `Status`), kept as it came: its code,
    /// its reason where it is one of the apiserver's, and its message.
    pub fn from_status(code: u16, reason: &str, message: impl Into<String>) -> Self {
        const REASONS: &[&str] = &[
            "AlreadyExists",
            "BadRequest",
            "Conflict",
            "Expired",
            "Forbidden",
            "Gone",
            "InternalError",
            "Invalid",
            "MethodNotAllowed",
            "NotAcceptable",
            "NotFound",
            "RequestEntityTooLarge",
            "ServerTimeout",
            "ServiceUnavailable",
            "Timeout",
            "TooManyRequests",
            "Unauthorized",
            "UnsupportedMediaType",
        ];
        let reason = REASONS.iter().find(|r| **r == reason).copied().unwrap_or(match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        });
        Self::new(if code == 0 { 500 } else { code }, reason, message)
    }

    /// The `Status` object as served.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if let Some(n) = &d.name {
                details.insert("name".into(), json!(n));
            }
            if let Some(g) = d.group.as_ref().filter(|g| !g.is_empty()) {
                details.insert("group".into(), json!(g));
            }
            if let Some(k) = &d.kind {
                details.insert("kind".into(), json!(k));
            }
            if !d.causes.is_empty() {
                let causes: Vec<Value> = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(causes));
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// `virtualmachines.kubevirt.io`, `VirtualMachine.kubevirt.io`; a core one by its name alone.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::internal(format!("storage: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
