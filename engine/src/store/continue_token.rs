//! `continue` tokens of paged lists.

use crate::error::{ApiError, ApiResult};
use serde_json::{json, Value};

/// `continue` tokens: the list's resourceVersion and the last key served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ContinueToken {
    pub rv: i64,
    pub namespace: String,
    pub name: String,
}

impl ContinueToken {
    pub fn encode(&self) -> String {
        use base64::Engine;
        let body = json!({"v": "meta.k8s.io/v1", "rv": self.rv, "ns": self.namespace, "start": self.name});
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string())
    }
    pub fn decode(token: &str) -> ApiResult<Self> {
        use base64::Engine;
        let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
        let bytes =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(ContinueToken {
            rv: v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?,
            namespace: v.get("ns").and_then(Value::as_str).ok_or_else(bad)?.to_string(),
            name: v.get("start").and_then(Value::as_str).ok_or_else(bad)?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_refuse_garbage() {
        let t = ContinueToken { rv: 42, namespace: "default".into(), name: "vm-9".into() };
        assert_eq!(ContinueToken::decode(&t.encode()).ok(), Some(t));
        assert!(ContinueToken::decode("%%%").is_err());
        assert!(ContinueToken::decode("e30").is_err());
    }
}
