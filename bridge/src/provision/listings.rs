//! What a pipeline picks from when it writes a host request: flavors, images, networks and
//! storage classes. Pure summaries of store objects; the API fetches them.

use converge_engine::meta;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Flavor {
    /// What a host request's `flavor` names.
    pub name: String,
    pub cpu: Option<u64>,
    /// A Kubernetes quantity.
    pub memory: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// `dataSource`: give it as a disk's `source.dataSource`; `registry`: as `source.registry`.
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A DataSource's source (`namespace/pvc`); a registry image's digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A DataSource is Ready when its source claim is there.
    pub ready: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// What a nic's `network` names: `pod`, or `namespace/name`.
    pub name: String,
    /// `pod` or the NetworkAttachmentDefinition's CNI type (`bridge`, …).
    #[serde(rename = "type")]
    pub network_type: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassSummary {
    pub name: String,
    pub provisioner: String,
    /// Disks without a storageClass get this one.
    pub default: bool,
    pub volume_binding_mode: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlavorList {
    pub items: Vec<Flavor>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageList {
    pub items: Vec<Image>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NetworkList {
    pub items: Vec<Network>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StorageClassList {
    pub items: Vec<StorageClassSummary>,
}

pub fn flavors(instancetypes: &[Value]) -> Vec<Flavor> {
    let mut out: Vec<Flavor> = instancetypes
        .iter()
        .map(|i| Flavor {
            name: meta::name(i).to_string(),
            cpu: i.pointer("/spec/cpu/guest").and_then(Value::as_u64),
            memory: i.pointer("/spec/memory/guest").and_then(Value::as_str).map(str::to_string),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// DataSources, then the registry images the node holds (reference, digest).
pub fn images(data_sources: &[Value], registry: &[(String, String)]) -> Vec<Image> {
    let mut out: Vec<Image> = data_sources
        .iter()
        .map(|d| {
            let pvc = d.pointer("/spec/source/pvc");
            let source = pvc.map(|p| {
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap_or(meta::namespace(d)),
                    p["name"].as_str().unwrap_or_default()
                )
            });
            let ready = d["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            Image {
                kind: "dataSource".into(),
                name: meta::name(d).to_string(),
                namespace: Some(meta::namespace(d).to_string()),
                source,
                ready,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut from_registry: Vec<Image> = registry
        .iter()
        .map(|(reference, digest)| Image {
            kind: "registry".into(),
            name: reference.clone(),
            namespace: None,
            source: Some(digest.clone()),
            ready: true,
        })
        .collect();
    from_registry.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(from_registry);
    out
}

pub fn networks(nads: &[Value]) -> Vec<Network> {
    let mut out = vec![Network { name: super::request::POD_NETWORK.into(), network_type: "pod".into() }];
    let mut named: Vec<Network> = nads
        .iter()
        .map(|n| {
            let config: Value = n
                .pointer("/spec/config")
                .and_then(Value::as_str)
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default();
            Network {
                name: format!("{}/{}", meta::namespace(n), meta::name(n)),
                network_type: config["type"].as_str().unwrap_or("unknown").to_string(),
            }
        })
        .collect();
    named.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(named);
    out
}

pub fn storage_classes(classes: &[Value]) -> Vec<StorageClassSummary> {
    let mut out: Vec<StorageClassSummary> = classes
        .iter()
        .map(|c| StorageClassSummary {
            name: meta::name(c).to_string(),
            provisioner: c["provisioner"].as_str().unwrap_or_default().to_string(),
            default: meta::annotation(c, converge_engine::storage::DEFAULT_CLASS_ANNOTATION) == Some("true"),
            volume_binding_mode: c["volumeBindingMode"].as_str().unwrap_or("Immediate").to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listings_summarize_their_objects() {
        let it = json!({"metadata": {"name": "small"}, "spec": {"cpu": {"guest": 1}, "memory": {"guest": "512Mi"}}});
        let f = flavors(&[it]);
        assert_eq!((f[0].cpu, f[0].memory.as_deref()), (Some(1), Some("512Mi")));
        let ds = json!({"metadata": {"name": "debian", "namespace": "images"}, "spec": {"source": {"pvc": {"name": "golden"}}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let i = images(&[ds], &[("127.0.0.1:5000/disk:v1".into(), "sha256:ab".into())]);
        assert_eq!(i[0].source.as_deref(), Some("images/golden"));
        assert!(i[0].ready);
        assert_eq!(i[1].kind, "registry");
        let nad =
            json!({"metadata": {"name": "vlan10", "namespace": "lab"}, "spec": {"config": "{\"type\": \"bridge\"}"}});
        let n = networks(&[nad]);
        assert_eq!(
            (n[0].name.as_str(), n[1].name.as_str(), n[1].network_type.as_str()),
            ("pod", "lab/vlan10", "bridge")
        );
        let sc = json!({"metadata": {"name": "local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "converge.dev/local-pool"});
        let s = storage_classes(&[sc]);
        assert!(s[0].default);
        assert_eq!(s[0].volume_binding_mode, "Immediate");
    }
}
