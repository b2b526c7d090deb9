//! The admission webhook configurations: every custom kind admission has rules for, on create
//! and update, answered by `converge controllers --kubernetes`.

use super::{crd::custom_kinds, part_of};
use crate::extension::admission::{StatusWriters, MUTATE_PATH, VALIDATE_PATH};
use crate::extension::tls::WEBHOOKS;
use converge_engine::admission;
use serde_json::{json, Value};

fn rules(network_attachment_definitions: bool) -> Vec<Value> {
    let kinds: Vec<_> =
        custom_kinds(network_attachment_definitions).into_iter().filter(|k| admission::admits(k)).collect();
    let mut groups: Vec<(&str, &str)> = vec![];
    for k in &kinds {
        if !groups.contains(&(k.group, k.version)) {
            groups.push((k.group, k.version));
        }
    }
    groups
        .into_iter()
        .map(|(group, version)| {
            let resources: Vec<&str> =
                kinds.iter().filter(|k| k.group == group && k.version == version).map(|k| k.plural).collect();
            json!({
                "apiGroups": [group], "apiVersions": [version], "operations": ["CREATE", "UPDATE"],
                "resources": resources, "scope": "*",
            })
        })
        .collect()
}

/// Where the apiserver calls the webhooks.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `https://HOST:PORT` of controllers outside the cluster.
    Url(String),
    /// The controllers' Service in this namespace.
    Service { namespace: String },
}

fn client_config(target: &Target, path: &str) -> Value {
    match target {
        Target::Url(url) => json!({"url": format!("{}{path}", url.trim_end_matches('/'))}),
        Target::Service { namespace } => json!({"service": {
            "namespace": namespace, "name": crate::extension::tls::SERVICE, "path": path,
            "port": super::workloads::WEBHOOK_PORT,
        }}),
    }
}

/// A create, or an update that changes the spec: what admission has anything to say about.
const SPEC_CHANGES: &str =
    "request.operation == 'CREATE' || !has(oldObject.spec) || !has(object.spec) || object.spec != oldObject.spec";

/// CEL: the request comes from whoever may write a VMI's status (`StatusWriters`).
fn status_writer(namespace: &str) -> String {
    let users: Vec<String> = StatusWriters::of_namespace(namespace).users.iter().map(|u| format!("'{u}'")).collect();
    format!("request.userInfo.username in [{}] || 'system:masters' in request.userInfo.groups", users.join(", "))
}

/// The kube-apiserver skips the webhooks (no AdmissionReview made, sent or answered) for what
/// they would let through unchanged: the status and metadata writes of Converge's own
/// controllers and agents, most of a VMI's writes. The mutating one still sees anyone else's
/// write, to turn back a status change.
fn match_condition(mutating: bool, namespace: &str) -> Value {
    let expression = match mutating {
        true => format!("{SPEC_CHANGES} || !({})", status_writer(namespace)),
        false => SPEC_CHANGES.to_string(),
    };
    json!([{"name": "admission-has-work", "expression": expression}])
}

fn webhook(name: &str, path: &str, target: &Target, network_attachment_definitions: bool, conditions: Value) -> Value {
    json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config(target, path),
        "rules": rules(network_attachment_definitions),
        "matchConditions": conditions,
        // Requests for kubevirt.io/v1alpha3 come converted to v1.
        "matchPolicy": "Equivalent",
        "failurePolicy": "Fail",
        // MACs are leased on a create, but not on a dry run.
        "sideEffects": "NoneOnDryRun",
        "timeoutSeconds": 10,
    })
}

/// Both configurations, calling the webhooks at `target` for Converge in `namespace`. Their
/// `caBundle` is written by the controllers, which keep the CA.
pub fn configurations(target: &Target, network_attachment_definitions: bool, namespace: &str) -> Vec<Value> {
    let meta = json!({"name": WEBHOOKS, "labels": part_of()});
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": meta,
            "webhooks": [webhook(
                "mutate.converge.kubevirt.io",
                MUTATE_PATH,
                target,
                network_attachment_definitions,
                match_condition(true, namespace),
            )],
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": meta,
            "webhooks": [webhook(
                "validate.converge.kubevirt.io",
                VALIDATE_PATH,
                target,
                network_attachment_definitions,
                match_condition(false, namespace),
            )],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_name_the_kinds_admission_has_rules_for() {
        let config = &configurations(&Target::Url("https://127.0.0.1:8443/".into()), true, "converge-system")[0];
        let hook = &config["webhooks"][0];
        assert_eq!(hook["clientConfig"]["url"], "https://127.0.0.1:8443/mutate");
        assert_eq!(
            hook["rules"][0]["resources"],
            json!([
                "virtualmachines",
                "virtualmachineinstances",
                "virtualmachineinstancereplicasets",
                "virtualmachineinstancemigrations"
            ])
        );
        assert_eq!(hook["rules"][1]["apiGroups"], json!(["cdi.kubevirt.io"]));
        assert_eq!(hook["rules"][1]["resources"], json!(["datavolumes", "datasources"]));
        assert_eq!(hook["rules"].as_array().map(Vec::len), Some(3));
        let in_cluster =
            configurations(&Target::Service { namespace: "converge-system".into() }, false, "converge-system");
        let mutating = in_cluster[0]["webhooks"][0]["matchConditions"][0]["expression"].as_str().unwrap_or_default();
        assert!(mutating.contains("'system:serviceaccount:converge-system:converge-node'"), "{mutating}");
        assert_eq!(in_cluster[1]["webhooks"][0]["matchConditions"][0]["expression"], SPEC_CHANGES);
        assert_eq!(in_cluster[1]["webhooks"][0]["rules"].as_array().map(Vec::len), Some(2));
        assert_eq!(in_cluster[1]["webhooks"][0]["clientConfig"]["service"]["path"], "/validate");
    }
}
