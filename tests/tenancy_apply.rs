//! The hostile-tenant suite, for server-side apply, managedFields, protobuf and YAML bodies:
//! each attack is made with a token confined to `team-a`, refused with a clear error, and leaves
//! the store and the server as they were (see tests/tenancy.rs for the rest of the suite).

mod common;

use common::tenant::Tenant;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const TEAM: &str = "team-a";
const VICTIM: &str = "team-b";

async fn setup(app: &TestApp) -> Tenant<'_> {
    for ns in [TEAM, VICTIM] {
        let (s, body) = app.post("/api/v1/namespaces", &json!({"metadata": {"name": ns}})).await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, body) =
        app.post("/converge/v1/tokens", &json!({"role": "edit", "ttlSeconds": 600, "namespaces": [TEAM]})).await;
    assert_eq!(s, 201, "{body}");
    Tenant { app, token: body["token"].as_str().expect("token").to_string() }
}

async fn apply(t: &Tenant<'_>, path: &str, manager: &str, body: &Value) -> (u16, Value) {
    let sep = if path.contains('?') { '&' } else { '?' };
    t.call(
        Method::PATCH,
        &format!("{path}{sep}fieldManager={manager}"),
        "application/apply-patch+yaml",
        Some(body.to_string()),
    )
    .await
}

async fn still_ready(app: &TestApp) {
    assert_eq!(app.get("/readyz").await.0, 200, "the server stays ready after the attack");
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

/// Attack: apply (which creates what is missing) into another namespace, or with the body
/// naming another namespace than the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_stays_in_the_tenants_namespaces() {
    let app = spawn_api_only().await;
    let t = setup(&app).await;
    let (s, _) =
        apply(&t, &format!("/api/v1/namespaces/{VICTIM}/configmaps/x"), "m", &config_map("x", json!({"a": "1"}))).await;
    assert_eq!(s, 403);
    let mut other = config_map("x", json!({"a": "1"}));
    other["metadata"]["namespace"] = json!(VICTIM);
    let (s, body) = apply(&t, &format!("/api/v1/namespaces/{TEAM}/configmaps/x"), "m", &other).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(app.get(&format!("/api/v1/namespaces/{VICTIM}/configmaps/x")).await.0, 404);
    still_ready(&app).await;
}

/// Attack: apply a VM's status (a phase, a node) from the main resource, or through the status
/// subresource; force a host disk in through apply instead of create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_writes_no_status_and_no_host_access() {
    let app = spawn_api_only().await;
    let t = setup(&app).await;
    let vm = |extra: Value| {
        let mut v = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}}}});
        if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
            m.extend(e);
        }
        v
    };
    let path = format!("/apis/kubevirt.io/v1/namespaces/{TEAM}/virtualmachines/v");
    let (s, body) = apply(&t, &path, "m", &vm(json!({"status": {"ready": true, "printableStatus": "Running"}}))).await;
    assert_eq!(s, 201, "{body}");
    assert!(body.get("status").is_none_or(|st| st.get("printableStatus").is_none()), "{body}");
    let (s, _) = apply(&t, &format!("{path}/status"), "m", &vm(json!({"status": {"ready": true}}))).await;
    assert_eq!(s, 403);
    let mut host = vm(json!({}));
    host["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "k", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}]);
    host["spec"]["template"]["spec"]["domain"]["devices"] = json!({"disks": [{"name": "k", "disk": {}}]});
    let (s, body) = t
        .call(
            Method::PATCH,
            &format!("{path}?fieldManager=m&force=true"),
            "application/apply-patch+yaml",
            Some(host.to_string()),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    let stored = app.get(&path).await.1;
    assert!(stored.pointer("/spec/template/spec/volumes").is_none(), "{stored}");
    still_ready(&app).await;
}

/// Attack: managedFields made to hurt — nested past any object, malformed, or claiming
/// another manager's fields to make its next apply conflict or prune what is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_fields_from_a_request_are_checked() {
    let app = spawn_api_only().await;
    let t = setup(&app).await;
    let path = format!("/api/v1/namespaces/{TEAM}/configmaps/c");
    assert_eq!(apply(&t, &path, "owner", &config_map("c", json!({"a": "1"}))).await.0, 201);
    // Deeper than any object (past FieldsV1's bound), yet within what JSON decoding takes.
    let mut deep = json!({});
    for _ in 0..100 {
        deep = json!({"f:a": deep});
    }
    for bad in [
        json!([{"manager": "m", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": deep}]),
        json!([{"manager": "m", "operation": "Steal", "fieldsV1": {}}]),
        json!([{"manager": "m", "operation": "Update", "fieldsV1": {"x:y": {}}}]),
        json!("not a list"),
    ] {
        let (s, body) =
            t.patch(&path, "application/merge-patch+json", &json!({"metadata": {"managedFields": bad}})).await;
        // 422 from the field manager; a core kind's schema check answers a non-list with 400.
        assert!(s == 422 || (s == 400 && bad.is_string()), "{body}");
    }
    // An applied configuration may not carry managedFields at all.
    let mut sneaky = config_map("c", json!({"a": "1"}));
    sneaky["metadata"]["managedFields"] = json!([{"manager": "owner", "operation": "Apply"}]);
    assert_eq!(apply(&t, &path, "m", &sneaky).await.0, 422);
    // A manager name past the apiserver's limit.
    let (s, _) = apply(&t, &path, &"m".repeat(200), &config_map("c", json!({"a": "1"}))).await;
    assert_eq!(s, 400);
    let stored = app.get(&path).await.1;
    assert_eq!(stored["data"], json!({"a": "1"}));
    assert_eq!(stored["metadata"]["managedFields"][0]["manager"], "owner");
    still_ready(&app).await;
}

/// Attack: bodies that decode into more than they are — a YAML alias bomb, protobuf with
/// lengths past the body, protobuf for a kind that has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_and_protobuf_bodies_cannot_blow_up_the_server() {
    let app = spawn_api_only().await;
    let t = setup(&app).await;
    let path = format!("/api/v1/namespaces/{TEAM}/configmaps");
    let mut bomb = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, prev) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        let next = (b'b' + i as u8) as char;
        bomb.push_str(&format!(
            "{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let (s, _) = t.call(Method::POST, &path, "application/yaml", Some(bomb.clone())).await;
    assert_eq!(s, 400);
    let (s, _) =
        t.call(Method::PATCH, &format!("{path}/x?fieldManager=m"), "application/apply-patch+yaml", Some(bomb)).await;
    assert_eq!(s, 400);
    for body in [&b"k8s\0\x12\x7f\x0a"[..], b"k8s\0\x12\x05\x0a\xff\xff\xff\xff\x0f", b"k8s\0"] {
        let resp = app
            .http
            .post(app.url(&path))
            .bearer_auth(&t.token)
            .header("content-type", "application/vnd.kubernetes.protobuf")
            .body(body.to_vec())
            .send()
            .await
            .expect("the server answers");
        assert_eq!(resp.status().as_u16(), 400, "{body:?}");
    }
    let (s, body) = t
        .call(
            Method::POST,
            &format!("/apis/kubevirt.io/v1/namespaces/{TEAM}/virtualmachines"),
            "application/vnd.kubernetes.protobuf",
            Some("k8s\0".into()),
        )
        .await;
    assert_eq!(s, 415, "{body}");
    still_ready(&app).await;
}
