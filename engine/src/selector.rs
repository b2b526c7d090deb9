//! Label and field selectors, parsed once per request and matched against objects.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

impl LabelSelector {
    /// Parse `a=b,c!=d,e in (f,g),!h` as kubectl sends it.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut reqs = vec![];
        for term in split_terms(input) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Build from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(selector: &Value) -> Result<Self, SelectorError> {
        let mut reqs = vec![];
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                reqs.push(Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()));
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                let req = match e.get("operator").and_then(Value::as_str) {
                    Some("In") => Requirement::In(key, values),
                    Some("NotIn") => Requirement::NotIn(key, values),
                    Some("Exists") => Requirement::Exists(key),
                    Some("DoesNotExist") => Requirement::NotExists(key),
                    other => return Err(SelectorError(format!("unknown operator {other:?}"))),
                };
                reqs.push(req);
            }
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// Split on commas that are not inside parentheses.
fn split_terms(input: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&input[start..]);
    out
}

fn check_key(key: &str, term: &str) -> Result<String, SelectorError> {
    if crate::meta::label_key_errors(key).is_empty() {
        Ok(key.to_string())
    } else {
        Err(SelectorError(format!("invalid label key \"{key}\" in \"{term}\"")))
    }
}

fn check_value(value: &str, term: &str) -> Result<String, SelectorError> {
    if crate::meta::label_value_errors(value).is_empty() {
        Ok(value.to_string())
    } else {
        Err(SelectorError(format!("invalid label value \"{value}\" in \"{term}\"")))
    }
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(check_key(key.trim(), term)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(check_key(k.trim(), term)?, check_value(v.trim(), term)?));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Requirement::Equals(check_key(k.trim(), term)?, check_value(v.trim(), term)?));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Requirement::Equals(check_key(k.trim(), term)?, check_value(v.trim(), term)?));
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(SelectorError(format!("found '{rest}', expected: in, notin, =, ==, !=")));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| SelectorError(format!("found '{list}', expected: '('")))?;
        let values = inner.split(',').map(|v| check_value(v.trim(), term)).collect::<Result<Vec<_>, _>>()?;
        let key = check_key(words[0], term)?;
        return Ok(if op == "in" { Requirement::In(key, values) } else { Requirement::NotIn(key, values) });
    }
    Ok(Requirement::Exists(check_key(term, term)?))
}

/// A field selector: `metadata.name=x,involvedObject.kind!=Pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parse and check each field is one the kind supports (`fields` beyond name and namespace).
    pub fn parse(input: &str, extra_fields: &[&str]) -> Result<Self, SelectorError> {
        let mut terms = vec![];
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" && !extra_fields.contains(&field) {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The exact name asked for, when the selector pins one (lets the store skip a scan).
    pub fn pinned_name(&self) -> Option<&str> {
        self.0.iter().find(|(f, eq, _)| f == "metadata.name" && *eq).map(|(_, _, v)| v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let path: Vec<&str> = field.split('.').collect();
            let actual = crate::meta::at(obj, &path).and_then(Value::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_operator() {
        let l = labels(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).map(|sel| sel.matches(&l));
        assert_eq!(m("app=web"), Ok(true));
        assert_eq!(m("app==web"), Ok(true));
        assert_eq!(m("app!=web"), Ok(false));
        assert_eq!(m("app in (web,db)"), Ok(true));
        assert_eq!(m("app notin (web,db)"), Ok(false));
        assert_eq!(m("tier"), Ok(true));
        assert_eq!(m("!tier"), Ok(false));
        assert_eq!(m("!missing,app=web"), Ok(true));
        assert_eq!(m("missing notin (x)"), Ok(true));
        assert_eq!(m(""), Ok(true));
    }

    #[test]
    fn refuses_garbage() {
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("bad key=1").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "involvedObject": {"kind": "VirtualMachine"}});
        let fs = FieldSelector::parse("metadata.name=a,involvedObject.kind=VirtualMachine", &["involvedObject.kind"]);
        assert!(fs.as_ref().is_ok_and(|f| f.matches(&obj)));
        assert_eq!(fs.ok().and_then(|f| f.pinned_name().map(str::to_string)), Some("a".into()));
        assert!(FieldSelector::parse("spec.x=1", &[]).is_err());
        assert!(FieldSelector::parse("metadata.name!=a", &[]).is_ok_and(|f| !f.matches(&obj)));
    }

    #[test]
    fn from_label_selector_object() {
        let sel = LabelSelector::from_object(
            &json!({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}),
        );
        let sel = sel.unwrap_or_default();
        assert!(sel.matches(&labels(json!({"a": "1", "b": ""}))));
        assert!(!sel.matches(&labels(json!({"a": "1"}))));
    }
}
