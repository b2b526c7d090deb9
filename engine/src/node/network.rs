//! The node agent's networking: the node namespace at start, a VMI's pod before and after its
//! domain starts, its DHCP responder, the Service rules, and removal of all of it.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::Shared;
use crate::kinds;
use crate::launcher::spec::VmiSpec;
use crate::meta;
use crate::network::dhcp::{Lease, Responders};
use crate::network::host::NetworkHost;
use crate::network::nad::{self, BridgeNetwork, NadNetwork};
use crate::network::plan::{self, Attachment, PodPlan, BRIDGE_SERVER, MASQUERADE_GATEWAY, MASQUERADE_GUEST};
use crate::network::pod_addresses::{owner_of, PodAddresses};
use crate::network::vlans::{self, VlanPorts};
use crate::network::{names, services, setup, NetworkConfig, NetworkError};

/// What the agent keeps for networking.
pub struct NodeNetwork {
    pub config: NetworkConfig,
    pub host: Arc<dyn NetworkHost>,
    pub dhcp: Responders,
    /// Pod addresses this node gave, from its pod CIDR.
    pub addresses: PodAddresses,
    /// The last rules applied, so unchanged Services cost nothing.
    applied_rules: std::sync::Mutex<Option<(String, String)>>,
    /// The bridges here filter VLANs (probed at start); else `vlan_ports` are kept apart by rules.
    kernel_vlans: std::sync::atomic::AtomicBool,
    vlan_ports: std::sync::Mutex<VlanPorts>,
    /// Held from reading `vlan_ports` to the rules being in the kernel: applies never reorder.
    vlan_apply: tokio::sync::Mutex<()>,
}

impl NodeNetwork {
    pub fn new(config: NetworkConfig, host: Arc<dyn NetworkHost>, addresses: PodAddresses) -> NodeNetwork {
        NodeNetwork {
            config,
            host,
            dhcp: Responders::default(),
            addresses,
            applied_rules: std::sync::Mutex::new(None),
            kernel_vlans: std::sync::atomic::AtomicBool::new(true),
            vlan_ports: std::sync::Mutex::new(VlanPorts::new()),
            vlan_apply: tokio::sync::Mutex::new(()),
        }
    }

    fn kernel_vlans(&self) -> bool {
        self.kernel_vlans.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(super) async fn run_steps(
    host: &Arc<dyn NetworkHost>,
    steps: Vec<crate::network::host::Step>,
) -> Result<(), NetworkError> {
    run(host, steps).await
}

async fn run(host: &Arc<dyn NetworkHost>, steps: Vec<crate::network::host::Step>) -> Result<(), NetworkError> {
    let host = Arc::clone(host);
    tokio::task::spawn_blocking(move || host.run(&steps))
        .await
        .map_err(|e| NetworkError::Command { command: "network steps".into(), message: e.to_string() })?
}

/// Makes the node namespace (or heals the one a previous run left).
pub async fn setup_node(net: &NodeNetwork) -> Result<(), NetworkError> {
    let cfg = &net.config;
    let (host_link, _) = names::transit_links(&cfg.node_namespace);
    let present = net.host.namespaces().contains(&cfg.node_namespace) && net.host.links(None).contains(&host_link);
    let steps = if present {
        setup::node_refresh(cfg)
    } else {
        let mut s = setup::node_remove(cfg);
        s.extend(setup::node_create(cfg));
        s
    };
    run(&net.host, steps).await?;
    let kernel_vlans = run(&net.host, vlans::probe(&cfg.node_namespace)).await.is_ok();
    if !kernel_vlans {
        tracing::warn!("the kernel has no bridge VLAN filtering: VLANs are kept apart on this node by nftables rules, and frames leave untagged");
        let _ = run(
            &net.host,
            vec![crate::network::host::Step::ip(Some(&cfg.node_namespace), "link del cvvlanprobe").tolerated()],
        )
        .await;
    }
    net.kernel_vlans.store(kernel_vlans, std::sync::atomic::Ordering::Relaxed);
    apply_vlan_rules(net).await
}

/// Removes pod namespaces, taps and address leases no live VMI on this node owns, and records the
/// pod addresses live VMIs report (a lease lost with the state directory is taken back).
pub(crate) async fn sweep_orphans(net: &NodeNetwork, live: &[Value]) {
    let live_uids: Vec<String> = live.iter().map(|v| meta::uid(v).to_string()).collect();
    let owners: Vec<String> = live.iter().map(|v| owner_of(meta::namespace(v), meta::name(v))).collect();
    if let Err(e) = net.addresses.retain(|owner| owners.iter().any(|o| o == owner)) {
        tracing::warn!(error = %e, "pod address leases not swept");
    }
    for (vmi, owner) in live.iter().zip(&owners) {
        let reported = vmi.pointer("/status/interfaces").and_then(Value::as_array).into_iter().flatten();
        let addresses = reported.filter_map(|i| i.get("ipAddress").and_then(Value::as_str)?.parse().ok());
        for address in addresses.filter(|a| net.config.pod_cidr.contains(*a)) {
            match net.addresses.adopt(address, owner) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(%address, owner, "a running guest's pod address is leased to another"),
                Err(e) => tracing::warn!(error = %e, "pod address not recorded"),
            }
        }
    }
    let node_ns = &net.config.node_namespace;
    let keep_ns: Vec<String> = live_uids.iter().map(|u| names::pod_namespace(node_ns, u)).collect();
    let prefix = names::pod_namespace_prefix(node_ns);
    let mut steps: Vec<crate::network::host::Step> = net
        .host
        .namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && !keep_ns.contains(n))
        .map(|n| crate::network::host::Step::ip(None, &format!("netns del {n}")).tolerated())
        .collect();
    let tap_prefix = names::tap_prefix(node_ns);
    steps.extend(
        net.host
            .links(None)
            .into_iter()
            .filter(|l| l.starts_with(&tap_prefix) && !live_uids.iter().any(|u| names::is_tap_of(node_ns, u, l)))
            .map(|l| crate::network::host::Step::ip(None, &format!("link del {l}")).tolerated()),
    );
    if !steps.is_empty() {
        tracing::info!(count = steps.len(), "removing pod namespaces and taps no VMI owns");
        if let Err(e) = run(&net.host, steps).await {
            tracing::warn!(error = %e, "orphaned pod networking not removed");
        }
    }
}

/// Records a plan's VLAN ports and drops those of `remove_uid`, then applies the isolation
/// rules, where the kernel can't filter VLANs itself.
async fn update_vlan_ports(
    net: &NodeNetwork,
    add: Option<&PodPlan>,
    remove_uid: Option<&str>,
) -> Result<(), NetworkError> {
    if net.kernel_vlans() {
        return Ok(());
    }
    let changed = {
        let Ok(mut ports) = net.vlan_ports.lock() else { return Ok(()) };
        let before = ports.clone();
        if let Some(uid) = remove_uid {
            ports.retain(|tap, _| !names::is_tap_of(&net.config.node_namespace, uid, tap));
        }
        for nic in add.map(|p| p.nics.as_slice()).unwrap_or_default() {
            if let Attachment::HostBridge(BridgeNetwork { bridge, vlan: Some(vlan) }) = &nic.attachment {
                ports.insert(nic.tap.clone(), (bridge.clone(), *vlan));
            }
        }
        *ports != before
    };
    if changed {
        apply_vlan_rules(net).await?;
    }
    Ok(())
}

async fn apply_vlan_rules(net: &NodeNetwork) -> Result<(), NetworkError> {
    if net.kernel_vlans() {
        return Ok(());
    }
    let _applying = net.vlan_apply.lock().await;
    let ports = net.vlan_ports.lock().map(|p| p.clone()).unwrap_or_default();
    let rules = vlans::isolation_rules(&names::vlan_table(&net.config.node_namespace), &ports);
    run(&net.host, vec![crate::network::host::Step::nft(None, rules)]).await
}

/// The NADs a spec names, resolved in the VMI's namespace unless qualified.
async fn resolve_nads(s: &Shared, vmi: &Value, spec: &VmiSpec) -> HashMap<String, Result<NadNetwork, String>> {
    let mut out = HashMap::new();
    for name in plan::multus_networks(spec) {
        let (ns, short) = name.split_once('/').unwrap_or((meta::namespace(vmi), name.as_str()));
        let found = match s.cluster.get(&kinds::NETWORK_ATTACHMENT_DEFINITION, ns, short).await {
            Ok(Some(n)) if !crate::host_access::nad_usable_from(&n, ns, meta::namespace(vmi)) => Err(format!(
                "NetworkAttachmentDefinition {ns}/{short} is not shared with namespace {:?} (annotation {})",
                meta::namespace(vmi),
                crate::host_access::NAD_SHARED_WITH
            )),
            Ok(Some(n)) => {
                nad::network_of(&n).and_then(|net| nad::allowed_by(&net, &s.config.host_access).map(|()| net))
            }
            Ok(None) => Err(format!("NetworkAttachmentDefinition {ns}/{short} not found")),
            Err(e) => Err(e.message),
        };
        out.insert(name, found);
    }
    out
}

/// Why a pod could not be made: to retry (cluster, commands) or to fail the VMI (its spec).
pub enum PodError {
    Retry(String),
    Invalid(String),
}

/// The VMI's plan: its pod address (the one it holds, else a new lease) and the networks it names.
async fn plan_pod(s: &Shared, net: &NodeNetwork, vmi: &Value, spec: &VmiSpec) -> Result<PodPlan, PodError> {
    let pod_ip = if plan::uses_pod_network(spec) {
        let reserved = [net.config.gateway()];
        let owner = owner_of(meta::namespace(vmi), meta::name(vmi));
        let ip = net.addresses.lease(&net.config.pod_cidr, &reserved, &owner);
        Some(ip.map_err(|e| PodError::Retry(e.to_string()))?)
    } else {
        None
    };
    let nads = resolve_nads(s, vmi, spec).await;
    let lookup = |name: &str| nads.get(name).cloned().unwrap_or_else(|| Err(format!("{name}: not resolved")));
    plan::plan(&net.config.node_namespace, meta::uid(vmi), spec, pod_ip, &lookup).map_err(|e| match e {
        NetworkError::Network(..) | NetworkError::Interface(..) => PodError::Invalid(e.to_string()),
        other => PodError::Retry(other.to_string()),
    })
}

/// Plans the VMI's interfaces and builds everything up to the taps.
pub(crate) async fn prepare_pod(s: &Shared, net: &NodeNetwork, vmi: &Value) -> Result<PodPlan, PodError> {
    let spec = VmiSpec::from_vmi(vmi).map_err(PodError::Invalid)?;
    let plan = plan_pod(s, net, vmi, &spec).await?;
    for nic in &plan.nics {
        if let Attachment::Sriov(vf) = &nic.attachment {
            if !net.host.is_sriov_vf(&vf.device_id) {
                let m = format!(
                    "interface {:?}: {} is not an SR-IOV virtual function on this node",
                    nic.name, vf.device_id
                );
                return Err(PodError::Invalid(m));
            }
        }
    }
    let steps = setup::pod_before_start(&net.config, &plan, net.kernel_vlans());
    run(&net.host, steps).await.map_err(|e| PodError::Retry(e.to_string()))?;
    // The VLAN rules are in place before the guest sends a frame.
    update_vlan_ports(net, Some(&plan), None).await.map_err(|e| PodError::Retry(e.to_string()))?;
    Ok(plan)
}

/// Once QEMU holds the taps: moves the pod's into its namespace and starts its DHCP responder.
pub async fn finish_pod(net: &NodeNetwork, plan: &PodPlan, vmi: &Value) -> Result<(), NetworkError> {
    run(&net.host, setup::pod_after_start(plan)).await?;
    start_responder(net, plan, vmi)
}

fn start_responder(net: &NodeNetwork, plan: &PodPlan, vmi: &Value) -> Result<(), NetworkError> {
    let (Some(nic), Some(pod_ip)) = (plan.pod_nic(), plan.pod_ip) else { return Ok(()) };
    let Some(mac) = nic.mac.as_deref().and_then(|m| crate::macpool::parse_mac(m).ok()) else {
        return Err(NetworkError::Interface(nic.name.clone(), "has no MAC address to answer DHCP for".into()));
    };
    let bytes = mac.to_be_bytes();
    let mac = [bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]];
    let lease = match nic.attachment {
        Attachment::PodMasquerade { .. } => Lease {
            mac,
            address: MASQUERADE_GUEST,
            prefix: 24,
            router: Some(MASQUERADE_GATEWAY),
            server: MASQUERADE_GATEWAY,
            hostname: meta::name(vmi).to_string(),
        },
        _ => Lease {
            mac,
            address: pod_ip,
            prefix: net.config.pod_cidr.prefix(),
            router: Some(net.config.gateway()),
            server: BRIDGE_SERVER,
            hostname: meta::name(vmi).to_string(),
        },
    };
    let socket = net.host.dhcp_socket(&plan.netns, names::POD_BRIDGE)?;
    net.dhcp.start(&plan.vmi_uid, socket, lease)
}

/// A running VMI the agent knows nothing of (it restarted), or one that just migrated here:
/// plan again, join its taps to its pod (a migrated guest's incoming QEMU opened them in the
/// host namespace), answer DHCP again and keep its VLAN ports apart again. Returns the VMI's
/// interfaces when what it reports is not this node's (its pod address is from the source's
/// range after a migration).
pub(crate) async fn adopt_running(s: &Shared, net: &NodeNetwork, vmi: &Value) -> Option<Vec<Value>> {
    let uid = meta::uid(vmi);
    let spec = VmiSpec::from_vmi(vmi).unwrap_or_default();
    let on_pod_network = plan::uses_pod_network(&spec);
    let needs_dhcp = on_pod_network && !net.dhcp.running(uid);
    let node_ns = &net.config.node_namespace;
    let known = net.vlan_ports.lock().map(|p| p.keys().any(|t| names::is_tap_of(node_ns, uid, t))).unwrap_or(true);
    let needs_vlans = !net.kernel_vlans() && !known && !plan::multus_networks(&spec).is_empty();
    let elsewhere = |ip: std::net::Ipv4Addr| !net.config.pod_cidr.contains(ip);
    let stale_address = on_pod_network && services::pod_ip(vmi).is_some_and(elsewhere);
    if !needs_dhcp && !needs_vlans && !stale_address {
        return None;
    }
    let Ok(plan) = plan_pod(s, net, vmi, &spec).await else { return None };
    if needs_vlans {
        if let Err(e) = update_vlan_ports(net, Some(&plan), None).await {
            tracing::warn!(error = %e, "VLAN rules not restored");
        }
    }
    let pod_ns = names::pod_namespace(&net.config.node_namespace, uid);
    let pod_exists = needs_dhcp && net.host.namespaces().contains(&pod_ns);
    // A migrated guest's tap is still in the host namespace, where its incoming QEMU opened it.
    let arrived = pod_exists && plan.pod_nic().is_some_and(|nic| net.host.links(None).contains(&nic.tap));
    if arrived {
        if let Err(e) = finish_pod(net, &plan, vmi).await {
            tracing::warn!(error = %e, "a migrated guest's pod not finished");
            return None;
        }
    } else if pod_exists {
        if let Err(e) = start_responder(net, &plan, vmi) {
            tracing::warn!(error = %e, "DHCP responder not restarted");
        }
    }
    stale_address.then(|| interface_status(&spec, Some(&plan)))
}

/// Removes what a VMI's networking made: its namespace, its taps, its responder, its address.
pub(crate) async fn release_pod(net: &NodeNetwork, vmi_uid: &str, owner: Option<(&str, &str)>) {
    net.dhcp.stop(vmi_uid);
    let node_ns = &net.config.node_namespace;
    let taps: Vec<String> =
        net.host.links(None).into_iter().filter(|l| names::is_tap_of(node_ns, vmi_uid, l)).collect();
    let plan = PodPlan {
        vmi_uid: vmi_uid.to_string(),
        netns: names::pod_namespace(&net.config.node_namespace, vmi_uid),
        veth: names::pod_veth(vmi_uid),
        pod_ip: None,
        nics: vec![],
    };
    if let Err(e) = run(&net.host, setup::pod_remove(node_ns, &plan, &taps)).await {
        tracing::warn!(error = %e, "pod network not fully removed");
    }
    if let Err(e) = update_vlan_ports(net, None, Some(vmi_uid)).await {
        tracing::warn!(error = %e, "VLAN rules not updated");
    }
    if let Some((ns, name)) = owner {
        if let Err(e) = net.addresses.release(&owner_of(ns, name)) {
            tracing::warn!(error = %e, "pod address not released");
        }
    }
}

/// VMI status.interfaces, as virt-handler reports them from the domain and the pod network.
pub fn interface_status(spec: &VmiSpec, plan: Option<&PodPlan>) -> Vec<Value> {
    spec.domain
        .devices
        .interfaces
        .iter()
        .map(|i| {
            let mut v = json!({"name": i.name, "infoSource": "domain"});
            if let Some(mac) = &i.mac_address {
                v["mac"] = json!(mac);
            }
            let nic = plan.and_then(|p| p.nics.iter().find(|n| n.name == i.name));
            if let (Some(nic), Some(ip)) = (nic, plan.and_then(|p| p.pod_ip)) {
                if matches!(nic.attachment, Attachment::PodBridge | Attachment::PodMasquerade { .. }) {
                    v["ipAddress"] = json!(ip.to_string());
                    v["ipAddresses"] = json!([ip.to_string()]);
                    v["podInterfaceName"] = json!(names::POD_LINK);
                    v["infoSource"] = json!("domain, multus-status");
                }
            }
            v
        })
        .collect()
}

/// Applies the Service rules for the Services and VMIs in the cluster, when they changed.
pub(crate) async fn sync_services(s: &Shared, net: &NodeNetwork) -> Result<(), String> {
    let svcs = s.cluster.list(&kinds::SERVICE, None).await.map_err(|e| e.message)?;
    let vmis = s.cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await.map_err(|e| e.message)?;
    let mut forwards = vec![];
    for svc in &svcs {
        forwards.extend(services::forwards(svc, &services::backends(svc, &vmis)));
    }
    let rules = (services::node_rules(&net.config, &forwards), services::host_rules(&net.config, &forwards));
    if net.applied_rules.lock().map(|a| a.as_ref() == Some(&rules)).unwrap_or(false) {
        return Ok(());
    }
    let ns = net.config.node_namespace.clone();
    let steps = vec![
        crate::network::host::Step::nft(Some(&ns), rules.0.clone()),
        crate::network::host::Step::nft(None, rules.1.clone()),
    ];
    run(&net.host, steps).await.map_err(|e| e.to_string())?;
    if let Ok(mut a) = net.applied_rules.lock() {
        *a = Some(rules);
    }
    Ok(())
}

/// Fills in the traffic of a pod guest's taps, which libvirt cannot see once they moved into the
/// pod's namespace: read there, and turned to the guest's side (what the tap receives, the guest
/// sent).
pub(crate) fn count_pod_taps(stats: &mut crate::hypervisor::stats::DomainStats, node_namespace: &str, vmi_uid: &str) {
    use crate::network::names;
    if !stats.interfaces.iter().any(|n| names::is_tap_of(node_namespace, vmi_uid, &n.name)) {
        return;
    }
    let Ok(links) = crate::network::counters::in_namespace(&names::pod_namespace(node_namespace, vmi_uid)) else {
        return;
    };
    for nic in stats.interfaces.iter_mut().filter(|n| names::is_tap_of(node_namespace, vmi_uid, &n.name)) {
        if let Some(c) = links.get(&nic.name) {
            nic.rx_bytes = c.tx_bytes;
            nic.rx_packets = c.tx_packets;
            nic.rx_errors = c.tx_errors;
            nic.rx_dropped = c.tx_dropped;
            nic.tx_bytes = c.rx_bytes;
            nic.tx_packets = c.rx_packets;
            nic.tx_errors = c.rx_errors;
            nic.tx_dropped = c.rx_dropped;
        }
    }
}
