//! The aggregated API's registration: an APIService per version of `subresources.kubevirt.io`
//! in front of the `converge-api` Service. For controllers running outside the cluster the
//! Service has no selector and its EndpointSlice names the address they listen on (an address
//! kube-apiserver can reach: endpoints refuse loopback ones).

use super::part_of;
use crate::extension::tls::SERVICE;
use crate::subresources::{GROUP, VERSIONS};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The APIServices of both versions, in front of the `converge-api` Service.
pub fn api_services(namespace: &str) -> Vec<Value> {
    let mut out = vec![];
    for version in VERSIONS {
        out.push(json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": format!("{version}.{GROUP}"), "labels": part_of()},
            "spec": {
                "group": GROUP, "version": version,
                "service": {"namespace": namespace, "name": SERVICE, "port": 443},
                // KubeVirt's priorities; the caBundle is written by the controllers.
                "groupPriorityMinimum": 1000, "versionPriority": 15,
            },
        }));
    }
    out
}

/// For a server outside the cluster listening at `endpoint`: the Service the APIServices name,
/// without a selector, and its EndpointSlice (in the cluster, the Service is the controllers'
/// Deployment's).
pub fn outside(namespace: &str, endpoint: SocketAddr) -> Vec<Value> {
    let port = json!({"name": "https", "port": 443, "targetPort": endpoint.port(), "protocol": "TCP"});
    vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": namespace, "labels": part_of()},
            "spec": {"ports": [port]},
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": SERVICE, "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/part-of": "converge",
                    "kubernetes.io/service-name": SERVICE,
                    "endpointslice.kubernetes.io/managed-by": "converge.dev",
                },
            },
            "addressType": if endpoint.is_ipv4() { "IPv4" } else { "IPv6" },
            "endpoints": [{"addresses": [endpoint.ip().to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": endpoint.port(), "protocol": "TCP"}],
        }),
    ]
}

/// What the aggregated API lets users do, for the roles, as KubeVirt's edit role grants it:
/// the VM and VMI verbs (`update`), the console and VNC (`get`).
/// What `converge:migrate` adds with the aggregated API: virtctl's migrate.
pub fn migrate_rules() -> Vec<Value> {
    vec![json!({"apiGroups": [GROUP], "resources": ["virtualmachines/migrate"], "verbs": ["update"]})]
}

pub fn edit_rules() -> Vec<Value> {
    vec![
        json!({
            "apiGroups": [GROUP],
            "resources": ["virtualmachines/start", "virtualmachines/stop", "virtualmachines/restart",
                          "virtualmachineinstances/pause", "virtualmachineinstances/unpause",
                          "virtualmachineinstances/softreboot"],
            "verbs": ["update"],
        }),
        json!({
            "apiGroups": [GROUP],
            "resources": ["virtualmachineinstances/console", "virtualmachineinstances/vnc"],
            "verbs": ["get"],
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_are_registered_behind_the_endpoint() {
        let endpoint = "10.213.7.1:8444".parse().unwrap_or_else(|e| panic!("{e}"));
        let objects = outside("converge-system", endpoint);
        assert_eq!(objects[1]["endpoints"][0]["addresses"][0], "10.213.7.1");
        assert_eq!(objects[0]["spec"]["ports"][0]["targetPort"], 8444);
        let services = api_services("converge-system");
        let names: Vec<&str> = services.iter().filter_map(|o| o["metadata"]["name"].as_str()).collect();
        assert_eq!(names, vec!["v1.subresources.kubevirt.io", "v1alpha3.subresources.kubevirt.io"]);
        assert_eq!(services[0]["spec"]["service"]["name"], SERVICE);
    }
}
