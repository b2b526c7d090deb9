//! Core kinds: what the apiserver checks on Secrets and ConfigMaps.

use crate::error::Cause;
use serde_json::Value;

fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

const KEY_RULE: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// `stringData` is write-only: merged into `data`, base64-encoded, then dropped. `type`
/// defaults to `Opaque`, as the apiserver's defaulter sets it.
pub fn mutate_secret(secret: &mut Value) {
    use base64::Engine;
    let Some(obj) = secret.as_object_mut() else { return };
    if obj.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
        obj.insert("type".into(), Value::String("Opaque".into()));
    }
    let Some(Value::Object(string_data)) = obj.remove("stringData") else { return };
    let data = obj.entry("data").or_insert_with(|| Value::Object(Default::default()));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

pub fn validate_secret(secret: &Value, causes: &mut Vec<Cause>) {
    use base64::Engine;
    for (k, v) in secret.get("data").and_then(Value::as_object).into_iter().flatten() {
        if !key_ok(k) {
            causes.push(Cause::invalid(format!("data[{k}]"), format!("Invalid value: \"{k}\": {KEY_RULE}")));
        }
        if v.as_str().is_none_or(|s| base64::engine::general_purpose::STANDARD.decode(s).is_err()) {
            causes.push(Cause::invalid(format!("data[{k}]"), "illegal base64 data"));
        }
    }
}

pub fn validate_config_map(cm: &Value, causes: &mut Vec<Cause>) {
    let data = cm.get("data").and_then(Value::as_object);
    let binary = cm.get("binaryData").and_then(Value::as_object);
    for (field, map) in [("data", data), ("binaryData", binary)] {
        for k in map.into_iter().flat_map(|m| m.keys()) {
            if !key_ok(k) {
                causes.push(Cause::invalid(format!("{field}[{k}]"), format!("Invalid value: \"{k}\": {KEY_RULE}")));
            }
        }
    }
    if let (Some(d), Some(b)) = (data, binary) {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            causes.push(Cause::invalid(
                format!("data[{k}]"),
                format!("Invalid value: \"{k}\": duplicate of key present in binaryData"),
            ));
        }
    }
}
