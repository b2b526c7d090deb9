//! Foreman's two provisioning flows through a real Ruby client (Debian's ruby-kubeclient, driven
//! as fog-kubevirt drives it: `tests/foreman/fog_flow.rb`) against `converge serve` with a real
//! node: a network build that PXE-boots from a NAD bridge, and an image build that boots a disk
//! cloned from a DataSource in another namespace. The connection form is filled as a user fills
//! it: a hostname from the serving certificate, the port, a token from `converge token create`,
//! the CA from `converge ca`, verification on. Foreman's VNC console is opened with its
//! subprotocols.

mod common;

use common::fog::{fog, Form};
use common::guests::*;
use common::netapp::*;
use common::pxe::PxeServer;
use common::servers;
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

const NS: &str = "foreman";
const BOOT: Duration = Duration::from_secs(240);

async fn connection_form(g: &GuestApp) -> Form {
    let data_dir = g.app.dir.path().display().to_string();
    let (ok, ca, err) = g.converge(&["ca", "--data-dir", &data_dir], None).await;
    assert!(ok, "converge ca: {err}");
    let (ok, out, err) =
        g.converge(&["token", "create", "--namespace", NS, "--role", "edit", "--subject", "foreman"], None).await;
    assert!(ok, "converge token create: {err}");
    let token: Value = serde_json::from_str(&out).expect("token record");
    let token = token["token"].as_str().expect("the token, printed once").to_string();
    let ca_file = tempfile::NamedTempFile::new().expect("ca file");
    std::fs::write(ca_file.path(), ca).expect("ca");
    let port = g.app.base_url.rsplit(':').next().expect("port").to_string();
    let env = vec![
        // `localhost` is one of the serving certificate's default names.
        ("CONVERGE_HOST".to_string(), "localhost".to_string()),
        ("CONVERGE_PORT".into(), port),
        ("CONVERGE_TOKEN".into(), token),
        ("CONVERGE_CA".into(), ca_file.path().display().to_string()),
        ("FOREMAN_NAMESPACE".into(), NS.into()),
    ];
    Form { env, ca: ca_file }
}

async fn namespace(g: &GuestApp, name: &str, annotations: Value) {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}});
    let (code, out) = g.app.post("/api/v1/namespaces", &ns).await;
    assert_eq!(code, 201, "{out}");
}

/// Foreman's subprotocols: its token in the standard base64 alphabet without padding.
async fn rfb_greeting(g: &GuestApp, form: &Form, vm: &str) -> String {
    use base64::Engine;
    let token = &form.env.iter().find(|(k, _)| k == "CONVERGE_TOKEN").expect("token").1;
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
    let protocols = format!("plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{encoded}");
    let path = format!("/apis/subresources.kubevirt.io/v1alpha3/namespaces/{NS}/virtualmachineinstances/{vm}/vnc");
    let (mut socket, chosen) = ws_with_protocols(&g.app, &path, &protocols).await.expect("the VNC websocket opens");
    assert_eq!(chosen, "plain.kubevirt.io");
    let frame = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("a frame in 30s");
    let data = frame.expect("a frame").expect("a message").into_data();
    String::from_utf8_lossy(&data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreman_builds_a_host_by_network_boot() {
    let n = spawn_net_app(21).await;
    let g = &n.g;
    let pxe = PxeServer::start("fm", 89);
    within(Duration::from_secs(600), async {
        namespace(g, NS, json!({})).await;
        let nad = nad("provisioning", &json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": pxe.bridge}));
        let (code, out) =
            g.app.post(&format!("/apis/k8s.cni.cncf.io/v1/namespaces/{NS}/network-attachment-definitions"), &nad).await;
        assert_eq!(code, 201, "{out}");
        let form = connection_form(g).await;

        // Test connection; the form's network and storage class lists.
        let connect = fog(&form, "connect", &[]).await;
        assert_eq!(connect["connected"], true, "{connect}");
        assert!(connect["nads"].as_array().is_some_and(|a| a.contains(&json!("foreman/provisioning"))), "{connect}");
        assert!(connect["storageclasses"].as_array().is_some_and(|a| a.contains(&json!("local"))), "{connect}");
        let node = &connect["nodes"][0];
        assert!(node["addresses"]["Hostname"].is_string() && node["kubelet"].is_string(), "{connect}");

        let host = [("VM_NAME", "build.example.com"), ("NAD_NAME", "provisioning")];
        let created = fog(&form, "build-create", &host).await;
        let mac = created["created_macs"]["provisioning"].as_str().expect("a MAC at create").to_string();
        assert_eq!(created["created_macs"], created["read_macs"], "{created}");
        assert_eq!(created["apiVersion"], "kubevirt.io/v1alpha3", "served in the version the plugin pins");
        let secret = g.app.get(&format!("/api/v1/namespaces/{NS}/secrets/build.example.com-userdata")).await.1;
        assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], created["uid"], "{secret}");

        let started = fog(&form, "start", &host).await;
        assert_eq!(started["running"], true, "{started}");
        let running = fog(&form, "wait-running", &host).await;
        let pod_ip = running["ip"].as_str().expect("the pod address");
        assert!(pod_ip.starts_with("10.121."), "{running}");
        assert!(
            g.wait_marker_in(NS, "build.example.com", GUEST_MARKER, BOOT).await,
            "the guest booted from the network: {}",
            g.serial_log_in(NS, "build.example.com").await
        );
        assert!(pxe.leases().contains(&mac), "dnsmasq leased to the MAC Foreman read ({mac}): {}", pxe.leases());
        let greeting = rfb_greeting(g, &form, "build.example.com").await;
        assert!(greeting.starts_with("RFB 003.008"), "{greeting:?}");

        let stopped = fog(&form, "stop", &host).await;
        assert_eq!(stopped["running"], false, "{stopped}");
        let gone = common::wait_until(Duration::from_secs(60), || async {
            g.app
                .get(&format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/build.example.com"))
                .await
                .0
                == 404
        })
        .await;
        assert!(gone, "stopped");
        let deleted = fog(&form, "delete-build", &host).await;
        assert_eq!(deleted["deleted"], true, "{deleted}");
        for path in [
            format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/build.example.com-claim-1"),
            format!("/api/v1/namespaces/{NS}/secrets/build.example.com-userdata"),
        ] {
            let gone = common::wait_until(Duration::from_secs(60), || async { g.app.get(&path).await.0 == 404 }).await;
            assert!(gone, "{path} goes with the host");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreman_builds_a_host_from_an_image() {
    let n = spawn_net_app_with(22, |c| c.storage.allow_private_imports = true).await;
    let g = &n.g;
    let web_dir = tempfile::tempdir().expect("web dir");
    std::fs::copy(guest_dir().join("disk.qcow2"), web_dir.path().join("disk.qcow2")).expect("disk");
    let web = servers::http(web_dir.path()).await;
    within(Duration::from_secs(600), async {
        namespace(g, NS, json!({})).await;
        // The golden image, in a namespace of its own, published as a DataSource.
        namespace(g, "os-images", json!({"converge.dev/clone-to": "*"})).await;
        let golden = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "busybox-golden"},
            "spec": {"source": {"http": {"url": format!("http://127.0.0.1:{}/disk.qcow2", web.port)}},
                "storage": {"resources": {"requests": {"storage": "256Mi"}}}}});
        let (code, out) = g.app.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/os-images/datavolumes", &golden).await;
        assert_eq!(code, 201, "{out}");
        let ds = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": "busybox"},
            "spec": {"source": {"pvc": {"name": "busybox-golden", "namespace": "os-images"}}}});
        let (code, out) = g.app.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/os-images/datasources", &ds).await;
        assert_eq!(code, 201, "{out}");
        let form = connection_form(g).await;
        assert_eq!(fog(&form, "connect", &[]).await["connected"], true);

        let host = [("VM_NAME", "image.example.com"), ("DATASOURCE", "busybox"), ("DATASOURCE_NAMESPACE", "os-images")];
        let created = fog(&form, "image-create", &host).await;
        assert!(created["created_macs"]["default"].is_string(), "{created}");
        // A VM made elsewhere says runStrategy, not running: fog-kubevirt starts it by runStrategy.
        let vm_path = format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/image.example.com");
        let (code, out) = g.app.patch(&vm_path, "application/merge-patch+json", &json!({"spec": {"running": null, "runStrategy": "Halted"}})).await;
        assert_eq!(code, 200, "{out}");
        let started = fog(&form, "start", &host).await;
        assert_eq!((started["running"].is_null(), started["runStrategy"].as_str()), (true, Some("Always")), "{started}");
        let running = fog(&form, "wait-running", &[host[0], ("WAIT_SECONDS", "300")]).await;
        assert!(running["ip"].as_str().is_some_and(|ip| ip.starts_with("10.122.")), "{running}");
        assert!(
            g.wait_marker_in(NS, "image.example.com", GUEST_MARKER, BOOT).await,
            "the cloned disk booted: {}",
            g.serial_log_in(NS, "image.example.com").await
        );
        let dv = g.app.get(&format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes/image.example.com-root")).await.1;
        assert_eq!(dv["status"]["phase"], "Succeeded", "{dv}");
        let deleted = fog(&form, "delete-image", &host[..1]).await;
        assert_eq!(deleted["deleted"], true, "{deleted}");
        let path = format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes/image.example.com-root");
        let gone = common::wait_until(Duration::from_secs(60), || async { g.app.get(&path).await.0 == 404 }).await;
        assert!(gone, "the root DataVolume goes with the VM");
    })
    .await;
}
