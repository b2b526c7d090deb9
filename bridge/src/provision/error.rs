//! The one error shape of `/bridge/v1`: a stable code a pipeline can branch on, a message a
//! person can act on, the request field at fault and the step that failed.

use converge_engine::ApiError;
use serde::{Deserialize, Serialize};

/// Stable error codes. New codes may be added; existing ones keep their meaning and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ErrorCode {
    /// The body is not JSON, or not the request's shape (400).
    InvalidRequest,
    /// A field has a value the API does not take (422); `field` names it.
    FieldInvalid,
    /// No bearer token, or a token that is expired, revoked or not ours (401).
    Unauthorized,
    /// The token may not do this in this namespace (403).
    Forbidden,
    /// No such host, or no such route (404).
    NotFound,
    /// The route does not take this method (405).
    MethodNotAllowed,
    /// A live host of this name exists in the namespace (409).
    HostExists,
    /// An object the host would make exists already and is not the host's (409).
    ObjectExists,
    /// The Idempotency-Key was used before with a different request (422).
    IdempotencyKeyReused,
    /// A request with this Idempotency-Key, or on this host, is still being carried out (409).
    RequestInProgress,
    /// The named StorageClass does not exist, or none is named and there is no default (422).
    StorageClassNotFound,
    /// The named DataSource does not exist (422).
    DataSourceNotFound,
    /// The PersistentVolumeClaim to clone does not exist (422).
    PvcNotFound,
    /// The NetworkAttachmentDefinition does not exist (422).
    NetworkNotFound,
    /// The flavor (VirtualMachineClusterInstancetype) does not exist (422).
    FlavorNotFound,
    /// A KubeVirt object the host would make was refused by admission (422); `field` names the
    /// request field when it can be told, and the message is admission's.
    ObjectInvalid,
    /// The host is not in a state the action applies to (409): start a running host, etc.
    Conflict,
    /// The body is larger than the API takes (413).
    TooLarge,
    /// The store did not answer (503); retry.
    Unavailable,
    /// A bug or an unexpected failure (500); the message says what failed.
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            HostExists | ObjectExists | RequestInProgress | Conflict => 409,
            TooLarge => 413,
            FieldInvalid | IdempotencyKeyReused | StorageClassNotFound | DataSourceNotFound | PvcNotFound
            | NetworkNotFound | FlavorNotFound | ObjectInvalid => 422,
            Unavailable => 503,
            Internal => 500,
        }
    }
}

/// What went wrong. Serialized as `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[error("{code:?}: {message}")]
pub struct BridgeError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, as a path (`disks[1].storageClass`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The provisioning step that failed (`disk/data`); set when a step ran and was rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: BridgeError,
}

impl BridgeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BridgeError { code, message: message.into(), field: None, step: None }
    }
    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        BridgeError { code, message: message.into(), field: Some(field.into()), step: None }
    }
    pub fn at_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }
    pub fn with_field(mut self, field: Option<String>) -> Self {
        if self.field.is_none() {
            self.field = field;
        }
        self
    }
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(ErrorBody { error: self.clone() }).unwrap_or_default()
    }
    pub fn not_found(namespace: &str, name: &str) -> Self {
        BridgeError::new(ErrorCode::NotFound, format!("there is no host {namespace}/{name}"))
    }
    pub fn internal(message: impl Into<String>) -> Self {
        BridgeError::new(ErrorCode::Internal, message)
    }
}

/// An engine error (a Kubernetes Status) in the bridge's shape: the code from its HTTP status,
/// the message and first field cause as they are.
impl From<ApiError> for BridgeError {
    fn from(e: ApiError) -> Self {
        let code = match e.code {
            400 => ErrorCode::InvalidRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::TooLarge,
            422 => ErrorCode::ObjectInvalid,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        let mut message = e.message.clone();
        for cause in e.causes() {
            if !message.contains(&cause.message) {
                message.push_str(&format!("; {}: {}", cause.field, cause.message));
            }
        }
        BridgeError { code, message, field: None, step: None }
    }
}

impl From<sqlx::Error> for BridgeError {
    fn from(e: sqlx::Error) -> Self {
        BridgeError::new(ErrorCode::Unavailable, format!("the provisioning records: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_is_one_object_under_error() {
        let e = BridgeError::field(ErrorCode::StorageClassNotFound, "disks[0].storageClass", "no class \"fast\"")
            .at_step("disk/root");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "StorageClassNotFound", "message": "no class \"fast\"",
                "field": "disks[0].storageClass", "step": "disk/root"}})
        );
        assert_eq!(e.http_status(), 422);
    }

    #[test]
    fn engine_errors_keep_their_status() {
        let e: BridgeError = ApiError::forbidden("no").into();
        assert_eq!((e.code, e.http_status()), (ErrorCode::Forbidden, 403));
        let e: BridgeError = ApiError::internal("boom").into();
        assert_eq!(e.http_status(), 500);
    }
}
