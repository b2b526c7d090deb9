//! What a VMI's interfaces become on this node: pure, from its spec, the networks it names and
//! the pod address leased for it.

use std::net::Ipv4Addr;

use super::nad::{BridgeNetwork, NadNetwork, SriovNetwork};
use super::{names, NetworkError};
use crate::launcher::spec::{InterfaceSpec, VmiSpec};

/// Where an interface's tap is plugged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// The pod network, `bridge` binding: the guest owns the pod's address.
    PodBridge,
    /// The pod network, `masquerade` binding: the guest at 10.0.2.2 behind NAT; these
    /// (protocol, port) pairs are forwarded, or every port when empty.
    PodMasquerade { ports: Vec<(String, u16)> },
    /// A host Linux bridge from a NetworkAttachmentDefinition.
    HostBridge(BridgeNetwork),
    /// An SR-IOV virtual function passed to the guest (`sriov` binding on an SR-IOV network).
    Sriov(SriovNetwork),
    /// QEMU's user-mode network (`slirp`), inside QEMU: no tap.
    User,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: Option<String>,
    pub tap: String,
    pub attachment: Attachment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub vmi_uid: String,
    pub netns: String,
    pub veth: String,
    /// The pod's address, when an interface is on the pod network.
    pub pod_ip: Option<Ipv4Addr>,
    pub nics: Vec<Nic>,
}

/// The guest's side of a masquerade binding.
pub const MASQUERADE_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const MASQUERADE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const MASQUERADE_GUEST6: &str = "fd10:0:2::2";
pub const MASQUERADE_GATEWAY6: &str = "fd10:0:2::1";
/// The pod bridge's own address in the bridge binding, as KubeVirt gives it: the DHCP
/// responder's source, never routed.
pub const BRIDGE_SERVER: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// True when some interface sits on the pod network (and so needs a pod address).
pub fn uses_pod_network(spec: &VmiSpec) -> bool {
    spec.domain.devices.interfaces.iter().any(|i| {
        let net = spec.networks.iter().find(|n| n.name == i.name);
        net.is_some_and(|n| n.pod.is_some()) && i.slirp.is_none()
    })
}

/// Every multus network name the spec refers to, as written.
pub fn multus_networks(spec: &VmiSpec) -> Vec<String> {
    spec.networks.iter().filter_map(|n| n.multus.as_ref().map(|m| m.network_name.clone())).collect()
}

/// Plans every interface. `nad` resolves a multus network name to its bridge (or why not).
pub fn plan(
    node_namespace: &str,
    vmi_uid: &str,
    spec: &VmiSpec,
    pod_ip: Option<Ipv4Addr>,
    nad: &dyn Fn(&str) -> Result<NadNetwork, String>,
) -> Result<PodPlan, NetworkError> {
    let mut nics = vec![];
    for (index, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let err = |m: &str| NetworkError::Interface(iface.name.clone(), m.to_string());
        let network =
            spec.networks.iter().find(|n| n.name == iface.name).ok_or_else(|| err("no network of that name"))?;
        let attachment = if iface.slirp.is_some() {
            Attachment::User
        } else if network.pod.is_some() {
            pod_attachment(iface).map_err(|m| err(&m))?
        } else if let Some(multus) = &network.multus {
            if iface.masquerade.is_some() {
                return Err(err("masquerade binding is only allowed on the pod network"));
            }
            let found = nad(&multus.network_name).map_err(|m| NetworkError::Network(multus.network_name.clone(), m))?;
            match (found, iface.sriov.is_some()) {
                (NadNetwork::Sriov(vf), true) => Attachment::Sriov(vf),
                (NadNetwork::Bridge(bridge), false) => Attachment::HostBridge(bridge),
                (NadNetwork::Sriov(_), false) => return Err(err("an SR-IOV network takes the sriov binding")),
                (NadNetwork::Bridge(_), true) => {
                    return Err(err("the sriov binding needs an SR-IOV network (CNI type sriov)"))
                }
            }
        } else {
            return Err(err("the network names no source (pod or multus)"));
        };
        if matches!(attachment, Attachment::PodBridge | Attachment::PodMasquerade { .. }) && pod_ip.is_none() {
            return Err(err("the pod network has no address for this VMI"));
        }
        nics.push(Nic {
            name: iface.name.clone(),
            mac: iface.mac_address.clone(),
            tap: names::tap(node_namespace, vmi_uid, index),
            attachment,
        });
    }
    Ok(PodPlan {
        vmi_uid: vmi_uid.to_string(),
        netns: names::pod_namespace(node_namespace, vmi_uid),
        veth: names::pod_veth(vmi_uid),
        pod_ip,
        nics,
    })
}

fn pod_attachment(iface: &InterfaceSpec) -> Result<Attachment, String> {
    if iface.masquerade.is_some() {
        let mut ports = vec![];
        for p in &iface.ports {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_uppercase();
            if !["TCP", "UDP"].contains(&protocol.as_str()) {
                return Err(format!("port {}: protocol {protocol:?} is not TCP or UDP", p.port));
            }
            if p.port == 0 {
                return Err("a forwarded port must be 1-65535".into());
            }
            ports.push((protocol, p.port));
        }
        Ok(Attachment::PodMasquerade { ports })
    } else {
        Ok(Attachment::PodBridge)
    }
}

impl PodPlan {
    /// True when a pod namespace is needed (an interface on the pod network).
    pub fn has_pod(&self) -> bool {
        self.nics.iter().any(|n| matches!(n.attachment, Attachment::PodBridge | Attachment::PodMasquerade { .. }))
    }
    pub fn pod_nic(&self) -> Option<&Nic> {
        self.nics.iter().find(|n| matches!(n.attachment, Attachment::PodBridge | Attachment::PodMasquerade { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> VmiSpec {
        VmiSpec::from_vmi(&json!({ "spec": v })).unwrap()
    }

    fn nads(name: &str) -> Result<NadNetwork, String> {
        match name {
            "vlan100" | "default/vlan100" => {
                Ok(NadNetwork::Bridge(BridgeNetwork { bridge: "br1".into(), vlan: Some(100) }))
            }
            "vf" => Ok(NadNetwork::Sriov(SriovNetwork { device_id: "0000:03:02.1".into(), vlan: None })),
            _ => Err(format!("NetworkAttachmentDefinition {name:?} not found")),
        }
    }

    #[test]
    fn pod_and_multus_interfaces() {
        let s = spec(json!({
            "domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}, "ports": [{"port": 22}, {"port": 53, "protocol": "udp"}], "macAddress": "02:00:00:00:00:01"},
                {"name": "prov", "bridge": {}, "macAddress": "02:00:00:00:00:02"}
            ]}},
            "networks": [{"name": "default", "pod": {}}, {"name": "prov", "multus": {"networkName": "vlan100"}}]
        }));
        assert!(uses_pod_network(&s));
        let ip = Some(Ipv4Addr::new(10, 244, 0, 5));
        let p = plan("node", "uid-1", &s, ip, &nads).unwrap();
        assert!(p.has_pod());
        assert_eq!(
            p.nics[0].attachment,
            Attachment::PodMasquerade { ports: vec![("TCP".into(), 22), ("UDP".into(), 53)] }
        );
        assert_eq!(
            p.nics[1].attachment,
            Attachment::HostBridge(BridgeNetwork { bridge: "br1".into(), vlan: Some(100) })
        );
        assert_ne!(p.nics[0].tap, p.nics[1].tap);
        assert_eq!(p.nics[1].mac.as_deref(), Some("02:00:00:00:00:02"));
    }

    #[test]
    fn refusals_name_the_interface_or_network() {
        let missing = spec(json!({
            "domain": {"devices": {"interfaces": [{"name": "x", "bridge": {}}]}},
            "networks": [{"name": "x", "multus": {"networkName": "nope"}}]
        }));
        let e = plan("node", "u", &missing, None, &nads).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("not found"), "{e}");
        let sriov = spec(json!({
            "domain": {"devices": {"interfaces": [{"name": "x", "sriov": {}}]}},
            "networks": [{"name": "x", "multus": {"networkName": "vlan100"}}]
        }));
        assert!(plan("node", "u", &sriov, None, &nads).unwrap_err().to_string().contains("SR-IOV network"));
        let vf = spec(json!({
            "domain": {"devices": {"interfaces": [{"name": "x", "sriov": {}}]}},
            "networks": [{"name": "x", "multus": {"networkName": "vf"}}]
        }));
        let p = plan("node", "u", &vf, None, &nads).unwrap();
        let want = SriovNetwork { device_id: "0000:03:02.1".into(), vlan: None };
        assert_eq!(p.nics[0].attachment, Attachment::Sriov(want));
        let no_ip = spec(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}]
        }));
        assert!(plan("node", "u", &no_ip, None, &nads).is_err());
        let bad_port = spec(json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}, "ports": [{"port": 1, "protocol": "SCTP"}]}]}},
            "networks": [{"name": "default", "pod": {}}]
        }));
        assert!(plan("node", "u", &bad_port, Some(Ipv4Addr::LOCALHOST), &nads)
            .unwrap_err()
            .to_string()
            .contains("SCTP"));
    }

    #[test]
    fn multus_default_needs_no_pod_address() {
        let s = spec(json!({
            "domain": {"devices": {"interfaces": [{"name": "main", "bridge": {}}]}},
            "networks": [{"name": "main", "multus": {"networkName": "vlan100", "default": true}}]
        }));
        assert!(!uses_pod_network(&s));
        let p = plan("node", "u", &s, None, &nads).unwrap();
        assert!(!p.has_pod());
    }
}
