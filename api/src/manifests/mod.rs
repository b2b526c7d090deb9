//! `converge manifests`: what a Kubernetes cluster needs to serve Converge's kinds, generated
//! from the kind table, the schemas and the printer columns the embedded API serves.

mod aggregated;
pub(crate) mod crd;
mod rbac;
mod webhooks;
mod workloads;

pub use crd::{custom_kinds, custom_resource_definition, root_schema};
use serde_json::{json, Value};

/// What `converge manifests` prints.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where Converge's own objects go.
    pub namespace: String,
    /// Include the `k8s.cni.cncf.io` NetworkAttachmentDefinition CRD (leave it out where Multus
    /// already installed it).
    pub network_attachment_definitions: bool,
    /// Where the apiserver calls the admission webhooks (`https://HOST:PORT`) when `converge
    /// controllers --kubernetes` runs outside the cluster. Without it no webhook configuration
    /// is printed: the in-cluster Deployment and its Service are not built yet.
    pub webhook_url: Option<String>,
    /// Where `converge controllers --kubernetes` outside the cluster serves the aggregated API
    /// (an address kube-apiserver reaches, not loopback): registers `subresources.kubevirt.io`
    /// there. Without it the group is not registered.
    pub aggregated_api_endpoint: Option<std::net::SocketAddr>,
    /// The image of Converge's workloads in the cluster (the controllers' Deployment, the node
    /// agents' DaemonSet): with it, the webhooks and the aggregated API are registered at the
    /// Deployment's Service (unless the two options above say otherwise).
    pub image: Option<String>,
    /// The cluster runs guests under software emulation (the controllers' --use-emulation).
    pub use_emulation: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "converge-system".into(),
            network_attachment_definitions: true,
            webhook_url: None,
            aggregated_api_endpoint: None,
            image: None,
            use_emulation: false,
        }
    }
}

/// The label every object of the install carries, so it can be found (and deleted) together.
fn part_of() -> Value {
    json!({"app.kubernetes.io/part-of": "converge"})
}

/// Every object, in an order `kubectl apply -f` and `kubectl delete -f` both take: the
/// registrations first (the aggregated API's, then the webhook configurations) — deleted first,
/// an APIService whose server is going can no longer hold up the namespace's deletion (the
/// namespace controller stops at any API group it cannot discover) — then the namespace, the
/// CRDs, the node-local StorageClass, RBAC and Converge's service accounts, and the aggregated API's Service (or, with an
/// image, Converge's workloads and theirs).
pub fn manifests(options: &Options) -> Vec<Value> {
    let in_cluster = options.image.is_some();
    let mut out = vec![];
    if in_cluster || options.aggregated_api_endpoint.is_some() {
        out.extend(aggregated::api_services(&options.namespace));
    }
    let webhook_target = match &options.webhook_url {
        Some(url) => Some(webhooks::Target::Url(url.clone())),
        None => in_cluster.then(|| webhooks::Target::Service { namespace: options.namespace.clone() }),
    };
    if let Some(target) = webhook_target {
        out.extend(webhooks::configurations(&target, options.network_attachment_definitions, &options.namespace));
    }
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": options.namespace, "labels": part_of()},
    }));
    out.extend(custom_kinds(options.network_attachment_definitions).into_iter().map(custom_resource_definition));
    let mut class = converge_engine::storage::provisioner::node_local_class();
    class["metadata"]["labels"] = part_of();
    out.push(class);
    out.extend(rbac::cluster_roles(in_cluster || options.aggregated_api_endpoint.is_some()));
    out.extend(workloads::identities(&options.namespace));
    if let Some(endpoint) = options.aggregated_api_endpoint {
        out.extend(aggregated::outside(&options.namespace, endpoint));
    }
    if let Some(image) = &options.image {
        out.extend(workloads::workloads(&options.namespace, image, options.use_emulation));
    }
    out
}

/// A YAML stream of `objects`, as `kubectl apply -f -` reads it.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_reads_back_as_the_objects() {
        let objects = manifests(&Options::default());
        let text = to_yaml(&objects).unwrap_or_default();
        let back: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
            .collect();
        assert_eq!(back, objects);
        assert_eq!(objects[0]["kind"], "Namespace");
        assert!(objects.iter().all(|o| o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "converge"));
    }

    #[test]
    fn multus_clusters_can_keep_their_own_definition() {
        let without = manifests(&Options { network_attachment_definitions: false, ..Options::default() });
        assert!(!without.iter().any(|o| o["spec"]["group"] == "k8s.cni.cncf.io"));
        let with = manifests(&Options::default());
        assert!(with.iter().any(|o| o["metadata"]["name"] == "network-attachment-definitions.k8s.cni.cncf.io"));
    }
}
