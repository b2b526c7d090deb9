//! The hostile-tenant suite: each test is an attack made with a token confined to `team-a`
//! (`converge token create --namespace team-a --role edit`, or a cluster-wide `edit`/`view`),
//! asserting that it is refused with a clear error and that nothing changed — on the host
//! (files), in the store (other namespaces' objects, volumes) and in the server (still ready).
//! `docs/security.md` lists what each defends; a new attack is a new test here.

mod common;

use common::tenant::Tenant;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const TEAM: &str = "team-a";
const VICTIM: &str = "team-b";

async fn token(app: &TestApp, role: &str, namespaces: &[&str]) -> String {
    let (s, body) =
        app.post("/converge/v1/tokens", &json!({"role": role, "ttlSeconds": 600, "namespaces": namespaces})).await;
    assert_eq!(s, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

async fn namespaces(app: &TestApp) {
    for ns in [TEAM, VICTIM] {
        let (s, body) = app.post("/api/v1/namespaces", &json!({"metadata": {"name": ns}})).await;
        assert_eq!(s, 201, "{body}");
    }
}

/// The field causes of a Status, as `field: message` lines.
fn causes(status: &Value) -> String {
    status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{}: {}", c["field"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn still_ready(app: &TestApp) {
    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 200, "the server stays ready after the attack");
}

fn vms(ns: &str) -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines")
}

fn vmis(ns: &str) -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances")
}

fn vm_with_host_disk(name: &str, path: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}},
            "volumes": [{"name": "k", "hostDisk": {"path": path, "type": "DiskOrCreate", "capacity": "1Mi"}}]}}}})
}

/// Attack: a VM whose hostDisk is the server's JWT signing key (forge an admin token), or a
/// file it creates anywhere (`/root/.ssh/authorized_keys`). Refused at admission, by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_disks_are_refused_unless_the_admin_allows_their_directory() {
    let app = spawn_app().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let key = app.dir.path().join("signing.key");
    let before = std::fs::read(&key).ok();
    let (s, body) = t.post(&vms(TEAM), &vm_with_host_disk("steal", &key.display().to_string())).await;
    assert_eq!(s, 422, "{body}");
    assert!(causes(&body).contains("spec.template.spec.volumes[0].hostDisk.path"), "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("--host-disk-dir"), "{body}");
    let planted = app.dir.path().join("authorized_keys");
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "plant"},
        "spec": vm_with_host_disk("x", &planted.display().to_string())["spec"]["template"]["spec"].clone()});
    let (s, body) = t.post(&vmis(TEAM), &vmi).await;
    assert_eq!(s, 422, "{body}");
    assert!(causes(&body).contains("spec.volumes[0].hostDisk.path"), "{body}");
    // Neither an admin: the gate is the server's configuration, not the caller.
    let (s, _) = app.post(&vms(TEAM), &vm_with_host_disk("admin", "/etc/shadow")).await;
    assert_eq!(s, 422);
    assert_eq!(std::fs::read(&key).ok(), before, "the signing key is untouched");
    assert!(!planted.exists());
}

/// Attack: a hostDisk that climbs out of the allowed directory with `..`, or names it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_disk_directory_cannot_be_climbed_out_of() {
    let allowed = tempfile::tempdir().expect("dir");
    let dir = allowed.path().to_path_buf();
    let app = spawn_app_with(None, |c| c.host_access.host_disk_dirs = vec![dir]).await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let inside = allowed.path().join("disk.img").display().to_string();
    let (s, body) = t.post(&vms(TEAM), &vm_with_host_disk("ok", &inside)).await;
    assert_eq!(s, 201, "inside the allowed directory: {body}");
    for (i, bad) in [
        format!("{}/../signing.key", allowed.path().display()),
        allowed.path().display().to_string(),
        format!("{}x/disk.img", allowed.path().display()),
    ]
    .iter()
    .enumerate()
    {
        let (s, body) = t.post(&vms(TEAM), &vm_with_host_disk(&format!("bad-{i}"), bad)).await;
        assert_eq!(s, 422, "{bad}: {body}");
    }
}

/// Attack: write a VMI's status (interfaces with nft syntax for a Service to carry into the
/// node's ruleset, a phase, a node) — through `/status`, inside a PUT or a merge patch of the
/// object, or at create. `/status` is refused; the others keep the status the server wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_write_status() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let injected = "10.244.0.9 }\n  chain x { type filter hook forward priority -400; policy drop; }\n";
    let hostile_status = json!({"phase": "Running", "nodeName": "elsewhere",
        "interfaces": [{"name": "default", "ipAddress": injected, "podInterfaceName": "eth0"}],
        "conditions": [{"type": "Ready", "status": "True"}]});
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "v", "labels": {"app": "web"}},
        "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}},
        "status": hostile_status.clone()});
    let (s, created) = t.post(&vmis(TEAM), &vmi).await;
    assert_eq!(s, 201, "{created}");
    assert!(created.get("status").is_none_or(|st| st.get("interfaces").is_none()), "dropped at create: {created}");
    let path = format!("{}/v", vmis(TEAM));
    let mut with_status = created.clone();
    with_status["status"] = hostile_status.clone();
    let (s, body) = t.put(&format!("{path}/status"), &with_status).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) =
        t.patch(&format!("{path}/status"), "application/merge-patch+json", &json!({"status": hostile_status})).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = t.put(&path, &with_status).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["status"].get("interfaces").is_none(), "reverted inside a PUT: {body}");
    let (s, body) = t.patch(&path, "application/merge-patch+json", &json!({"status": {"phase": "Succeeded"}})).await;
    assert_eq!(s, 200, "{body}");
    assert_ne!(body["status"]["phase"], "Succeeded", "reverted inside a PATCH: {body}");
    // Claims, DataVolumes and Services alike: a claim cannot say it is Bound.
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
        "status": {"phase": "Bound"}});
    let (s, body) = t.post(&format!("/api/v1/namespaces/{TEAM}/persistentvolumeclaims"), &pvc).await;
    assert_eq!(s, 201, "{body}");
    assert_ne!(body["status"]["phase"], "Bound", "{body}");
    let (s, _) = t
        .patch(
            &format!("/api/v1/namespaces/{TEAM}/persistentvolumeclaims/c/status"),
            "application/merge-patch+json",
            &json!({"status": {"phase": "Bound"}}),
        )
        .await;
    assert_eq!(s, 403);
}

/// Attack: the same with a namespaced *admin* token (`--namespace team-a --role admin`): a VMI
/// claiming another pod's address would make its Service send traffic there. Only an admin
/// confined to no namespace writes status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_admin_is_a_tenant_for_status() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "admin", &[TEAM]).await };
    let stolen = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
        "interfaces": [{"name": "default", "ipAddress": "10.244.0.2", "podInterfaceName": "eth0"}]});
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "v"},
        "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}, "status": stolen.clone()});
    let (s, created) = t.post(&vmis(TEAM), &vmi).await;
    assert_eq!(s, 201, "{created}");
    assert!(created.get("status").is_none_or(|st| st.get("interfaces").is_none()), "dropped at create: {created}");
    let path = format!("{}/v/status", vmis(TEAM));
    let (s, body) = t.patch(&path, "application/merge-patch+json", &json!({"status": stolen})).await;
    assert_eq!(s, 403, "{body}");
    let (s, _) = t.post("/converge/v1/tokens", &json!({"role": "admin", "ttlSeconds": 60})).await;
    assert_eq!(s, 403, "nor does it mint tokens");
    // Nor read the server's metrics: every namespace's guests and the control plane's health.
    let (s, body) = t.get("/metrics").await;
    assert_eq!(s, 403, "nor read /metrics: {body}");
}

/// Attack: a claim of team-a names team-b's volume and claims to be Bound, to attach, clone or
/// overwrite (through the upload proxy) another tenant's disk. The binder binds only a volume
/// whose claimRef is empty or names this claim; attach, import and clone check the claimRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cannot_take_another_tenants_volume() {
    let app = spawn_app().await;
    namespaces(&app).await;
    let claim = |name: &str, volume: Option<&str>| {
        let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
            "status": {"phase": "Bound"}});
        if let Some(v) = volume {
            c["spec"]["volumeName"] = json!(v);
        }
        c
    };
    let (s, body) =
        app.post(&format!("/api/v1/namespaces/{VICTIM}/persistentvolumeclaims"), &claim("data", None)).await;
    assert_eq!(s, 201, "{body}");
    let store = app.store();
    let bound = wait_until(Duration::from_secs(20), || {
        let store = std::sync::Arc::clone(&store);
        async move {
            let kind = &converge_engine::kinds::PERSISTENT_VOLUME_CLAIM;
            store.get(kind, VICTIM, "data").await.ok().flatten().is_some_and(|c| {
                c.pointer("/status/phase") == Some(&json!("Bound")) && c.pointer("/spec/volumeName").is_some()
            })
        }
    })
    .await;
    assert!(bound, "the victim's claim binds");
    let victim = app.get(&format!("/api/v1/namespaces/{VICTIM}/persistentvolumeclaims/data")).await.1;
    let pv_name = victim["spec"]["volumeName"].as_str().expect("volume").to_string();
    let pv_before = app.get(&format!("/api/v1/persistentvolumes/{pv_name}")).await.1;

    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let (s, body) =
        t.post(&format!("/api/v1/namespaces/{TEAM}/persistentvolumeclaims"), &claim("mine", Some(&pv_name))).await;
    assert_eq!(s, 201, "{body}");
    // The binder runs on every claim change; give it several passes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let thief = app.get(&format!("/api/v1/namespaces/{TEAM}/persistentvolumeclaims/mine")).await.1;
    assert_ne!(thief["status"]["phase"], "Bound", "{thief}");
    let pv_after = app.get(&format!("/api/v1/persistentvolumes/{pv_name}")).await.1;
    assert_eq!(pv_after["spec"]["claimRef"], pv_before["spec"]["claimRef"], "the volume still belongs to team-b");
    // Its upload token is for its own claim, which gets no volume to write.
    let state = converge_engine::storage::claims::resolve(store.as_ref(), TEAM, "mine").await.expect("resolve");
    assert!(matches!(state, converge_engine::storage::claims::ClaimState::Waiting(..)), "{state:?}");
    // Nor may the tenant make volumes, or pre-bind one by writing it.
    let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "root"},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/"}}});
    assert_eq!(t.post("/api/v1/persistentvolumes", &pv).await.0, 403);
    let mut stolen = pv_after.clone();
    stolen["spec"]["claimRef"] = json!({"namespace": TEAM, "name": "mine"});
    assert_eq!(t.put(&format!("/api/v1/persistentvolumes/{pv_name}"), &stolen).await.0, 403);
}

/// Attack: cluster-wide `edit` writes what only admins write (volumes on any host path,
/// classes on any pool path, nodes, cluster instancetypes, namespaces), `view` reads Secrets,
/// and a namespaced token reaches past its namespace or issues tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_kubernetes_defaults() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let edit = Tenant { app: &app, token: token(&app, "edit", &[]).await };
    let view = Tenant { app: &app, token: token(&app, "view", &[]).await };
    let team = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let admin_only: [(&str, Value); 5] = [
        (
            "/api/v1/persistentvolumes",
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "etc"},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/etc"}}}),
        ),
        (
            "/apis/storage.k8s.io/v1/storageclasses",
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "root"}, "provisioner": "converge.dev/local-pool", "parameters": {"path": "/"}}),
        ),
        ("/api/v1/nodes", json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "fake"}})),
        (
            "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes",
            json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
            "metadata": {"name": "huge"}, "spec": {"cpu": {"guest": 64}, "memory": {"guest": "64Gi"}}}),
        ),
        ("/api/v1/namespaces", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mine"}})),
    ];
    for (path, body) in &admin_only {
        for who in [&edit, &team] {
            let (s, out) = who.post(path, body).await;
            assert_eq!(s, 403, "{path}: {out}");
            assert_eq!(out["reason"], "Forbidden");
        }
        assert_eq!(app.get(&format!("{path}/{}", body["metadata"]["name"].as_str().unwrap_or(""))).await.0, 404);
    }
    // Allowing clones out of a namespace is its owner's call, made on the Namespace (admin).
    let annotate = json!({"metadata": {"annotations": {"cdi.kubevirt.io/allowCloneTo": TEAM}}});
    let (s, _) = team.patch(&format!("/api/v1/namespaces/{VICTIM}"), "application/merge-patch+json", &annotate).await;
    assert_eq!(s, 403);

    let secret =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "x"}});
    assert_eq!(app.post(&format!("/api/v1/namespaces/{VICTIM}/secrets"), &secret).await.0, 201);
    let (s, body) = view.get(&format!("/api/v1/namespaces/{VICTIM}/secrets/db")).await;
    assert_eq!(s, 403, "view reads no Secrets: {body}");
    assert_eq!(view.get(&format!("/api/v1/namespaces/{VICTIM}/secrets")).await.0, 403);
    assert_eq!(view.get(&format!("/api/v1/namespaces/{VICTIM}/secrets?watch=1&timeoutSeconds=1")).await.0, 403);
    assert_eq!(edit.get(&format!("/api/v1/namespaces/{VICTIM}/secrets/db")).await.0, 200, "edit does");
    assert_eq!(view.get(&vms(VICTIM)).await.0, 200, "view reads the rest");
    assert_eq!(team.get(&format!("/api/v1/namespaces/{VICTIM}/secrets/db")).await.0, 403);
    assert_eq!(team.get("/api/v1/secrets").await.0, 403, "no cross-namespace list");
    let (s, _) = team.post("/converge/v1/tokens", &json!({"role": "admin", "ttlSeconds": 60})).await;
    assert_eq!(s, 403, "no token minting");
    let upload = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "u"}, "spec": {"pvcName": "data"}});
    let (s, _) = team
        .post(&format!("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{VICTIM}/uploadtokenrequests"), &upload)
        .await;
    assert_eq!(s, 403, "no upload into another namespace's claim");
    let (s, _) = team.post("/bridge/v1/hosts", &json!({"name": "h", "namespace": VICTIM, "memory": "64Mi"})).await;
    assert_eq!(s, 403, "no host in another namespace");
}

/// Attack: 28 JSON patch `copy` operations, each doubling a ConfigMap (2^28 × the seed: the
/// server went from 40 MiB to 13 GiB). Refused with 413 before it grows; nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_patch_cannot_blow_up_the_server() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bomb"}, "data": {"a": "x".repeat(1024)}});
    let path = format!("/api/v1/namespaces/{TEAM}/configmaps");
    assert_eq!(t.post(&path, &cm).await.0, 201);
    let mut ops = vec![json!({"op": "add", "path": "/metadata/annotations", "value": {"seed": "x".repeat(1024)}})];
    for i in 0..28 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/c{i}")}));
    }
    let started = std::time::Instant::now();
    let (s, body) = t.patch(&format!("{path}/bomb"), "application/json-patch+json", &json!(ops)).await;
    assert_eq!(s, 413, "{body}");
    assert_eq!(body["reason"], "RequestEntityTooLarge");
    assert!(started.elapsed() < Duration::from_secs(10), "refused before growing");
    let too_many: Vec<Value> =
        (0..10_001).map(|_| json!({"op": "test", "path": "/kind", "value": "ConfigMap"})).collect();
    let (s, _) = t.patch(&format!("{path}/bomb"), "application/json-patch+json", &json!(too_many)).await;
    assert_eq!(s, 413);
    let stored = app.get(&format!("{path}/bomb")).await.1;
    assert!(stored["metadata"].get("annotations").is_none(), "nothing stored");
    still_ready(&app).await;
}

/// Attack: integers at their type's edge where the server does arithmetic with them — a watch
/// of u64::MAX seconds (panicked the worker: the connection dropped), a grace period of
/// i64::MAX (overflowed at delete with a mutex held), a stop's grace period, a page limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_at_their_limits_are_bounded() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    // The watch is answered (clamped to a day), not dropped: its headers come at once.
    let url = app.url(&format!("{}?watch=1&timeoutSeconds=18446744073709551615", vms(TEAM)));
    let resp = app.http.get(url).bearer_auth(&t.token).send().await.expect("the watch is answered");
    assert_eq!(resp.status().as_u16(), 200);
    drop(resp);
    let (s, _) = t.get(&format!("{}?watch=1&timeoutSeconds=18446744073709551616", vms(TEAM))).await;
    assert_eq!(s, 400);
    let (s, body) = t.get(&format!("{}?limit=9223372036854775807", vms(TEAM))).await;
    assert_eq!(s, 200, "{body}");
    let mut vm = vm_manifest("grace");
    vm["metadata"]["namespace"] = json!(TEAM);
    vm["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(i64::MAX);
    let (s, body) = t.post(&vms(TEAM), &vm).await;
    assert_eq!(s, 422, "{body}");
    assert!(causes(&body).contains("terminationGracePeriodSeconds"), "{body}");
    vm["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(30);
    assert_eq!(t.post(&vms(TEAM), &vm).await.0, 201);
    let stop = format!("/apis/subresources.kubevirt.io/v1/namespaces/{TEAM}/virtualmachines/grace/stop");
    let (s, _) = t.put(&stop, &json!({"gracePeriod": i64::MAX})).await;
    assert_eq!(s, 400);
    let (s, body) = t
        .post(
            &vms(TEAM),
            &json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"generateName": "../../etc/"}, "spec": vm["spec"].clone()}),
        )
        .await;
    assert_eq!(s, 422, "generateName is validated as a name: {body}");
    still_ready(&app).await;
}

/// Attack: a NAD that plugs guests into a host bridge the admin never offered (the host's
/// uplink, another tenant's lab bridge — and flips vlan_filtering on it), or takes a PCI device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nads_name_only_what_the_admin_allows() {
    let app = spawn_app_with(None, |c| c.host_access.nad_bridges = vec!["br-team*".into()]).await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let nad = |name: &str, config: Value| {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": {"name": name},
               "spec": {"config": config.to_string()}})
    };
    let path = format!("/apis/k8s.cni.cncf.io/v1/namespaces/{TEAM}/network-attachment-definitions");
    for (name, config) in [
        ("uplink", json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "eth0", "vlan": 10})),
        ("default-bridge", json!({"cniVersion": "0.3.1", "type": "bridge"})),
        ("gpu", json!({"cniVersion": "0.3.1", "type": "sriov", "deviceID": "0000:00:02.0"})),
    ] {
        let (s, body) = t.post(&path, &nad(name, config)).await;
        assert_eq!(s, 422, "{name}: {body}");
        assert!(causes(&body).contains("spec.config"), "{body}");
    }
    let (s, body) =
        t.post(&path, &nad("lab", json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-team1"}))).await;
    assert_eq!(s, 201, "an allowed bridge: {body}");
}

/// Attack: keep using a token after an admin revoked it, on a second server sharing the
/// database (the revocation lived in one process's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_server_of_the_database() {
    let first = spawn_app().await;
    let mut config = converge_api::ServerConfig::new(first.dir.path());
    config.listen = "127.0.0.1:0".into();
    config.database_url = Some(first.database_url.clone());
    config.controllers = false;
    let second = converge_api::start(config).await.expect("a second server on the same data");
    let http = http_client(&second.ca_pem);
    let (s, body) = first.post("/converge/v1/tokens", &json!({"role": "view", "ttlSeconds": 600})).await;
    assert_eq!(s, 201, "{body}");
    let (id, token) =
        (body["id"].as_str().expect("id").to_string(), body["token"].as_str().expect("token").to_string());
    let on_second = |token: String| {
        let (http, url) = (http.clone(), format!("{}/api/v1/namespaces", second.base_url));
        async move { http.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(on_second(token.clone()).await, 200);
    assert_eq!(first.delete(&format!("/converge/v1/tokens/{id}"), None).await.0, 200);
    let refused = wait_until(Duration::from_secs(3), || {
        let t = token.clone();
        let f = &on_second;
        async move { f(t).await == 401 }
    })
    .await;
    assert!(refused, "the second server refuses the revoked token within a second or so");
    second.stop().await;
}

/// Attack: read the database (every Secret) or the signing key as another local user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_closed_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o777);
    let dir = mode(app.dir.path());
    assert_eq!(dir & 0o007, 0, "no access for others to the data dir: {dir:o}");
    for file in ["converge.db", "signing.key", "ca.key", "admin.token", "kubeconfig"] {
        let path = app.dir.path().join(file);
        if path.exists() {
            assert_eq!(mode(&path) & 0o077, 0, "{file} is its owner's alone: {:o}", mode(&path));
        }
    }
}

/// Attack: a CPU topology whose product overflows the node's arithmetic (65536³ vCPUs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_topologies_are_bounded() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let mut vm = vm_manifest("wide");
    vm["metadata"]["namespace"] = json!(TEAM);
    vm["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"sockets": 65536, "cores": 65536, "threads": 65536});
    let (s, body) = t.post(&vms(TEAM), &vm).await;
    assert_eq!(s, 422, "{body}");
    assert!(causes(&body).contains("spec.template.spec.domain.cpu.sockets"), "{body}");
    vm["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"sockets": 16, "cores": 16, "threads": 2});
    let (s, body) = t.post(&vms(TEAM), &vm).await;
    assert_eq!(s, 422, "512 vCPUs: {body}");
    vm["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"sockets": 1, "cores": 2, "threads": 1});
    assert_eq!(t.post(&vms(TEAM), &vm).await.0, 201);
}

/// Attack: a firmware UUID that is not a UUID — markup for the domain XML the node writes, or
/// another domain's UUID in a spelling libvirt would take for it. Refused at admission, on the
/// VM and on a bare VMI; a real UUID is kept as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_uuids_are_uuids() {
    let app = spawn_api_only().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    for (i, bad) in
        ["</uuid><devices><disk/></devices><uuid>", "../../etc", "1234", "{5f1e2d3c-0000-4000-8000-0000000000zz}"]
            .into_iter()
            .enumerate()
    {
        let mut vm = vm_manifest(&format!("uuid-{i}"));
        vm["metadata"]["namespace"] = json!(TEAM);
        vm["spec"]["template"]["spec"]["domain"]["firmware"] = json!({"uuid": bad});
        let (s, body) = t.post(&vms(TEAM), &vm).await;
        assert_eq!(s, 422, "{bad}: {body}");
        assert!(causes(&body).contains("spec.template.spec.domain.firmware.uuid"), "{body}");
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": format!("uuid-{i}")},
            "spec": {"domain": {"devices": {}, "firmware": {"uuid": bad}, "resources": {"requests": {"memory": "64Mi"}}}}});
        let (s, body) = t.post(&vmis(TEAM), &vmi).await;
        assert_eq!(s, 422, "{bad}: {body}");
        assert!(causes(&body).contains("spec.domain.firmware.uuid"), "{body}");
    }
    let mut vm = vm_manifest("uuid-ok");
    vm["metadata"]["namespace"] = json!(TEAM);
    let uuid = "5f1e2d3c-0000-4000-8000-00000000000a";
    vm["spec"]["template"]["spec"]["domain"]["firmware"] = json!({"uuid": uuid});
    let (s, body) = t.post(&vms(TEAM), &vm).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"], uuid, "{body}");
    still_ready(&app).await;
}

/// Attack (real node, registry and libvirt): a containerDisk whose `/disk/disk.img` is a link
/// to the server's database, and a kernel-boot image whose kernel is a link to the signing key —
/// pulled by a tenant, read by the node as root. The node refuses both with the reason; no
/// domain is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_cannot_link_to_the_hosts_files() {
    use common::guests::*;
    let registry = common::servers::registry(None).await;
    let host = format!("127.0.0.1:{}", registry.port);
    let g = spawn_guest_app_pulling_from(&host).await;
    namespaces(&g.app).await;
    within(Duration::from_secs(300), async {
        let work = tempfile::tempdir().expect("tempdir");
        let link = |name: &str, target: &std::path::Path| {
            let l = work.path().join(name);
            std::os::unix::fs::symlink(target, &l).expect("symlink");
            l
        };
        let db = link("disk.img", &g.app.dir.path().join("converge.db"));
        let key = link("vmlinuz", &g.app.dir.path().join("signing.key"));
        for (tag, pair) in [("disk", format!("{}:disk/disk.img", db.display())), ("kernel", format!("{}:boot/vmlinuz", key.display()))] {
            let layout = work.path().join(tag);
            let ok = std::process::Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/guest/oci_layout.py"))
                .arg(&layout)
                .arg(format!("evil/{tag}:v1"))
                .arg(&pair)
                .status()
                .expect("python3");
            assert!(ok.success());
            common::servers::push(&layout, registry.port, &format!("evil/{tag}:v1"), None);
        }
        let t = Tenant { app: &g.app, token: token(&g.app, "edit", &[TEAM]).await };
        let resources = json!({"requests": {"memory": "64Mi"}});
        let disk_vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "disk"},
            "spec": {"domain": {"devices": {}, "resources": resources},
                     "volumes": [{"name": "root", "containerDisk": {"image": format!("{host}/evil/disk:v1")}}]}});
        let kernel_vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "kernel"},
            "spec": {"domain": {"devices": {}, "resources": resources, "firmware": {"kernelBoot": {
                "container": {"image": format!("{host}/evil/kernel:v1"), "kernelPath": "/boot/vmlinuz"}}}}}});
        for (vmi, why) in [(disk_vmi, "no disk under /disk"), (kernel_vmi, "leads out of the image")] {
            let name = vmi["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let (s, body) = t.post(&vmis(TEAM), &vmi).await;
            assert_eq!(s, 201, "{body}");
            let path = format!("{}/{name}", vmis(TEAM));
            let refused = wait_until(Duration::from_secs(120), || async {
                g.app.get(&path).await.1.to_string().contains(why)
            })
            .await;
            assert!(refused, "{name}: {}", g.app.get(&path).await.1);
            let domain = format!("{}{TEAM}_{name}", g.prefix);
            assert!(!g.domains().contains(&domain), "no domain for {name}");
        }
    })
    .await;
}

/// Attack: have the importer pull "an image" from the host's own loopback or the cloud's
/// metadata address (a registry source), or fetch one over HTTP from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_never_reach_the_hosts_own_addresses() {
    let app = spawn_app().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let path = format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{TEAM}/datavolumes");
    let storage = json!({"resources": {"requests": {"storage": "1Mi"}}});
    let sources = [
        ("reg-loop", json!({"registry": {"url": "docker://127.0.0.1:1/x:v1"}})),
        ("reg-meta", json!({"registry": {"url": "docker://169.254.169.254/latest:v1"}})),
        ("reg-name", json!({"registry": {"url": "docker://localhost:1/x:v1"}})),
        ("http-name", json!({"http": {"url": "http://localhost:1/disk.img"}})),
    ];
    for (name, source) in &sources {
        let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
                        "spec": {"source": source, "storage": storage}});
        let (s, body) = t.post(&path, &dv).await;
        assert_eq!(s, 201, "{body}");
    }
    for (name, _) in &sources {
        let url = format!("{path}/{name}");
        let refused = wait_until(Duration::from_secs(30), || async {
            app.get(&url).await.1.to_string().contains("loopback, link-local or metadata address")
        })
        .await;
        assert!(refused, "{name}: {}", app.get(&url).await.1);
    }
}

/// Attack: an upload whose qcow2 tables lie, aimed at the importer's decoder (which places
/// clusters as the image arrives): a cluster mapped a TiB past the image's end, a compressed
/// cluster that inflates to garbage, an L1 table far larger than QEMU allows. Each is refused
/// with a reason (qemu-img's look at the whole image has the last word), no volume is filled,
/// and the server stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_lying_qcow2_tables_are_refused() {
    let app = spawn_app().await;
    namespaces(&app).await;
    let t = Tenant { app: &app, token: token(&app, "edit", &[TEAM]).await };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 1M /dev/urandom > {d}/r.raw && qemu-img convert -q -f raw -O qcow2 {d}/r.raw {d}/p.qcow2"
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let plain = std::fs::read(dir.path().join("p.qcow2")).unwrap();
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be64(&plain, 40) as usize;
    let l2 = (be64(&plain, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let patched = |at: usize, bytes: &[u8]| {
        let mut image = plain.clone();
        image[at..at + bytes.len()].copy_from_slice(bytes);
        image
    };
    let cases = [
        ("ahead", patched(l2, &((1u64 << 63) | (1 << 40)).to_be_bytes()), "damaged or truncated"),
        ("garbage-deflate", patched(l2, &((1u64 << 62) | (1 << 54) | 0x50000).to_be_bytes()), "upload failed"),
        ("huge-l1", patched(36, &(16u32 << 20).to_be_bytes()), "not a readable disk image"),
    ];
    for (name, image, want) in cases {
        let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
            "spec": {"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "8Mi"}}}}});
        let (s, body) = t.post(&format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{TEAM}/datavolumes"), &dv).await;
        assert_eq!(s, 201, "{body}");
        let request = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
            "metadata": {"name": name}, "spec": {"pvcName": name}});
        // The DataVolume's claim appears and binds in a moment: until then the token request
        // answers 404 and the proxy 503.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let tokens = format!("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{TEAM}/uploadtokenrequests");
        let (s, body) = loop {
            let (s, body) = t.post(&tokens, &request).await;
            if s != 404 || std::time::Instant::now() > deadline {
                break (s, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(s, 201, "{body}");
        let upload_token = body["status"]["token"].as_str().expect("token").to_string();
        let answer = loop {
            let r = app.http.post(app.url("/v1beta1/upload")).bearer_auth(&upload_token).body(image.clone()).send();
            let r = r.await.expect("the proxy answers");
            let answer = (r.status().as_u16(), r.text().await.unwrap_or_default());
            if answer.0 != 503 || std::time::Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(answer.0, 400, "{name}: {}", answer.1);
        assert!(answer.1.contains(want), "{name}: {}", answer.1);
        let dv = app.get(&format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{TEAM}/datavolumes/{name}")).await.1;
        assert_ne!(dv["status"]["phase"], "Succeeded", "{name}: {dv}");
    }
    still_ready(&app).await;
}
