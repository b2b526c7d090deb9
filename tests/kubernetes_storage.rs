//! Converge's storage on a real Kubernetes control plane: a VM's DataVolume in the node-local
//! class `converge manifests` installs, its claim placed by kube-scheduler through the launcher
//! pod, made and filled by the agent of the chosen node, bound by kube-controller-manager, booted
//! from, and reclaimed from that node's disk when the VM goes. Skipped, with the reason printed,
//! only when the cluster binaries are not built; `scripts/test` builds them.

mod common;

use common::guests::{guest_dir, GUEST_MARKER};
use common::kubernetes::cluster;
use common::kubernetes_agents::*;
use common::wait_until;
use serde_json::{json, Value};
use std::time::Duration;

const NS: &str = "k-disk";

fn disked_vm(url: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "disked", "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "dataVolumeTemplates": [{
                "metadata": {"name": "disked-root"},
                "spec": {"source": {"http": {"url": url}},
                         "storage": {"storageClassName": "converge-local",
                                     "resources": {"requests": {"storage": "256Mi"}}}},
            }],
            "template": {"spec": {
                "terminationGracePeriodSeconds": 0,
                "domain": {
                    "resources": {"requests": {"memory": "128Mi"}},
                    "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                                "autoattachPodInterface": false, "autoattachGraphicsDevice": false},
                },
                "volumes": [{"name": "root", "dataVolume": {"name": "disked-root"}}],
            }},
        },
    })
}

async fn get_json(c: &common::kubernetes::RealCluster, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let (found, out, _) = c.kubectl(&all, None).await;
    if found {
        json_of(&out)
    } else {
        Value::Null
    }
}

/// A VM with a DataVolume template in `converge-local`: kube-scheduler places the launcher pod
/// (and so the claim) on a node, that node's agent makes the volume there and imports the image
/// into it, kube-controller-manager binds the claim, and the guest boots from it on that node.
/// Deleting the VM takes the DataVolume and claim (garbage collection), and the agent reclaims
/// the volume's files and its PersistentVolume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datavolume_is_imported_on_the_node_of_its_guest_and_booted() {
    let Some(c) = cluster() else { return };
    let _one_at_a_time = INSTALL.lock().await;
    let prefix = format!("s{}-", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let _domains = common::guests::Cleanup(prefix.clone());
    let web_dir = tempfile::tempdir().expect("web dir");
    std::fs::copy(guest_dir().join("disk.qcow2"), web_dir.path().join("disk.qcow2")).expect("disk");
    let web = common::servers::http(web_dir.path()).await;
    let port = common::servers::free_port();
    let text = manifests(&["--webhook-url", &format!("https://127.0.0.1:{port}")]).await;
    install(c, &text).await;
    let _controllers = start_controllers(c, port, None).await;
    let _kubelets = c.kubelet_stand_in(&[("s-node-a", "4", "8Gi"), ("s-node-b", "4", "8Gi")]).await;
    let imports = ["--allow-private-imports", "true"];
    let nodes = [
        ("s-node-a", start_node_with(c, "s-node-a", &prefix, &imports).await),
        ("s-node-b", start_node_with(c, "s-node-b", &prefix, &imports).await),
    ];
    let logs = || nodes.iter().map(|(n, a)| format!("--- {n}\n{}", a.log())).collect::<Vec<_>>().join("\n");
    ok(c, &["create", "namespace", NS], None).await;
    let vm = disked_vm(&format!("http://127.0.0.1:{}/disk.qcow2", web.port));
    let created = wait_until(Duration::from_secs(60), || async {
        c.kubectl(&["apply", "-f", "-"], Some(&vm.to_string())).await.0
    })
    .await;
    assert!(created, "the VM was never admitted");

    let running = wait_until(Duration::from_secs(240), || async {
        get_json(c, &["vmi", "disked", "-n", NS]).await.pointer("/status/phase") == Some(&Value::from("Running"))
    })
    .await;
    let vmi = get_json(c, &["vmi", "disked", "-n", NS]).await;
    let dv = get_json(c, &["dv", "disked-root", "-n", NS]).await;
    let pvc = get_json(c, &["pvc", "disked-root", "-n", NS]).await;
    assert!(running, "the guest never ran: {vmi}\n{dv}\n{pvc}\n{}", logs());
    assert_eq!(dv.pointer("/status/phase"), Some(&Value::from("Succeeded")), "{dv}");
    let node = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
    assert_eq!(
        pvc.pointer("/metadata/annotations/volume.kubernetes.io~1selected-node").and_then(Value::as_str),
        Some(node.as_str()),
        "kube-scheduler chose the claim's node with the launcher pod's: {pvc}"
    );
    let pv_name = pvc.pointer("/spec/volumeName").and_then(Value::as_str).unwrap_or_default().to_string();
    let pv = get_json(c, &["pv", &pv_name]).await;
    let pinned = pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions/0/values/0");
    assert_eq!(pinned, Some(&Value::from(node.as_str())), "{pv}");
    let (_, agent) = nodes.iter().find(|(n, _)| *n == node).expect("a node of the test");
    let file = pv.pointer("/spec/hostPath/path").and_then(Value::as_str).unwrap_or_default().to_string();
    assert!(file.starts_with(&agent.data_dir().display().to_string()), "the volume is in {node}'s pool: {file}");
    let booted = wait_until(Duration::from_secs(120), || async { agent.serial_log(&vmi).contains(GUEST_MARKER) }).await;
    assert!(booted, "the guest booted from the imported disk: {}", agent.serial_log(&vmi));

    // The VM goes: its DataVolume and claim follow (garbage collection), and the node reclaims
    // the volume.
    ok(c, &["delete", "vm", "disked", "-n", NS, "--wait=false"], None).await;
    let reclaimed = wait_until(Duration::from_secs(120), || async {
        get_json(c, &["pv", &pv_name]).await.is_null() && !std::path::Path::new(&file).exists()
    })
    .await;
    let left = get_json(c, &["pvc,dv,pv", "-A"]).await;
    assert!(reclaimed, "the volume outlived its claim: {left}\n{}", logs());
    ok(c, &["delete", "namespace", NS, "--wait=false"], None).await;
    uninstall(c, &text, &logs).await;
    for (node, _) in &nodes {
        ok(c, &["delete", "node", node, "--wait=false"], None).await;
    }
}
