//! Controllers without guests: what the VM, VMI and replica-set controllers write when no node
//! can run anything, instancetypes and preferences frozen into VMs, and presets shaping VMIs.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn vm_status(app: &TestApp, name: &str) -> Value {
    app.get(&format!("{VMS}/{name}")).await.1["status"].clone()
}

#[tokio::test]
async fn without_nodes_a_started_vm_is_unschedulable() {
    let app = spawn_app().await;
    let mut vm = vm_manifest("lonely");
    vm["spec"]["runStrategy"] = json!("Always");
    assert_eq!(app.post(VMS, &vm).await.0, 201);
    let unschedulable =
        wait_until(WAIT, || async { vm_status(&app, "lonely").await["printableStatus"] == "ErrorUnschedulable" }).await;
    assert!(unschedulable, "{}", vm_status(&app, "lonely").await);
    let vmi = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/lonely").await.1;
    assert_eq!(vmi["status"]["phase"], "Scheduling");
    let cond =
        vmi["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled").cloned().unwrap();
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(vmi["metadata"]["finalizers"], json!(["kubevirt.io/virtualMachineControllerFinalize"]));
    assert_eq!(vmi["metadata"]["ownerReferences"][0]["kind"], "VirtualMachine");

    // Stopping deletes the VMI, and the unscheduled VMI is let go at once.
    let (ok, out, err) =
        app.kubectl(&["patch", "vm", "lonely", "--type=merge", "-p", r#"{"spec":{"runStrategy":"Halted"}}"#]).await;
    assert!(ok, "{out}{err}");
    assert!(wait_until(WAIT, || async { vm_status(&app, "lonely").await["printableStatus"] == "Stopped" }).await);
    let gone = wait_until(WAIT, || async {
        app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/lonely").await.0 == 404
    })
    .await;
    assert!(gone);
}

#[tokio::test]
async fn a_paused_start_of_a_halted_vm_makes_one_paused_vmi() {
    let app = spawn_app().await;
    let mut vm = vm_manifest("sleepy");
    vm["spec"]["runStrategy"] = json!("Halted");
    assert_eq!(app.post(VMS, &vm).await.0, 201);
    assert!(wait_until(WAIT, || async { vm_status(&app, "sleepy").await["printableStatus"] == "Stopped" }).await);
    let start = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/sleepy/start";
    let (code, body) = app.put(start, &json!({"paused": true})).await;
    assert_eq!(code, 202, "{body}");
    let vmi_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/sleepy";
    assert!(wait_until(WAIT, || async { app.get(vmi_path).await.0 == 200 }).await);
    let vmi = app.get(vmi_path).await.1;
    assert_eq!(vmi["spec"]["startStrategy"], "Paused");
    // The VM settles on Always with its request done, and keeps that VMI: a Halted VM seen with
    // the request done and the strategy not yet turned deleted it (and Always made an unpaused one).
    let settled = wait_until(WAIT, || async {
        let vm = app.get(&format!("{VMS}/sleepy")).await.1;
        vm["spec"]["runStrategy"] == "Always" && vm["status"].get("stateChangeRequests").is_none()
    })
    .await;
    assert!(settled, "{}", app.get(&format!("{VMS}/sleepy")).await.1);
    let again = app.get(vmi_path).await.1;
    assert_eq!(again["metadata"]["uid"], vmi["metadata"]["uid"], "{again}");
    assert!(again["metadata"].get("deletionTimestamp").is_none(), "{again}");
}

#[tokio::test]
async fn instancetypes_and_preferences_shape_vms_and_refuse_conflicts() {
    let app = spawn_app().await;
    let it = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
                    "metadata": {"name": "u1.small"}, "spec": {"cpu": {"guest": 2}, "memory": {"guest": "256Mi"}}});
    let (code, body) = app.post("/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes", &it).await;
    assert_eq!(code, 201, "{body}");
    let pref = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterPreference",
                      "metadata": {"name": "linux"}, "spec": {"cpu": {"preferredCPUTopology": "cores"},
                      "devices": {"preferredDiskBus": "sata"}}});
    let (code, body) = app.post("/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterpreferences", &pref).await;
    assert_eq!(code, 201, "{body}");
    let (ok, out, err) = app.kubectl(&["get", "vmcf,vmcp"]).await;
    assert!(ok && out.contains("u1.small") && out.contains("linux"), "{out}{err}");

    let mut vm = vm_manifest("typed");
    vm["spec"]["runStrategy"] = json!("Always");
    vm["spec"]["instancetype"] = json!({"name": "u1.small"});
    vm["spec"]["preference"] = json!({"name": "linux"});
    vm["spec"]["template"]["spec"]["domain"]["resources"] = json!({});
    let (code, body) = app.post(VMS, &vm).await;
    assert_eq!(code, 201, "{body}");
    let vmi_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/typed";
    assert!(wait_until(WAIT, || async { app.get(vmi_path).await.0 == 200 }).await, "the VMI is made");
    let vmi = app.get(vmi_path).await.1;
    assert_eq!(vmi["spec"]["domain"]["cpu"], json!({"sockets": 1, "cores": 2, "threads": 1}), "{vmi}");
    assert_eq!(vmi["spec"]["domain"]["memory"]["guest"], "256Mi");
    assert_eq!(
        vmi["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"], "sata",
        "the preference fills the bus the VM left open"
    );
    let status = vm_status(&app, "typed").await;
    let rev = status["instancetypeRef"]["controllerRevisionRef"]["name"].as_str().unwrap_or("").to_string();
    assert!(!rev.is_empty(), "revision recorded: {status}");
    assert_eq!(status["instancetypeRef"]["kind"], "VirtualMachineClusterInstancetype");
    let (code, revision) = app.get(&format!("/apis/apps/v1/namespaces/default/controllerrevisions/{rev}")).await;
    assert_eq!(code, 200);
    assert_eq!(revision["data"]["spec"]["cpu"]["guest"], 2);
    assert!(status["preferenceRef"]["controllerRevisionRef"]["name"].is_string());

    // A field the instancetype owns is refused, naming the field.
    let mut conflicting = vm_manifest("clash");
    conflicting["spec"]["instancetype"] = json!({"name": "u1.small"});
    conflicting["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"cores": 4});
    let (code, body) = app.post(VMS, &conflicting).await;
    assert_eq!(code, 422, "{body}");
    let fields: Vec<&str> =
        body["details"]["causes"].as_array().unwrap().iter().filter_map(|c| c["field"].as_str()).collect();
    assert!(fields.contains(&"spec.template.spec.domain.cpu.cores"), "{body}");
    assert!(fields.contains(&"spec.template.spec.domain.resources.requests.memory"), "{body}");
    // A missing instancetype is named too.
    let mut missing = vm_manifest("nothing");
    missing["spec"]["instancetype"] = json!({"name": "nope"});
    missing["spec"]["template"]["spec"]["domain"]["resources"] = json!({});
    let (code, body) = app.post(VMS, &missing).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("not found"), "{body}");
}

#[tokio::test]
async fn presets_shape_matching_vmis_made_by_vms() {
    let app = spawn_app().await;
    let preset = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstancePreset",
        "metadata": {"name": "small-cpu", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"flavor": "small"}}, "domain": {"cpu": {"cores": 3}}}});
    let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancepresets", &preset).await;
    assert_eq!(code, 201, "{body}");
    let mut vm = vm_manifest("flavored");
    vm["spec"]["runStrategy"] = json!("Always");
    vm["spec"]["template"]["metadata"] = json!({"labels": {"flavor": "small"}});
    assert_eq!(app.post(VMS, &vm).await.0, 201);
    let vmi_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/flavored";
    assert!(wait_until(WAIT, || async { app.get(vmi_path).await.0 == 200 }).await);
    let vmi = app.get(vmi_path).await.1;
    assert_eq!(vmi["spec"]["domain"]["cpu"]["cores"], 3, "{vmi}");
    assert_eq!(vmi["metadata"]["annotations"]["virtualmachinepreset.kubevirt.io/small-cpu"], "kubevirt.io/v1");
}

#[tokio::test]
async fn vmis_on_a_silent_node_fail_and_their_vm_starts_them_again() {
    let app = spawn_app().await;
    // A node whose agent last spoke two minutes ago.
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gone", "labels": {"converge.dev/software-emulation": "true"}}});
    let (code, body) = app.post("/api/v1/nodes", &node).await;
    assert_eq!(code, 201, "{body}");
    let beat = (chrono::Utc::now() - chrono::Duration::seconds(120)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // A merge patch: the server's pod range allocator may write the Node meanwhile.
    let status = json!({"status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110", "devices.kubevirt.io/kvm": "0"},
        "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": beat, "lastTransitionTime": beat}]}});
    let (code, body) = app.patch("/api/v1/nodes/gone/status", "application/merge-patch+json", &status).await;
    assert_eq!(code, 200, "{body}");
    let mut vm = vm_manifest("orphaned");
    vm["spec"]["runStrategy"] = json!("Always");
    assert_eq!(app.post(VMS, &vm).await.0, 201);
    let vmi_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/orphaned";
    assert!(wait_until(WAIT, || async { app.get(vmi_path).await.0 == 200 }).await);
    // Pretend the node took it and ran it (no agent here to do so).
    let mut vmi = app.get(vmi_path).await.1;
    let first_uid = vmi["metadata"]["uid"].clone();
    vmi["status"] = json!({"phase": "Running", "nodeName": "gone"});
    let (code, body) = app.put(&format!("{vmi_path}/status"), &vmi).await;
    assert!(code == 200 || code == 409, "{body}");
    let failed_or_replaced = wait_until(Duration::from_secs(30), || async {
        let v = app.get(vmi_path).await.1;
        v["metadata"]["uid"] != first_uid || v["status"]["phase"] == "Failed"
    })
    .await;
    assert!(failed_or_replaced, "{}", app.get(vmi_path).await.1);
    let node = app.get("/api/v1/nodes/gone").await.1;
    assert_eq!(node["status"]["conditions"][0]["status"], "Unknown", "{node}");
    let (ok, out, _) = app.kubectl(&["get", "nodes"]).await;
    assert!(ok && out.contains("NotReady"), "{out}");
}
