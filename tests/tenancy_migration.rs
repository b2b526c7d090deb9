//! The hostile-tenant suite, live migration: moving a guest decides which host runs it, so it
//! is the `migrate` role's (KubeVirt 1.5's `kubevirt.io:migrate`), not `edit`'s; a migration
//! names a VMI of its own namespace by a valid name and never changes; and a node that is a
//! migration's target may only say it is ready — neither the source nor a bystander can move a
//! guest anywhere but to its migration's target.

mod common;

use common::tenant::Tenant;
use common::*;
use serde_json::{json, Value};

const TEAM: &str = "team-a";
const VICTIM: &str = "team-b";

async fn token(app: &TestApp, role: &str, namespaces: &[&str], node: Option<&str>) -> String {
    let mut ask = json!({"role": role, "ttlSeconds": 600, "namespaces": namespaces});
    if let Some(n) = node {
        ask["node"] = json!(n);
    }
    let (s, body) = app.post("/converge/v1/tokens", &ask).await;
    assert_eq!(s, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

fn vmims(ns: &str) -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstancemigrations")
}

fn migration(name: &str, vmi: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
           "metadata": {"name": name}, "spec": {"vmiName": vmi}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_the_migrate_roles_and_checked() {
    let app = spawn_api_only().await;
    for ns in [TEAM, VICTIM] {
        let (s, body) = app.post("/api/v1/namespaces", &json!({"metadata": {"name": ns}})).await;
        assert_eq!(s, 201, "{body}");
    }
    let editor = Tenant { app: &app, token: token(&app, "edit", &[TEAM], None).await };
    let mover = Tenant { app: &app, token: token(&app, "migrate", &[TEAM], None).await };

    let (s, body) = editor.post(&vmims(TEAM), &migration("m", "vm")).await;
    assert_eq!(s, 403, "edit starts no migration: {body}");
    let (s, body) = editor
        .put(&format!("/apis/subresources.kubevirt.io/v1/namespaces/{TEAM}/virtualmachines/vm/migrate"), &json!({}))
        .await;
    assert_eq!(s, 403, "nor through virtctl's verb: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("virtualmachines/migrate"), "{body}");
    let (s, body) = editor.get(&vmims(TEAM)).await;
    assert_eq!(s, 200, "but reads them: {body}");

    let (s, body) = mover.post(&vmims(VICTIM), &migration("m", "vm")).await;
    assert_eq!(s, 403, "another namespace's guest: {body}");
    let (s, body) = mover.post(&vmims(TEAM), &migration("m", "nothing-here")).await;
    assert_eq!(s, 422, "no such VMI: {body}");
    assert!(body["details"]["causes"][0]["field"] == "spec.vmiName", "{body}");
    let (s, body) = mover.post(&vmims(TEAM), &migration("m", "../../etc")).await;
    assert_eq!(s, 422, "a VMI name is a name: {body}");
    let (s, body) = mover.post(&vmims(TEAM), &json!({"metadata": {"name": "m"}, "spec": {}})).await;
    assert_eq!(s, 422, "{body}");
    let cross = json!({"metadata": {"name": "m"}, "spec": {"vmiName": "vm", "sendTo": {"migrationID": "x", "connectURL": "10.0.0.1:1"}}});
    let (s, body) = mover.post(&vmims(TEAM), &cross).await;
    assert_eq!(s, 422, "no cross-cluster migration to an address the tenant names: {body}");

    // Migration policies are cluster-wide: the admin's.
    let policy = json!({"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
        "metadata": {"name": "fast"}, "spec": {"selectors": {"namespaceSelector": {"a": "b"}}, "allowPostCopy": true}});
    let admin_a = Tenant { app: &app, token: token(&app, "admin", &[TEAM], None).await };
    for who in [&mover, &admin_a] {
        let (s, body) = who.post("/apis/migrations.kubevirt.io/v1alpha1/migrationpolicies", &policy).await;
        assert_eq!(s, 403, "{body}");
    }
    let (s, body) = app.post("/apis/migrations.kubevirt.io/v1alpha1/migrationpolicies", &policy).await;
    assert_eq!(s, 201, "{body}");

    // A migration's spec never changes; its status is the server's.
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "vm"},
        "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}});
    let (s, body) = app.post(&format!("/apis/kubevirt.io/v1/namespaces/{TEAM}/virtualmachineinstances"), &vmi).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = mover.post(&vmims(TEAM), &migration("m", "vm")).await;
    assert_eq!(s, 422, "a VMI that does not run does not move: {body}");
    assert!(
        body["details"]["causes"][0]["message"].as_str().unwrap_or("").contains("Cannot migrate VMI in phase"),
        "{body}"
    );
    let (s, body) = app
        .post(&vmims(TEAM), &{
            let mut m = migration("m", "vm");
            m["metadata"]["namespace"] = json!(TEAM);
            m
        })
        .await;
    assert_eq!(s, 422, "not even the admin's: {body}");
    // Nor does a tenant write where a guest is or how its migration goes (its progress included).
    let status_path = format!("/apis/kubevirt.io/v1/namespaces/{TEAM}/virtualmachineinstances/vm/status");
    let mut forged = app.get(&format!("/apis/kubevirt.io/v1/namespaces/{TEAM}/virtualmachineinstances/vm")).await.1;
    forged["status"]["nodeName"] = json!("node-b");
    forged["status"]["migrationState"] = json!({"migrationUid": "x", "targetNode": "node-b", "completed": true,
        "progress": {"dataRemainingBytes": 0}});
    for who in [&mover, &admin_a] {
        let (s, body) = who.put(&status_path, &forged).await;
        assert_eq!(s, 403, "{body}");
    }
    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_migrations_source_hands_the_guest_over_and_only_to_its_target() {
    let app = spawn_api_only().await;
    let path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/guest";
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "guest"},
        "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}});
    let (s, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await;
    assert_eq!(s, 201, "{body}");
    let mut placed = body.clone();
    placed["status"] = json!({"phase": "Running", "nodeName": "node-a", "migrationState": {
        "migrationUid": "m1", "sourceNode": "node-a", "targetNode": "node-b", "targetNodeAddress": "127.0.0.1"}});
    let (s, stored) = app.put(&format!("{path}/status"), &placed).await;
    assert_eq!(s, 200, "{stored}");
    let source = Tenant { app: &app, token: token(&app, "node", &[], Some("node-a")).await };
    let target = Tenant { app: &app, token: token(&app, "node", &[], Some("node-b")).await };
    let bystander = Tenant { app: &app, token: token(&app, "node", &[], Some("node-c")).await };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = stored.clone();
        f(&mut v);
        v
    };

    let grab = with(&|v| v["status"]["nodeName"] = json!("node-b"));
    let (s, body) = target.put(&format!("{path}/status"), &grab).await;
    assert_eq!(s, 403, "the target takes nothing: {body}");
    let (s, body) = bystander
        .put(
            &format!("{path}/status"),
            &with(&|v| v["status"]["migrationState"]["targetNodeDomainReadyTimestamp"] = json!("2026-12-04T00:00:00Z")),
        )
        .await;
    assert_eq!(s, 403, "a bystander writes nothing: {body}");
    let retarget = with(&|v| v["status"]["migrationState"]["targetNode"] = json!("node-c"));
    let (s, body) = source.put(&format!("{path}/status"), &retarget).await;
    assert_eq!(s, 403, "the target is the controller's: {body}");
    let early = with(&|v| {
        v["status"]["nodeName"] = json!("node-b");
        v["status"]["migrationState"]["completed"] = json!(true);
    });
    let (s, body) = source.put(&format!("{path}/status"), &early).await;
    assert_eq!(s, 403, "not before the migration started: {body}");
    let (s, body) = app.get(path).await;
    assert_eq!((s, body["status"]["nodeName"].as_str()), (200, Some("node-a")), "nothing moved: {body}");

    let ready =
        with(&|v| v["status"]["migrationState"]["targetNodeDomainReadyTimestamp"] = json!("2026-12-04T00:00:00Z"));
    let (s, body) = target.put(&format!("{path}/status"), &ready).await;
    assert_eq!(s, 200, "the target says it is ready: {body}");
}
