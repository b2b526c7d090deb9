//! The schema documents kubectl reads: `/openapi/v3` (an index, then one OpenAPI 3 document per
//! group-version) and `/openapi/v2` (Swagger 2.0). Built from the kind registry and the schema
//! registry, with `x-kubernetes-group-version-kind` on each kind and its operations, and the
//! `fieldValidation` parameter on PATCH — how kubectl learns to leave validation to the server.

use converge_engine::kinds::{self, ResourceKind};
use converge_engine::schema;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

fn gvk(k: &ResourceKind) -> Value {
    json!([{"group": k.group, "version": k.version, "kind": k.kind}])
}

fn query_param(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind}, "uniqueItems": true})
}

fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "dryRun",
            "string",
            "When present, indicates that modifications should not be persisted. Valid value: All",
        ),
        query_param("fieldManager", "string", "A name associated with the actor making these changes."),
        query_param("fieldValidation", "string", "How to treat unknown fields: Ignore, Warn (default) or Strict."),
    ]
}

fn list_params() -> Vec<Value> {
    [
        ("labelSelector", "string"),
        ("fieldSelector", "string"),
        ("limit", "integer"),
        ("continue", "string"),
        ("resourceVersion", "string"),
        ("timeoutSeconds", "integer"),
        ("watch", "boolean"),
        ("allowWatchBookmarks", "boolean"),
    ]
    .iter()
    .map(|(n, t)| query_param(n, t, ""))
    .collect()
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "uniqueItems": true})
}

fn schema_ref(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"$ref": format!("#/components/schemas/{name}")})
    } else {
        json!({"$ref": format!("#/definitions/{name}")})
    }
}

/// The list's published definition, or (for kinds whose publisher has none, such as CDI's) the
/// shape every Kubernetes list has.
fn list_schema(k: &ResourceKind, v3: bool) -> Value {
    let name = format!("{}List", k.definition);
    if schema::definitions().contains_key(&name) {
        return schema_ref(&name, v3);
    }
    json!({
        "type": "object",
        "description": format!("A list of {}.", k.kind),
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": schema_ref("k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta", v3),
            "items": {"type": "array", "items": schema_ref(k.definition, v3)},
        },
    })
}

/// The `Status` every refusal answers with.
pub const STATUS_DEFINITION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Status";

/// Errors any operation may answer with, each a `Status` (a 5xx is a bug, so none is listed).
const ERROR_CODES: &[(&str, &str)] = &[
    ("400", "Bad request: the body or a parameter cannot be used; the Status says which"),
    ("401", "No valid bearer token"),
    ("403", "The token's role or namespaces do not allow this"),
    ("404", "No such object or namespace"),
    ("405", "The method is not served here"),
    ("406", "No representation matches the Accept header"),
    ("409", "Conflict: already exists, or the resourceVersion or uid precondition is stale"),
    ("410", "Gone: the continue token or resourceVersion is too old"),
    ("413", "The body is too large"),
    ("415", "The Content-Type is not accepted here"),
    ("422", "Invalid: the object breaks a rule; the Status lists each field"),
];

/// Success codes by Kubernetes action, as the apiserver documents them.
fn success_codes(action: &str) -> &'static [&'static str] {
    match action {
        "post" => &["200", "201", "202"],
        "put" | "patch" => &["200", "201"],
        "delete" => &["200", "202"],
        _ => &["200"],
    }
}

fn responses(action: &str, response: &Value, v3: bool) -> Value {
    let status = schema_ref(STATUS_DEFINITION, v3);
    // A delete that completes at once answers with a Status; one held by finalizers, the object.
    let ok = if action == "delete" { json!({"anyOf": [response, status]}) } else { response.clone() };
    let body = |schema: &Value| {
        if v3 {
            json!({"content": {"application/json": {"schema": schema}}})
        } else {
            json!({"schema": schema})
        }
    };
    let mut out = Map::new();
    for code in success_codes(action) {
        let mut r = body(&ok);
        r["description"] = json!(if *code == "201" {
            "Created"
        } else if *code == "202" {
            "Accepted"
        } else {
            "OK"
        });
        out.insert(code.to_string(), r);
    }
    for (code, _) in ERROR_CODES {
        let at = if v3 { "#/components/responses" } else { "#/responses" };
        out.insert(code.to_string(), json!({"$ref": format!("{at}/Status{code}")}));
    }
    Value::Object(out)
}

/// The shared error responses the operations refer to (`components.responses` in OpenAPI 3,
/// top-level `responses` in Swagger 2).
pub fn error_responses(v3: bool) -> Value {
    let status = schema_ref(STATUS_DEFINITION, v3);
    let mut out = Map::new();
    for (code, description) in ERROR_CODES {
        let mut r =
            if v3 { json!({"content": {"application/json": {"schema": status}}}) } else { json!({"schema": status}) };
        r["description"] = json!(description);
        out.insert(format!("Status{code}"), r);
    }
    Value::Object(out)
}

fn operation(
    k: &ResourceKind,
    action: &str,
    id: &str,
    params: Vec<Value>,
    body: Option<(Vec<&str>, Value)>,
    response: Value,
    v3: bool,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "tags": [if k.group.is_empty() { "core_v1".to_string() } else { format!("{}_{}", k.group.replace('.', "_"), k.version) }],
        "parameters": params,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(k)[0].clone(),
    });
    if v3 {
        op["responses"] = responses(action, &response, true);
        if let Some((types, schema)) = body {
            let content: Map<String, Value> =
                types.iter().map(|t| (t.to_string(), json!({"schema": schema.clone()}))).collect();
            op["requestBody"] = json!({"required": true, "content": content});
        }
    } else {
        op["responses"] = responses(action, &response, false);
        if let Some((types, schema)) = body {
            op["consumes"] = json!(types);
            let mut p = op["parameters"].as_array().cloned().unwrap_or_default();
            p.push(json!({"name": "body", "in": "body", "required": true, "schema": schema}));
            op["parameters"] = Value::Array(p);
        }
        if let Some(params) = op["parameters"].as_array_mut() {
            for p in params.iter_mut() {
                if let Some(t) = p.get("schema").and_then(|s| s.get("type")).cloned() {
                    p["type"] = t;
                    p.as_object_mut().map(|m| m.remove("schema"));
                }
            }
        }
    }
    op
}

fn paths_for(k: &ResourceKind, v3: bool) -> Vec<(String, Value)> {
    let prefix = k.path_prefix();
    let (collection, item_base) = if k.namespaced {
        (
            format!("{prefix}/namespaces/{{namespace}}/{}", k.plural),
            format!("{prefix}/namespaces/{{namespace}}/{}", k.plural),
        )
    } else {
        (format!("{prefix}/{}", k.plural), format!("{prefix}/{}", k.plural))
    };
    let item = format!("{item_base}/{{name}}");
    let scope = if k.namespaced { "Namespaced" } else { "" };
    let obj = schema_ref(k.definition, v3);
    let list = list_schema(k, v3);
    let patch_types: Vec<&str> = if k.is_core() {
        vec![
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
        ]
    } else {
        vec!["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
    };
    let ns_params: Vec<Value> = if k.namespaced { vec![path_param("namespace")] } else { vec![] };
    let with = |mut base: Vec<Value>, more: Vec<Value>| {
        base.extend(more);
        base
    };
    let item_params = with(ns_params.clone(), vec![path_param("name")]);
    let patch_params = || {
        let force =
            "Force is going to \"force\" Apply requests: taking the fields other managers own. Apply patches alone.";
        with(with(item_params.clone(), write_params()), vec![query_param("force", "boolean", force)])
    };
    let mut out = vec![];
    if k.create_only {
        let post = operation(
            k,
            "post",
            &format!("create{scope}{}", k.kind),
            with(ns_params, write_params()),
            Some((vec!["application/json"], obj.clone())),
            obj,
            v3,
        );
        return vec![(collection, json!({"post": post}))];
    }
    out.push((
        collection.clone(),
        json!({
            "get": operation(k, "list", &format!("list{scope}{}", k.kind), with(ns_params.clone(), list_params()), None, list.clone(), v3),
            "post": operation(k, "post", &format!("create{scope}{}", k.kind), with(ns_params.clone(), write_params()), Some((vec!["application/json"], obj.clone())), obj.clone(), v3),
            "delete": operation(k, "deletecollection", &format!("deleteCollection{scope}{}", k.kind), with(ns_params.clone(), list_params()), None, json!({"type": "object"}), v3),
        }),
    ));
    out.push((
        item.clone(),
        json!({
            "get": operation(k, "get", &format!("read{scope}{}", k.kind), item_params.clone(), None, obj.clone(), v3),
            "put": operation(k, "put", &format!("replace{scope}{}", k.kind), with(item_params.clone(), write_params()), Some((vec!["application/json"], obj.clone())), obj.clone(), v3),
            "patch": operation(k, "patch", &format!("patch{scope}{}", k.kind), patch_params(), Some((patch_types.clone(), json!({"type": "object"}))), obj.clone(), v3),
            "delete": operation(k, "delete", &format!("delete{scope}{}", k.kind), with(item_params.clone(), vec![query_param("dryRun", "string", ""), query_param("propagationPolicy", "string", "")]), None, obj.clone(), v3),
        }),
    ));
    if k.status_subresource {
        out.push((
            format!("{item}/status"),
            json!({
                "get": operation(k, "get", &format!("read{scope}{}Status", k.kind), item_params.clone(), None, obj.clone(), v3),
                "put": operation(k, "put", &format!("replace{scope}{}Status", k.kind), with(item_params.clone(), write_params()), Some((vec!["application/json"], obj.clone())), obj.clone(), v3),
                "patch": operation(k, "patch", &format!("patch{scope}{}Status", k.kind), patch_params(), Some((patch_types, json!({"type": "object"}))), obj.clone(), v3),
            }),
        ));
    }
    out
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/definitions/") {
                    *r = format!("#/components/schemas/{name}");
                }
            }
            m.values_mut().for_each(rewrite_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// All definitions, with each served kind marked with its group-version-kind.
fn definitions_with_gvk() -> Map<String, Value> {
    let mut defs = schema::definitions().clone();
    for k in kinds::ALL {
        if let Some(d) = defs.get_mut(k.definition) {
            d["x-kubernetes-group-version-kind"] = gvk(k);
        }
    }
    defs
}

/// (group, version, (document text, hash)).
type GroupVersionDoc = (String, String, (String, String));

/// The OpenAPI 3 document of `group/version`, a served version or an alias of one. An alias's
/// document is its version's with the alias in the paths and in every group-version-kind, so
/// kubectl finds `fieldValidation` on `kubevirt.io/v1alpha3` PATCHes as it does on `v1`'s.
fn build_v3(group: &str, version: &str) -> Value {
    let canonical = converge_bridge::foreman::canonical_version(group, version);
    let mut paths = Map::new();
    for k in kinds::ALL.iter().filter(|k| k.group == group && k.version == canonical) {
        for (p, item) in paths_for(k, true) {
            paths.insert(p, item);
        }
    }
    let mut schemas = Value::Object(definitions_with_gvk());
    rewrite_refs(&mut schemas);
    let title = if group.is_empty() { "Kubernetes".to_string() } else { format!("{group}/{version}") };
    let mut doc = json!({
        "openapi": "3.0.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas, "responses": error_responses(true), "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}}},
    });
    if canonical != version {
        let from = format!("/apis/{group}/{canonical}/");
        let to = format!("/apis/{group}/{version}/");
        let renamed: Map<String, Value> =
            paths.into_iter().map(|(p, item)| (p.replacen(&from, &to, 1), item)).collect();
        doc["paths"] = Value::Object(renamed);
        alias_gvks(&mut doc, group, canonical, version);
    }
    doc
}

/// Every group-version-kind of `group/canonical` in `v` named as `group/alias`.
fn alias_gvks(v: &mut Value, group: &str, canonical: &str, alias: &str) {
    match v {
        Value::Object(m) => {
            if m.get("group").and_then(Value::as_str) == Some(group)
                && m.get("version").and_then(Value::as_str) == Some(canonical)
                && m.contains_key("kind")
            {
                m.insert("version".into(), json!(alias));
            }
            m.values_mut().for_each(|c| alias_gvks(c, group, canonical, alias));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| alias_gvks(c, group, canonical, alias)),
        _ => {}
    }
}

/// `/openapi/v3/{api/v1 | apis/g/v}` for one group-version (aliases included).
pub fn v3_document(group: &str, version: &str) -> Option<&'static (String, String)> {
    static DOCS: OnceLock<Vec<GroupVersionDoc>> = OnceLock::new();
    let docs = DOCS.get_or_init(|| {
        converge_bridge::foreman::served_group_versions()
            .into_iter()
            .map(|(g, v)| {
                let text = build_v3(g, v).to_string();
                let hash = fnv_hex(&text);
                (g.to_string(), v.to_string(), (text, hash))
            })
            .collect()
    });
    docs.iter().find(|(g, v, _)| g == group && v == version).map(|(_, _, d)| d)
}

/// `/openapi/v3`: where each group-version's document is.
pub fn v3_index() -> Value {
    let mut paths = Map::new();
    for (g, v) in converge_bridge::foreman::served_group_versions() {
        let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
        if let Some((_, hash)) = v3_document(g, v) {
            paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}));
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2`, JSON.
pub fn v2_document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut paths = Map::new();
        let mut definitions = definitions_with_gvk();
        for k in kinds::ALL {
            for (p, item) in paths_for(k, false) {
                paths.insert(p, item);
            }
            // An alias's paths too, and its group-version-kind beside the kind's own.
            for alias in converge_bridge::foreman::VERSION_ALIASES
                .iter()
                .filter(|a| a.group == k.group && a.version == k.version)
            {
                let (from, to) =
                    (format!("/apis/{}/{}/", k.group, k.version), format!("/apis/{}/{}/", k.group, alias.alias));
                for (p, mut item) in paths_for(k, false) {
                    alias_gvks(&mut item, k.group, k.version, alias.alias);
                    paths.insert(p.replacen(&from, &to, 1), item);
                }
                if let Some(list) = definitions
                    .get_mut(k.definition)
                    .and_then(|d| d.get_mut("x-kubernetes-group-version-kind"))
                    .and_then(Value::as_array_mut)
                {
                    list.push(json!({"group": k.group, "version": alias.alias, "kind": k.kind}));
                }
            }
        }
        json!({
            "swagger": "2.0",
            "info": {"title": "Converge", "version": env!("CARGO_PKG_VERSION")},
            "paths": paths,
            "definitions": definitions,
            "responses": error_responses(false),
            "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
            "security": [{"BearerToken": []}],
        })
        .to_string()
    })
}

fn fnv_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// A kind's routes as OpenAPI 3 path items (for Converge's own document).
pub fn paths_for_document(k: &ResourceKind) -> Vec<(String, Value)> {
    paths_for(k, true)
}

/// The named definitions and everything they reference, as OpenAPI 3 component schemas.
pub fn reachable_schemas(roots: &[String]) -> Map<String, Value> {
    let defs = definitions_with_gvk();
    let mut out = Map::new();
    let mut todo: Vec<String> = roots.iter().filter(|r| defs.contains_key(*r)).cloned().collect();
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(def) = defs.get(&name) else { continue };
        let mut def = def.clone();
        collect_refs(&def, &mut todo);
        rewrite_refs(&mut def);
        out.insert(name, def);
    }
    out.sort_keys();
    out
}

fn collect_refs(v: &Value, todo: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(name) = m.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")) {
                todo.push(name.to_string());
            }
            m.values().for_each(|c| collect_refs(c, todo));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_refs(c, todo)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_declare_field_validation_and_gvk() {
        let (text, _) = v3_document("kubevirt.io", "v1").cloned().unwrap_or_default();
        let doc: Value = serde_json::from_str(&text).unwrap_or_default();
        let patch = &doc["paths"]["/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "VirtualMachine");
        let params: Vec<&str> =
            patch["parameters"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        assert!(params.contains(&"fieldValidation"));
        assert!(doc["components"]["schemas"]["v1.VirtualMachine"]["x-kubernetes-group-version-kind"].is_array());
        let refs = text.matches("#/definitions/").count();
        assert_eq!(refs, 0);
        assert!(v3_index()["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash=")));
    }
}
