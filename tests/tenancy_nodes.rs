//! The hostile-tenant suite, node tokens: a node agent's token (`converge token create --role
//! node --node n1`) is what a compromised host holds. Each attack asserts the refusal and that
//! nothing changed: such a host reaches neither another node's guests nor any spec, Secret or
//! admin API beyond what the guests placed on it need.

mod common;

use common::tenant::Tenant;
use common::*;
use serde_json::{json, Value};

const NS: &str = "default";

async fn node_token(app: &TestApp, node: &str) -> String {
    let (s, body) = app.post("/converge/v1/tokens", &json!({"role": "node", "node": node, "ttlSeconds": 600})).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["subject"], format!("system:node:{node}"), "{body}");
    body["token"].as_str().expect("token").to_string()
}

fn vmi_path(name: &str) -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/{name}")
}

/// A VMI placed (by the admin, standing in for the scheduler) on `node`, naming `secret` for its
/// cloud-init.
async fn placed_vmi(app: &TestApp, name: &str, node: &str, secret: &str) -> Value {
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"]},
        "spec": {"domain": {"devices": {"disks": [{"name": "ci", "disk": {}}]},
                            "resources": {"requests": {"memory": "64Mi"}}},
                 "volumes": [{"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": secret}}}]}});
    let (s, created) = app.post(&format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"), &vmi).await;
    assert_eq!(s, 201, "{created}");
    let mut with_status = created.clone();
    with_status["status"] = json!({"phase": "Scheduled", "nodeName": node});
    let (s, body) = app.put(&format!("{}/status", vmi_path(name)), &with_status).await;
    assert_eq!(s, 200, "{body}");
    body
}

async fn secret(app: &TestApp, name: &str) {
    let (s, body) = app
        .post(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            &json!({"metadata": {"name": name}, "stringData": {"userdata": "#cloud-config\n"}}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_token_reaches_only_its_own_node_and_guests() {
    let app = spawn_api_only().await;
    for s in ["mine", "theirs", "unrelated"] {
        secret(&app, s).await;
    }
    let mine = placed_vmi(&app, "mine", "n1", "mine").await;
    let theirs = placed_vmi(&app, "theirs", "n2", "theirs").await;
    let (s, body) = app.post("/api/v1/nodes", &json!({"metadata": {"name": "n2"}})).await;
    assert_eq!(s, 201, "{body}");
    let n1 = Tenant { app: &app, token: node_token(&app, "n1").await };

    // What running its guests needs works.
    let (s, body) = n1.post("/api/v1/nodes", &json!({"metadata": {"name": "n1"}})).await;
    assert_eq!(s, 201, "its own Node: {body}");
    let (s, body) = n1
        .patch("/api/v1/nodes/n1/status", "application/merge-patch+json", &json!({"status": {"phase": "Running"}}))
        .await;
    assert_eq!(s, 200, "its own Node's status: {body}");
    let mut running = mine.clone();
    running["status"]["phase"] = json!("Running");
    let (s, body) = n1.put(&format!("{}/status", vmi_path("mine")), &running).await;
    assert_eq!(s, 200, "the status of its own VMI: {body}");
    let (s, body) = n1.get(&format!("/api/v1/namespaces/{NS}/secrets/mine")).await;
    assert_eq!(s, 200, "a Secret its VMI names: {body}");
    let (s, _) = n1.get(&format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances?watch=false")).await;
    assert_eq!(s, 200, "it lists VMIs (it follows those placed on it)");

    // Attacks: each refused, each with nothing changed.
    let mut stolen = theirs.clone();
    stolen["status"]["phase"] = json!("Failed");
    let (s, body) = n1.put(&format!("{}/status", vmi_path("theirs")), &stolen).await;
    assert_eq!(s, 403, "another node's VMI: {body}");
    let (s, body) = n1
        .patch(
            &format!("{}/status", vmi_path("theirs")),
            "application/merge-patch+json",
            &json!({"status": {"phase": "Failed"}}),
        )
        .await;
    assert_eq!(s, 403, "another node's VMI, patched: {body}");
    let mut handed_over = running.clone();
    handed_over["status"]["nodeName"] = json!("n2");
    let (s, body) = n1.put(&format!("{}/status", vmi_path("mine")), &handed_over).await;
    assert_eq!(s, 403, "handing its VMI to another node: {body}");
    let (s, body) = n1
        .patch(
            &vmi_path("mine"),
            "application/merge-patch+json",
            &json!({"spec": {"domain": {"memory": {"guest": "8Gi"}}}}),
        )
        .await;
    assert_eq!(s, 403, "a spec: {body}");
    let (s, body) = n1
        .patch(&vmi_path("mine"), "application/merge-patch+json", &json!({"metadata": {"labels": {"owned": "by-n1"}}}))
        .await;
    assert_eq!(s, 403, "labels: {body}");
    let (s, body) = n1.post(&format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"), &json!({
        "metadata": {"name": "new"}, "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}})).await;
    assert_eq!(s, 403, "creating a VMI: {body}");
    let (s, body) = n1.delete(&vmi_path("theirs")).await;
    assert_eq!(s, 403, "deleting a VMI: {body}");
    let (s, body) =
        n1.patch("/api/v1/nodes/n2/status", "application/merge-patch+json", &json!({"status": {"phase": "x"}})).await;
    assert_eq!(s, 403, "another Node's status: {body}");
    let (s, body) =
        n1.patch("/api/v1/nodes/n2", "application/merge-patch+json", &json!({"spec": {"unschedulable": true}})).await;
    assert_eq!(s, 403, "cordoning another Node: {body}");
    let (s, body) = n1.post("/api/v1/nodes", &json!({"metadata": {"name": "n3"}})).await;
    assert_eq!(s, 403, "registering another Node: {body}");
    let (s, body) = n1
        .patch("/api/v1/nodes/n1", "application/merge-patch+json", &json!({"spec": {"podCIDR": "10.244.0.0/16"}}))
        .await;
    assert_eq!(s, 403, "taking a pod range (every pod address of the cluster): {body}");
    for name in ["theirs", "unrelated"] {
        let (s, body) = n1.get(&format!("/api/v1/namespaces/{NS}/secrets/{name}")).await;
        assert_eq!(s, 403, "Secret {name}: {body}");
    }
    let (s, body) = n1.get(&format!("/api/v1/namespaces/{NS}/secrets")).await;
    assert_eq!(s, 403, "listing Secrets: {body}");
    for path in [
        format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines"),
        "/api/v1/configmaps".to_string(),
        "/converge/v1/tokens".to_string(),
        format!("/apis/subresources.kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/mine/console"),
    ] {
        let (s, body) = n1.get(&path).await;
        assert_eq!(s, 403, "{path}: {body}");
    }
    let (s, body) = n1.post("/bridge/v1/hosts", &json!({"name": "x"})).await;
    assert!(s == 403, "the provisioning API: {s} {body}");

    // Nothing changed.
    let (_, after) = app.get(&vmi_path("theirs")).await;
    assert_eq!(after["status"], theirs["status"]);
    let (_, after) = app.get(&vmi_path("mine")).await;
    assert_eq!(after["spec"], mine["spec"]);
    assert_eq!(after["status"]["nodeName"], "n1");
    assert!(after["metadata"].get("labels").is_none_or(|l| l.get("owned").is_none()), "{after}");
    let (_, n2) = app.get("/api/v1/nodes/n2").await;
    assert!(n2["spec"].get("unschedulable").is_none(), "{n2}");
    assert_eq!(app.get("/api/v1/nodes/n3").await.0, 404);
    let (_, own) = app.get("/api/v1/nodes/n1").await;
    assert!(own["spec"].get("podCIDR").is_none(), "{own}");

    // Dropping the finalizer of its own VMI (its domain gone) is the one metadata write it makes.
    let (_, current) = app.get(&vmi_path("mine")).await;
    let mut released = current.clone();
    released["metadata"]["finalizers"] = json!([]);
    let (s, body) = n1.put(&vmi_path("mine"), &released).await;
    assert_eq!(s, 200, "its own VMI's finalizer: {body}");
    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_are_issued_only_as_node_tokens() {
    let app = spawn_api_only().await;
    for (body, why) in [
        (json!({"role": "node", "ttlSeconds": 60}), "no node"),
        (json!({"role": "edit", "node": "n1", "ttlSeconds": 60}), "a node on another role"),
        (json!({"role": "node", "node": "n1", "namespaces": ["default"], "ttlSeconds": 60}), "namespaces"),
        (json!({"role": "node", "node": "N_1!", "ttlSeconds": 60}), "a name that is no Node name"),
        (json!({"role": "node", "node": "n1", "subject": "admin", "ttlSeconds": 60}), "a chosen subject"),
    ] {
        let (s, answer) = app.post("/converge/v1/tokens", &body).await;
        assert_eq!(s, 400, "{why}: {answer}");
    }
    let n1 = Tenant { app: &app, token: node_token(&app, "n1").await };
    let (s, body) = n1.post("/converge/v1/tokens", &json!({"role": "node", "node": "n2", "ttlSeconds": 60})).await;
    assert_eq!(s, 403, "a node issues no tokens: {body}");
    let (_, list) = app.get("/converge/v1/tokens").await;
    let listed =
        list["items"].as_array().into_iter().flatten().find(|t| t["role"] == "node").cloned().unwrap_or_default();
    assert_eq!(listed["node"], "n1", "{list}");
}

/// The serving certificate a node's agent shows the API server names that node alone, and only
/// the node itself (or a cluster admin) gets one: a tenant or another node that could would
/// answer the server's console connections in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_certificate_names_only_the_node_that_asked() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
    let app = spawn_api_only().await;
    let key = converge_api::nodes::server::ServingKey::generate().expect("key");
    let request = serde_json::to_value(key.request()).expect("request");
    let path = |node: &str| format!("/converge/v1/nodes/{node}/servingcertificate");
    let n1 = Tenant { app: &app, token: node_token(&app, "n1").await };
    let (s, signed) = n1.post(&path("n1"), &request).await;
    assert_eq!(s, 201, "{signed}");

    let ca_pem = app.server.as_ref().expect("running").ca_pem.clone();
    assert_eq!(signed["ca"], ca_pem.as_str());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
        .build()
        .expect("verifier");
    let cert =
        CertificateDer::from_pem_slice(signed["certificate"].as_str().unwrap_or_default().as_bytes()).expect("PEM");
    let verify = |name: &str| {
        let name = ServerName::try_from(name.to_string()).expect("name");
        verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
    };
    assert!(verify("n1").is_ok(), "it serves as n1");
    assert!(verify("n2").is_err(), "and as no other node");
    assert!(verify("localhost").is_err() && verify("127.0.0.1").is_err(), "nor as the API server");

    let (s, issued) =
        app.post("/converge/v1/tokens", &json!({"role": "edit", "ttlSeconds": 600, "namespaces": [NS]})).await;
    assert_eq!(s, 201, "{issued}");
    let tenant = Tenant { app: &app, token: issued["token"].as_str().expect("token").to_string() };
    for (who, caller, node) in [("another node", &n1, "n2"), ("a tenant", &tenant, "n1")] {
        let (s, body) = caller.post(&path(node), &request).await;
        assert_eq!(s, 403, "{who}: {body}");
    }
    let (s, body) = app.post(&path("n2"), &request).await;
    assert_eq!(s, 201, "a cluster admin may: {body}");
    let (s, body) = n1.post(&path("n1"), &json!({"publicKey": "AAAA"})).await;
    assert_eq!(s, 400, "not a P-256 point: {body}");
    let (s, body) = app.post(&path("N_1"), &request).await;
    assert_eq!(s, 400, "no Node name: {body}");
}

/// A node makes, fills and reclaims only the volumes that live on it: a volume pinned elsewhere,
/// one not of Converge's provisioner, the claims and DataVolumes of another node, a Secret or
/// ConfigMap only another node's import names — each refused; and a volume it makes for a claim
/// that selected another node is never bound to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_only_the_volumes_that_live_on_it() {
    let app = spawn_app().await;
    let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "wffc"},
        "provisioner": "converge.dev/local-pool", "volumeBindingMode": "WaitForFirstConsumer"});
    assert_eq!(app.post("/apis/storage.k8s.io/v1/storageclasses", &class).await.0, 201);
    secret(&app, "their-creds").await;
    let claim = |name: &str, node: &str| {
        json!({"metadata": {"name": name, "annotations": {"volume.kubernetes.io/selected-node": node}},
               "spec": {"storageClassName": "wffc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}})
    };
    let claims = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims");
    let (_, theirs) = app.post(&claims, &claim("theirs", "n2")).await;
    let (_, mine) = app.post(&claims, &claim("mine", "n1")).await;
    let dv = json!({"metadata": {"name": "theirs"}, "spec": {"source": {"http": {"url": "http://192.0.2.1/x.img", "secretRef": "their-creds"}},
        "storage": {"storageClassName": "wffc", "resources": {"requests": {"storage": "1Mi"}}}}});
    let (s, their_dv) = app.post(&format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes"), &dv).await;
    assert_eq!(s, 201, "{their_dv}");
    let n1 = Tenant { app: &app, token: node_token(&app, "n1").await };

    let pv = |name: &str, node: &str, claim: &Value| {
        json!({"metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "converge.dev/local-pool"}},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "wffc",
                "hostPath": {"path": format!("/var/tmp/{name}/disk.img"), "type": "File"},
                "nodeAffinity": converge_engine::storage::placement::node_affinity(node),
                "claimRef": {"namespace": NS, "name": claim["metadata"]["name"], "uid": claim["metadata"]["uid"]}}})
    };
    let (s, body) = n1.post("/api/v1/persistentvolumes", &pv("elsewhere", "n2", &mine)).await;
    assert_eq!(s, 403, "a volume pinned to another node: {body}");
    let mut foreign = pv("foreign", "n1", &mine);
    foreign["metadata"]["annotations"] = json!({});
    let (s, body) = n1.post("/api/v1/persistentvolumes", &foreign).await;
    assert_eq!(s, 403, "a volume not of Converge's provisioner: {body}");
    // Allowed in shape, but it names a claim that selected n2: the server never binds it.
    let (s, body) = n1.post("/api/v1/persistentvolumes", &pv("hijack", "n1", &theirs)).await;
    assert_eq!(s, 201, "{body}");
    let refused = wait_until(std::time::Duration::from_secs(10), || async {
        let (_, events) = app.get(&format!("/api/v1/namespaces/{NS}/events")).await;
        events["items"].as_array().is_some_and(|items| {
            items.iter().any(|e| e["reason"] == "FailedBinding" && e["involvedObject"]["name"] == "theirs")
        })
    })
    .await;
    assert!(refused, "the server says why it does not bind");
    let (_, after) = app.get(&format!("{claims}/theirs")).await;
    assert!(after["spec"].get("volumeName").is_none_or(Value::is_null), "not bound to the node's volume: {after}");
    // Nor does it stand in the way of the node the claim selected.
    let n2 = Tenant { app: &app, token: node_token(&app, "n2").await };
    let (s, body) = n2.post("/api/v1/persistentvolumes", &pv("rightful", "n2", &theirs)).await;
    assert_eq!(s, 201, "{body}");
    let bound = wait_until(std::time::Duration::from_secs(10), || async {
        app.get(&format!("{claims}/theirs")).await.1["spec"]["volumeName"] == "rightful"
    })
    .await;
    assert!(bound, "bound to its own node's volume: {}", app.get(&format!("{claims}/theirs")).await.1);

    let progress = json!({"metadata": {"annotations": {"cdi.kubevirt.io/storage.pod.phase": "Succeeded"}}});
    let (s, body) = n1.patch(&format!("{claims}/theirs"), "application/merge-patch+json", &progress).await;
    assert_eq!(s, 403, "another node's claim: {body}");
    let (s, body) = n1.patch(&format!("{claims}/mine"), "application/merge-patch+json", &progress).await;
    assert_eq!(s, 200, "the import annotations of its own: {body}");
    let grow = json!({"spec": {"resources": {"requests": {"storage": "1Ti"}}}});
    let (s, body) = n1.patch(&format!("{claims}/mine"), "application/merge-patch+json", &grow).await;
    assert_eq!(s, 403, "a claim's spec: {body}");
    let done = json!({"status": {"phase": "Succeeded"}});
    let dv_status = format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes/theirs/status");
    let (s, body) = n1.patch(&dv_status, "application/merge-patch+json", &done).await;
    assert_eq!(s, 403, "another node's DataVolume: {body}");
    let (s, body) = n1.get(&format!("/api/v1/namespaces/{NS}/secrets/their-creds")).await;
    assert_eq!(s, 403, "another node's import credentials: {body}");
    let (s, body) = n1.get(&format!("/api/v1/namespaces/{NS}/configmaps/anything")).await;
    assert_eq!(s, 403, "a ConfigMap no import of its names: {body}");
    let (s, body) = app.post("/api/v1/persistentvolumes", &pv("admins", "n2", &mine)).await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = n1.delete("/api/v1/persistentvolumes/admins").await;
    assert_eq!(s, 403, "deleting another node's volume: {body}");
    assert_eq!(app.get("/api/v1/persistentvolumes/admins").await.0, 200);
}
