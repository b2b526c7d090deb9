//! Guests on the network: the pod network with bridge and masquerade bindings, Services by
//! cluster IP and node port, VLANs on a NetworkAttachmentDefinition's bridge, PXE boot, and
//! clean-up. Real libvirt, QEMU, network namespaces and nftables; every address a test talks to
//! is loopback or inside namespaces and bridges the test made. Each test has its own time limit.

mod common;

use common::guests::*;
use common::netapp::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(30);

fn pod_interfaces() -> (Value, Value) {
    (json!([{"name": "default", "bridge": {}}]), json!([{"name": "default", "pod": {}}]))
}

/// A one-answer HTTP server on `addr` (the host's transit address): what guests fetch from the host.
async fn host_http(addr: &str, body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind(format!("{addr}:0")).await.expect("bind on the transit address");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    port
}

async fn http_get(url: &str) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build().ok()?;
    client.get(url).send().await.ok()?.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_network_guests_reach_each_other_the_host_and_services() {
    let n = spawn_net_app(1).await;
    let g = &n.g;
    within(Duration::from_secs(420), async {
        let (ifaces, nets) = pod_interfaces();
        for name in ["web", "client"] {
            let vm = net_vm(name, json!({"app": name}), ifaces.clone(), nets.clone());
            let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
            assert_eq!(code, 201, "{body}");
        }
        let web_ip = n.wait_pod_ip("web").await;
        let client_ip = n.wait_pod_ip("client").await;
        assert_ne!(web_ip, client_ip, "two live VMIs never share an address");
        for (name, ip) in [("web", &web_ip), ("client", &client_ip)] {
            // The bridge binding: the guest learns the pod's own address by DHCP.
            let marker = format!("CONVERGE-GUEST-DHCP eth0 {ip}");
            assert!(g.wait_marker(name, &marker, BOOT).await, "{name}: {}", g.serial_log(name).await);
        }

        // The MAC admission gave is the MAC the guest sees.
        let vm = g.vm("web").await;
        let mac = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"]
            .as_str()
            .expect("admission gave a MAC")
            .to_string();
        let vmi = g.vmi("web").await;
        assert_eq!(vmi["status"]["interfaces"][0]["mac"], json!(mac));
        assert_eq!(vmi["status"]["interfaces"][0]["ipAddresses"], json!([web_ip]));
        assert!(
            n.sh("web", "echo GUEST-MAC-$((1+1))-$(cat /sys/class/net/eth0/address)", &format!("GUEST-MAC-2-{mac}"), SETTLE)
                .await,
            "{}",
            g.serial_log("web").await
        );

        // Guest to guest, guest to host, host to guest.
        assert!(n.sh("web", "mkdir -p /www; echo web-$((6*7)) > /www/index.html; httpd -p 8080 -h /www", "", SETTLE).await);
        let cmd = format!("ping -c 2 -W 2 {web_ip} >/dev/null && echo PING-WEB-$((2+3))");
        assert!(n.sh("client", &cmd, "PING-WEB-5", SETTLE).await, "{}", g.serial_log("client").await);
        let host_port = host_http(&n.host_address(), "from-the-host").await;
        let cmd = format!("wget -q -O - http://{}:{host_port}/; echo", n.host_address());
        assert!(n.sh("client", &cmd, "from-the-host", SETTLE).await, "{}", g.serial_log("client").await);
        let direct = format!("http://{web_ip}:8080/");
        assert!(
            wait_until(SETTLE, || async { http_get(&direct).await.is_some_and(|b| b.contains("web-42")) }).await,
            "the host reaches the guest's httpd at its pod address"
        );

        // A NodePort Service, made as virtctl makes it.
        let (ok, out, err) = g
            .converge(&["expose", "vm", "web", "--name", "web-http", "--port", "80", "--target-port", "8080", "--type", "NodePort"], None)
            .await;
        assert!(ok, "{out}{err}");
        let (_, svc) = g.app.get("/api/v1/namespaces/default/services/web-http").await;
        let cluster_ip = svc["spec"]["clusterIP"].as_str().expect("a cluster IP").to_string();
        let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("a node port");
        assert!(n.net.service_cidr.contains(cluster_ip.parse().expect("IPv4")), "{cluster_ip}");
        assert!((n.services.node_ports.0..=n.services.node_ports.1).contains(&(node_port as u16)));
        let endpoints_ready = wait_until(SETTLE, || async {
            let (_, ep) = g.app.get("/api/v1/namespaces/default/endpoints/web-http").await;
            ep.pointer("/subsets/0/addresses/0/ip") == Some(&json!(web_ip))
        })
        .await;
        assert!(endpoints_ready, "Endpoints list the web guest");
        let (_, slices) = g.app.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").await;
        assert_eq!(slices["items"][0]["endpoints"][0]["addresses"][0], json!(web_ip), "{slices}");

        let via_node_port = format!("http://127.0.0.1:{node_port}/");
        assert!(
            wait_until(SETTLE, || async { http_get(&via_node_port).await.is_some_and(|b| b.contains("web-42")) }).await,
            "the host reaches the guest through the node port"
        );
        let cmd = format!("wget -q -O - http://{cluster_ip}/ | sed s/web/via-cluster-ip/");
        assert!(n.sh("client", &cmd, "via-cluster-ip-42", SETTLE).await, "{}", g.serial_log("client").await);

        // kubectl sees the Service and its endpoints.
        let (ok, out, err) = g.app.kubectl(&["get", "svc", "web-http"]).await;
        assert!(ok && out.contains("web-http"), "{out}{err}");
        let (ok, out, err) = g.app.kubectl(&["get", "endpoints", "web-http", "-o", "jsonpath={.subsets[0].addresses[0].ip}"]).await;
        assert!(ok && out == web_ip, "{out}{err}");

        // A stopped backend leaves the Service; the cluster IP then answers nothing.
        let (ok, _, err) = g.converge(&["stop", "web"], None).await;
        assert!(ok, "{err}");
        let emptied = wait_until(SETTLE, || async {
            let (_, ep) = g.app.get("/api/v1/namespaces/default/endpoints/web-http").await;
            ep["subsets"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
        assert!(emptied, "the stopped guest left the endpoints");
        let rule_gone = wait_until(SETTLE, || async {
            !n.nft_list(Some(&n.net.node_namespace), "ip converge").contains(&cluster_ip)
        })
        .await;
        assert!(rule_gone, "no backend, no rule: {}", n.nft_list(Some(&n.net.node_namespace), "ip converge"));
    })
    .await;
}
