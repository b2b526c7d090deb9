//! Field paths and sets of them, as server-side apply records ownership: a path names a field,
//! a list item by its keys or value, or an item by index; a set serializes to `FieldsV1`.

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;

/// One step of a path. Keys and values are kept as canonical JSON text so paths order and
/// compare without parsing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Field(String),
    /// An associative list's item, by its key fields: `{"name":"a"}` (fields sorted).
    Key(String),
    /// A set list's item, by its value.
    Value(String),
    Index(usize),
}

pub type Path = Vec<Element>;

/// `.spec.ports[port=80,protocol="TCP"]`, as the apiserver prints a path in a conflict.
pub fn display(path: &[Element]) -> String {
    let mut out = String::new();
    for e in path {
        match e {
            Element::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Element::Key(k) => {
                let fields: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Element::Value(v) => out.push_str(&format!("[={v}]")),
            Element::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Canonical JSON: object keys sorted, whatever order the input map keeps.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// A set of paths. Ownership sets are a few hundred paths at most, so a sorted set of whole
/// paths does (prefix questions are range scans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid FieldsV1 at {at}: {why}")]
pub struct FieldsV1Error {
    pub at: String,
    pub why: String,
}

impl FieldSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: Path) {
        self.0.insert(path);
    }

    pub fn contains(&self, path: &[Element]) -> bool {
        self.0.contains(path)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Path> {
        self.0.iter()
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// Whether `path` or anything under it is in the set.
    pub fn has_at_or_under(&self, path: &[Element]) -> bool {
        self.0.range(path.to_vec()..).next().is_some_and(|p| p.starts_with(path))
    }

    /// The set without `path` and everything under it.
    pub fn without_subtree(&mut self, path: &[Element]) {
        self.0.retain(|p| !p.starts_with(path));
    }

    /// The set as `FieldsV1`: `{"f:spec":{"f:replicas":{}}}`, `"."` marking a member that also
    /// has members under it.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for e in path {
                let entry = node.entry(encode(e)).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(child) = entry else { unreachable!("every node is an object") };
                node = child;
            }
        }
        mark_members(&mut root, &self.0, &mut Vec::new());
        Value::Object(root)
    }

    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, FieldsV1Error> {
        let mut set = FieldSet::new();
        let mut path = Vec::new();
        parse_node(v, &mut path, &mut set)?;
        Ok(set)
    }
}

fn mark_members(node: &mut Map<String, Value>, set: &BTreeSet<Path>, path: &mut Path) {
    let keys: Vec<String> = node.keys().filter(|k| k.as_str() != ".").cloned().collect();
    for key in keys {
        let Ok(e) = decode(&key) else { continue };
        path.push(e);
        if let Some(Value::Object(child)) = node.get_mut(&key) {
            if set.contains(path.as_slice()) && !child.is_empty() && !child.contains_key(".") {
                child.insert(".".into(), Value::Object(Map::new()));
            }
            mark_members(child, set, path);
        }
        path.pop();
    }
}

fn encode(e: &Element) -> String {
    match e {
        Element::Field(f) => format!("f:{f}"),
        Element::Key(k) => format!("k:{k}"),
        Element::Value(v) => format!("v:{v}"),
        Element::Index(i) => format!("i:{i}"),
    }
}

fn decode(key: &str) -> Result<Element, String> {
    let (prefix, rest) = key.split_at_checked(2).ok_or_else(|| format!("unknown element {key:?}"))?;
    let json = |text: &str| serde_json::from_str::<Value>(text).map_err(|e| format!("{key:?}: {e}"));
    match prefix {
        "f:" => Ok(Element::Field(rest.to_string())),
        "k:" => match json(rest)? {
            v @ Value::Object(_) => Ok(Element::Key(canonical(&v))),
            _ => Err(format!("{key:?}: a key must be a JSON object")),
        },
        "v:" => Ok(Element::Value(canonical(&json(rest)?))),
        "i:" => rest.parse().map(Element::Index).map_err(|_| format!("{key:?}: not an index")),
        _ => Err(format!("unknown element {key:?}")),
    }
}

/// Deep enough for any object the schema allows; a hostile entry cannot recurse further.
const MAX_DEPTH: usize = 64;

fn parse_node(v: &Value, path: &mut Path, set: &mut FieldSet) -> Result<(), FieldsV1Error> {
    let err = |path: &Path, why: String| FieldsV1Error { at: display(path), why };
    let Value::Object(m) = v else { return Err(err(path, "every node must be an object".into())) };
    if path.len() > MAX_DEPTH {
        return Err(err(path, format!("deeper than {MAX_DEPTH}")));
    }
    for (key, child) in m {
        if key == "." {
            set.insert(path.clone());
            continue;
        }
        path.push(decode(key).map_err(|why| err(path, why))?);
        match child {
            Value::Object(c) if c.is_empty() => set.insert(path.clone()),
            _ => parse_node(child, path, set)?,
        }
        path.pop();
    }
    Ok(())
}

impl fmt::Display for FieldSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|p| display(p)).collect();
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_round_trips_with_members_and_keys() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}, "f:finalizers": {"v:\"a\"": {}}}
        });
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert_eq!(set.len(), 5);
        assert_eq!(set.to_fields_v1(), v);
        let key = Element::Key(canonical(&json!({"protocol": "TCP", "port": 80})));
        let item = vec![Element::Field("spec".into()), Element::Field("ports".into()), key];
        assert!(set.contains(&item));
        assert_eq!(display(&item), ".spec.ports[port=80,protocol=\"TCP\"]");
        assert!(set.has_at_or_under(&[Element::Field("spec".into())]));
        assert!(!set.has_at_or_under(&[Element::Field("status".into())]));
    }

    #[test]
    fn malformed_fields_v1_is_an_error() {
        for bad in [json!({"x:y": {}}), json!({"f:a": 1}), json!({"k:[1]": {}}), json!({"i:z": {}}), json!([])] {
            assert!(FieldSet::from_fields_v1(&bad).is_err(), "{bad}");
        }
        let mut deep = json!({});
        for _ in 0..100 {
            deep = json!({"f:a": deep});
        }
        assert!(FieldSet::from_fields_v1(&deep).is_err());
    }
}
