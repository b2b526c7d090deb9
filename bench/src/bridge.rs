//! P5.bridge: a whole host through `/bridge/v1` (record, prechecks, Secret + DataVolume + VM,
//! the view) beside the same three objects POSTed through the Kubernetes API by the client.

use super::Client;
use anyhow::Result;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

const NAMESPACE: &str = "hosts";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 bench@converge";

fn request(name: &str) -> Value {
    json!({"name": name, "namespace": NAMESPACE, "memory": "128Mi", "start": false,
        "disks": [{"name": "root", "size": "1Mi", "source": {"blank": {}}}], "sshKeys": [KEY]})
}

/// The objects the bridge makes for `request(name)`, as a client of the Kubernetes API would.
fn objects(name: &str) -> [(String, Value); 3] {
    let ns = format!("/api/v1/namespaces/{NAMESPACE}");
    let userdata = format!("#cloud-config\nssh_authorized_keys:\n  - \"{KEY}\"\n");
    [
        (
            format!("{ns}/secrets"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-cloudinit")},
                "stringData": {"userdata": userdata}}),
        ),
        (
            format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NAMESPACE}/datavolumes"),
            json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": format!("{name}-root")},
                "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Mi"}}}}}),
        ),
        (
            format!("/apis/kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachines"),
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
                "spec": {"runStrategy": "Halted", "template": {"spec": {
                    "domain": {"cpu": {"cores": 1}, "resources": {"requests": {"memory": "128Mi"}},
                        "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                                              {"name": "cloudinit", "disk": {"bus": "virtio"}}],
                                    "interfaces": [{"name": "nic0", "masquerade": {}}]}},
                    "networks": [{"name": "nic0", "pod": {}}],
                    "volumes": [{"name": "root", "dataVolume": {"name": format!("{name}-root")}},
                                {"name": "cloudinit", "cloudInitNoCloud": {"secretRef": {"name": format!("{name}-cloudinit")}}}]}}}}),
        ),
    ]
}

/// Hosts per second each way: (through /bridge/v1, the same objects through the Kubernetes API).
pub async fn hosts_per_second(client: &Arc<Client>, count: usize, concurrency: usize) -> Result<(f64, f64)> {
    let s = client.post("/api/v1/namespaces", &json!({"metadata": {"name": NAMESPACE}})).await?;
    anyhow::ensure!(s == 201, "namespace: {s}");
    let started = Instant::now();
    let results: Vec<Result<u16>> = futures::stream::iter(0..count)
        .map(|i| {
            let client = Arc::clone(client);
            async move {
                for (path, body) in objects(&format!("k8s-{i:04}")) {
                    let s = client.post(&path, &body).await?;
                    anyhow::ensure!(s == 201, "{path}: {s}");
                }
                Ok(201)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>>>()?;
    let baseline = count as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let results: Vec<Result<u16>> = futures::stream::iter(0..count)
        .map(|i| {
            let client = Arc::clone(client);
            async move { client.post("/bridge/v1/hosts", &request(&format!("host-{i:04}"))).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        anyhow::ensure!(r? == 201, "a host request failed");
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), baseline))
}
