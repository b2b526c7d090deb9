//! Discovery documents, built from the kind registry.

use converge_engine::kinds::{self, ResourceKind};
use serde_json::{json, Value};

const VERBS: &[&str] = &["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"];

pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> = converge_bridge::foreman::served_group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list() -> Value {
    let mut groups: Vec<&str> = vec![];
    for (g, _) in kinds::group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut groups: Vec<Value> = groups.into_iter().map(group_entry).collect();
    groups.extend(FIXED_GROUPS.iter().map(|g| fixed_group(g)));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Groups served by hand, `v1` each: the read-only CRD listing (`crate::crds`) and the access
/// and identity reviews (`crate::access_review`).
const FIXED_GROUPS: &[&str] =
    &[crate::crds::GROUP, crate::access_review::AUTHORIZATION_GROUP, crate::access_review::AUTHENTICATION_GROUP];

fn fixed_group(group: &str) -> Value {
    let v1 = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [v1.clone()], "preferredVersion": v1})
}

pub fn api_group(group: &str) -> Option<Value> {
    if FIXED_GROUPS.contains(&group) {
        let mut g = fixed_group(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        return Some(g);
    }
    kinds::group_versions().iter().any(|(g, _)| *g == group && !g.is_empty()).then(|| {
        let mut g = group_entry(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

fn resource_entries(k: &ResourceKind) -> Vec<Value> {
    let mut main = json!({
        "name": k.plural,
        "singularName": k.singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": if k.create_only { json!(["create"]) } else { json!(VERBS) },
    });
    if !k.short_names.is_empty() {
        main["shortNames"] = json!(k.short_names);
    }
    if !k.categories.is_empty() {
        main["categories"] = json!(k.categories);
    }
    let mut out = vec![main];
    if k.status_subresource {
        out.push(json!({"name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
    }
    if k.scale_subresource {
        out.push(json!({"name": format!("{}/scale", k.plural), "singularName": "", "namespaced": k.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
    }
    out
}

pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    match (group, version) {
        (crate::crds::GROUP, "v1") => return Some(crate::crds::resource_list()),
        (g, "v1") if FIXED_GROUPS.contains(&g) => return crate::access_review::resource_list(g),
        _ => {}
    }
    let resources: Vec<Value> =
        converge_bridge::foreman::kinds_at(group, version).into_iter().flat_map(resource_entries).collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubevirt_resources_have_short_names_and_subresources() {
        let list = api_resource_list("kubevirt.io", "v1").unwrap_or_default();
        let names: Vec<&str> =
            list["resources"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"virtualmachines/status"));
        assert!(names.contains(&"virtualmachineinstancereplicasets/scale"));
        let vm = list["resources"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == "virtualmachines"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(vm["shortNames"], json!(["vm", "vms"]));
        assert_eq!(vm["categories"], json!(["all"]));
        assert!(api_resource_list("nope.io", "v1").is_none());
        assert_eq!(api_group_list()["groups"][0]["name"], "kubevirt.io");
    }

    #[test]
    fn kubevirt_io_lists_v1alpha3_after_the_preferred_v1() {
        let group = api_group("kubevirt.io").unwrap_or_default();
        assert_eq!(group["preferredVersion"]["groupVersion"], "kubevirt.io/v1");
        let versions: Vec<&str> =
            group["versions"].as_array().into_iter().flatten().filter_map(|v| v["version"].as_str()).collect();
        assert_eq!(versions, ["v1", "v1alpha3"]);
        let alias = api_resource_list("kubevirt.io", "v1alpha3").unwrap_or_default();
        assert_eq!(alias["groupVersion"], "kubevirt.io/v1alpha3");
        assert_eq!(alias["resources"], api_resource_list("kubevirt.io", "v1").unwrap_or_default()["resources"]);
    }
}
