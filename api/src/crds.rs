//! `apiextensions.k8s.io/v1` CustomResourceDefinitions, read-only: the KubeVirt, CDI and
//! instancetype kinds Converge serves, each as the CRD `converge manifests` gives a real cluster.
//! Converge serves those kinds itself rather than through CRDs; the list says which custom kinds
//! exist here, which is what kubectl asks it before validating a manifest of a kind it does not
//! know (and what answers `kubectl get crds`).

use crate::response::{json_response, status_response};
use converge_engine::ApiError;
use serde_json::{json, Value};
use std::sync::OnceLock;

pub const GROUP: &str = "apiextensions.k8s.io";

fn all() -> &'static [Value] {
    static CRDS: OnceLock<Vec<Value>> = OnceLock::new();
    CRDS.get_or_init(|| {
        // Served since this process first listed them: the closest a definition that is not
        // stored has to a creation time.
        let since = converge_engine::meta::now_rfc3339();
        crate::manifests::crd::custom_kinds(true)
            .into_iter()
            .map(|k| {
                let mut crd = crate::manifests::crd::custom_resource_definition(k);
                crd["metadata"]["creationTimestamp"] = json!(since);
                crd["status"] = json!({
                    "acceptedNames": crd["spec"]["names"].clone(),
                    "storedVersions": [k.version],
                    "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}],
                });
                crd
            })
            .collect()
    })
}

pub fn resource_list() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"), "resources": [
        {"name": "customresourcedefinitions", "singularName": "customresourcedefinition", "namespaced": false,
         "kind": "CustomResourceDefinition", "verbs": ["get", "list"], "shortNames": ["crd", "crds"], "categories": ["api-extensions"]}
    ]})
}

pub async fn list() -> actix_web::HttpResponse {
    let list = json!({"kind": "CustomResourceDefinitionList", "apiVersion": format!("{GROUP}/v1"), "metadata": {}, "items": all()});
    json_response(200, &list, &[])
}

pub async fn get(name: actix_web::web::Path<String>) -> actix_web::HttpResponse {
    match all().iter().find(|c| c["metadata"]["name"] == name.as_str()) {
        Some(crd) => json_response(200, crd, &[]),
        None => status_response(&ApiError::not_found(GROUP, "customresourcedefinitions", &name)),
    }
}

/// Any write: the definitions follow from the kinds this server serves.
pub async fn read_only() -> actix_web::HttpResponse {
    status_response(&ApiError::method_not_allowed(
        "customresourcedefinitions are read-only here: they follow from the kinds this server serves",
    ))
}
