use super::*;
use serde_json::json;

const CM: &str = "io.k8s.api.core.v1.ConfigMap";
const SVC: &str = "io.k8s.api.core.v1.Service";
const VM: &str = "v1.VirtualMachine";
const MAIN: Scope = Scope::Main { status_subresource: true };
const NOW: &str = "2026-12-04T10:00:00Z";

fn mgr(name: &str, operation: Operation) -> Manager {
    Manager { name: name.into(), operation, api_version: "v1".into(), subresource: None }
}

fn fields(obj: &Value, manager: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["manager"] == manager))
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or(Value::Null)
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d"}, "data": data})
}

#[test]
fn apply_creates_then_second_manager_shares_and_conflicts() {
    let a = mgr("a", Operation::Apply);
    let live = apply(CM, MAIN, None, &cm(json!({"x": "1", "y": "2"})), &a, false, NOW, &|_| {}).unwrap();
    assert_eq!(fields(&live, "a"), json!({"f:data": {"f:x": {}, "f:y": {}}}));
    assert_eq!(live["metadata"]["managedFields"][0]["operation"], "Apply");

    // The same value from another manager is shared ownership, not a conflict.
    let b = mgr("b", Operation::Apply);
    let live = apply(CM, MAIN, Some(&live), &cm(json!({"x": "1", "z": "3"})), &b, false, NOW, &|_| {}).unwrap();
    assert_eq!(live["data"], json!({"x": "1", "y": "2", "z": "3"}));

    let err = apply(CM, MAIN, Some(&live), &cm(json!({"y": "changed"})), &b, false, NOW, &|_| {}).unwrap_err();
    assert_eq!(err.to_string(), "Apply failed with 1 conflict: conflict with \"a\": .data.y");
    let forced = apply(CM, MAIN, Some(&live), &cm(json!({"y": "changed"})), &b, true, NOW, &|_| {}).unwrap();
    assert_eq!(forced["data"]["y"], "changed");
    assert_eq!(fields(&forced, "a"), json!({"f:data": {"f:x": {}}}));
    // b dropped x and z: z goes (b alone had it), x stays (a still owns it).
    assert_eq!(forced["data"], json!({"x": "1", "y": "changed"}));
}

#[test]
fn updates_take_fields_and_conflict_with_later_applies() {
    let a = mgr("kubectl", Operation::Apply);
    let live = apply(CM, MAIN, None, &cm(json!({"x": "1"})), &a, false, NOW, &|_| {}).unwrap();
    let mut edited = live.clone();
    edited["data"]["x"] = json!("edited");
    track_update(CM, MAIN, Some(&live), &mut edited, &mgr("kubectl-edit", Operation::Update), NOW).unwrap();
    assert_eq!(fields(&edited, "kubectl-edit"), json!({"f:data": {"f:x": {}}}));
    assert_eq!(fields(&edited, "kubectl"), Value::Null, "an entry left with nothing is dropped");
    // Applying the old value back now conflicts with the edit, as on a real cluster; forcing
    // takes it back.
    let err = apply(CM, MAIN, Some(&edited), &cm(json!({"x": "1"})), &a, false, NOW, &|_| {}).unwrap_err();
    assert_eq!(err.to_string(), "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.x");
    let again = apply(CM, MAIN, Some(&edited), &cm(json!({"x": "1"})), &a, true, NOW, &|_| {}).unwrap();
    assert_eq!(again["data"]["x"], "1");
    assert_eq!(fields(&again, "kubectl-edit"), Value::Null);
    let err = apply(
        CM,
        MAIN,
        Some(&again),
        &cm(json!({"x": "2", "y": "3"})),
        &mgr("other", Operation::Apply),
        false,
        NOW,
        &|_| {},
    )
    .unwrap_err();
    let ApplyError::Conflicts(c) = err else { panic!() };
    assert_eq!(c, vec![Conflict { manager: "\"kubectl\"".into(), path: ".data.x".into() }]);
}

#[test]
fn keyed_lists_merge_by_key_with_defaults_and_atomic_lists_are_replaced() {
    let svc = |ports: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "d"}, "spec": {"ports": ports}});
    let a = mgr("a", Operation::Apply);
    let mut live = apply(SVC, MAIN, None, &svc(json!([{"port": 80}])), &a, false, NOW, &|_| {}).unwrap();
    live["spec"]["ports"][0]["protocol"] = json!("TCP"); // as defaulting leaves it
    let b = mgr("b", Operation::Apply);
    let live =
        apply(SVC, MAIN, Some(&live), &svc(json!([{"port": 443, "name": "https"}])), &b, false, NOW, &|_| {}).unwrap();
    let ports: Vec<i64> =
        live["spec"]["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()).collect();
    assert_eq!(ports, vec![80, 443]);
    assert!(fields(&live, "a")["f:spec"]["f:ports"]
        .as_object()
        .unwrap()
        .contains_key("k:{\"port\":80,\"protocol\":\"TCP\"}"));

    let vm = |disks: Value| {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v", "namespace": "d"},
               "spec": {"template": {"spec": {"domain": {"devices": {"disks": disks}}}}}})
    };
    let live = apply(VM, MAIN, None, &vm(json!([{"name": "a"}, {"name": "b"}])), &a, false, NOW, &|_| {}).unwrap();
    assert_eq!(
        fields(&live, "a")["f:spec"]["f:template"]["f:spec"]["f:domain"]["f:devices"],
        json!({"f:disks": {}}),
        "KubeVirt's disks are an atomic list"
    );
    let err = apply(VM, MAIN, Some(&live), &vm(json!([{"name": "c"}])), &b, false, NOW, &|_| {}).unwrap_err();
    assert!(err.to_string().ends_with(".spec.template.spec.domain.devices.disks"), "{err}");
    let live = apply(VM, MAIN, Some(&live), &vm(json!([{"name": "a"}])), &a, false, NOW, &|_| {}).unwrap();
    assert_eq!(live["spec"]["template"]["spec"]["domain"]["devices"]["disks"], json!([{"name": "a"}]));
}

#[test]
fn status_is_out_of_a_main_apply_and_server_metadata_is_nobodys() {
    let a = mgr("a", Operation::Apply);
    let mut config = cm(json!({"x": "1"}));
    config["metadata"]["labels"] = json!({"app": "w"});
    let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v", "namespace": "d", "labels": {"l": "1"}},
                    "spec": {"runStrategy": "Halted"}, "status": {"ready": true}});
    let live = apply(VM, MAIN, None, &vm, &a, false, NOW, &|_| {}).unwrap();
    assert!(live.get("status").is_none());
    assert_eq!(fields(&live, "a"), json!({"f:metadata": {"f:labels": {"f:l": {}}}, "f:spec": {"f:runStrategy": {}}}));
    let with_mf = {
        let mut v = config.clone();
        v["metadata"]["managedFields"] = json!([]);
        v
    };
    assert!(matches!(apply(CM, MAIN, None, &with_mf, &a, false, NOW, &|_| {}), Err(ApplyError::ManagedFields(_))));
}

#[test]
fn request_managed_fields_replace_reset_or_leave_the_stored_ones() {
    let a = mgr("a", Operation::Apply);
    let live = apply(CM, MAIN, None, &cm(json!({"x": "1"})), &a, false, NOW, &|_| {}).unwrap();
    let u = mgr("u", Operation::Update);
    let mut unaware = live.clone();
    unaware["metadata"]["managedFields"] = json!([]);
    unaware["data"]["y"] = json!("2");
    track_update(CM, MAIN, Some(&live), &mut unaware, &u, NOW).unwrap();
    assert_eq!(unaware["metadata"]["managedFields"].as_array().map(Vec::len), Some(2));
    let mut replaced = live.clone();
    replaced["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:x": {}}}}]);
    track_update(CM, MAIN, Some(&live), &mut replaced, &u, NOW).unwrap();
    assert_eq!(replaced["metadata"]["managedFields"][0]["manager"], "kubectl");
    let mut reset = live.clone();
    reset["metadata"]["managedFields"] = json!([{}]);
    track_update(CM, MAIN, Some(&live), &mut reset, &u, NOW).unwrap();
    assert!(reset["metadata"].get("managedFields").is_none());
    let mut bad = live.clone();
    bad["metadata"]["managedFields"] = json!([{"manager": "m", "operation": "Steal"}]);
    assert!(track_update(CM, MAIN, Some(&live), &mut bad, &u, NOW).is_err());
}

#[test]
fn last_applied_is_kept_current_where_present() {
    let a = mgr("kubectl", Operation::Apply);
    let mut live = cm(json!({"x": "1"}));
    live["metadata"]["annotations"] = json!({LAST_APPLIED: "{}"});
    let out = apply(CM, MAIN, Some(&live), &cm(json!({"x": "2"})), &a, false, NOW, &|_| {}).unwrap();
    let last: Value = serde_json::from_str(out["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap()).unwrap();
    assert_eq!(last["data"]["x"], "2");
}
