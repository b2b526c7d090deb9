use serde_json::json;

use super::*;

const NOW: &str = "2026-12-04T05:00:00Z";

fn node(name: &str, endpoint: bool) -> Value {
    node_on(name, endpoint, None)
}

fn node_on(name: &str, endpoint: bool, network_namespace: Option<&str>) -> Value {
    let mut n = json!({
        "metadata": {"name": name, "uid": format!("{name}-uid"), "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "devices.kubevirt.io/kvm": "1k"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    });
    if endpoint {
        let e = Endpoint {
            libvirt_uri: format!("qemu+unix:///system?socket=/run/converge-libvirt/{name}/sock/libvirt-sock"),
            address: "127.0.0.1".parse().unwrap(),
            state_dir: format!("/data/{name}").into(),
            domain_prefix: format!("{name}-"),
            network_namespace: network_namespace.map(str::to_string),
        };
        n["metadata"]["annotations"] = json!({crate::migration::endpoint::ANNOTATION: e.annotation_value()});
    }
    n
}

fn facts(nodes: &[Value]) -> Facts {
    Facts { nodes: nodes.to_vec(), ..Facts::default() }
}

fn vmim() -> Value {
    json!({"metadata": {"name": "m1", "namespace": "default", "uid": "mig-1", "finalizers": [mig::FINALIZER]},
           "spec": {"vmiName": "vm1"}})
}

fn vmi(migratable: bool) -> Value {
    let cond = match migratable {
        true => json!({"type": "LiveMigratable", "status": "True"}),
        false => {
            json!({"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable", "message": "cannot migrate VMI: PVC d is not shared"})
        }
    };
    json!({"metadata": {"name": "vm1", "namespace": "default", "uid": "vmi-1", "labels": {"kubevirt.io/nodeName": "a"}},
           "spec": {"domain": {"resources": {"requests": {"memory": "128Mi"}}}},
           "status": {"phase": "Running", "nodeName": "a", "conditions": [cond]}})
}

fn with_state(mut vmi: Value, fields: Value) -> Value {
    let mut state =
        json!({"migrationUid": "mig-1", "sourceNode": "a", "targetNode": "b", "targetNodeAddress": "127.0.0.1"});
    state.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    vmi["status"]["migrationState"] = state;
    vmi
}

fn phase(plan: &MigrationPlan) -> Option<&str> {
    plan.status.as_ref().and_then(|s| s.get("phase")).and_then(Value::as_str)
}

#[test]
fn the_target_is_another_node_that_can_receive() {
    let nodes = [node("a", true), node("b", true), node("c", false)];
    let plan = reconcile(&vmim(), Some(&vmi(true)), &facts(&nodes), NOW);
    assert_eq!(phase(&plan), Some("PreparingTarget"));
    let state = &plan.vmi_status.as_ref().unwrap()["migrationState"];
    assert_eq!(state["targetNode"], "b");
    assert_eq!(state["sourceNode"], "a");
    assert_eq!(state["migrationUid"], "mig-1");
    assert_eq!(state["targetNodeAddress"], "127.0.0.1");
    let stamps: Vec<&str> = plan.status.as_ref().unwrap()["phaseTransitionTimestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["phase"].as_str().unwrap())
        .collect();
    assert_eq!(stamps, ["Pending", "Scheduling", "Scheduled", "PreparingTarget"]);
}

#[test]
fn no_fitting_node_refuses_the_migration_with_the_reason() {
    let nodes = [node("a", true), node("c", false)];
    let plan = reconcile(&vmim(), Some(&vmi(true)), &facts(&nodes), NOW);
    assert_eq!(phase(&plan), Some("Failed"));
    let (_, reason, message) = plan.event.unwrap();
    assert_eq!(reason, "FailedMigration");
    assert!(message.contains("1 node(s) were the source"), "{message}");
    assert!(message.contains("1 node(s) publish no migration endpoint"), "{message}");
    assert_eq!(plan.vmi_status, None, "the VMI is untouched");
}

#[test]
fn a_target_has_a_pod_network_as_the_source_has() {
    let nodes = [node_on("a", true, Some("cva")), node("b", true), node_on("c", true, Some("cvc"))];
    let plan = reconcile(&vmim(), Some(&vmi(true)), &facts(&nodes), NOW);
    assert_eq!(plan.vmi_status.as_ref().unwrap()["migrationState"]["targetNode"], "c");
    let plan = reconcile(&vmim(), Some(&vmi(true)), &facts(&nodes[..2]), NOW);
    let (_, _, message) = plan.event.unwrap();
    assert!(message.contains("1 node(s) had a pod network unlike the source's"), "{message}");
}

#[test]
fn a_vmi_that_cannot_migrate_is_refused_with_kubevirts_reason() {
    let nodes = [node("a", true), node("b", true)];
    let plan = reconcile(&vmim(), Some(&vmi(false)), &facts(&nodes), NOW);
    assert_eq!(phase(&plan), Some("Failed"));
    let cond = &plan.status.as_ref().unwrap()["conditions"][0];
    assert_eq!(cond["reason"], "DisksNotLiveMigratable");
    let plan = reconcile(&vmim(), None, &facts(&nodes), NOW);
    assert_eq!(phase(&plan), Some("Failed"));
}

#[test]
fn the_phase_follows_the_agents() {
    let mut m = vmim();
    m["status"] = json!({"phase": "PreparingTarget"});
    let ready = with_state(vmi(true), json!({"targetNodeDomainReadyTimestamp": NOW}));
    assert_eq!(phase(&reconcile(&m, Some(&ready), &Facts::default(), NOW)), Some("TargetReady"));
    let running = with_state(vmi(true), json!({"targetNodeDomainReadyTimestamp": NOW, "startTimestamp": NOW}));
    let plan = reconcile(&m, Some(&running), &Facts::default(), NOW);
    assert_eq!(phase(&plan), Some("Running"));
    assert_eq!(plan.status.as_ref().unwrap()["migrationState"]["targetNode"], "b");
    m["status"]["phase"] = json!("Running");
    let mut done = with_state(vmi(true), json!({"startTimestamp": NOW, "completed": true, "endTimestamp": NOW}));
    done["status"]["nodeName"] = json!("b");
    let plan = reconcile(&m, Some(&done), &Facts::default(), NOW);
    assert_eq!(phase(&plan), Some("Succeeded"));
    assert_eq!(plan.relabel_vmi.as_deref(), Some("b"));
    let failed = with_state(vmi(true), json!({"startTimestamp": NOW, "failed": true, "failureReason": "boom"}));
    let plan = reconcile(&m, Some(&failed), &Facts::default(), NOW);
    assert_eq!(phase(&plan), Some("Failed"));
    assert!(plan.event.unwrap().2.contains("boom"));
}

#[test]
fn deleting_an_unfinished_migration_aborts_it_first() {
    let mut m = vmim();
    m["metadata"]["deletionTimestamp"] = json!(NOW);
    m["status"] = json!({"phase": "Running"});
    let running = with_state(vmi(true), json!({"startTimestamp": NOW}));
    let plan = reconcile(&m, Some(&running), &Facts::default(), NOW);
    assert!(!plan.remove_finalizer, "held until the abort ends");
    assert_eq!(plan.vmi_status.unwrap()["migrationState"]["abortRequested"], true);
    let preparing = with_state(vmi(true), json!({}));
    let state = reconcile(&m, Some(&preparing), &Facts::default(), NOW).vmi_status.unwrap();
    assert_eq!(state["migrationState"]["failed"], true, "never started: ended at once");
    assert_eq!(state["migrationState"]["abortStatus"], "Succeeded");
    let aborted = with_state(vmi(true), json!({"startTimestamp": NOW, "failed": true, "abortStatus": "Succeeded"}));
    assert!(reconcile(&m, Some(&aborted), &Facts::default(), NOW).remove_finalizer);
}

#[test]
fn a_target_that_never_gets_ready_fails_the_migration() {
    let mut m = vmim();
    m["status"] = json!({"phase": "PreparingTarget",
        "phaseTransitionTimestamps": [{"phase": "PreparingTarget", "phaseTransitionTimestamp": "2026-12-04T04:00:00Z"}]});
    let preparing = with_state(vmi(true), json!({}));
    let plan = reconcile(&m, Some(&preparing), &Facts::default(), NOW);
    let state = &plan.vmi_status.unwrap()["migrationState"];
    assert_eq!(state["failed"], true);
    m["status"]["phaseTransitionTimestamps"][0]["phaseTransitionTimestamp"] = json!("2026-12-04T04:59:00Z");
    let plan = reconcile(&m, Some(&preparing), &Facts::default(), NOW);
    assert_eq!(plan.vmi_status, None);
    assert!(plan.requeue_after.is_some());
}

#[test]
fn a_second_migration_waits_for_the_first() {
    let other = {
        let mut v = with_state(vmi(true), json!({}));
        v["status"]["migrationState"]["migrationUid"] = json!("other");
        v
    };
    let plan = reconcile(&vmim(), Some(&other), &facts(&[node("a", true), node("b", true)]), NOW);
    assert_eq!(plan.vmi_status, None);
    assert!(plan.requeue_after.is_some());
}

#[test]
fn the_matching_policy_configures_the_migration() {
    let policy = json!({"metadata": {"name": "slow"}, "spec": {
        "selectors": {"virtualMachineInstanceSelector": {"kubevirt.io/nodeName": "a"}},
        "bandwidthPerMigration": "1Mi", "allowAutoConverge": true}});
    let f = Facts { policies: vec![policy], ..facts(&[node("a", true), node("b", true)]) };
    let plan = reconcile(&vmim(), Some(&vmi(true)), &f, NOW);
    let state = &plan.vmi_status.unwrap()["migrationState"];
    assert_eq!(state["migrationPolicyName"], "slow");
    assert_eq!(state["migrationConfiguration"]["bandwidthPerMigration"], "1Mi");
    assert_eq!(state["migrationConfiguration"]["allowAutoConverge"], true);
    assert_eq!(state["migrationConfiguration"]["completionTimeoutPerGiB"], 150);
}

#[test]
fn a_node_sends_two_guests_at_a_time() {
    let mut f = facts(&[node("a", true), node("b", true)]);
    f.outbound.insert("a".into(), PARALLEL_OUTBOUND_PER_NODE);
    let plan = reconcile(&vmim(), Some(&vmi(true)), &f, NOW);
    assert_eq!(plan.vmi_status, None, "waits");
    assert!(plan.requeue_after.is_some());
    f.outbound.insert("a".into(), 1);
    assert!(reconcile(&vmim(), Some(&vmi(true)), &f, NOW).vmi_status.is_some());
}

#[test]
fn an_added_node_selector_narrows_the_targets() {
    let f = facts(&[node("a", true), node("b", true), node("c", true)]);
    let mut m = vmim();
    m["spec"]["addedNodeSelector"] = json!({"kubernetes.io/hostname": "c"});
    let plan = reconcile(&m, Some(&vmi(true)), &f, NOW);
    assert_eq!(plan.vmi_status.unwrap()["migrationState"]["targetNode"], "c");
    m["spec"]["addedNodeSelector"] = json!({"kubernetes.io/hostname": "a"});
    assert_eq!(phase(&reconcile(&m, Some(&vmi(true)), &f, NOW)), Some("Failed"), "the source never");
}
