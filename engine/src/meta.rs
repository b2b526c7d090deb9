//! Reading and writing `metadata` on untyped objects, and the apiserver's name rules.
//!
//! Objects travel as `serde_json::Value` so that every field a client sends (and KubeVirt's ~400
//! definitions) round-trips unchanged; the schema registry guards their shape.

use serde_json::{Map, Value};

pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

/// The object's metadata map, created when missing or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("object ensured above");
    let entry = map.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("object ensured above")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    metadata(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

pub fn creation_timestamp(obj: &Value) -> &str {
    meta_str(obj, "creationTimestamp").unwrap_or("")
}

pub fn namespace(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or("")
}

pub fn uid(obj: &Value) -> &str {
    meta_str(obj, "uid").unwrap_or("")
}

pub fn resource_version(obj: &Value) -> Option<i64> {
    meta_str(obj, "resourceVersion").and_then(|s| s.parse().ok())
}

pub fn string_map(obj: &Value, field: &str) -> Map<String, Value> {
    metadata(obj).and_then(|m| m.get(field)).and_then(Value::as_object).cloned().unwrap_or_default()
}

/// One annotation's value (`metadata.annotations[key]`).
pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    metadata(obj).and_then(|m| m.get("annotations")).and_then(|a| a.get(key)).and_then(Value::as_str)
}

pub fn labels(obj: &Value) -> Map<String, Value> {
    string_map(obj, "labels")
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

pub fn set_finalizers(obj: &mut Value, finalizers: &[String]) {
    let meta = metadata_mut(obj);
    if finalizers.is_empty() {
        meta.remove("finalizers");
    } else {
        meta.insert("finalizers".into(), Value::from(finalizers.to_vec()));
    }
}

pub fn is_deleting(obj: &Value) -> bool {
    meta_str(obj, "deletionTimestamp").is_some()
}

/// `(uid, kind, name)` of each ownerReference.
pub fn owner_uids(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string)).collect())
        .unwrap_or_default()
}

/// A value at a dotted path (`spec.template.spec`), for reading only.
pub fn at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, key| v.get(key))
}

/// A mutable object at a dotted path, creating empty objects along the way.
pub fn at_mut<'a>(obj: &'a mut Value, path: &[&str]) -> &'a mut Value {
    let mut cur = obj;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("object ensured above")
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    cur
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// Problems with `value` as an RFC 1123 label, worded as the apiserver words them.
pub fn dns1123_label_errors(value: &str) -> Vec<String> {
    let mut errs = vec![];
    if value.len() > DNS1123_LABEL_MAX {
        errs.push(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    let ok = !value.is_empty() && value.chars().all(is_label_char) && !value.starts_with('-') && !value.ends_with('-');
    if !ok {
        errs.push("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into());
    }
    errs
}

/// Problems with `value` as an RFC 1123 subdomain (names such as `web01.example.com`).
pub fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errs = vec![];
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    let ok = !value.is_empty()
        && value.split('.').all(|part| {
            !part.is_empty() && part.chars().all(is_label_char) && !part.starts_with('-') && !part.ends_with('-')
        });
    if !ok {
        errs.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    errs
}

/// Label keys: optional DNS subdomain prefix, then a name of up to 63 characters.
pub fn label_key_errors(key: &str) -> Vec<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errs = vec![];
    if let Some(p) = prefix {
        if !dns1123_subdomain_errors(p).is_empty() {
            errs.push("prefix part must be a DNS-1123 subdomain".into());
        }
    }
    if !is_qualified_name_part(name) {
        errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    errs
}

fn is_qualified_name_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label values: empty, or up to 63 characters of the qualified-name alphabet.
pub fn label_value_errors(value: &str) -> Vec<String> {
    if value.is_empty() || is_qualified_name_part(value) {
        vec![]
    } else {
        vec!["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subdomains_accept_fqdns_and_refuse_uppercase() {
        assert!(dns1123_subdomain_errors("web01.example.com").is_empty());
        assert!(!dns1123_subdomain_errors("Web01").is_empty());
        assert!(!dns1123_subdomain_errors("a..b").is_empty());
        assert!(!dns1123_subdomain_errors("-a").is_empty());
        assert!(!dns1123_subdomain_errors(&"a".repeat(254)).is_empty());
    }

    #[test]
    fn labels_refuse_dots() {
        assert!(dns1123_label_errors("default").is_empty());
        assert!(!dns1123_label_errors("a.b").is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key_errors("kubevirt.io/domain").is_empty());
        assert!(label_key_errors("app").is_empty());
        assert!(!label_key_errors("bad key").is_empty());
        assert!(label_value_errors("").is_empty());
        assert!(!label_value_errors("-x").is_empty());
    }

    #[test]
    fn at_mut_creates_the_path() {
        let mut v = json!({});
        *at_mut(&mut v, &["spec", "template"]) = json!(1);
        assert_eq!(v, json!({"spec": {"template": 1}}));
        assert_eq!(at(&v, &["spec", "template"]), Some(&json!(1)));
    }
}
