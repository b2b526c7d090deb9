//! Core kinds: what the apiserver checks on Secrets and ConfigMaps.

use crate::error::Cause;
use crate::meta;
use serde_json::{json, Value};

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

/// Services as the apiserver validates them, for the types this node forwards.
pub fn admit_service(obj: &mut Value, causes: &mut Vec<Cause>) {
    let spec = meta::at_mut(obj, &["spec"]);
    if spec.get("type").is_none_or(Value::is_null) {
        spec["type"] = json!("ClusterIP");
    }
    for (field, default) in [("sessionAffinity", "None"), ("internalTrafficPolicy", "Cluster")] {
        if spec.get(field).is_none_or(Value::is_null) {
            spec[field] = json!(default);
        }
    }
    let kind = spec.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    if !["ClusterIP", "NodePort"].contains(&kind.as_str()) {
        causes.push(Cause::not_supported(
            "spec.type",
            format!("Unsupported value: \"{kind}\": supported values: \"ClusterIP\", \"NodePort\""),
        ));
    }
    if kind == "NodePort" && spec.get("externalTrafficPolicy").is_none_or(Value::is_null) {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
    let count = ports.as_ref().map_or(0, |p| p.len());
    if count == 0 && !headless {
        causes.push(Cause::required("spec.ports", "Required value"));
    }
    let mut names = vec![];
    for (i, port) in ports.into_iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        if port.get("protocol").is_none_or(Value::is_null) {
            port["protocol"] = json!("TCP");
        }
        let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or_default().to_string();
        if !["TCP", "UDP"].contains(&protocol.as_str()) {
            causes.push(Cause::not_supported(
                format!("{field}.protocol"),
                format!("Unsupported value: \"{protocol}\": supported values: \"TCP\", \"UDP\""),
            ));
        }
        match port.get("port").and_then(Value::as_u64) {
            Some(1..=65535) => {}
            _ => causes
                .push(Cause::invalid(format!("{field}.port"), "Invalid value: must be between 1 and 65535, inclusive")),
        }
        if port.get("targetPort").is_none_or(Value::is_null) {
            port["targetPort"] = port.get("port").cloned().unwrap_or(Value::Null);
        }
        match port.get("targetPort") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=65535).contains(&n)) => {}
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => causes.push(Cause::invalid(
                format!("{field}.targetPort"),
                "Invalid value: must be a port number between 1 and 65535 or a port name",
            )),
        }
        let name = port.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if count > 1 && name.is_empty() {
            causes.push(Cause::required(format!("{field}.name"), "Required value: when more than one port is given"));
        }
        if !name.is_empty() && names.contains(&name) {
            causes.push(Cause::duplicate(format!("{field}.name"), format!("Duplicate value: \"{name}\"")));
        }
        names.push(name);
    }
    if let Some(selector) = spec.get("selector").filter(|s| !s.is_null()) {
        if !selector.as_object().is_some_and(|m| m.values().all(Value::is_string)) {
            causes.push(Cause::invalid("spec.selector", "Invalid value: a map of label keys to string values"));
        }
    }
}

/// A NetworkAttachmentDefinition is stored whatever its config, as Multus's CRD stores it (and as
/// Foreman's recorded clusters did); a config that is no CNI configuration is named in a warning,
/// and a VMI that uses it fails to start with the reason.
pub fn network_attachment_warnings(obj: &Value) -> Vec<String> {
    match crate::network::nad::validate_config(obj) {
        Ok(()) => vec![],
        Err(m) => vec![format!("spec.config: {m}; a VMI on this network will not start")],
    }
}
