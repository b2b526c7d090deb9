//! Converge's own identities and, with `--image`, its workloads on the cluster, as KubeVirt's
//! operator deploys virt-controller/virt-api (a Deployment) and virt-handler (a DaemonSet):
//! service accounts and what each may do, the controllers' Deployment and the Service in front of
//! its webhooks and aggregated API, and the node agents' DaemonSet.

use super::part_of;
use crate::extension::tls::{SECRET, SERVICE, WEBHOOKS};
use crate::nodes::csr::{CA_CONFIG_MAP, SIGNER};
use crate::subresources::{GROUP, VERSIONS};
use converge_engine::kinds;
use serde_json::{json, Value};

pub const CONTROLLERS: &str = "converge-controllers";
pub const NODE: &str = "converge-node";
/// Ports inside the controllers' pod.
pub const WEBHOOK_PORT: u16 = 8443;
pub const AGGREGATED_PORT: u16 = 8444;

const ALL: &[&str] = &["*"];
const READ: &[&str] = &["get", "list", "watch"];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": [group], "resources": resources, "verbs": verbs})
}

fn named_rule(group: &str, resources: &[&str], names: &[String], verbs: &[&str]) -> Value {
    json!({"apiGroups": [group], "resources": resources, "resourceNames": names, "verbs": verbs})
}

fn labels(name: &str) -> Value {
    let mut labels = part_of();
    labels["app.kubernetes.io/name"] = json!(name);
    labels
}

fn account(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace, "labels": labels(name)}})
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
           "metadata": {"name": format!("converge:{name}"), "labels": part_of()}, "rules": rules})
}

fn binding(
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    role_kind: &str,
    role: &str,
    sa_namespace: &str,
    sa: &str,
) -> Value {
    let mut meta = json!({"name": name, "labels": part_of()});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}],
    })
}

/// What the controllers do: run every Converge kind, make launcher pods, keep the webhook
/// configurations' and APIServices' CA, ask who may use the aggregated API, sign node agents'
/// serving certificates.
fn controllers_rules() -> Vec<Value> {
    let apiservices: Vec<String> = VERSIONS.iter().map(|v| format!("{v}.{GROUP}")).collect();
    vec![
        rule(kinds::KUBEVIRT_GROUP, ALL, ALL),
        rule(kinds::CDI_GROUP, ALL, ALL),
        rule(kinds::INSTANCETYPE_GROUP, ALL, READ),
        rule("apps", &["controllerrevisions"], ALL),
        rule("", &["pods"], &["get", "list", "watch", "create", "delete"]),
        rule("", &["nodes", "services", "endpoints", "persistentvolumes", "namespaces"], READ),
        // A DataVolume's claim is made here; its volume by a node.
        rule("", &["persistentvolumeclaims"], &["get", "list", "watch", "create", "update", "patch"]),
        rule("", &["events"], &["create", "update", "patch"]),
        rule("storage.k8s.io", &["storageclasses"], READ),
        rule(kinds::NETWORK_ATTACHMENT_DEFINITION.group, &[kinds::NETWORK_ATTACHMENT_DEFINITION.plural], READ),
        named_rule(
            "admissionregistration.k8s.io",
            &["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
            &[WEBHOOKS.to_string()],
            &["get", "update"],
        ),
        named_rule("apiregistration.k8s.io", &["apiservices"], &apiservices, &["get", "update"]),
        rule("authorization.k8s.io", &["subjectaccessreviews"], &["create"]),
        // Signing node agents' serving certificates (`extension::signer`).
        rule("certificates.k8s.io", &["certificatesigningrequests"], READ),
        rule(
            "certificates.k8s.io",
            &["certificatesigningrequests/approval", "certificatesigningrequests/status"],
            &["update"],
        ),
        named_rule("certificates.k8s.io", &["signers"], &[SIGNER.to_string()], &["approve", "sign"]),
    ]
}

/// What a node agent does: run the VMIs placed on its node, label its Node and offer its
/// devices, read what guests need (secrets and config maps for cloud-init, claims, networks),
/// keep the volumes that live on it, ask for its serving certificate.
fn node_rules() -> Vec<Value> {
    vec![
        rule(kinds::KUBEVIRT_GROUP, &["virtualmachineinstances"], &["get", "list", "watch", "update", "patch"]),
        rule("", &["nodes"], &["get", "list", "watch", "update", "patch"]),
        rule("", &["nodes/status"], &["update", "patch"]),
        rule("", &["pods", "services", "endpoints", "secrets", "configmaps"], READ),
        // Whether a namespace lets its claims be cloned into another (`converge.dev/clone-to`).
        rule("", &["namespaces"], READ),
        // The volumes that live on the node: made, pinned, reclaimed; their claims' import
        // annotations; the DataVolumes filling them.
        rule("", &["persistentvolumes"], &["get", "list", "watch", "create", "update", "patch", "delete"]),
        rule("", &["persistentvolumeclaims"], &["get", "list", "watch", "update", "patch"]),
        rule("", &["events"], &["create", "update", "patch"]),
        rule("storage.k8s.io", &["storageclasses"], READ),
        rule(kinds::CDI_GROUP, &["datavolumes", "storageprofiles", "datasources"], READ),
        rule(kinds::CDI_GROUP, &["datavolumes/status"], &["update", "patch"]),
        rule(kinds::NETWORK_ATTACHMENT_DEFINITION.group, &[kinds::NETWORK_ATTACHMENT_DEFINITION.plural], READ),
        rule("certificates.k8s.io", &["certificatesigningrequests"], &["create", "get"]),
    ]
}

/// The service accounts and their roles.
pub fn identities(namespace: &str) -> Vec<Value> {
    let own_secret = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "converge:controllers", "namespace": namespace, "labels": part_of()},
        "rules": [rule("", &["secrets", "configmaps"], &["create"]),
                  named_rule("", &["secrets"], &[SECRET.to_string()], &["get"]),
                  named_rule("", &["configmaps"], &[CA_CONFIG_MAP.to_string()], &["get", "update"])]});
    vec![
        account(namespace, CONTROLLERS),
        account(namespace, NODE),
        cluster_role("controllers", controllers_rules()),
        cluster_role("node", node_rules()),
        own_secret,
        binding(
            "ClusterRoleBinding",
            "converge:controllers",
            None,
            "ClusterRole",
            "converge:controllers",
            namespace,
            CONTROLLERS,
        ),
        binding("ClusterRoleBinding", "converge:node", None, "ClusterRole", "converge:node", namespace, NODE),
        binding(
            "RoleBinding",
            "converge:controllers",
            Some(namespace),
            "Role",
            "converge:controllers",
            namespace,
            CONTROLLERS,
        ),
        // Reading the front proxy's settings, and delegating authorization, as every aggregated
        // server does.
        binding(
            "RoleBinding",
            "converge:controllers:authentication-reader",
            Some("kube-system"),
            "Role",
            "extension-apiserver-authentication-reader",
            namespace,
            CONTROLLERS,
        ),
        binding(
            "ClusterRoleBinding",
            "converge:controllers:auth-delegator",
            None,
            "ClusterRole",
            "system:auth-delegator",
            namespace,
            CONTROLLERS,
        ),
    ]
}

/// The controllers' Deployment, the Service in front of it and the node agents' DaemonSet, all
/// running `image` (the `converge` binary, with libvirt's client library for the agent).
pub fn workloads(namespace: &str, image: &str, use_emulation: bool) -> Vec<Value> {
    let mut controller_args = vec![
        "controllers".to_string(),
        "--in-cluster".into(),
        "--namespace".into(),
        namespace.into(),
        "--webhook-listen".into(),
        format!("0.0.0.0:{WEBHOOK_PORT}"),
        "--aggregated-api-listen".into(),
        format!("0.0.0.0:{AGGREGATED_PORT}"),
    ];
    if use_emulation {
        controller_args.push("--use-emulation".into());
    }
    let host_path =
        |name: &str, path: &str, kind: &str| json!({"name": name, "hostPath": {"path": path, "type": kind}});
    let mount = |name: &str, path: &str| json!({"name": name, "mountPath": path});
    vec![
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": CONTROLLERS, "namespace": namespace, "labels": labels(CONTROLLERS)},
            "spec": {
                // One: the MAC pool's pending leases live in its memory, and there is no leader
                // election yet; Recreate never runs two at once.
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app.kubernetes.io/name": CONTROLLERS}},
                "template": {
                    "metadata": {"labels": labels(CONTROLLERS)},
                    "spec": {
                        "serviceAccountName": CONTROLLERS,
                        "containers": [{
                            "name": "controllers",
                            "image": image,
                            "args": controller_args,
                            "ports": [
                                {"name": "webhooks", "containerPort": WEBHOOK_PORT},
                                {"name": "aggregated", "containerPort": AGGREGATED_PORT},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": WEBHOOK_PORT, "scheme": "HTTPS"}},
                        }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": namespace, "labels": part_of()},
            "spec": {
                "selector": {"app.kubernetes.io/name": CONTROLLERS},
                "ports": [
                    {"name": "https", "port": 443, "targetPort": AGGREGATED_PORT, "protocol": "TCP"},
                    {"name": "webhooks", "port": WEBHOOK_PORT, "targetPort": WEBHOOK_PORT, "protocol": "TCP"},
                ],
            },
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": NODE, "namespace": namespace, "labels": labels(NODE)},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": NODE}},
                "template": {
                    "metadata": {"labels": labels(NODE)},
                    "spec": {
                        "serviceAccountName": NODE,
                        // The agent drives the host's libvirtd and its network namespaces; guest
                        // files live in a host directory at the same path, where QEMU finds them.
                        "hostNetwork": true,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        "containers": [{
                            "name": "node",
                            "image": image,
                            "args": ["node", "--in-cluster", "--namespace", namespace, "--node-name", "$(NODE_NAME)",
                                     "--data-dir", "/var/lib/converge", "--pod-network", "none"],
                            // Where the controllers reach it (`converge.dev/agent-port`): the
                            // port is the host's, and the scheduler keeps it free.
                            "ports": [{"name": "agent", "containerPort": 8186, "hostPort": 8186, "protocol": "TCP"}],
                            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                            "securityContext": {"privileged": true},
                            "volumeMounts": [mount("libvirt", "/var/run/libvirt"), mount("data", "/var/lib/converge"), mount("dev", "/dev")],
                        }],
                        "volumes": [
                            host_path("libvirt", "/var/run/libvirt", "Directory"),
                            host_path("data", "/var/lib/converge", "DirectoryOrCreate"),
                            host_path("dev", "/dev", "Directory"),
                        ],
                    },
                },
            },
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_run_with_their_own_account_and_listen_where_the_service_points() {
        let objects = workloads("converge-system", "registry.example/converge:1", true);
        let deployment = &objects[0];
        let args = deployment.pointer("/spec/template/spec/containers/0/args").cloned().unwrap_or_default();
        assert!(args.to_string().contains("--in-cluster") && args.to_string().contains("--use-emulation"), "{args}");
        assert_eq!(deployment.pointer("/spec/template/spec/serviceAccountName"), Some(&json!(CONTROLLERS)));
        assert_eq!(objects[1]["spec"]["ports"][0]["targetPort"], AGGREGATED_PORT);
        assert_eq!(
            objects[2].pointer("/spec/template/spec/containers/0/env/0/valueFrom/fieldRef/fieldPath"),
            Some(&json!("spec.nodeName"))
        );
        let agent = objects[2].pointer("/spec/template/spec/containers/0/args").cloned().unwrap_or_default();
        assert!(agent.to_string().contains(r#""--namespace","converge-system""#), "the CA's namespace: {agent}");
        let ids = identities("converge-system");
        let kinds_made: Vec<&str> = ids.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(kinds_made.iter().filter(|k| **k == "ServiceAccount").count(), 2);
        assert!(ids.iter().any(|o| o["roleRef"]["name"] == "system:auth-delegator"));
    }
}
