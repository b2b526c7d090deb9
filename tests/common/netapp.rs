//! Harness for networking tests: a guest app whose node has a pod network of its own — its own
//! node namespace, pod and service ranges, transit link and node ports — so tests run side by
//! side, and whose namespaces, links and rules go when the test ends, however it ends.

use super::guests::*;
use super::*;
use converge_engine::network::host::{NetworkHost, Step, SystemNetworkHost};
use converge_engine::network::ipam::ServiceNetwork;
use converge_engine::network::{names, setup, Cidr, NetworkConfig};
use serde_json::Value;

pub struct NetApp {
    pub g: GuestApp,
    pub net: NetworkConfig,
    pub services: ServiceNetwork,
    pub _cleanup: NetCleanup,
}

/// Removes the node namespace, every pod namespace of this node, and the host's links and table.
pub struct NetCleanup(pub NetworkConfig);

impl Drop for NetCleanup {
    fn drop(&mut self) {
        let host = SystemNetworkHost;
        let prefix = names::pod_namespace_prefix(&self.0.node_namespace);
        let mut steps: Vec<Step> = host
            .namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .map(|n| Step::ip(None, &format!("netns del {n}")).tolerated())
            .collect();
        let taps = names::tap_prefix(&self.0.node_namespace);
        steps.extend(
            host.links(None)
                .into_iter()
                .filter(|l| l.starts_with(&taps))
                .map(|l| Step::ip(None, &format!("link del {l}")).tolerated()),
        );
        steps.extend(setup::node_remove(&self.0));
        let _ = host.run(&steps);
    }
}

/// Test `index` (1-99) gets 10.(100+i).0.0/16 for pods (a /24 per node), 10.(200+i).0.0/16 for services,
/// 169.254.(100+i).0/30 for transit and 31000+100·i… for node ports. Egress stays off: nothing a
/// test does may leave the machine.
pub fn network_for(index: u8) -> (NetworkConfig, ServiceNetwork) {
    let cidr = |s: String| Cidr::parse(&s).expect("cidr");
    let cluster_cidr = cidr(format!("10.{}.0.0/16", 100 + u16::from(index)));
    let net = NetworkConfig {
        cluster_cidr,
        // The slice the server gives its one node: the first.
        pod_cidr: cidr(format!("10.{}.0.0/24", 100 + u16::from(index))),
        service_cidr: cidr(format!("10.{}.0.0/16", 150 + u16::from(index))),
        transit: cidr(format!("169.254.{}.0/30", 100 + u16::from(index))),
        node_namespace: format!("cvt{}-{index}", std::process::id() % 100_000),
        egress: false,
    };
    let base = 31000 + 100 * u16::from(index);
    let services = ServiceNetwork { cidr: net.service_cidr, node_ports: (base, base + 99) };
    (net, services)
}

pub async fn spawn_net_app(index: u8) -> NetApp {
    spawn_net_app_with(index, |_| {}).await
}

/// `spawn_net_app` with the server's configuration adjusted first (`service_network` is set
/// after `tweak` only when the tweak leaves it alone).
pub async fn spawn_net_app_with(index: u8, tweak: impl FnOnce(&mut converge_api::ServerConfig)) -> NetApp {
    let (net, mut services) = network_for(index);
    let cleanup = NetCleanup(net.clone());
    let (n, s) = (net.clone(), services);
    let (tx, rx) = std::sync::mpsc::channel();
    let g = spawn_guest_app_with(move |c| {
        c.service_network = s;
        c.pod_ranges.cluster = n.cluster_cidr;
        // The bridges network tests make are all named cv…; the admin allows those alone.
        c.host_access.nad_bridges = vec!["cv*".into()];
        if let Some(node) = c.node.as_mut() {
            node.network = Some(n);
        }
        tweak(c);
        let _ = tx.send(c.service_network);
    })
    .await;
    if let Ok(s) = rx.try_recv() {
        services = s;
    }
    NetApp { g, net, services, _cleanup: cleanup }
}

impl NetApp {
    /// The pod address the node reported for a VMI's pod interface.
    pub async fn pod_ip(&self, name: &str) -> Option<String> {
        let vmi = self.g.vmi(name).await;
        converge_engine::network::services::pod_ip(&vmi).map(|ip| ip.to_string())
    }

    pub async fn wait_pod_ip(&self, name: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(ip) = self.pod_ip(name).await {
                return ip;
            }
            if std::time::Instant::now() > deadline {
                panic!("{name} has no pod address: {}", self.g.vmi(name).await);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Types `command` at the guest's shell; true once `expect` shows in its console log.
    /// `expect` must not be a literal part of `command` (use shell arithmetic to make it).
    pub async fn sh(&self, name: &str, command: &str, expect: &str, timeout: Duration) -> bool {
        let (ok, _, err) = self.g.converge(&["console", name], Some(&format!("{command}\n"))).await;
        assert!(ok, "console {name}: {err}");
        self.g.wait_marker(name, expect, timeout).await
    }

    /// The host's end of the transit link: what guests reach the host at.
    pub fn host_address(&self) -> String {
        self.net.host_transit().to_string()
    }

    pub fn pod_namespaces(&self) -> Vec<String> {
        let prefix = names::pod_namespace_prefix(&self.net.node_namespace);
        SystemNetworkHost.namespaces().into_iter().filter(|n| n.starts_with(&prefix)).collect()
    }

    pub fn node_links(&self) -> Vec<String> {
        SystemNetworkHost.links(Some(&self.net.node_namespace))
    }

    /// `nft list table …` in the node namespace (`Some`) or the host's.
    pub fn nft_list(&self, netns: Option<&str>, family_table: &str) -> String {
        let mut c = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
            None => std::process::Command::new("nft"),
        };
        let out = c.args(["list", "table"]).args(family_table.split_whitespace()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

/// A VM on the pod network (the default interface, bridge binding) booting the busybox guest.
pub fn net_vm(name: &str, labels: Value, interfaces: Value, networks: Value) -> Value {
    let mut spec = kernel_vmi_spec();
    spec["domain"]["devices"]["interfaces"] = interfaces;
    spec["networks"] = networks;
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": "Always", "template": {"metadata": {"labels": labels}, "spec": spec}},
    })
}

/// A NetworkAttachmentDefinition whose `spec.config` is `config` as JSON text; the path it is
/// posted to gives its namespace.
pub fn nad(name: &str, config: &Value) -> Value {
    serde_json::json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name}, "spec": {"config": config.to_string()}})
}
