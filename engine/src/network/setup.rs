//! Plans as commands: the node namespace, a pod's namespace, and their removal.

use super::host::Step;
use super::names::{self, NODE_BRIDGE, POD_BRIDGE, POD_LINK};
use super::plan::{
    Attachment, PodPlan, BRIDGE_SERVER, MASQUERADE_GATEWAY, MASQUERADE_GATEWAY6, MASQUERADE_GUEST, MASQUERADE_GUEST6,
};
use super::NetworkConfig;

/// The node namespace from nothing: its bridge (the pods' gateway), the veth to the host, routes
/// that send the pod and service ranges there from the host, and nothing that can fall through
/// to the host's default route unless egress is on.
pub fn node_create(cfg: &NetworkConfig) -> Vec<Step> {
    let ns = cfg.node_namespace.as_str();
    let node = Some(ns);
    let (host_link, node_link) = names::transit_links(ns);
    let mut steps = vec![
        Step::ip(None, &format!("netns add {ns}")),
        Step::ip(None, &format!("link add {host_link} type veth peer name {node_link} netns {ns}")),
        Step::ip(None, &format!("addr add {}/30 dev {host_link}", cfg.host_transit())),
        Step::ip(None, &format!("link set {host_link} up")),
        Step::ip(node, "link set lo up"),
        Step::ip(node, &format!("addr add {}/30 dev {node_link}", cfg.node_transit())),
        Step::ip(node, &format!("link set {node_link} up")),
        Step::ip(node, &format!("link add {NODE_BRIDGE} type bridge")),
        Step::ip(node, &format!("addr add {}/{} dev {NODE_BRIDGE}", cfg.gateway(), cfg.pod_cidr.prefix())),
        Step::ip(node, &format!("link set {NODE_BRIDGE} up")),
    ];
    steps.extend(node_refresh(cfg));
    steps
}

/// What re-applying costs nothing and heals drift: routes, sysctls, base NAT rules.
pub fn node_refresh(cfg: &NetworkConfig) -> Vec<Step> {
    let ns = cfg.node_namespace.as_str();
    let node = Some(ns);
    let (host_link, _) = names::transit_links(ns);
    let via = cfg.node_transit();
    let mut steps = vec![
        Step::ip(None, &format!("route replace {} via {via} dev {host_link}", cfg.pod_cidr)),
        Step::ip(None, &format!("route replace {} via {via} dev {host_link}", cfg.service_cidr)),
        // Node ports answer on 127.0.0.1 too: the host's loopback source must be routable into the
        // node namespace (then masqueraded), as kube-proxy arranges.
        Step::sysctl(None, &format!("net/ipv4/conf/{host_link}/route_localnet"), "1"),
        Step::sysctl(node, "net/ipv4/ip_forward", "1"),
        // A cluster IP with no rule is unreachable here instead of following a default route.
        Step::ip(node, &format!("route replace unreachable {}", cfg.service_cidr)),
        // Other nodes' pods are reached through the host, which routes each node's range to it
        // (its own namespace on this host, or its machine, as flannel's host-gw does); so the
        // host forwards, as every Kubernetes node must.
        Step::ip(node, &format!("route replace {} via {}", cfg.cluster_cidr, cfg.host_transit())),
        Step::sysctl(None, "net/ipv4/ip_forward", "1"),
    ];
    if cfg.egress {
        steps.push(Step::ip(node, &format!("route replace default via {}", cfg.host_transit())));
    } else {
        steps.push(Step::ip(node, "route replace unreachable default"));
    }
    steps
}

/// Removes the node namespace, its host link (with it) and the host's table.
pub fn node_remove(cfg: &NetworkConfig) -> Vec<Step> {
    let (host_link, _) = names::transit_links(&cfg.node_namespace);
    vec![
        Step::ip(None, &format!("netns del {}", cfg.node_namespace)).tolerated(),
        Step::ip(None, &format!("link del {host_link}")).tolerated(),
        Step::new(None, &["nft", "delete", "table", "ip", &names::host_table(&cfg.node_namespace)]).tolerated(),
        Step::new(None, &["nft", "delete", "table", "bridge", &names::vlan_table(&cfg.node_namespace)]).tolerated(),
    ]
}

/// Before the domain starts: the pod namespace with its veth on the node bridge, the binding's
/// bridge and rules, and every tap created in the host namespace (where libvirt opens it).
/// `kernel_vlans`: the bridge filters VLANs itself (else `vlans` isolates the ports).
pub fn pod_before_start(cfg: &NetworkConfig, plan: &PodPlan, kernel_vlans: bool) -> Vec<Step> {
    let mut steps = pod_remove(&cfg.node_namespace, plan, &[]);
    for nic in plan.nics.iter().filter(|n| !matches!(n.attachment, Attachment::User | Attachment::Sriov(_))) {
        steps.push(Step::ip(None, &format!("tuntap add dev {} mode tap", nic.tap)));
    }
    if let (Some(nic), Some(ip)) = (plan.pod_nic(), plan.pod_ip) {
        let (pod, node) = (Some(plan.netns.as_str()), Some(cfg.node_namespace.as_str()));
        let ns = &plan.netns;
        steps.extend([
            Step::ip(None, &format!("netns add {ns}")),
            Step::ip(node, &format!("link add {} type veth peer name {POD_LINK} netns {ns}", plan.veth)),
            Step::ip(node, &format!("link set {} master {NODE_BRIDGE} up", plan.veth)),
            Step::ip(pod, "link set lo up"),
            Step::ip(pod, &format!("link add {POD_BRIDGE} type bridge")),
        ]);
        match &nic.attachment {
            Attachment::PodBridge => steps.extend([
                // The guest takes the pod's address: eth0 is only a port of the pod's bridge.
                Step::ip(pod, &format!("link set {POD_LINK} master {POD_BRIDGE} up")),
                Step::ip(pod, &format!("addr add {BRIDGE_SERVER}/32 dev {POD_BRIDGE}")),
                Step::ip(pod, &format!("link set {POD_BRIDGE} up")),
            ]),
            Attachment::PodMasquerade { ports } => {
                steps.extend([
                    Step::ip(pod, &format!("addr add {ip}/{} dev {POD_LINK}", cfg.pod_cidr.prefix())),
                    Step::ip(pod, &format!("link set {POD_LINK} up")),
                    Step::ip(pod, &format!("route add default via {}", cfg.gateway())),
                    Step::ip(pod, &format!("addr add {MASQUERADE_GATEWAY}/24 dev {POD_BRIDGE}")),
                    Step::ip(pod, &format!("-6 addr add {MASQUERADE_GATEWAY6}/120 dev {POD_BRIDGE} nodad")),
                    Step::ip(pod, &format!("link set {POD_BRIDGE} up")),
                    Step::sysctl(pod, "net/ipv4/ip_forward", "1"),
                    Step::sysctl(pod, "net/ipv6/conf/all/forwarding", "1"),
                ]);
                steps.push(Step::nft(pod, masquerade_rules(ports)));
            }
            _ => {}
        }
    }
    for nic in &plan.nics {
        if let Attachment::HostBridge(net) = &nic.attachment {
            let b = &net.bridge;
            // A bridge of the host's is used as it is; a missing one is made, as bridge-CNI does.
            steps.push(Step::ip(None, &format!("link add {b} type bridge")).tolerated());
            let vlan = net.vlan.filter(|_| kernel_vlans);
            if vlan.is_some() {
                steps.push(Step::ip(None, &format!("link set {b} type bridge vlan_filtering 1")));
            }
            steps.push(Step::ip(None, &format!("link set {b} up")));
            steps.push(Step::ip(None, &format!("link set {} master {b} up", nic.tap)));
            if let Some(vlan) = vlan {
                steps.push(Step::bridge(None, &format!("vlan del dev {} vid 1", nic.tap)).tolerated());
                steps.push(Step::bridge(None, &format!("vlan add dev {} vid {vlan} pvid untagged", nic.tap)));
            }
        }
    }
    steps
}

/// After QEMU holds its taps: the pod network's tap moves into the pod, the guard goes up, and
/// the tap joins the pod's bridge.
pub fn pod_after_start(plan: &PodPlan) -> Vec<Step> {
    let pod = Some(plan.netns.as_str());
    let mut steps = vec![];
    if let (Some(nic), Some(pod_ip)) = (plan.pod_nic(), plan.pod_ip) {
        steps.push(Step::ip(None, &format!("link set {} netns {}", nic.tap, plan.netns)));
        let guest_ip = match nic.attachment {
            Attachment::PodMasquerade { .. } => MASQUERADE_GUEST,
            _ => pod_ip,
        };
        steps.push(Step::nft(pod, guard_rules(&nic.tap, nic.mac.as_deref(), guest_ip)));
        steps.push(Step::ip(pod, &format!("link set {} master {POD_BRIDGE} up", nic.tap)));
    }
    steps
}

/// The pod bridge takes from the guest only frames from its own MAC and packets from its own
/// address (0.0.0.0 and link-local while it asks DHCP and probes): a guest cannot pass itself
/// off as another pod on the node's network. A MAC that does not parse guards with no MAC at
/// all — every frame is dropped.
pub fn guard_rules(tap: &str, mac: Option<&str>, guest_ip: std::net::Ipv4Addr) -> String {
    let mac = mac.map(|m| crate::macpool::parse_mac(m).map(crate::macpool::format_mac));
    let mut s = String::from("table bridge converge_guard\ndelete table bridge converge_guard\n");
    s.push_str("table bridge converge_guard {\n  chain from_guest {\n");
    s.push_str("    type filter hook prerouting priority -300; policy accept;\n");
    match mac {
        Some(Ok(mac)) => s.push_str(&format!("    iifname \"{tap}\" ether saddr != {mac} drop\n")),
        Some(Err(_)) => s.push_str(&format!("    iifname \"{tap}\" drop\n")),
        None => {}
    }
    s.push_str(&format!("    iifname \"{tap}\" ip saddr != {{ {guest_ip}, 0.0.0.0 }} drop\n"));
    s.push_str(&format!("    iifname \"{tap}\" arp saddr ip != {{ {guest_ip}, 0.0.0.0 }} drop\n"));
    let v6: &[&str] =
        if guest_ip == MASQUERADE_GUEST { &[MASQUERADE_GUEST6, "fe80::/10", "::"] } else { &["fe80::/10", "::"] };
    s.push_str(&format!("    iifname \"{tap}\" ip6 saddr != {{ {} }} drop\n", v6.join(", ")));
    s.push_str("  }\n}\n");
    s
}

/// Everything a VMI's networking made: its veth (removed first: a namespace is dismantled by the
/// kernel later, its links with it), its namespace, and the taps still in the host namespace
/// (`leftover_taps`, as listed, or the plan's own).
pub fn pod_remove(node_namespace: &str, plan: &PodPlan, leftover_taps: &[String]) -> Vec<Step> {
    let mut steps = vec![
        Step::ip(Some(node_namespace), &format!("link del {}", plan.veth)).tolerated(),
        Step::ip(None, &format!("netns del {}", plan.netns)).tolerated(),
    ];
    let mut taps: Vec<&String> = plan.nics.iter().map(|n| &n.tap).collect();
    taps.extend(leftover_taps.iter().filter(|t| !taps.contains(t)).collect::<Vec<_>>());
    for tap in taps {
        steps.push(Step::ip(None, &format!("link del {tap}")).tolerated());
    }
    steps
}

/// nftables in a masquerade pod: the guest's traffic leaves as the pod's, and what reaches the
/// pod on a forwarded port (every port when none is listed) goes to the guest.
pub fn masquerade_rules(ports: &[(String, u16)]) -> String {
    let forward = |family: &str, guest: &str| -> Vec<String> {
        if ports.is_empty() {
            return vec![format!("iifname \"{POD_LINK}\" dnat {family} to {guest}")];
        }
        ports
            .iter()
            .map(|(proto, port)| {
                format!("iifname \"{POD_LINK}\" {} dport {port} dnat {family} to {guest}", proto.to_lowercase())
            })
            .collect()
    };
    let v4 = forward("ip", &MASQUERADE_GUEST.to_string());
    let v6 = forward("ip6", MASQUERADE_GUEST6);
    let mut s = String::from("table inet converge\ndelete table inet converge\ntable inet converge {\n");
    s.push_str("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    for rule in v4.iter().chain(v6.iter()) {
        s.push_str(&format!("    {rule}\n"));
    }
    s.push_str("  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    s.push_str(&format!("    oifname \"{POD_LINK}\" ip saddr {MASQUERADE_GUEST} masquerade\n"));
    s.push_str(&format!("    oifname \"{POD_LINK}\" ip6 saddr {MASQUERADE_GUEST6} masquerade\n"));
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::nad::BridgeNetwork;
    use crate::network::plan::Nic;
    use std::net::Ipv4Addr;

    fn plan(attachment: Attachment) -> PodPlan {
        PodPlan {
            vmi_uid: "u".into(),
            netns: "cvp-1".into(),
            veth: "vp1".into(),
            pod_ip: Some(Ipv4Addr::new(10, 244, 0, 5)),
            nics: vec![Nic { name: "default".into(), mac: None, tap: "tp01".into(), attachment }],
        }
    }

    fn lines(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::display).collect()
    }

    #[test]
    fn node_namespace_routes_never_fall_through() {
        let cfg = NetworkConfig { egress: false, ..NetworkConfig::default() };
        let l = lines(&node_create(&cfg));
        assert!(l.contains(&"ip netns exec converge ip route replace unreachable default".to_string()), "{l:#?}");
        assert!(l.contains(&"ip netns exec converge ip route replace unreachable 10.96.0.0/16".to_string()));
        assert!(!l.iter().any(|s| s.contains("default via")));
        let with = lines(&node_refresh(&NetworkConfig::default()));
        assert!(with.contains(&"ip netns exec converge ip route replace default via 169.254.244.1".to_string()));
    }

    #[test]
    fn bridge_binding_moves_the_tap_into_the_pod() {
        let p = plan(Attachment::PodBridge);
        let before = lines(&pod_before_start(&NetworkConfig::default(), &p, true));
        assert_eq!(before[0], "ip netns exec converge ip link del vp1");
        assert_eq!(before[1], "ip netns del cvp-1");
        assert!(before.contains(&"ip tuntap add dev tp01 mode tap".to_string()));
        assert!(before.contains(&"ip netns exec cvp-1 ip link set eth0 master k6t-eth0 up".to_string()));
        assert!(!before.iter().any(|l| l.contains("10.244.0.5")), "the pod keeps no address: the guest has it");
        let after = lines(&pod_after_start(&p));
        assert_eq!(after[0], "ip link set tp01 netns cvp-1");
        assert_eq!(after[1], "ip netns exec cvp-1 nft -f -", "the guard is up before the tap joins");
        assert_eq!(after[2], "ip netns exec cvp-1 ip link set tp01 master k6t-eth0 up");
    }

    #[test]
    fn guests_cannot_spoof_their_source() {
        let rules = guard_rules("tp01", Some("02:00:00:AB:cd:01"), Ipv4Addr::new(10, 244, 0, 5));
        assert!(rules.contains("iifname \"tp01\" ether saddr != 02:00:00:ab:cd:01 drop"), "{rules}");
        assert!(rules.contains("ip saddr != { 10.244.0.5, 0.0.0.0 } drop"), "{rules}");
        assert!(rules.contains("arp saddr ip != { 10.244.0.5, 0.0.0.0 } drop"), "{rules}");
        let masq = guard_rules("tp01", None, MASQUERADE_GUEST);
        assert!(masq.contains("ip6 saddr != { fd10:0:2::2, fe80::/10, :: } drop"), "{masq}");
        assert!(!masq.contains("ether saddr"), "no MAC known, no MAC rule");
        let bad = guard_rules("tp01", Some("02:00:00:00:00:01 drop; flush ruleset"), MASQUERADE_GUEST);
        assert!(bad.contains("iifname \"tp01\" drop") && !bad.contains("flush"), "{bad}");
        // The kernel takes the ruleset (root only: where it can be checked).
        let check =
            std::process::Command::new("nft").args(["-c", "-f", "-"]).stdin(std::process::Stdio::piped()).spawn();
        if let (Ok(mut child), true) = (check, crate::node::running_as_root()) {
            use std::io::Write;
            let text = rules.replace("delete table bridge converge_guard\n", "");
            let _ = child.stdin.take().map(|mut i| i.write_all(text.as_bytes()));
            assert!(child.wait().is_ok_and(|s| s.success()), "nft -c accepts:\n{text}");
        }
    }

    #[test]
    fn masquerade_forwards_listed_ports_only() {
        let rules = masquerade_rules(&[("TCP".into(), 22)]);
        assert!(rules.contains("iifname \"eth0\" tcp dport 22 dnat ip to 10.0.2.2"), "{rules}");
        assert!(rules.contains("ip saddr 10.0.2.2 masquerade"));
        assert!(masquerade_rules(&[]).contains("iifname \"eth0\" dnat ip to 10.0.2.2"));
    }

    #[test]
    fn host_bridge_with_a_vlan() {
        let mut p = plan(Attachment::HostBridge(BridgeNetwork { bridge: "br1".into(), vlan: Some(7) }));
        p.pod_ip = None;
        let l = lines(&pod_before_start(&NetworkConfig::default(), &p, true));
        assert!(l.contains(&"bridge vlan add dev tp01 vid 7 pvid untagged".to_string()), "{l:#?}");
        assert!(!l.iter().any(|s| s.contains("netns add")), "no pod namespace without the pod network");
        let isolated = lines(&pod_before_start(&NetworkConfig::default(), &p, false));
        assert!(!isolated.iter().any(|s| s.contains("vlan")), "no 802.1Q where the kernel has none: {isolated:#?}");
    }
}
