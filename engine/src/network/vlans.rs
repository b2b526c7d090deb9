//! VLANs on a host bridge. Where the kernel has bridge VLAN filtering, a guest's port is an
//! untagged member of its VLAN (802.1Q on the bridge's uplinks). Where it has not (no
//! CONFIG_BRIDGE_VLAN_FILTERING, as on this project's CI kernels), the node keeps each VLAN's
//! ports apart with nftables bridge-family rules: ports of one VLAN reach only each other, and
//! frames leave by the bridge's other ports untagged.

use std::collections::BTreeMap;

use super::host::Step;

/// The probe: can a bridge filter VLANs here? Run in the node namespace; an error means no.
pub fn probe(node_namespace: &str) -> Vec<Step> {
    vec![
        Step::ip(Some(node_namespace), "link add cvvlanprobe type bridge vlan_filtering 1"),
        Step::ip(Some(node_namespace), "link del cvvlanprobe"),
    ]
}

/// tap → (bridge, VLAN id), for every guest port on a VLAN.
pub type VlanPorts = BTreeMap<String, (String, u16)>;

/// The isolation table for `ports` (an empty table when there are none).
pub fn isolation_rules(table: &str, ports: &VlanPorts) -> String {
    let mut groups: BTreeMap<(&str, u16), Vec<&str>> = BTreeMap::new();
    for (tap, (bridge, vlan)) in ports {
        groups.entry((bridge.as_str(), *vlan)).or_default().push(tap.as_str());
    }
    let mut s = format!("table bridge {table}\ndelete table bridge {table}\ntable bridge {table} {{\n");
    s.push_str("  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    for members in groups.values() {
        let set = members.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ");
        s.push_str(&format!("    iifname {{ {set} }} oifname != {{ {set} }} drop\n"));
        s.push_str(&format!("    oifname {{ {set} }} iifname != {{ {set} }} drop\n"));
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vlan_reaches_only_itself() {
        let mut ports = VlanPorts::new();
        ports.insert("tpa".into(), ("br1".into(), 10));
        ports.insert("tpb".into(), ("br1".into(), 10));
        ports.insert("tpc".into(), ("br1".into(), 20));
        let rules = isolation_rules("cv", &ports);
        assert!(rules.contains("iifname { \"tpa\", \"tpb\" } oifname != { \"tpa\", \"tpb\" } drop"), "{rules}");
        assert!(rules.contains("oifname { \"tpc\" } iifname != { \"tpc\" } drop"), "{rules}");
        assert!(!isolation_rules("cv", &VlanPorts::new()).contains("drop"));
    }
}
