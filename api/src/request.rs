//! Pure parsing of resource requests: path and query string in, a typed request out. No socket,
//! no store — so every route shape is unit-tested.

use converge_bridge::foreman::{self, VersionAlias};
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::selector::{FieldSelector, LabelSelector};
use converge_engine::store::{ListOptions, Propagation};
use converge_engine::ApiError;

/// Which resource a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub kind: &'static ResourceKind,
    /// Set for namespaced paths; `None` for cluster-scoped kinds and all-namespace lists.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<Subresource>,
    /// The legacy `/watch/` path prefix.
    pub watch_prefix: bool,
    /// Set when the path named an alias version (`kubevirt.io/v1alpha3`): objects go out under it.
    pub alias: Option<&'static VersionAlias>,
}

impl ResourcePath {
    /// The `apiVersion` objects carry on this path.
    pub fn api_version(&self) -> String {
        self.alias.map_or_else(|| self.kind.api_version(), VersionAlias::api_version)
    }

    /// Rewrite an outgoing object's `apiVersion` to the version the client addressed.
    pub fn present(&self, obj: &mut serde_json::Value) {
        if let Some(alias) = self.alias {
            alias.present(obj);
        }
    }

    /// `present` for an object kept as stored JSON text.
    pub fn present_raw<'a>(&self, raw: &'a str) -> std::borrow::Cow<'a, str> {
        present_raw(self.alias, raw)
    }
}

/// Stored JSON text shown in `alias`: untouched (not even parsed) when there is none.
pub fn present_raw<'a>(alias: Option<&VersionAlias>, raw: &'a str) -> std::borrow::Cow<'a, str> {
    let Some(alias) = alias else { return std::borrow::Cow::Borrowed(raw) };
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(mut obj) => {
            alias.present(&mut obj);
            std::borrow::Cow::Owned(obj.to_string())
        }
        Err(_) => std::borrow::Cow::Borrowed(raw),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Status,
    Scale,
}

/// Parse `/api/v1/...` or `/apis/{group}/{version}/...`; `None` when it is not a resource path.
pub fn parse_path(path: &str) -> Result<ResourcePath, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::route_not_found()),
    };
    let alias = foreman::alias_of(group, version);
    let (watch_prefix, rest) = match rest {
        ["watch", more @ ..] => (true, more),
        _ => (false, rest),
    };
    let find = |plural: &str| foreman::kind_at(group, version, plural).ok_or_else(ApiError::route_not_found);
    let namespaced = |plural: &str| foreman::kind_at(group, version, plural).filter(|k| k.namespaced);
    let path = match rest {
        [plural] => {
            ResourcePath { kind: find(plural)?, namespace: None, name: None, subresource: None, watch_prefix, alias }
        }
        ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => {
            let kind = find(plural)?;
            let (name, sub) = match tail {
                [] => (None, None),
                [name] => (Some(name.to_string()), None),
                [name, sub] => (Some(name.to_string()), Some(*sub)),
                _ => return Err(ApiError::route_not_found()),
            };
            ResourcePath {
                kind,
                namespace: Some(ns.to_string()),
                name,
                subresource: subresource(kind, sub)?,
                watch_prefix,
                alias,
            }
        }
        [plural, name, tail @ ..] => {
            let kind = find(plural)?;
            if kind.namespaced {
                return Err(ApiError::route_not_found());
            }
            let sub = match tail {
                [] => None,
                [sub] => Some(*sub),
                _ => return Err(ApiError::route_not_found()),
            };
            ResourcePath {
                kind,
                namespace: None,
                name: Some(name.to_string()),
                subresource: subresource(kind, sub)?,
                watch_prefix,
                alias,
            }
        }
        _ => return Err(ApiError::route_not_found()),
    };
    Ok(path)
}

fn subresource(kind: &ResourceKind, sub: Option<&str>) -> Result<Option<Subresource>, ApiError> {
    match sub {
        None => Ok(None),
        Some("status") if kind.status_subresource => Ok(Some(Subresource::Status)),
        Some("scale") if kind.scale_subresource => Ok(Some(Subresource::Scale)),
        Some(_) => Err(ApiError::route_not_found()),
    }
}

/// The query parameters the resource handlers read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub watch: bool,
    pub label_selector: String,
    pub field_selector: String,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub propagation: Option<Propagation>,
    pub include_object: IncludeObject,
    /// Who writes, for `managedFields`; required for an apply.
    pub field_manager: Option<String>,
    /// An apply's `force`: take fields other managers own.
    pub force: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

pub fn parse_propagation(value: &str) -> Result<Propagation, ApiError> {
    match value {
        "Background" => Ok(Propagation::Background),
        "Foreground" => Ok(Propagation::Foreground),
        "Orphan" => Ok(Propagation::Orphan),
        other => Err(ApiError::bad_request(format!("propagationPolicy: Unsupported value: \"{other}\": supported values: \"Background\", \"Foreground\", \"Orphan\""))),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "True")
}

/// The longest a watch or a request waits, whatever `timeoutSeconds` asks.
pub const MAX_TIMEOUT_SECONDS: u64 = 24 * 3600;
/// The apiserver's limit on a field manager's name.
pub const MAX_FIELD_MANAGER: usize = 128;
/// The most items one page may ask for.
pub const MAX_LIMIT: i64 = 100_000;

pub fn parse_query(pairs: &[(String, String)]) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (k, v) in pairs {
        match k.as_str() {
            "watch" => q.watch = truthy(v),
            "labelSelector" => q.label_selector = v.clone(),
            "fieldSelector" => q.field_selector = v.clone(),
            "limit" => {
                let n: i64 = v.parse().map_err(|_| ApiError::bad_request(format!("limit: Invalid value: \"{v}\": must be an integer")))?;
                // Bounded before the store adds to it; no page is larger anyway.
                q.limit = (n > 0).then_some(n.min(MAX_LIMIT) as usize);
            }
            "continue" => q.continue_token = Some(v.clone()).filter(|s| !s.is_empty()),
            "resourceVersion" => q.resource_version = Some(v.clone()).filter(|s| !s.is_empty()),
            "timeoutSeconds" => {
                let n: u64 = v.parse().map_err(|_| ApiError::bad_request(format!("timeoutSeconds: Invalid value: \"{v}\"")))?;
                // A deadline past the clock's range panicked the worker; no watch outlives a day.
                q.timeout_seconds = Some(n.min(MAX_TIMEOUT_SECONDS));
            }
            "allowWatchBookmarks" => q.allow_bookmarks = truthy(v),
            "dryRun" => {
                if v != "All" {
                    return Err(ApiError::bad_request(format!("dryRun: Unsupported value: \"{v}\": supported values: \"All\"")));
                }
                q.dry_run = true;
            }
            "fieldValidation" => {
                q.field_validation = match v.as_str() {
                    "Ignore" => FieldValidation::Ignore,
                    "Warn" | "" => FieldValidation::Warn,
                    "Strict" => FieldValidation::Strict,
                    other => return Err(ApiError::bad_request(format!("fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""))),
                }
            }
            "propagationPolicy" => q.propagation = Some(parse_propagation(v)?),
            "fieldManager" => {
                if v.len() > MAX_FIELD_MANAGER || v.chars().any(char::is_control) {
                    return Err(ApiError::bad_request(format!(
                        "fieldManager: Invalid value: {v:?}: must be at most {MAX_FIELD_MANAGER} printable characters"
                    )));
                }
                q.field_manager = Some(v.clone()).filter(|s| !s.is_empty());
            }
            "force" => {
                q.force = Some(match v.as_str() {
                    "true" | "1" | "True" => true,
                    "false" | "0" | "False" | "" => false,
                    other => return Err(ApiError::bad_request(format!("force: Invalid value: {other:?}: must be true or false"))),
                })
            }
            "includeObject" => {
                q.include_object = match v.as_str() {
                    "None" => IncludeObject::None,
                    "Object" => IncludeObject::Object,
                    _ => IncludeObject::Metadata,
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Fields each kind can be selected by, beyond `metadata.name` and `metadata.namespace`.
pub fn selectable_fields(kind: &ResourceKind) -> &'static [&'static str] {
    if std::ptr::eq(kind, &kinds::EVENT) {
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    } else if std::ptr::eq(kind, &kinds::NAMESPACE) {
        &["status.phase"]
    } else if std::ptr::eq(kind, &kinds::SECRET) {
        &["type"]
    } else {
        &[]
    }
}

impl Query {
    pub fn list_options(&self, kind: &ResourceKind) -> Result<ListOptions, ApiError> {
        let labels = LabelSelector::parse(&self.label_selector).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(&self.field_selector, selectable_fields(kind))
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        Ok(ListOptions { labels, fields, limit: self.limit, continue_token: self.continue_token.clone() })
    }
}

/// What the client wants back: plain objects or a `meta.k8s.io` Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> ResourcePath {
        match parse_path(path) {
            Ok(p) => p,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    #[test]
    fn every_route_shape() {
        let p = ok("/apis/kubevirt.io/v1/namespaces/default/virtualmachines");
        assert_eq!((p.kind.kind, p.namespace.as_deref(), p.name.as_deref()), ("VirtualMachine", Some("default"), None));
        let p = ok("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web");
        assert_eq!(p.name.as_deref(), Some("web"));
        let p = ok("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web/status");
        assert_eq!(p.subresource, Some(Subresource::Status));
        let p = ok("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancereplicasets/rs/scale");
        assert_eq!(p.subresource, Some(Subresource::Scale));
        let p = ok("/apis/kubevirt.io/v1/virtualmachines");
        assert_eq!((p.namespace, p.name), (None, None));
        let p = ok("/api/v1/namespaces");
        assert_eq!(p.kind.kind, "Namespace");
        let p = ok("/api/v1/namespaces/default");
        assert_eq!((p.kind.kind, p.name.as_deref()), ("Namespace", Some("default")));
        let p = ok("/api/v1/namespaces/default/status");
        assert_eq!((p.kind.kind, p.subresource), ("Namespace", Some(Subresource::Status)));
        let p = ok("/api/v1/namespaces/default/configmaps");
        assert_eq!((p.kind.kind, p.namespace.as_deref()), ("ConfigMap", Some("default")));
        let p = ok("/api/v1/watch/namespaces/default/events");
        assert!(p.watch_prefix);
    }

    #[test]
    fn refuses_what_is_not_served() {
        for bad in [
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web/scale",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachinepools",
            "/apis/kubevirt.io/v2/virtualmachines",
            "/api/v1/configmaps/x",
            "/api/v1/namespaces/default/configmaps/a/b/c",
            "/healthz",
        ] {
            assert!(parse_path(bad).is_err_and(|e| e.code == 404), "{bad}");
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn query_parameters() {
        let q = parse_query(&pairs(&[
            ("watch", "true"),
            ("limit", "5"),
            ("dryRun", "All"),
            ("fieldValidation", "Strict"),
            ("propagationPolicy", "Foreground"),
        ]));
        let q = q.unwrap_or_default();
        assert!(q.watch && q.dry_run);
        assert_eq!(q.limit, Some(5));
        assert_eq!(q.field_validation, FieldValidation::Strict);
        assert_eq!(q.propagation, Some(Propagation::Foreground));
        assert!(parse_query(&pairs(&[("dryRun", "Some")])).is_err());
        assert!(parse_query(&pairs(&[("limit", "x")])).is_err());
        assert!(parse_query(&pairs(&[("fieldValidation", "Loud")])).is_err());
        assert!(parse_query(&pairs(&[("propagationPolicy", "Now")])).is_err());
    }

    #[test]
    fn integers_are_bounded_before_use() {
        let q = parse_query(&pairs(&[("timeoutSeconds", "18446744073709551615"), ("limit", "9223372036854775807")]))
            .unwrap_or_default();
        assert_eq!(q.timeout_seconds, Some(MAX_TIMEOUT_SECONDS));
        assert_eq!(q.limit, Some(MAX_LIMIT as usize));
        assert!(parse_query(&pairs(&[("timeoutSeconds", "18446744073709551616")])).is_err());
    }

    #[test]
    fn selectors_are_checked_per_kind() {
        let q = Query { field_selector: "involvedObject.name=x".into(), ..Default::default() };
        assert!(q.list_options(&kinds::EVENT).is_ok());
        assert!(q.list_options(&kinds::VIRTUAL_MACHINE).is_err());
    }

    #[test]
    fn table_negotiation() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }
}
