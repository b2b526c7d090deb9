//! More than one machine, on one: an API with its controllers and no node of its own, and node
//! agents as separate `converge node` processes that join it over HTTPS with node tokens, each
//! with its own node name, data dir and domain-name prefix on the machine's libvirt.

mod common;

use common::guests::{halt_vm, kernel_vm, within, Cleanup, GUEST_MARKER};
use common::joined::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(240);
const SETTLE: Duration = Duration::from_secs(90);

/// A VM on the pod network (bridge binding) pinned to `node`.
fn pod_vm(name: &str, node: &str) -> Value {
    let mut vm = kernel_vm(name, "Always");
    let spec = &mut vm["spec"]["template"]["spec"];
    spec["domain"]["devices"]["interfaces"] = json!([{"name": "default", "bridge": {}}]);
    spec["networks"] = json!([{"name": "default", "pod": {}}]);
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    vm["spec"]["template"]["metadata"]["labels"]["app"] = json!(name);
    vm
}

fn pod_ip(vmi: &Value) -> Option<String> {
    converge_engine::network::services::pod_ip(vmi).map(|ip| ip.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_over_the_api_and_runs_a_guest_from_start_to_stop() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    let app = api_without_a_node().await;
    let metrics_port = common::servers::free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut node = NodeProcess::join_with(
        &app,
        "node-a",
        &prefix,
        &["--pod-network", "none", "--metrics-listen", &metrics_listen],
    )
    .await;
    within(LIMIT, async {
        let joined = wait_until(SETTLE, || node_ready(&app, "node-a")).await;
        assert!(joined, "node-a registers and posts Ready:\n{}", node.log_text());
        let (_, registered) = app.get("/api/v1/nodes/node-a").await;
        assert_eq!(registered["metadata"]["labels"]["kubevirt.io/schedulable"], "true", "{registered}");

        let mut far = kernel_vm("far", "Always");
        far["spec"]["template"]["spec"]["domain"]["devices"]["autoattachGraphicsDevice"] = json!(true);
        let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &far).await;
        assert_eq!(code, 201, "{body}");
        let running = wait_until(SETTLE, || async { vmi(&app, "far").await["status"]["phase"] == "Running" }).await;
        let placed = vmi(&app, "far").await;
        assert!(running, "the guest runs on the joined node: {placed}\n{}", node.log_text());
        assert_eq!(placed["status"]["nodeName"], "node-a");
        assert_eq!(placed["metadata"]["labels"]["kubevirt.io/nodeName"], "node-a");
        let booted = wait_until(SETTLE, || async { node.serial_log(&placed).contains(GUEST_MARKER) }).await;
        assert!(booted, "the guest boots on the node's libvirt: {}", node.serial_log(&placed));
        let (_, vm) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/far").await;
        assert_eq!(vm["status"]["printableStatus"], "Running", "{vm}");
        the_api_reaches_the_guest_through_its_node(&app, &node).await;
        // The node serves its own guests' figures, as each virt-handler does.
        let resident = "kubevirt_vmi_memory_resident_bytes{name=\"far\",namespace=\"default\",node=\"node-a\"}";
        let text = reqwest::get(format!("http://{metrics_listen}/metrics")).await.expect("node metrics");
        let text = text.text().await.unwrap_or_default();
        assert!(text.contains(resident) && text.contains("kubevirt_workqueue_depth{name=\"node\"}"), "{text}");

        let (code, body) = app
            .patch(
                "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/far",
                "application/merge-patch+json",
                &json!({"spec": {"runStrategy": "Halted"}}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let gone = wait_until(SETTLE, || async {
            app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/far").await.0 == 404
        })
        .await;
        assert!(gone, "stopped: the node shut the guest down and dropped the VMI's finalizer\n{}", node.log_text());
        let libvirt = converge_engine::hypervisor::Libvirt::open("qemu:///system").expect("libvirt");
        use converge_engine::hypervisor::Hypervisor;
        let left: Vec<String> =
            libvirt.list().unwrap_or_default().into_iter().map(|d| d.name).filter(|n| n.starts_with(&prefix)).collect();
        assert!(left.is_empty(), "no domain left: {left:?}");
    })
    .await;
    node.kill().await;
}

/// Console, VNC, pause and the domain's XML of the guest `far` on `node`, all through the API
/// (relayed to the node's agent over mutual TLS); the agent's endpoint takes no other client.
async fn the_api_reaches_the_guest_through_its_node(app: &TestApp, node: &NodeProcess) {
    use futures::{SinkExt, StreamExt};
    let mut console = api_socket(app, "far", "console").await;
    console.send(Message::Binary(b"echo console-$((6*7))\n".to_vec().into())).await.expect("typed");
    let said = read_until(&mut console, "console-42", Duration::from_secs(30)).await;
    assert!(said.contains("console-42"), "the guest's shell answers through the API: {said:?}\n{}", node.log_text());
    let mut vnc = api_socket(app, "far", "vnc").await;
    let banner = tokio::time::timeout(Duration::from_secs(10), vnc.next()).await.ok().flatten();
    let banner = banner.and_then(Result::ok).map(|f| f.into_data()).unwrap_or_default();
    assert!(banner.starts_with(b"RFB "), "the guest's VNC server: {:?}", String::from_utf8_lossy(&banner));

    let vmi_path = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/far";
    let paused_is = |want: bool| async move {
        let v = vmi(app, "far").await;
        let paused = v["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Paused" && c["status"] == "True"));
        paused == want
    };
    let (code, body) = app.put(&format!("{vmi_path}/pause"), &json!({})).await;
    assert_eq!(code, 202, "pause: {body}");
    assert!(wait_until(SETTLE, || paused_is(true)).await, "paused on the node: {}", vmi(app, "far").await);
    let (code, body) = app.put(&format!("{vmi_path}/unpause"), &json!({})).await;
    assert_eq!(code, 202, "unpause: {body}");
    assert!(wait_until(SETTLE, || paused_is(false)).await, "running again: {}", vmi(app, "far").await);
    let (code, xml) = app.get("/converge/v1/namespaces/default/virtualmachineinstances/far/domain").await;
    let xml = xml.as_str().unwrap_or_default().to_string();
    assert!(code == 200 && xml.contains("<domain"), "the domain's XML from the node: {code} {xml}");
    // Its console log, kept by the node that runs it.
    let log_path = "/converge/v1/namespaces/default/virtualmachineinstances/far/consolelog";
    let logged = wait_until(SETTLE, || async {
        let (_, body) = app.get(log_path).await;
        body.as_str().is_some_and(|t| t.contains(common::guests::GUEST_MARKER))
    })
    .await;
    assert!(logged, "the guest's console log from its node: {:?}", app.get(log_path).await);

    // The agent's own endpoint: the cluster CA's server certificate, and no way in without the
    // API server's client certificate.
    let (_, registered) = app.get("/api/v1/nodes/node-a").await;
    let port = registered["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(0);
    assert!(port > 0, "the node publishes where it serves: {registered}");
    let ca = reqwest::Certificate::from_pem(app.server.as_ref().expect("running").ca_pem.as_bytes()).expect("CA");
    let stranger = reqwest::Client::builder()
        .add_root_certificate(ca)
        .resolve("node-a", std::net::SocketAddr::from(([127, 0, 0, 1], port as u16)))
        .build()
        .expect("client");
    let answer = stranger.get(format!("https://node-a:{port}/healthz")).send().await;
    assert!(answer.is_err(), "a client without the API's certificate is refused: {answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_spread_over_two_nodes() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    let app = api_without_a_node().await;
    let mut nodes =
        vec![NodeProcess::join(&app, "node-a", &prefix).await, NodeProcess::join(&app, "node-b", &prefix).await];
    within(LIMIT, async {
        for n in &nodes {
            assert!(wait_until(SETTLE, || node_ready(&app, &n.name)).await, "{} joins:\n{}", n.name, n.log_text());
        }
        for i in 0..6 {
            let (code, body) = app
                .post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &halt_vm(&format!("h{i}"), "Always"))
                .await;
            assert_eq!(code, 201, "{body}");
        }
        let all_running = wait_until(SETTLE, || async {
            let (_, list) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances").await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            items.len() == 6 && items.iter().all(|v| v["status"]["phase"] == "Running")
        })
        .await;
        let (_, list) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances").await;
        assert!(all_running, "{list}");
        let on = |node: &str| {
            list["items"].as_array().into_iter().flatten().filter(|v| v["status"]["nodeName"] == node).count()
        };
        assert!(
            on("node-a") >= 1 && on("node-b") >= 1,
            "both nodes take guests: a {} b {}",
            on("node-a"),
            on("node-b")
        );
    })
    .await;
    for n in &mut nodes {
        n.kill().await;
    }
}

/// Two nodes with pod networks of their own on one machine (each its namespace, transit link and
/// slice of the pod range): a guest on node-b reaches a guest on node-a by its pod address and
/// through a Service, and the host reaches both.
#[tokio::test(flavor = "multi_thread")]
async fn pods_on_two_nodes_reach_each_other_and_services() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    // Ranges of this test's own, nothing routed off the machine (no egress).
    let tag = std::process::id() % 40;
    let (pods, services) = (format!("10.{}.0.0/16", 160 + tag), format!("10.{}.0.0/16", 210 + tag));
    let pod_cidr = converge_engine::network::Cidr::parse(&pods).expect("pods");
    let service_cidr = converge_engine::network::Cidr::parse(&services).expect("services");
    let app = spawn_app_with(None, |c| {
        c.node = None;
        c.pod_ranges.cluster = pod_cidr;
        c.service_network.cidr = service_cidr;
    })
    .await;
    let netns: Vec<String> = (0..2).map(|i| format!("cvc{}{}", std::process::id() % 100_000, i)).collect();
    // What the agents make on the host (node and pod namespaces, taps, links, tables) goes when
    // the test ends, however it ends: `kill -9` leaves it all.
    let _network_cleanup: Vec<common::netapp::NetCleanup> = netns
        .iter()
        .map(|ns| {
            let net = converge_engine::network::NetworkConfig { node_namespace: ns.clone(), ..Default::default() };
            common::netapp::NetCleanup(net)
        })
        .collect();
    let mut nodes = vec![];
    for (i, name) in ["node-a", "node-b"].into_iter().enumerate() {
        let transit = format!("169.254.{}.{}/30", 160 + tag, 4 * i);
        let network = [
            "--pod-network",
            "on",
            "--pod-cidr",
            &pods,
            "--service-cidr",
            &services,
            "--node-netns",
            &netns[i],
            "--node-transit-cidr",
            &transit,
            "--pod-egress",
            "false",
        ];
        nodes.push(NodeProcess::join_with(&app, name, &prefix, &network).await);
    }
    within(LIMIT, async {
        for n in &nodes {
            assert!(wait_until(SETTLE, || node_ready(&app, &n.name)).await, "{} joins:\n{}", n.name, n.log_text());
        }
        let (_, a) = app.get("/api/v1/nodes/node-a").await;
        let (_, b) = app.get("/api/v1/nodes/node-b").await;
        let (range_a, range_b) = (a["spec"]["podCIDR"].clone(), b["spec"]["podCIDR"].clone());
        assert!(range_a.is_string() && range_b.is_string() && range_a != range_b, "a slice each: {range_a} {range_b}");

        for (name, node) in [("web", "node-a"), ("client", "node-b")] {
            let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &pod_vm(name, node)).await;
            assert_eq!(code, 201, "{body}");
        }
        let both_up = wait_until(SETTLE, || async {
            let (web, client) = (vmi(&app, "web").await, vmi(&app, "client").await);
            pod_ip(&web).is_some() && pod_ip(&client).is_some()
                && nodes[0].serial_log(&web).contains(GUEST_MARKER) && nodes[1].serial_log(&client).contains(GUEST_MARKER)
        })
        .await;
        let (web, client) = (vmi(&app, "web").await, vmi(&app, "client").await);
        assert!(both_up, "{web}\n{client}\n{}\n{}", nodes[0].log_text(), nodes[1].log_text());
        assert_eq!((web["status"]["nodeName"].as_str(), client["status"]["nodeName"].as_str()), (Some("node-a"), Some("node-b")));
        let (web_ip, client_ip) = (pod_ip(&web).unwrap_or_default(), pod_ip(&client).unwrap_or_default());
        let within_range = |ip: &str, range: &Value| {
            converge_engine::network::Cidr::parse(range.as_str().unwrap_or_default())
                .is_ok_and(|r| r.contains(ip.parse().expect("IPv4")))
        };
        assert!(within_range(&web_ip, &range_a) && within_range(&client_ip, &range_b), "{web_ip} {client_ip}");

        type_line(&app, "web", "mkdir -p /www; echo web-$((6*7)) > /www/index.html; echo svc-$((6*7)) > /www/s.html; httpd -p 8080 -h /www").await;
        let direct = format!("http://{web_ip}:8080/");
        let host_reaches = wait_until(SETTLE, || async {
            reqwest::get(&direct).await.ok().map(|r| r.status().is_success()).unwrap_or(false)
        })
        .await;
        assert!(host_reaches, "the host reaches node-a's guest: {}", nodes[0].serial_log(&web));

        let fetched = wait_until(SETTLE, || async {
            type_line(&app, "client", &format!("wget -qO- http://{web_ip}:8080/")).await;
            nodes[1].serial_log(&client).contains("web-42")
        })
        .await;
        assert!(fetched, "node-b's guest reaches node-a's by pod address: {}", nodes[1].serial_log(&client));

        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        let (code, svc) = app.post("/api/v1/namespaces/default/services", &service).await;
        assert_eq!(code, 201, "{svc}");
        let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
        let through_service = wait_until(SETTLE, || async {
            type_line(&app, "client", &format!("wget -qO- http://{cluster_ip}/s.html")).await;
            nodes[1].serial_log(&client).contains("svc-42")
        })
        .await;
        let rules = std::process::Command::new("ip")
            .args(["netns", "exec", &netns[1], "nft", "list", "table", "ip", "converge"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(through_service, "node-b's guest reaches node-a's through the Service {cluster_ip}: {}\n{rules}",
            nodes[1].serial_log(&client));
    })
    .await;
    for n in &mut nodes {
        n.kill().await;
    }
}

fn domains_with(prefix: &str) -> Vec<String> {
    use converge_engine::hypervisor::Hypervisor;
    let libvirt = converge_engine::hypervisor::Libvirt::open("qemu:///system").expect("libvirt");
    let domains = libvirt.list().unwrap_or_default().into_iter();
    domains.filter(|d| d.name.starts_with(prefix) && d.state.is_active()).map(|d| d.name).collect()
}

/// A node agent killed (`kill -9`): its Node turns Ready=Unknown, its VMI fails
/// (NodeUnresponsive) and the VM starts again on the other node. Its QEMU kept running meanwhile
/// (nothing can stop it without the agent, on KubeVirt neither): the agent, back, removes it. A
/// cordoned node takes no new guest.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_loses_its_guests_to_the_other_and_cleans_up_when_back() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    let app = api_without_a_node().await;
    let mut nodes =
        vec![NodeProcess::join(&app, "node-a", &prefix).await, NodeProcess::join(&app, "node-b", &prefix).await];
    within(Duration::from_secs(360), async {
        for n in &nodes {
            assert!(wait_until(SETTLE, || node_ready(&app, &n.name)).await, "{} joins:\n{}", n.name, n.log_text());
        }
        let (code, body) =
            app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &halt_vm("keep", "Always")).await;
        assert_eq!(code, 201, "{body}");
        assert!(wait_until(SETTLE, || async { vmi(&app, "keep").await["status"]["phase"] == "Running" }).await);
        let first = vmi(&app, "keep").await;
        let lost = first["status"]["nodeName"].as_str().unwrap_or_default().to_string();
        let (gone, other) = if lost == "node-a" { (0, 1) } else { (1, 0) };
        nodes[gone].kill().await;
        let stale = format!("{prefix}{lost}-");
        let fresh = format!("{prefix}{}-", nodes[other].name);
        // Never two guests of the VM at once, whatever the moment.
        let at_most_one = || domains_with(&stale).len() + domains_with(&fresh).len() <= 1;

        // The node lifecycle's grace is 60 s of silence, checked every 10 s; then the VMI fails
        // and the VM makes the next one, which goes to the other node.
        let replaced = wait_until(Duration::from_secs(150), || async {
            let now = vmi(&app, "keep").await;
            assert!(at_most_one(), "two guests of one VM");
            now["metadata"]["uid"] != first["metadata"]["uid"]
                && now["status"]["nodeName"] == nodes[other].name.as_str()
        })
        .await;
        let (_, node) = app.get(&format!("/api/v1/nodes/{lost}")).await;
        let (_, vm) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/keep").await;
        assert!(replaced, "the VM's next VMI goes to the other node: {}\n{vm}\n{node}", vmi(&app, "keep").await);
        let ready =
            node["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned();
        assert_eq!(ready.as_ref().map(|r| r["status"].clone()), Some(json!("Unknown")), "{node}");
        // Nothing stops the lost node's guest without its agent; on one libvirtd its UUID (the
        // VM's firmware UUID) keeps the next guest waiting, Scheduled, until the agent is back.
        assert_eq!(domains_with(&stale).len(), 1, "the lost node's guest still runs");
        let waiting = vmi(&app, "keep").await;
        assert_eq!(waiting["status"]["phase"], "Scheduled", "{waiting}");

        nodes[gone].start();
        let moved = wait_until(SETTLE, || async {
            assert!(at_most_one(), "two guests of one VM");
            domains_with(&stale).is_empty() && vmi(&app, "keep").await["status"]["phase"] == "Running"
        })
        .await;
        assert!(
            moved,
            "back, the agent removes its stale guest and the VM runs on the other node: {}\n{}",
            vmi(&app, "keep").await,
            nodes[gone].log_text()
        );
        assert_eq!(vmi(&app, "keep").await["status"]["nodeName"], nodes[other].name.as_str());
        assert!(wait_until(SETTLE, || node_ready(&app, &lost)).await, "the node is Ready again");

        // Cordoned (kubectl cordon sets spec.unschedulable): no new guest lands there.
        let (code, body) = app
            .patch(
                &format!("/api/v1/nodes/{lost}"),
                "application/strategic-merge-patch+json",
                &json!({"spec": {"unschedulable": true}}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        for i in 0..3 {
            let (code, body) = app
                .post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &halt_vm(&format!("new{i}"), "Always"))
                .await;
            assert_eq!(code, 201, "{body}");
        }
        let placed = wait_until(SETTLE, || async {
            let mut all = true;
            for i in 0..3 {
                all &= vmi(&app, &format!("new{i}")).await["status"]["phase"] == "Running";
            }
            all
        })
        .await;
        assert!(placed);
        for i in 0..3 {
            assert_eq!(vmi(&app, &format!("new{i}")).await["status"]["nodeName"], nodes[other].name.as_str());
        }
    })
    .await;
    for n in &mut nodes {
        n.kill().await;
    }
}

/// A claim in a WaitForFirstConsumer class is made on the node its first guest is placed on, by
/// that node's agent, in its data dir, and filled there (an import runs on that node, an upload
/// is relayed to it by the API); its
/// volume is pinned to the node, and the guest's next start goes back there — or waits, with the
/// scheduler's words, while that node is cordoned.
#[tokio::test(flavor = "multi_thread")]
async fn a_claims_volume_lives_on_its_guests_node() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    let app = api_without_a_node().await;
    let images = tempfile::tempdir().expect("tempdir");
    let image: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(images.path().join("data.raw"), &image).expect("image");
    let http = common::servers::http(images.path()).await;
    let imports = ["--pod-network", "none", "--allow-private-imports", "true"];
    let mut nodes = vec![
        NodeProcess::join_with(&app, "node-a", &prefix, &imports).await,
        NodeProcess::join_with(&app, "node-b", &prefix, &imports).await,
    ];
    within(LIMIT, async {
        for n in &nodes {
            assert!(wait_until(SETTLE, || node_ready(&app, &n.name)).await, "{} joins:\n{}", n.name, n.log_text());
        }
        let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "node-local"},
            "provisioner": "converge.dev/local-pool", "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Delete"});
        assert_eq!(app.post("/apis/storage.k8s.io/v1/storageclasses", &class).await.0, 201);
        let mut vm = kernel_vm("keeper", "Always");
        vm["spec"]["dataVolumeTemplates"] = json!([{"metadata": {"name": "keeper-data"}, "spec": {
            "source": {"http": {"url": format!("http://127.0.0.1:{}/data.raw", http.port)}},
            "storage": {"storageClassName": "node-local", "resources": {"requests": {"storage": "4Mi"}}}}}]);
        let spec = &mut vm["spec"]["template"]["spec"];
        spec["domain"]["devices"]["disks"] = json!([{"name": "data", "disk": {"bus": "virtio"}}]);
        spec["volumes"] = json!([{"name": "data", "dataVolume": {"name": "keeper-data"}}]);
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": "node-b"});
        let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
        assert_eq!(code, 201, "{body}");
        let running = wait_until(SETTLE, || async { vmi(&app, "keeper").await["status"]["phase"] == "Running" }).await;
        let dv = app.get("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/keeper-data").await.1;
        let (_, claim) = app.get("/api/v1/namespaces/default/persistentvolumeclaims/keeper-data").await;
        let (_, events) = app.get("/api/v1/namespaces/default/events").await;
        assert!(
            running,
            "{}\n{dv}\n{claim}\n{events}\n{}\n{}",
            vmi(&app, "keeper").await,
            nodes[1].log_text(),
            nodes[0].log_text()
        );
        assert_eq!(dv["status"]["phase"], "Succeeded", "imported on node-b: {dv}");

        let (_, claim) = app.get("/api/v1/namespaces/default/persistentvolumeclaims/keeper-data").await;
        assert_eq!(claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "node-b", "{claim}");
        let pv_name = claim["spec"]["volumeName"].as_str().unwrap_or_default().to_string();
        let (_, pv) = app.get(&format!("/api/v1/persistentvolumes/{pv_name}")).await;
        let pinned = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!((pinned["key"].as_str(), &pinned["values"]), (Some("kubernetes.io/hostname"), &json!(["node-b"])));
        let file = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap_or_default());
        assert!(file.starts_with(nodes[1].dir.path()), "in node-b's data dir: {}", file.display());
        let stored = std::fs::read(&file).expect("the volume's file");
        assert_eq!(&stored[..image.len()], &image[..], "the image, imported by node-b");

        // Stopped, the pin lifted, node-b cordoned: the guest waits rather than starting away from
        // its disk; uncordoned, it runs on node-b again.
        let vm_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/keeper";
        let halt = json!({"spec": {"runStrategy": "Halted", "template": {"spec": {"nodeSelector": null}}}});
        assert_eq!(app.patch(vm_path, "application/merge-patch+json", &halt).await.0, 200);
        let gone = wait_until(SETTLE, || async {
            app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/keeper").await.0 == 404
        })
        .await;
        assert!(gone, "stopped");
        let cordon = |on: bool| json!({"spec": {"unschedulable": on}});
        assert_eq!(app.patch("/api/v1/nodes/node-b", "application/merge-patch+json", &cordon(true)).await.0, 200);
        let start = json!({"spec": {"runStrategy": "Always"}});
        assert_eq!(app.patch(vm_path, "application/merge-patch+json", &start).await.0, 200);
        let conflict = wait_until(SETTLE, || async {
            let v = vmi(&app, "keeper").await;
            v["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "PodScheduled"
                        && c["message"].as_str().is_some_and(|m| m.contains("1 node(s) had volume node affinity conflict"))
                })
            })
        })
        .await;
        assert!(conflict, "waits for its volume's node: {}", vmi(&app, "keeper").await);
        assert_eq!(app.patch("/api/v1/nodes/node-b", "application/merge-patch+json", &cordon(false)).await.0, 200);
        let back = wait_until(SETTLE, || async { vmi(&app, "keeper").await["status"]["phase"] == "Running" }).await;
        let placed = vmi(&app, "keeper").await;
        assert!(back, "{placed}");
        assert_eq!(placed["status"]["nodeName"], "node-b", "{placed}");

        // An upload into a volume on node-a: the API relays the body to node-a's agent.
        let mut uploaded = kernel_vm("uploaded", "Always");
        uploaded["spec"]["dataVolumeTemplates"] = json!([{"metadata": {"name": "uploaded-data"}, "spec": {
            "source": {"upload": {}},
            "storage": {"storageClassName": "node-local", "resources": {"requests": {"storage": "4Mi"}}}}}]);
        let spec = &mut uploaded["spec"]["template"]["spec"];
        spec["domain"]["devices"]["disks"] = json!([{"name": "data", "disk": {"bus": "virtio"}}]);
        spec["volumes"] = json!([{"name": "data", "dataVolume": {"name": "uploaded-data"}}]);
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": "node-a"});
        assert_eq!(app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &uploaded).await.0, 201);
        let dv_path = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/uploaded-data";
        let ready = wait_until(SETTLE, || async { app.get(dv_path).await.1["status"]["phase"] == "UploadReady" }).await;
        assert!(ready, "the upload waits on node-a: {}\n{}", app.get(dv_path).await.1, nodes[0].log_text());
        let token_req = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
            "metadata": {"name": "up"}, "spec": {"pvcName": "uploaded-data"}});
        let (code, body) =
            app.post("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/uploadtokenrequests", &token_req).await;
        assert_eq!(code, 201, "{body}");
        let token = body["status"]["token"].as_str().unwrap_or_default().to_string();
        let sent = app.http.post(app.url("/v1beta1/upload")).bearer_auth(&token).body(image.clone()).send().await;
        let sent = sent.expect("the upload");
        assert_eq!(sent.status().as_u16(), 200, "{:?}", sent.text().await);
        let up = wait_until(SETTLE, || async { vmi(&app, "uploaded").await["status"]["phase"] == "Running" }).await;
        assert!(up, "{}\n{}", vmi(&app, "uploaded").await, app.get(dv_path).await.1);
        let (_, claim) = app.get("/api/v1/namespaces/default/persistentvolumeclaims/uploaded-data").await;
        let (_, pv) = app.get(&format!("/api/v1/persistentvolumes/{}", claim["spec"]["volumeName"].as_str().unwrap_or("?"))).await;
        let on_a = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap_or_default());
        assert!(on_a.starts_with(nodes[0].dir.path()), "in node-a's data dir: {}", on_a.display());
        assert_eq!(&std::fs::read(&on_a).expect("the volume")[..image.len()], &image[..], "the uploaded image");

        // Deleted, the claim's volume goes with it, from node-b's disk.
        assert_eq!(app.delete(vm_path, None).await.0, 200);
        let reclaimed = wait_until(SETTLE, || async {
            !file.exists() && app.get(&format!("/api/v1/persistentvolumes/{pv_name}")).await.0 == 404
        })
        .await;
        assert!(reclaimed, "node-b removed the volume and its file:\n{}", nodes[1].log_text());
    })
    .await;
    for n in &mut nodes {
        n.kill().await;
    }
}
