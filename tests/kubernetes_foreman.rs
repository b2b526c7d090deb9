//! Foreman's two provisioning flows through its Ruby client (`tests/foreman/fog_flow.rb`, the
//! same flows `tests/foreman_ruby.rs` runs against `converge serve`) against a real
//! kube-apiserver with Converge installed, with a ServiceAccount token and the cluster's CA in
//! the connection form. The network build: claims in the node-local class, a NIC PXE-booting from
//! a NAD bridge beside the pod network, MACs at create, start and stop by PUT of the VM, the pod
//! address, Foreman's VNC console through the aggregated API. The image build: a root disk
//! cloned from a DataSource in another namespace. Uninstalling leaves no domain, tap or pod
//! namespace on the node. Skipped, with the reason printed, only when the cluster binaries are
//! not built.

mod common;

use common::fog::{fog, Form};
use common::guests::GUEST_MARKER;
use common::kubernetes::{cluster, RealCluster};
use common::kubernetes_agents::*;
use common::pxe::PxeServer;
use common::wait_until;
use converge_engine::network::host::{NetworkHost, SystemNetworkHost};
use converge_engine::network::names;
use serde_json::json;
use std::time::Duration;

const NS: &str = "foreman";
const NODE: &str = "f-node";

/// What a Foreman admin sets up on the cluster: the namespace, a ServiceAccount that edits it
/// and reads what the compute resource's form lists (Nodes, StorageClasses, NADs everywhere).
async fn foreman_account(c: &RealCluster) -> String {
    ok(c, &["create", "namespace", NS], None).await;
    let made = wait_until(Duration::from_secs(30), || async {
        c.kubectl(&["create", "serviceaccount", "foreman", "-n", NS], None).await.0
    })
    .await;
    assert!(made, "no service account");
    ok(
        c,
        &["create", "rolebinding", "foreman-edit", "--clusterrole=edit", "--serviceaccount=foreman:foreman", "-n", NS],
        None,
    )
    .await;
    let lists = ["nodes", "storageclasses.storage.k8s.io", "network-attachment-definitions.k8s.cni.cncf.io"];
    ok(
        c,
        &["create", "clusterrole", "foreman-lists", "--verb=get,list", &format!("--resource={}", lists.join(","))],
        None,
    )
    .await;
    ok(
        c,
        &[
            "create",
            "clusterrolebinding",
            "foreman-lists",
            "--clusterrole=foreman-lists",
            "--serviceaccount=foreman:foreman",
        ],
        None,
    )
    .await;
    // Multus's NADs are not in Kubernetes' edit role: the admin lets Foreman's account make them.
    let nads = "--resource=network-attachment-definitions.k8s.cni.cncf.io";
    ok(c, &["create", "role", "foreman-nads", "--verb=create,get,list", nads, "-n", NS], None).await;
    ok(
        c,
        &["create", "rolebinding", "foreman-nads", "--role=foreman-nads", "--serviceaccount=foreman:foreman", "-n", NS],
        None,
    )
    .await;
    // The roles Kubernetes aggregates into edit, and its authorizer's cache, take a moment.
    let as_foreman = "--as=system:serviceaccount:foreman:foreman";
    let may = wait_until(Duration::from_secs(60), || async {
        let mut all = true;
        let wanted = [
            ("get", "namespace/foreman"),
            ("create", "virtualmachines.kubevirt.io"),
            ("list", "nodes"),
            ("create", "network-attachment-definitions.k8s.cni.cncf.io"),
        ];
        for (verb, what) in wanted {
            all &= c.kubectl(&["auth", "can-i", verb, what, "-n", NS, as_foreman], None).await.0;
        }
        all
    })
    .await;
    assert!(may, "the account's roles never took");
    ok(c, &["create", "token", "foreman", "-n", NS, "--duration=1h"], None).await.trim().to_string()
}

/// Foreman's VNC console: a websocket to kube-apiserver with Foreman's subprotocols (the token
/// in base64url, as kube-apiserver reads it); the first frame the guest's VNC server sends.
async fn rfb_greeting(c: &RealCluster, token: &str, vm: &str) -> String {
    use base64::Engine;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
    let url = format!(
        "{}/apis/subresources.kubevirt.io/v1alpha3/namespaces/{NS}/virtualmachineinstances/{vm}/vnc",
        c.server.replacen("https://", "wss://", 1)
    );
    let mut request = url.as_str().into_client_request().expect("request");
    let protocols = format!("plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{encoded}");
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    let ca = std::fs::read(c.dir.join("ca.crt")).expect("ca.crt");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("a CA certificate")).expect("trusted");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = c.server.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("kube-apiserver");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await.expect("TLS handshake");
    let (mut socket, response) =
        tokio_tungstenite::client_async(request, stream).await.expect("the VNC websocket opens through kube-apiserver");
    let chosen = response.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(chosen, "plain.kubevirt.io");
    let frame = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("a frame in 30s");
    let data = frame.expect("a frame").expect("a message").into_data();
    String::from_utf8_lossy(&data).into_owned()
}

/// Foreman's image-based build: a golden image in a namespace of its own, imported at once
/// (CDI's `storage.bind.immediate.requested`: nothing consumes it) and published as a
/// DataSource; the host's root disk cloned from it on the node where it lives, booted.
async fn image_build(c: &RealCluster, form: &Form, agent: &NodeAgent) {
    let web_dir = tempfile::tempdir().expect("web dir");
    std::fs::copy(common::guests::guest_dir().join("disk.qcow2"), web_dir.path().join("disk.qcow2")).expect("disk");
    let web = common::servers::http(web_dir.path()).await;
    // The admin's part: the cluster's default class, the golden image, who may clone it.
    ok(c, &["annotate", "storageclass", "converge-local", "storageclass.kubernetes.io/is-default-class=true"], None)
        .await;
    ok(c, &["create", "namespace", "os-images"], None).await;
    ok(c, &["annotate", "namespace", "os-images", "converge.dev/clone-to=*"], None).await;
    let golden = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "busybox-golden", "namespace": "os-images",
                     "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": "true"}},
        "spec": {"source": {"http": {"url": format!("http://127.0.0.1:{}/disk.qcow2", web.port)}},
                 "storage": {"resources": {"requests": {"storage": "256Mi"}}}}});
    let source = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
        "metadata": {"name": "busybox", "namespace": "os-images"},
        "spec": {"source": {"pvc": {"name": "busybox-golden", "namespace": "os-images"}}}});
    for object in [golden, source] {
        ok(c, &["apply", "-f", "-"], Some(&object.to_string())).await;
    }
    let imported = wait_until(Duration::from_secs(120), || async {
        let (_, phase, _) = c
            .kubectl(&["get", "dv", "busybox-golden", "-n", "os-images", "-o", "jsonpath={.status.phase}"], None)
            .await;
        phase == "Succeeded"
    })
    .await;
    let (_, dv, _) = c.kubectl(&["get", "dv,pvc", "-n", "os-images", "-o", "yaml"], None).await;
    assert!(imported, "the golden image was never imported: {dv}\n{}", agent.log());

    let host = [("VM_NAME", "image.example.com"), ("DATASOURCE", "busybox"), ("DATASOURCE_NAMESPACE", "os-images")];
    let created = fog(form, "image-create", &host).await;
    assert!(created["created_macs"]["default"].is_string(), "{created}");
    // A VM made elsewhere says runStrategy, not running: fog-kubevirt starts it by runStrategy.
    let halted = json!({"spec": {"running": null, "runStrategy": "Halted"}}).to_string();
    ok(c, &["patch", "vm", "image.example.com", "-n", NS, "--type", "merge", "-p", &halted], None).await;
    let started = fog(form, "start", &host).await;
    assert_eq!((started["running"].is_null(), started["runStrategy"].as_str()), (true, Some("Always")), "{started}");
    let running = fog(form, "wait-running", &[host[0], ("WAIT_SECONDS", "300")]).await;
    assert!(running["ip"].as_str().is_some_and(|ip| ip.starts_with("10.124.")), "{running}");
    let vmi = json_of(&ok(c, &["get", "vmi", "image.example.com", "-n", NS, "-o", "json"], None).await);
    let booted = wait_until(Duration::from_secs(240), || async { agent.serial_log(&vmi).contains(GUEST_MARKER) }).await;
    assert!(booted, "the cloned disk booted: {}", agent.serial_log(&vmi));
    let (_, phase, _) =
        c.kubectl(&["get", "dv", "image.example.com-root", "-n", NS, "-o", "jsonpath={.status.phase}"], None).await;
    assert_eq!(phase, "Succeeded");
    let deleted = fog(form, "delete-image", &host[..1]).await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    let gone = wait_until(Duration::from_secs(60), || async {
        !c.kubectl(&["get", "dv", "image.example.com-root", "-n", NS], None).await.0
    })
    .await;
    assert!(gone, "the root DataVolume goes with the VM");
    ok(c, &["delete", "namespace", "os-images", "--wait=false"], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreman_builds_a_host_by_network_boot_on_kubernetes() {
    let Some(c) = cluster() else { return };
    let _one_at_a_time = INSTALL.lock().await;
    let prefix = format!("f{}-", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let _domains = common::guests::Cleanup(prefix.clone());
    let pxe = PxeServer::start("fk", 88);
    let node_netns = format!("cvf{}", std::process::id() % 100_000);
    let net = converge_engine::network::NetworkConfig { node_namespace: node_netns.clone(), ..Default::default() };
    let _network_cleanup = common::netapp::NetCleanup(net);
    let link = TestLink::make();
    let port = common::servers::free_port();
    let aggregated = format!("{}:{}", TestLink::HOST_ADDRESS, common::servers::free_port());
    let text =
        manifests(&["--webhook-url", &format!("https://127.0.0.1:{port}"), "--aggregated-api-endpoint", &aggregated])
            .await;
    install(c, &text).await;
    let _controllers = start_controllers(c, port, Some(&aggregated)).await;
    let _kubelets = c.kubelet_stand_in(&[(NODE, "4", "8Gi")]).await;
    let network = [
        "--pod-network",
        "on",
        "--pod-cidr",
        "10.124.0.0/16",
        "--service-cidr",
        "10.96.0.0/16",
        "--node-netns",
        &node_netns,
        "--node-transit-cidr",
        "169.254.170.0/30",
        "--pod-egress",
        "false",
        "--nad-bridge",
        "cv*",
        "--allow-private-imports",
        "true",
    ];
    let agent = start_node_with(c, NODE, &prefix, &network).await;
    let joined = wait_until(Duration::from_secs(60), || async {
        let (_, label, _) = c
            .kubectl(&["get", "node", NODE, "-o", "jsonpath={.metadata.labels.kubevirt\\.io/schedulable}"], None)
            .await;
        label == "true"
    })
    .await;
    let (_, node, _) = c.kubectl(&["get", "node", NODE, "-o", "yaml"], None).await;
    assert!(joined, "the agent never labelled its Node: {node}\n{}", agent.log());
    let token = foreman_account(c).await;
    let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "provisioning", "namespace": NS},
        "spec": {"config": json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": pxe.bridge}).to_string()}});
    ok(c, &["apply", "-f", "-"], Some(&nad.to_string())).await;
    // Foreman's account may make NADs in its namespace, but not onto a host bridge the admin did
    // not allow (`converge controllers --nad-bridge`).
    let foreman = c.kubeconfig_for("foreman", &token);
    let mut onto_host = nad.clone();
    onto_host["metadata"]["name"] = json!("host-lan");
    onto_host["spec"]["config"] =
        json!(json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-lan"}).to_string());
    let (made, _, err) = c.kubectl_with(&foreman, &["apply", "-f", "-"], Some(&onto_host.to_string())).await;
    assert!(!made && err.contains("not one the admin allowed"), "{err}");
    let ca = tempfile::NamedTempFile::new().expect("ca file");
    std::fs::copy(c.dir.join("ca.crt"), ca.path()).expect("ca");
    let apiserver_port = c.server.rsplit(':').next().expect("port").to_string();
    let env = [
        ("CONVERGE_HOST", "127.0.0.1"),
        ("CONVERGE_PORT", apiserver_port.as_str()),
        ("CONVERGE_TOKEN", token.as_str()),
        ("CONVERGE_CA", &ca.path().display().to_string()),
        ("FOREMAN_NAMESPACE", NS),
        ("STORAGE_CLASS", "converge-local"),
    ];
    let form = Form { env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ca };

    let connect = fog(&form, "connect", &[]).await;
    assert_eq!(connect["connected"], true, "{connect}");
    assert!(connect["nads"].as_array().is_some_and(|a| a.contains(&json!("foreman/provisioning"))), "{connect}");
    assert!(connect["storageclasses"].as_array().is_some_and(|a| a.contains(&json!("converge-local"))), "{connect}");
    let host = [("VM_NAME", "build.example.com"), ("NAD_NAME", "provisioning")];
    let created = fog(&form, "build-create", &host).await;
    let mac = created["created_macs"]["provisioning"].as_str().expect("a MAC at create").to_string();
    assert_eq!(created["created_macs"], created["read_macs"], "{created}");
    assert_eq!(created["apiVersion"], "kubevirt.io/v1alpha3", "served in the version the plugin pins");

    let started = fog(&form, "start", &host).await;
    assert_eq!(started["running"], true, "{started}");
    let running = fog(&form, "wait-running", &[host[0], ("WAIT_SECONDS", "300")]).await;
    assert!(running["ip"].as_str().is_some_and(|ip| ip.starts_with("10.124.")), "the node's pod range: {running}");
    assert_eq!(running["node"], NODE);
    let vmi = json_of(&ok(c, &["get", "vmi", "build.example.com", "-n", NS, "-o", "json"], None).await);
    let booted = wait_until(Duration::from_secs(240), || async { agent.serial_log(&vmi).contains(GUEST_MARKER) }).await;
    assert!(booted, "the guest booted from the network: {}\n{}", agent.serial_log(&vmi), agent.log());
    assert!(pxe.leases().contains(&mac), "dnsmasq leased to the MAC Foreman read ({mac}): {}", pxe.leases());
    let greeting = rfb_greeting(c, &token, "build.example.com").await;
    assert!(greeting.starts_with("RFB 003.008"), "{greeting:?}");

    let stopped = fog(&form, "stop", &host).await;
    assert_eq!(stopped["running"], false, "{stopped}");
    let gone = wait_until(Duration::from_secs(60), || async {
        !c.kubectl(&["get", "vmi", "build.example.com", "-n", NS], None).await.0
    })
    .await;
    assert!(gone, "stopped");
    let deleted = fog(&form, "delete-build", &host).await;
    assert_eq!(deleted["deleted"], true, "{deleted}");
    let cleaned = wait_until(Duration::from_secs(120), || async {
        let (_, left, _) = c.kubectl(&["get", "pvc,secret", "-n", NS, "-o", "name"], None).await;
        !left.contains("build.example.com")
    })
    .await;
    assert!(cleaned, "the claims and the Secret go with the host");

    image_build(c, &form, &agent).await;

    // Uninstalled with a guest running: nothing of it stays on the node.
    let mut last = common::guests::halt_vm("last", "Always");
    last["metadata"]["namespace"] = json!(NS);
    ok(c, &["apply", "-f", "-"], Some(&last.to_string())).await;
    let up = wait_until(Duration::from_secs(120), || async {
        let (_, phase, _) = c.kubectl(&["get", "vmi", "last", "-n", NS, "-o", "jsonpath={.status.phase}"], None).await;
        phase == "Running"
    })
    .await;
    assert!(up, "the last guest never ran\n{}", agent.log());
    ok(c, &["delete", "namespace", NS, "--wait=false"], None).await;
    uninstall(c, &text, &|| agent.log()).await;
    let host = SystemNetworkHost;
    let libvirt = converge_engine::hypervisor::Libvirt::open("qemu:///system").expect("libvirt");
    use converge_engine::hypervisor::Hypervisor;
    let clean = wait_until(Duration::from_secs(60), || async {
        let domains = libvirt.list().unwrap_or_default().iter().filter(|d| d.name.starts_with(&prefix)).count();
        let pods =
            host.namespaces().iter().filter(|n| n.starts_with(&names::pod_namespace_prefix(&node_netns))).count();
        let taps = host.links(None).iter().filter(|l| l.starts_with(&names::tap_prefix(&node_netns))).count();
        domains + pods + taps == 0
    })
    .await;
    assert!(clean, "domains, pod namespaces or taps left on the node after uninstall\n{}", agent.log());
    drop(link);
    ok(c, &["delete", "node", NODE, "--wait=false"], None).await;
    for object in ["clusterrolebinding/foreman-lists", "clusterrole/foreman-lists"] {
        ok(c, &["delete", object], None).await;
    }
}
