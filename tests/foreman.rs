//! Foreman's KubeVirt compute resource against `converge serve`: every request of every
//! fog-kubevirt cassette replayed and checked over the fields fog-kubevirt reads. Real node,
//! pod network and guests (the recordings show running VMs with pod addresses); the Ruby
//! client's flows are in `foreman_ruby.rs`.
//!
//! The cassettes are `tests/foreman/cassettes/` (see its README). What the replay does to fit a
//! recording made on another cluster, each for a reason:
//! - `default` becomes a namespace per cassette, so names are unique on the one server; claims'
//!   `volumeName` gets a per-cassette suffix (PersistentVolumes are cluster-wide).
//! - Objects a recording reads without creating are created first from the recorded object
//!   (server-assigned metadata and status removed); a Bound claim gets a hostPath volume to bind.
//!   What those objects need and no recording shows (the DataSources, instancetype, preference,
//!   storage classes, NADs, secrets) is made here, below.
//! - RHEL machine types (`pc-q35-rhel9.6.0`) become `q35`: Debian's QEMU has no RHEL types. The
//!   recorded cirros containerDisk becomes the test disk, pushed to a local registry.
//! - A PUT sends the recorded body with the live resourceVersion and uid: fog-kubevirt PUTs the
//!   object it has just read, and a recorded resourceVersion means nothing here.
//! - `vm_create_multi` merges two recording runs: a run-A leftover that run B POSTs anew is
//!   deleted before the POST.
//! - `vm_create_single_userdata` was edited by hand upstream: its POST sends
//!   `cloudInitNoCloud.userdata.secretRef` (not KubeVirt) and its answers lack the cloud-init
//!   disk and (the POST's) volume that fog-kubevirt sent. The replay sends the `secretRef` form its
//!   GETs show, and expects the disks and volumes that were sent.
//! - A read's answer is compared once the controllers have acted: a GET is repeated (up to a
//!   limit) while it differs, as the recorded cluster's controllers had already run.
//! - A VMI the recording caught mid-deletion (200, deletionTimestamp set) may already be gone;
//!   a VM the recording shows held by KubeVirt's finalizer is deleted at once here (`Quirk`).
//! - A PUT that loses a race with a status write (409) is re-read and sent again.
//! - A secondary (Multus) interface's address came from KubeVirt's guest agent; the test guests
//!   run none, so only pod-network addresses (which Converge leases) are checked.
//! - Discovery: the recorded group's preferred version must be served; lists of resources are
//!   checked for the kinds fog-kubevirt uses.

mod common;

use common::cassette::{self, Fit, Interaction, Quirk};
use common::guests::*;
use common::netapp::*;
use common::pxe::{ip, LinkGuard};
use common::{servers, wait_until, TestApp};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const IMAGES_NS: &str = "openshift-virtualization-os-images";
const RECORDED_IMAGE: &str = "registry:5000/kubevirt/cirros-container-disk-demo:devel";
const SETTLE: Duration = Duration::from_secs(90);
const BOOT: Duration = Duration::from_secs(240);

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = app.http.request(method, app.url(path)).bearer_auth(&app.token).header("accept", "*/*");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn create(app: &TestApp, collection: &str, obj: &Value) {
    let (code, out) = send(app, "POST", collection, Some("application/json"), Some(obj.to_string())).await;
    assert!(code == 201 || code == 409, "creating {collection} {}: {code} {out}", obj["metadata"]["name"]);
}

fn fit_for(stem: &str, registry: &str) -> Fit {
    let tag = stem.replace('_', "-");
    Fit {
        namespace: format!("fog-{tag}"),
        volume_suffix: format!("-{tag}"),
        images: vec![(RECORDED_IMAGE.into(), format!("{registry}/kubevirt/cirros-container-disk-demo:devel"))],
    }
}

/// What the recorded clusters held that no recording shows: a golden image published as the
/// DataSources the recorded VMs clone, the instancetype and preference `ls-test` names, storage
/// classes, and bridges for the NADs.
async fn cluster_objects(app: &TestApp, fits: &[Fit], bridge: &str) {
    let ns = |name: &str, annotations: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}});
    create(app, "/api/v1/namespaces", &ns(IMAGES_NS, json!({"converge.dev/clone-to": "*"}))).await;
    for f in fits {
        create(app, "/api/v1/namespaces", &ns(&f.namespace, json!({}))).await;
    }
    let golden = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "centos-stream9-golden"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "64Mi"}}}}});
    create(app, &format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{IMAGES_NS}/datavolumes"), &golden).await;
    for name in ["centos-stream9", "centos-stream9-amd64"] {
        let ds = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": name},
            "spec": {"source": {"pvc": {"name": "centos-stream9-golden", "namespace": IMAGES_NS}}}});
        create(app, &format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{IMAGES_NS}/datasources"), &ds).await;
    }
    let it = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": "u1.medium"}, "spec": {"cpu": {"guest": 1}, "memory": {"guest": "4Gi"}}});
    create(app, "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes", &it).await;
    let pref = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterPreference",
        "metadata": {"name": "centos.stream9"}, "spec": {"devices": {"preferredDiskBus": "virtio"}}});
    create(app, "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterpreferences", &pref).await;
    for (name, binding) in [("trident-nfs", "Immediate"), ("local-storage", "WaitForFirstConsumer")] {
        let sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": "converge.dev/local-pool", "volumeBindingMode": binding});
        create(app, "/apis/storage.k8s.io/v1/storageclasses", &sc).await;
    }
    let config = json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge});
    for f in fits {
        for name in ["blue", "ovs-foreman"] {
            let collection =
                format!("/apis/k8s.cni.cncf.io/v1/namespaces/{}/network-attachment-definitions", f.namespace);
            create(app, &collection, &nad(name, &config)).await;
        }
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "default-id-rsa-pub"},
            "stringData": {"key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3Nf0P8JcI0FUGAsDNQpz3lRwVhUrZ9vP3y9zXKGJc replay"}});
        create(app, &format!("/api/v1/namespaces/{}/secrets", f.namespace), &secret).await;
        let userdata = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "test-userdata-secret"},
            "stringData": {"userdata": "#cloud-config\n"}});
        create(app, &format!("/api/v1/namespaces/{}/secrets", f.namespace), &userdata).await;
    }
}

/// The cassette's requests and answers in this server's terms.
fn fitted(file: &Path, fit: &Fit) -> Vec<Interaction> {
    let mut interactions = cassette::load(file);
    for i in &mut interactions {
        i.path = fit.path(&i.path);
        if let Some(body) = i.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) {
            let mut body = body;
            // The hand edit of vm_create_single_userdata: send what its GETs show.
            if let Some(volumes) = body.pointer_mut("/spec/template/spec/volumes").and_then(Value::as_array_mut) {
                for v in volumes {
                    if let Some(secret) = v.pointer("/cloudInitNoCloud/userdata/secretRef").cloned() {
                        v["cloudInitNoCloud"] = json!({"secretRef": secret});
                    }
                }
            }
            fit.adapt(&mut body);
            i.body = Some(body.to_string());
        }
        fit.adapt(&mut i.response);
    }
    interactions
}

/// vm_create_single_userdata's answers were edited by hand: they lack the cloud-init disk (all
/// of them) and volume (the POST's) that fog-kubevirt sent. The replay expects what was sent.
fn undo_hand_edit(stem: &str, interactions: &mut [Interaction]) {
    if stem != "vm_create_single_userdata" {
        return;
    }
    let Some(sent) = interactions
        .iter()
        .find(|i| i.method == "POST")
        .and_then(|i| i.body.as_deref())
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
    else {
        return;
    };
    for i in interactions.iter_mut().filter(|i| i.response["kind"] == "VirtualMachine") {
        i.response["spec"]["template"]["spec"]["domain"]["devices"]["disks"] =
            sent["spec"]["template"]["spec"]["domain"]["devices"]["disks"].clone();
        i.response["spec"]["template"]["spec"]["volumes"] = sent["spec"]["template"]["spec"]["volumes"].clone();
    }
}

/// Create what the recording read without creating, and wait until it is as recorded.
async fn assume(n: &NetApp, interactions: &[Interaction], fit: &Fit, volumes: &Path) {
    let app = &n.g.app;
    let mut objects = cassette::assumed_objects(interactions);
    // Volumes before claims before VMs; VMIs come from their VMs.
    let rank = |o: &Value| match o["kind"].as_str().unwrap_or_default() {
        "PersistentVolumeClaim" => 1,
        "VirtualMachine" => 2,
        _ => 0,
    };
    objects.sort_by_key(|(_, o)| rank(o));
    let vms: Vec<String> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "VirtualMachine")
        .map(|(_, o)| o["metadata"]["name"].as_str().unwrap_or_default().to_string())
        .collect();
    for (collection, recorded) in &objects {
        let kind = recorded["kind"].as_str().unwrap_or_default();
        if kind == "VirtualMachineInstance" {
            assert!(
                vms.contains(&recorded["metadata"]["name"].as_str().unwrap_or_default().to_string()),
                "a VMI without its VM: {recorded}"
            );
            continue;
        }
        if kind == "PersistentVolumeClaim" && recorded["status"]["phase"] == "Bound" {
            let name = recorded["spec"]["volumeName"].as_str().expect("a bound claim names its volume");
            let dir = volumes.join(name);
            std::fs::create_dir_all(&dir).expect("volume dir");
            let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                "spec": {"capacity": recorded["status"]["capacity"], "accessModes": recorded["spec"]["accessModes"],
                    "storageClassName": recorded["spec"]["storageClassName"], "persistentVolumeReclaimPolicy": "Retain",
                    "volumeMode": "Filesystem", "hostPath": {"path": dir.display().to_string(), "type": "Directory"}}});
            create(app, "/api/v1/persistentvolumes", &pv).await;
        }
        create(app, collection, &cassette::as_fixture(recorded)).await;
    }
    for (collection, recorded) in &objects {
        let name = recorded["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("{collection}/{name}");
        match recorded["kind"].as_str().unwrap_or_default() {
            "PersistentVolumeClaim" if recorded["status"]["phase"] == "Bound" => {
                let bound = wait_until(SETTLE, || async {
                    send(app, "GET", &path, None, None).await.1["status"]["phase"] == "Bound"
                })
                .await;
                let events =
                    send(app, "GET", &format!("/api/v1/namespaces/{}/events", fit.namespace), None, None).await.1;
                let messages: Vec<&Value> =
                    events["items"].as_array().into_iter().flatten().map(|e| &e["message"]).collect();
                assert!(
                    bound,
                    "{} {path} bound: {}\n{messages:?}",
                    fit.namespace,
                    send(app, "GET", &path, None, None).await.1
                );
            }
            "VirtualMachine" => {
                let vmi_running = interactions.iter().any(|i| {
                    i.code == 200
                        && i.response["kind"] == "VirtualMachineInstance"
                        && i.response["metadata"]["name"] == name
                        && i.response["status"]["phase"] == "Running"
                });
                if vmi_running {
                    let vmi = path.replace("/virtualmachines/", "/virtualmachineinstances/");
                    let last = std::sync::Mutex::new(Value::Null);
                    let running = wait_until(BOOT, || async {
                        let seen = send(app, "GET", &vmi, None, None).await.1;
                        let ok = seen["status"]["phase"] == "Running";
                        if seen["status"].is_object() {
                            *last.lock().expect("last") = seen["status"].clone();
                        }
                        ok
                    })
                    .await;
                    let events =
                        send(app, "GET", &format!("/api/v1/namespaces/{}/events", fit.namespace), None, None).await.1;
                    let messages: Vec<&Value> =
                        events["items"].as_array().into_iter().flatten().map(|e| &e["message"]).collect();
                    let vm_status = send(app, "GET", &path, None, None).await.1["status"].clone();
                    let last = last.lock().expect("last").clone();
                    assert!(running, "{vmi} running: {last}\n{vm_status}\n{messages:?}");
                }
            }
            _ => {}
        }
    }
}

/// Replay one cassette; the problems found, each naming the interaction.
async fn replay(n: &NetApp, stem: &str, file: &Path, fit: &Fit, volumes: &Path) -> Vec<String> {
    let app = &n.g.app;
    let mut interactions = fitted(file, fit);
    undo_hand_edit(stem, &mut interactions);
    assume(n, &interactions, fit, volumes).await;
    let mut problems = vec![];
    let mut quirks = vec![];
    for (index, i) in interactions.iter().enumerate() {
        let mut body = i.body.clone();
        let parsed = body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok());
        if i.method == "POST" && i.code == 201 {
            if let Some(obj) = &parsed {
                let path = format!("{}/{}", i.path, obj["metadata"]["name"].as_str().unwrap_or_default());
                if send(app, "GET", &path, None, None).await.0 == 200 {
                    send(app, "DELETE", &path, Some("application/json"), None).await;
                    let gone =
                        wait_until(SETTLE, || async { send(app, "GET", &path, None, None).await.0 == 404 }).await;
                    assert!(gone, "{stem}: run A's {path} goes before run B's POST");
                }
            }
        }
        if let (true, Some(mut obj)) = (i.method == "PUT", parsed) {
            let live = send(app, "GET", &i.path, None, None).await.1;
            obj["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            obj["metadata"]["uid"] = live["metadata"]["uid"].clone();
            body = Some(obj.to_string());
        }
        let want = &i.response;
        let read = i.method == "GET";
        let (mut code, mut ours) = send(app, &i.method, &i.path, i.content_type.as_deref(), body.clone()).await;
        // A PUT that lost a race with a controller's status write is read and sent again, as any
        // client does on a conflict.
        for _ in 0..5 {
            if !(i.method == "PUT" && code == 409) {
                break;
            }
            let live = send(app, "GET", &i.path, None, None).await.1;
            let mut obj: Value = body.as_deref().and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
            obj["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            quirks.push(Quirk::PutConflictRetried);
            (code, ours) = send(app, "PUT", &i.path, i.content_type.as_deref(), Some(obj.to_string())).await;
        }
        let mut found = check(i, want, code, &ours, read, &mut quirks);
        if !found.is_empty() && read {
            let end = tokio::time::Instant::now() + SETTLE;
            while !found.is_empty() && tokio::time::Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(250)).await;
                (code, ours) = send(app, "GET", &i.path, None, None).await;
                found = check(i, want, code, &ours, read, &mut quirks);
            }
        }
        problems.extend(found.into_iter().map(|p| format!("{stem} #{index} {} {}: {p}", i.method, i.path)));
    }
    for q in quirks {
        eprintln!("{stem}: accepted {q:?}");
    }
    problems
}

fn check(i: &Interaction, want: &Value, code: u16, ours: &Value, read: bool, quirks: &mut Vec<Quirk>) -> Vec<String> {
    if code != i.code {
        let terminating =
            i.response["kind"] == "VirtualMachineInstance" && i.response["metadata"]["deletionTimestamp"].is_string();
        if terminating && code == 404 {
            quirks.push(Quirk::VmiAlreadyGone);
            return vec![];
        }
        return vec![format!("status {code}, recorded {}: {ours}", i.code)];
    }
    let held = i.method == "DELETE" && want["metadata"]["deletionTimestamp"].is_string();
    if held && ours["kind"] == "Status" && ours["status"] == "Success" {
        quirks.push(Quirk::DeletedAtOnce);
        return vec![];
    }
    cassette::compare(want, ours, read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fog_kubevirt_cassette_replays_against_converge() {
    let registry = servers::registry(None).await;
    servers::push(&guest_dir().join("oci-disk"), registry.port, "kubevirt/cirros-container-disk-demo:devel", None);
    let host = format!("127.0.0.1:{}", registry.port);
    let h = host.clone();
    // The recorded Service asks for node port 30000: the range is Kubernetes' own start.
    let n = spawn_net_app_with(20, move |c| {
        c.service_network.node_ports = (30000, 30099);
        // A recorded VM names a hostDisk there (it never starts): an admin allows the directory.
        c.host_access.host_disk_dirs = vec!["/mnt/data".into()];
        if let Some(node) = c.node.as_mut() {
            node.insecure_registries = vec![h];
        }
    })
    .await;
    let bridge = format!("cvfog{}", std::process::id() % 100_000);
    let _bridge = LinkGuard(bridge.clone());
    ip(&format!("link add {bridge} type bridge"));
    ip(&format!("link set {bridge} up"));
    let volumes = tempfile::tempdir().expect("volumes");
    let cassettes = cassette::all_cassettes();
    assert_eq!(cassettes.len(), 14, "every cassette: {cassettes:?}");
    let fits: Vec<Fit> = cassettes.iter().map(|(stem, _)| fit_for(stem, &host)).collect();
    within(Duration::from_secs(1200), async {
        cluster_objects(&n.g.app, &fits, &bridge).await;
        let mut problems = vec![];
        for ((stem, file), fit) in cassettes.iter().zip(&fits) {
            let found = replay(&n, stem, file, fit, volumes.path()).await;
            eprintln!("{stem}: {} interactions replayed, {} problems", cassette::load(file).len(), found.len());
            for p in &found {
                eprintln!("  {p}");
            }
            problems.extend(found);
        }
        assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
    })
    .await;
}
