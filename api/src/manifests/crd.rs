//! CustomResourceDefinitions from the schemas the embedded API checks objects against
//! (`converge_engine::schema`), so a real cluster's apiserver keeps the same fields.
//!
//! A CRD's schema must be structural: every `$ref` inlined, a type on every node, no
//! `properties` beside `additionalProperties`. The conversion follows what the embedded walker
//! accepts, so neither mode is stricter than the other about shapes: objects the definitions
//! leave open keep unknown fields, nested ObjectMeta (templates) is kept as sent, defaults fill
//! only required fields outside `status`. Descriptions are left out: with them the VM's CRD
//! alone passes the 256 KiB that `kubectl apply` may keep in its last-applied annotation.
//! Enums are left out too; the validating webhook says what is wrong with field causes.

use crate::table;
use converge_bridge::foreman::VERSION_ALIASES;
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::schema::definitions;
use serde_json::{json, Map, Value};

const OBJECT_META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
/// Schema keys a CRD keeps as they are.
const KEPT: &[&str] =
    &["format", "nullable", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type"];

/// The kinds a cluster learns through CRDs: every stored kind of a group that is ours, not the
/// apiserver's (`upload.cdi.kubevirt.io` is a virtual, create-only API).
pub fn custom_kinds(network_attachment_definitions: bool) -> Vec<&'static ResourceKind> {
    kinds::ALL
        .iter()
        .copied()
        .filter(|k| {
            !k.create_only
                && match k.group {
                    kinds::KUBEVIRT_GROUP | kinds::INSTANCETYPE_GROUP | kinds::CDI_GROUP => true,
                    g if g == kinds::NETWORK_ATTACHMENT_DEFINITION.group => network_attachment_definitions,
                    _ => false,
                }
        })
        .collect()
}

/// The CustomResourceDefinition of `kind`.
pub fn custom_resource_definition(kind: &'static ResourceKind) -> Value {
    let mut subresources = Map::new();
    if kinds::crd_status_subresource(kind) {
        subresources.insert("status".into(), json!({}));
    }
    if kind.scale_subresource {
        subresources.insert(
            "scale".into(),
            json!({"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.labelSelector"}),
        );
    }
    let version = |name: &str, storage: bool| {
        let mut v = json!({
            "name": name,
            "served": true,
            "storage": storage,
            "schema": {"openAPIV3Schema": root_schema(kind.definition)},
        });
        if !subresources.is_empty() {
            v["subresources"] = Value::Object(subresources.clone());
        }
        if let Some(columns) = table::printer_columns(kind).filter(|c| !c.is_empty()) {
            v["additionalPrinterColumns"] = Value::Array(columns);
        }
        v
    };
    let mut versions = vec![version(kind.version, true)];
    for alias in VERSION_ALIASES.iter().filter(|a| a.group == kind.group && a.version == kind.version) {
        let mut old = version(alias.alias, false);
        // KubeVirt's own words for the version Foreman still pins.
        old["deprecated"] = json!(true);
        old["deprecationWarning"] =
            json!(format!("{}/{} is now deprecated and will be removed in a future release.", kind.group, alias.alias));
        versions.push(old);
    }
    let mut names = json!({
        "kind": kind.kind,
        "listKind": kind.list_kind(),
        "plural": kind.plural,
        "singular": kind.singular,
    });
    if !kind.short_names.is_empty() {
        names["shortNames"] = json!(kind.short_names);
    }
    if !kind.categories.is_empty() {
        names["categories"] = json!(kind.categories);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{}", kind.plural, kind.group), "labels": super::part_of()},
        "spec": {
            "group": kind.group,
            "names": names,
            "scope": if kind.namespaced { "Namespaced" } else { "Cluster" },
            "versions": versions,
        },
    })
}

/// The structural schema of a top-level object of definition `def`.
pub fn root_schema(def: &str) -> Value {
    let mut schema = convert(&json!({"$ref": format!("#/definitions/{def}")}), Place::Root, &mut vec![]);
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        // A CRD's metadata is the apiserver's: it may say no more than its type.
        props.insert("metadata".into(), json!({"type": "object"}));
        props.entry("apiVersion").or_insert(json!({"type": "string"}));
        props.entry("kind").or_insert(json!({"type": "string"}));
    }
    schema
}

#[derive(Clone, Copy, PartialEq)]
enum Place {
    Root,
    Spec,
    /// Under `status`: required fields are not enforced there and nothing is defaulted.
    Status,
}

/// The definition a schema names, followed through `$ref`s.
fn resolve(schema: &Value) -> (&Value, Option<&'static str>) {
    let mut current = schema;
    let mut name = None;
    while let Some(reference) =
        current.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/"))
    {
        match definitions().get_key_value(reference) {
            Some((key, def)) => {
                name = Some(key.as_str());
                current = def;
            }
            None => break,
        }
    }
    (current, name)
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

fn open_object() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn convert(schema: &Value, place: Place, stack: &mut Vec<&'static str>) -> Value {
    let (schema, name) = resolve(schema);
    if name == Some(OBJECT_META) {
        return open_object();
    }
    if let Some(name) = name {
        if stack.contains(&name) {
            // A recursive type: a CRD schema cannot refer to itself, so the inner level is open.
            return open_object();
        }
    }
    let ts = types(schema);
    let int_or_string = name == Some(QUANTITY)
        || schema.get("format").and_then(Value::as_str) == Some("int-or-string")
        || (ts.contains(&"string") && ts.contains(&"integer"));
    if int_or_string {
        return json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]});
    }
    if ts.len() > 1 {
        return json!({"x-kubernetes-preserve-unknown-fields": true});
    }
    if let Some(name) = name {
        stack.push(name);
    }
    let out = match ts.first().copied() {
        Some("array") => {
            let items = schema.get("items").filter(|i| i.is_object());
            json!({
                "type": "array",
                "items": items.map_or_else(|| json!({"x-kubernetes-preserve-unknown-fields": true}), |i| convert(i, inner(place), stack)),
            })
        }
        Some("object") | None if schema.get("properties").is_some() || schema.get("additionalProperties").is_some() => {
            object(schema, place, stack)
        }
        Some("object") => open_object(),
        None => json!({"x-kubernetes-preserve-unknown-fields": true}),
        Some(scalar) => json!({"type": scalar}),
    };
    if let Some(name) = name {
        stack.retain(|n| *n != name);
    }
    let mut out = out;
    if let Some(map) = out.as_object_mut() {
        for key in KEPT {
            if let Some(v) = schema.get(*key) {
                if *key != "format" || v.as_str() != Some("int-or-string") {
                    map.insert((*key).into(), v.clone());
                }
            }
        }
    }
    out
}

/// A required field's default as the walker applies it: filled, then the filled object's own
/// required fields filled from their defaults in turn. The apiserver checks a default against
/// the schema without defaulting inside it, so the CRD carries the completed value; a default
/// whose required fields have none (the walker then reports them missing) is left out, and the
/// field stays simply required.
fn completed_default(default: &Value, schema: &Value) -> Option<Value> {
    let mut out = default.clone();
    let (Some(map), Some(required)) = (out.as_object_mut(), schema.get("required").and_then(Value::as_array)) else {
        return Some(out);
    };
    for key in required.iter().filter_map(Value::as_str) {
        if !map.contains_key(key) {
            map.insert(key.into(), schema.pointer(&format!("/properties/{key}/default"))?.clone());
        }
    }
    Some(out)
}

fn inner(place: Place) -> Place {
    if place == Place::Root {
        Place::Spec
    } else {
        place
    }
}

fn object(schema: &Value, place: Place, stack: &mut Vec<&'static str>) -> Value {
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let mut out = json!({"type": "object"});
    match (props, additional) {
        (Some(props), _) => {
            let required: Vec<&str> = if place == Place::Status {
                vec![]
            } else {
                schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect()
            };
            let mut converted = Map::new();
            for (key, prop) in props {
                let child_place = if place == Place::Root && key == "status" { Place::Status } else { inner(place) };
                let mut child = convert(prop, child_place, stack);
                if required.contains(&key.as_str()) {
                    if let Some(default) = prop.get("default").and_then(|d| completed_default(d, &child)) {
                        child["default"] = default;
                    }
                }
                converted.insert(key.clone(), child);
            }
            out["properties"] = Value::Object(converted);
            if !required.is_empty() {
                out["required"] = json!(required);
            }
            if additional.is_some() {
                // The embedded walker checks the named fields and keeps the rest.
                out["x-kubernetes-preserve-unknown-fields"] = json!(true);
            }
        }
        (None, Some(additional)) => out["additionalProperties"] = convert(additional, inner(place), stack),
        (None, None) => return open_object(),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk_structural(path: &str, s: &Value, problems: &mut Vec<String>) {
        let Some(map) = s.as_object() else {
            return problems.push(format!("{path}: not an object"));
        };
        let open = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
            || map.get("x-kubernetes-int-or-string") == Some(&json!(true));
        if map.get("type").is_none() && !open {
            problems.push(format!("{path}: no type"));
        }
        if map.contains_key("$ref") || map.contains_key("description") || map.contains_key("enum") {
            problems.push(format!("{path}: $ref, description or enum left"));
        }
        if map.contains_key("properties") && map.contains_key("additionalProperties") {
            problems.push(format!("{path}: properties beside additionalProperties"));
        }
        for (k, v) in map.get("properties").and_then(Value::as_object).into_iter().flatten() {
            walk_structural(&format!("{path}.{k}"), v, problems);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = map.get(key) {
                walk_structural(&format!("{path}[{key}]"), v, problems);
            }
        }
    }

    #[test]
    fn every_custom_kind_gets_a_structural_schema() {
        for kind in custom_kinds(true) {
            let schema = root_schema(kind.definition);
            let mut problems = vec![];
            walk_structural(kind.kind, &schema, &mut problems);
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(schema["properties"]["metadata"], json!({"type": "object"}), "{}", kind.kind);
        }
    }

    #[test]
    fn templates_keep_their_metadata_and_quantities_take_both_forms() {
        let vm = root_schema(kinds::VIRTUAL_MACHINE.definition);
        let template = &vm["properties"]["spec"]["properties"]["template"]["properties"];
        assert_eq!(template["metadata"], open_object());
        let memory = &template["spec"]["properties"]["domain"]["properties"]["memory"]["properties"]["guest"];
        assert_eq!(memory["x-kubernetes-int-or-string"], true);
        // Required with a default outside status: filled by the apiserver, as the walker fills it.
        let domain = &template["spec"]["properties"]["domain"];
        assert!(domain["required"].as_array().is_some_and(|r| r.contains(&json!("devices"))), "{domain}");
        assert_eq!(domain["default"], json!({"devices": {}}));
        // `spec.template` has no default, so neither has `spec`: it stays required.
        assert!(vm["properties"]["spec"].get("default").is_none());
        assert!(vm["properties"]["status"].get("required").is_none());
    }

    #[test]
    fn versions_subresources_and_columns_follow_kubevirt() {
        let vm = custom_resource_definition(&kinds::VIRTUAL_MACHINE);
        let versions: Vec<(&str, bool)> = vm["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap_or(""), v["storage"].as_bool().unwrap_or(false)))
            .collect();
        assert_eq!(versions, vec![("v1", true), ("v1alpha3", false)]);
        assert_eq!(vm["spec"]["versions"][0]["subresources"], json!({"status": {}}));
        let columns = &vm["spec"]["versions"][0]["additionalPrinterColumns"];
        assert_eq!(columns[0], json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}));
        assert_eq!(columns[2]["jsonPath"], ".status.conditions[?(@.type=='Ready')].status");
        let vmi = custom_resource_definition(&kinds::VIRTUAL_MACHINE_INSTANCE);
        assert!(vmi["spec"]["versions"][0].get("subresources").is_none());
        assert_eq!(
            vmi["spec"]["versions"][0]["additionalPrinterColumns"][2]["jsonPath"],
            ".status.interfaces[0].ipAddress"
        );
        let rs = custom_resource_definition(&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET);
        assert_eq!(rs["spec"]["versions"][0]["subresources"]["scale"]["specReplicasPath"], ".spec.replicas");
        let dv = custom_resource_definition(&kinds::DATA_VOLUME);
        assert_eq!(dv["spec"]["versions"].as_array().map(Vec::len), Some(1));
        assert_eq!(dv["metadata"]["name"], "datavolumes.cdi.kubevirt.io");
    }

    #[test]
    fn each_definition_fits_a_client_side_apply() {
        for kind in custom_kinds(true) {
            let size = custom_resource_definition(kind).to_string().len();
            assert!(size < 200 * 1024, "{} is {size} bytes", kind.kind);
        }
    }
}
