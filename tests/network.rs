//! Guests on the network: the pod network with bridge and masquerade bindings, Services by
//! cluster IP and node port, VLANs on a NetworkAttachmentDefinition's bridge, PXE boot, and
//! clean-up. Real libvirt, QEMU, network namespaces and nftables; every address a test talks to
//! is loopback or inside namespaces and bridges the test made. Each test has its own time limit.

mod common;

use common::guests::*;
use common::netapp::*;
use common::pxe::{LinkGuard, PxeServer};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(90);
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
            n.sh(
                "web",
                "echo GUEST-MAC-$((1+1))-$(cat /sys/class/net/eth0/address)",
                &format!("GUEST-MAC-2-{mac}"),
                SETTLE
            )
            .await,
            "{}",
            g.serial_log("web").await
        );

        // Guest to guest, guest to host, host to guest.
        assert!(
            n.sh("web", "mkdir -p /www; echo web-$((6*7)) > /www/index.html; httpd -p 8080 -h /www", "", SETTLE).await
        );
        let cmd = format!(
            "for i in 1 2 3 4 5; do ping -c 1 -W 3 {web_ip} >/dev/null && {{ echo PING-WEB-$((2+3)); break; }}; done"
        );
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
            .converge(
                &[
                    "expose",
                    "vm",
                    "web",
                    "--name",
                    "web-http",
                    "--port",
                    "80",
                    "--target-port",
                    "8080",
                    "--type",
                    "NodePort",
                ],
                None,
            )
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
        // The slice is written right after the Endpoints, in its own write.
        let slice_ready = wait_until(SETTLE, || async {
            let (_, slices) = g.app.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").await;
            slices.pointer("/items/0/endpoints/0/addresses/0") == Some(&json!(web_ip))
        })
        .await;
        let (_, slices) = g.app.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices").await;
        assert!(slice_ready, "the EndpointSlice lists the web guest: {slices}");

        let via_node_port = format!("http://127.0.0.1:{node_port}/");
        assert!(
            wait_until(SETTLE, || async { http_get(&via_node_port).await.is_some_and(|b| b.contains("web-42")) }).await,
            "the host reaches the guest through the node port"
        );
        let cmd = format!("wget -q -O - http://{cluster_ip}/ | sed s/web/via-cluster-ip/");
        assert!(n.sh("client", &cmd, "via-cluster-ip-42", SETTLE).await, "{}", g.serial_log("client").await);

        // kubectl sees the Service and its endpoints.
        let (ok, out, err) = g.app.kubectl(&["get", "svc", "web-http"]).await;
        let ports = format!("80:{node_port}/TCP");
        assert!(ok && out.contains("NodePort") && out.contains(&cluster_ip) && out.contains(&ports), "{out}{err}");
        let (ok, out, err) = g.app.kubectl(&["get", "vmi", "web"]).await;
        assert!(ok && out.contains(&web_ip), "kubectl get vmi shows the pod address: {out}{err}");
        let (ok, out, err) = g.app.kubectl(&["get", "endpoints", "web-http"]).await;
        assert!(ok && out.contains(&format!("{web_ip}:8080")), "{out}{err}");
        let (ok, out, err) =
            g.app.kubectl(&["get", "endpoints", "web-http", "-o", "jsonpath={.subsets[0].addresses[0].ip}"]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masquerade_guest_sits_behind_nat_with_forwarded_ports() {
    let n = spawn_net_app(2).await;
    let g = &n.g;
    within(Duration::from_secs(300), async {
        let ifaces = json!([{"name": "default", "masquerade": {}, "ports": [{"name": "http", "port": 8080}]}]);
        let vm = net_vm("masq", json!({"app": "masq"}), ifaces, json!([{"name": "default", "pod": {}}]));
        let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
        assert_eq!(code, 201, "{body}");
        let pod_ip = n.wait_pod_ip("masq").await;
        assert!(n.net.pod_cidr.contains(pod_ip.parse().expect("IPv4")));
        // The guest sits at 10.0.2.2 behind the pod; status reports the pod's address.
        assert!(
            g.wait_marker("masq", "CONVERGE-GUEST-DHCP eth0 10.0.2.2", BOOT).await,
            "{}",
            g.serial_log("masq").await
        );

        // Out: the guest reaches the host, and the host sees the pod's address, not 10.0.2.2.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let listener = tokio::net::TcpListener::bind(format!("{}:0", n.host_address())).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen_c = seen.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if let Ok((mut s, peer)) = listener.accept().await {
                *seen_c.lock().expect("lock") = Some(peer.ip().to_string());
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nhost-ok\n").await;
            }
        });
        let cmd = format!("wget -q -O - http://{}:{port}/ | sed s/ok/reached/", n.host_address());
        assert!(n.sh("masq", &cmd, "host-reached", SETTLE).await, "{}", g.serial_log("masq").await);
        assert_eq!(seen.lock().expect("lock").clone(), Some(pod_ip.clone()), "masqueraded as the pod");

        // In: the forwarded port reaches the guest; a port not listed does not.
        assert!(
            n.sh(
                "masq",
                "mkdir -p /www; echo masq-$((6*7)) > /www/index.html; httpd -p 8080 -h /www; httpd -p 9090 -h /www",
                "",
                SETTLE
            )
            .await
        );
        let forwarded = format!("http://{pod_ip}:8080/");
        assert!(
            wait_until(SETTLE, || async { http_get(&forwarded).await.is_some_and(|b| b.contains("masq-42")) }).await,
            "the forwarded port answers"
        );
        assert!(http_get(&format!("http://{pod_ip}:9090/")).await.is_none(), "port 9090 is not forwarded");

        // The rules are there to read, in the pod's namespace.
        let uid = g.vmi("masq").await["metadata"]["uid"].as_str().expect("uid").to_string();
        let pod_ns = converge_engine::network::names::pod_namespace(&n.net.node_namespace, &uid);
        let rules = n.nft_list(Some(&pod_ns), "inet converge");
        assert!(rules.contains("tcp dport 8080 dnat ip to 10.0.2.2"), "{rules}");
        assert!(rules.contains("ip saddr 10.0.2.2 masquerade"), "{rules}");
        // The guest's traffic went through the guard, which lets only its own MAC and address in.
        let mac = g.vmi("masq").await["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        let guard = n.nft_list(Some(&pod_ns), "bridge converge_guard");
        assert!(!mac.is_empty() && guard.contains(&format!("ether saddr != {mac} drop")), "{mac}: {guard}");
        assert!(guard.lines().any(|l| l.contains("ip saddr != {") && l.contains("10.0.2.2")), "{guard}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_on_two_vlans_of_one_bridge_are_apart() {
    // The SR-IOV NAD below names a function the admin allowed (that the host lacks it is the point).
    let n = spawn_net_app_with(3, |c| c.host_access.sriov_devices = vec!["0000:3b:02.1".into()]).await;
    let g = &n.g;
    let bridge = format!("cvtbr{}", std::process::id() % 100_000);
    let _bridge = LinkGuard(bridge.clone());
    within(Duration::from_secs(360), async {
        for (name, vlan) in [("vlan10", 10), ("vlan20", 20)] {
            let body = nad(name, &json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge, "vlan": vlan}));
            let (code, out) =
                g.app.post("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", &body).await;
            assert_eq!(code, 201, "{out}");
        }
        // Foreman lists them across namespaces.
        let (code, list) = g.app.get("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions").await;
        assert_eq!((code, list["items"].as_array().map(Vec::len)), (200, Some(2)), "{list}");
        // Stored as Multus's CRD stores it (Foreman's recorded clusters did), with a warning.
        let bad = nad("broken", &json!("not a config"));
        let (code, out, headers) = g
            .app
            .request(
                reqwest::Method::POST,
                "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions",
                "application/json",
                Some(bad.to_string()),
            )
            .await;
        let warning = headers.get("warning").and_then(|w| w.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(code, 201, "{out}");
        assert!(warning.contains("spec.config") && warning.contains("will not start"), "{warning}");

        for (name, vlan) in [("a", "vlan10"), ("b", "vlan10"), ("c", "vlan20")] {
            let ifaces = json!([{"name": "default", "bridge": {}}, {"name": "lan", "bridge": {}}]);
            let nets = json!([{"name": "default", "pod": {}}, {"name": "lan", "multus": {"networkName": vlan}}]);
            let vm = net_vm(name, json!({"vm": name}), ifaces, nets);
            let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
            assert_eq!(code, 201, "{body}");
        }
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            assert!(g.wait_marker(name, GUEST_MARKER, BOOT).await, "{} {}", g.serial_log(name).await, g.vmi(name).await);
            let cmd = format!("ip link set eth1 up; ip addr add 192.168.77.{}/24 dev eth1 && echo LAN-UP-$((40+{i}))", i + 1);
            assert!(n.sh(name, &cmd, &format!("LAN-UP-{}", 40 + i), SETTLE).await, "{}", g.serial_log(name).await);
        }
        // 802.1Q on the bridge where the kernel filters VLANs; else the node's isolation rules.
        let vlans = std::process::Command::new("bridge").args(["vlan", "show"]).output().expect("bridge");
        let vlans = String::from_utf8_lossy(&vlans.stdout).to_string();
        let table = converge_engine::network::names::vlan_table(&n.net.node_namespace);
        let rules = n.nft_list(None, &format!("bridge {table}"));
        assert!(
            (vlans.contains("10 PVID Egress Untagged") && vlans.contains("20 PVID Egress Untagged"))
                || rules.matches(" drop").count() == 4,
            "{vlans}{rules}"
        );

        // Patient, as guests under emulation on a loaded machine answer slowly.
        let same = "for i in 1 2 3 4 5; do ping -c 1 -W 3 192.168.77.1 >/dev/null && { echo SAME-VLAN-$((1+1)); break; }; done";
        assert!(n.sh("b", same, "SAME-VLAN-2", SETTLE).await, "{}", g.serial_log("b").await);
        let apart = "ping -c 3 -W 3 192.168.77.1 >/dev/null || echo OTHER-VLAN-$((2+2))";
        assert!(n.sh("c", apart, "OTHER-VLAN-4", SETTLE).await, "{}", g.serial_log("c").await);
        assert!(!g.serial_log("c").await.contains("SAME-VLAN"), "c reached a across VLANs");

        // SR-IOV: validated and planned as a hostdev, refused here (no such virtual function).
        let body = nad("vf", &json!({"cniVersion": "0.3.1", "type": "sriov", "deviceID": "0000:3b:02.1"}));
        let (code, out) =
            g.app.post("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", &body).await;
        assert_eq!(code, 201, "{out}");
        let mut spec = halt_vmi_spec();
        spec["domain"]["devices"]["interfaces"] = json!([{"name": "vf", "sriov": {}}]);
        spec["networks"] = json!([{"name": "vf", "multus": {"networkName": "vf", "default": true}}]);
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                         "metadata": {"name": "sriov", "namespace": "default"}, "spec": spec});
        let (code, out) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await;
        assert_eq!(code, 201, "{out}");
        assert!(g.wait_phase("sriov", "Failed", SETTLE).await, "{}", g.vmi("sriov").await);
        let v = g.vmi("sriov").await;
        let cond = v["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Synchronized").cloned());
        let message = cond.as_ref().and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
        assert!(message.contains("0000:3b:02.1 is not an SR-IOV virtual function on this node"), "{v}");
    })
    .await;
}

/// Foreman's "build" provisioning: the guest boots from its NIC. A dnsmasq in the test's own
/// namespace, on the NAD's bridge, answers DHCP and serves an iPXE script, kernel and initramfs
/// over TFTP; the firmware's iPXE ROM (Debian's ipxe-qemu) fetches and boots them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_pxe_boots_from_a_nad_bridge() {
    let n = spawn_net_app(4).await;
    let g = &n.g;
    let pxe = PxeServer::start("px", 88);
    let bridge = pxe.bridge.clone();

    within(Duration::from_secs(360), async {
        let body = nad("provisioning", &json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge}));
        let (code, out) =
            g.app.post("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", &body).await;
        assert_eq!(code, 201, "{out}");
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "build", "namespace": "default"},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "terminationGracePeriodSeconds": 0,
                "domain": {
                    "resources": {"requests": {"memory": "256Mi"}},
                    "devices": {
                        "disks": [{"name": "blank", "disk": {"bus": "virtio"}, "bootOrder": 2}],
                        "interfaces": [{"name": "provisioning", "bridge": {}, "bootOrder": 1, "model": "virtio"}],
                    },
                },
                "networks": [{"name": "provisioning", "multus": {"networkName": "provisioning", "default": true}}],
                "volumes": [{"name": "blank", "emptyDisk": {"capacity": "64Mi"}}],
            }}},
        });
        let (code, created) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
        assert_eq!(code, 201, "{created}");
        let mac = created["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"]
            .as_str()
            .expect("a MAC at create, before the VM runs")
            .to_string();
        assert!(
            g.wait_marker("build", GUEST_MARKER, Duration::from_secs(240)).await,
            "the guest booted from the network: {}",
            g.serial_log("build").await
        );
        let leases = pxe.leases();
        assert!(leases.contains(&mac), "dnsmasq leased to the MAC admission gave ({mac}): {leases}");
        let (ok, xml, err) = g.converge(&["domxml", "build"], None).await;
        assert!(ok && xml.contains("<boot order='1'/>"), "{xml}{err}");
    })
    .await;
}

/// 100 VMIs made and deleted, ten at a time, with bridge, masquerade and VLAN NICs: nothing of
/// theirs stays — no namespace, tap, node-side veth, rule, responder or lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_delete_cycles_leave_nothing_behind() {
    let n = spawn_net_app(5).await;
    let g = &n.g;
    let bridge = format!("cvtcy{}", std::process::id() % 100_000);
    let _bridge = LinkGuard(bridge.clone());
    within(Duration::from_secs(900), async {
        let body = nad("lan", &json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge, "vlan": 30}));
        let (code, out) =
            g.app.post("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", &body).await;
        assert_eq!(code, 201, "{out}");
        let node_links_before = {
            let mut l = n.node_links();
            l.sort();
            l
        };
        let vmis = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";
        for round in 0..10 {
            for i in 0..10 {
                let mut spec = halt_vmi_spec();
                let devices = &mut spec["domain"]["devices"];
                devices.as_object_mut().expect("devices").remove("autoattachPodInterface");
                let binding = if i % 2 == 0 {
                    json!({"name": "default", "bridge": {}})
                } else {
                    json!({"name": "default", "masquerade": {}})
                };
                let mut ifaces = vec![binding];
                let mut nets = vec![json!({"name": "default", "pod": {}})];
                if i % 3 == 0 {
                    ifaces.push(json!({"name": "lan", "bridge": {}}));
                    nets.push(json!({"name": "lan", "multus": {"networkName": "lan"}}));
                }
                devices["interfaces"] = json!(ifaces);
                spec["networks"] = json!(nets);
                let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                                 "metadata": {"name": format!("c{i}"), "namespace": "default"}, "spec": spec});
                let (code, body) = g.app.post(vmis, &vmi).await;
                assert_eq!(code, 201, "round {round}: {body}");
            }
            for i in 0..10 {
                let name = format!("c{i}");
                assert!(g.wait_phase(&name, "Running", SETTLE).await, "round {round}: {}", g.vmi(&name).await);
                assert!(n.pod_ip(&name).await.is_some(), "{}", g.vmi(&name).await);
            }
            for i in 0..10 {
                let (code, body) = g.app.delete(&format!("{vmis}/c{i}"), None).await;
                assert!(code == 200 || code == 202, "{body}");
            }
            for i in 0..10 {
                let gone = wait_until(SETTLE, || async { g.app.get(&format!("{vmis}/c{i}")).await.0 == 404 }).await;
                assert!(gone, "round {round}: c{i} was not removed: {}", g.vmi(&format!("c{i}")).await);
            }
        }
        assert!(n.pod_namespaces().is_empty(), "pod namespaces left: {:?}", n.pod_namespaces());
        let taps = converge_engine::network::names::tap_prefix(&n.net.node_namespace);
        use converge_engine::network::host::NetworkHost;
        let host_links = converge_engine::network::host::SystemNetworkHost.links(None);
        let left: Vec<&String> = host_links.iter().filter(|l| l.starts_with(&taps)).collect();
        assert!(left.is_empty(), "taps left: {left:?}");
        let veths_gone = wait_until(SETTLE, || async {
            let mut after = n.node_links();
            after.sort();
            after == node_links_before
        })
        .await;
        assert!(veths_gone, "veths left on the node bridge: {:?}", n.node_links());
        let store = g.app.store();
        assert!(store.address_leases("pods").await.expect("leases").is_empty(), "pod addresses all given back");
        assert!(store.mac_leases().await.expect("leases").is_empty(), "MACs all given back");
        assert_eq!(g.agent().dhcp_responders(), 0, "no DHCP responder left");
        let table = converge_engine::network::names::vlan_table(&n.net.node_namespace);
        let rules = n.nft_list(None, &format!("bridge {table}"));
        assert!(!rules.contains("drop"), "no VLAN rule left: {rules}");
        assert!(g.domains().is_empty(), "{:?}", g.domains());
    })
    .await;
}

/// `converge serve` restarts under a running guest: the guest keeps its address and pod, the
/// node answers its DHCP again, and its Service still reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pod_network_survives_a_server_restart() {
    let n = spawn_net_app(6).await;
    within(Duration::from_secs(300), async {
        let g = &n.g;
        let (ifaces, nets) = pod_interfaces();
        let vm = net_vm("keep", json!({"app": "keep"}), ifaces, nets);
        let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
        assert_eq!(code, 201, "{body}");
        let ip = n.wait_pod_ip("keep").await;
        let marker = format!("CONVERGE-GUEST-DHCP eth0 {ip}");
        assert!(g.wait_marker("keep", &marker, BOOT).await, "{}", g.serial_log("keep").await);
        assert!(
            n.sh("keep", "mkdir -p /www; echo kept-$((6*7)) > /www/index.html; httpd -p 80 -h /www", "", SETTLE).await
        );
        let (ok, out, err) =
            g.converge(&["expose", "vmi", "keep", "--name", "keep", "--port", "80", "--type", "NodePort"], None).await;
        assert!(ok, "{out}{err}");
        let (_, svc) = g.app.get("/api/v1/namespaces/default/services/keep").await;
        let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("node port");
        let url = format!("http://127.0.0.1:{node_port}/");
        assert!(wait_until(SETTLE, || async { http_get(&url).await.is_some_and(|b| b.contains("kept-42")) }).await);
    })
    .await;

    let NetApp { g, net, services, _cleanup } = n;
    let GuestApp { app, prefix, libvirt, cleanup } = g;
    let app = app.restart().await;
    let n = NetApp { g: GuestApp { app, prefix, libvirt, cleanup }, net, services, _cleanup };
    within(Duration::from_secs(180), async {
        let g = &n.g;
        assert!(wait_until(SETTLE, || async { g.agent().dhcp_responders() == 1 }).await, "the responder is back");
        let ip = n.pod_ip("keep").await.expect("same address");
        let (_, svc) = g.app.get("/api/v1/namespaces/default/services/keep").await;
        let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().expect("node port");
        let url = format!("http://127.0.0.1:{node_port}/");
        assert!(wait_until(SETTLE, || async { http_get(&url).await.is_some_and(|b| b.contains("kept-42")) }).await);
        assert!(http_get(&format!("http://{ip}/")).await.is_some_and(|b| b.contains("kept-42")));
        // The guest asks for its address again and gets the same one from the new responder.
        let renew = "udhcpc -n -q -i eth0 -s /usr/share/udhcpc/default.script >/dev/null 2>&1; echo RENEWED-$((3*3))";
        assert!(n.sh("keep", renew, "RENEWED-9", SETTLE).await);
        let marker = format!("CONVERGE-GUEST-DHCP eth0 {ip}");
        assert_eq!(g.serial_log("keep").await.matches(&marker).count(), 2, "{}", g.serial_log("keep").await);
    })
    .await;
}
