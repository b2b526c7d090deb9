//! Kernel names: links have a 15-character limit, so names derive from a hash of the VMI's uid
//! (or of the node namespace's name), never from user-chosen names.

use sha2::{Digest, Sha256};

fn short_hash(text: &str, len: usize) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))[..len].to_string()
}

/// The node bridge inside the node namespace (its own namespace, so one fixed name).
pub const NODE_BRIDGE: &str = "cvbr0";
/// The bridge inside a pod namespace between its veth (or gateway) and the guest's tap.
pub const POD_BRIDGE: &str = "k6t-eth0";
/// The pod side of the veth, as in a Kubernetes pod.
pub const POD_LINK: &str = "eth0";

/// Links between the host and the node namespace: (host side, node side).
pub fn transit_links(node_namespace: &str) -> (String, String) {
    let tag = short_hash(node_namespace, 6);
    (format!("cv{tag}h"), format!("cv{tag}n"))
}

/// nftables table in the host namespace for this node namespace (node ports, egress NAT).
pub fn host_table(node_namespace: &str) -> String {
    format!("converge_{}", short_hash(node_namespace, 6))
}

/// nftables bridge table in the host namespace keeping VLANs apart where the kernel can't.
pub fn vlan_table(node_namespace: &str) -> String {
    format!("converge_vlans_{}", short_hash(node_namespace, 6))
}

/// A VMI's pod namespace; the node's tag first, so a node can find every pod it made.
pub fn pod_namespace(node_namespace: &str, vmi_uid: &str) -> String {
    format!("{}{}", pod_namespace_prefix(node_namespace), short_hash(vmi_uid, 12))
}

pub fn pod_namespace_prefix(node_namespace: &str) -> String {
    format!("cvp{}-", short_hash(node_namespace, 6))
}

/// The node-namespace end of a pod's veth.
pub fn pod_veth(vmi_uid: &str) -> String {
    format!("vp{}", short_hash(vmi_uid, 12))
}

/// The tap of a VMI's `index`-th interface: the node's tag, the index, then the VMI's.
pub fn tap(node_namespace: &str, vmi_uid: &str, index: usize) -> String {
    format!("{}{:x}{}", tap_prefix(node_namespace), index % 16, short_hash(vmi_uid, 9))
}

/// Every tap this node makes starts so.
pub fn tap_prefix(node_namespace: &str) -> String {
    format!("t{}", short_hash(node_namespace, 4))
}

/// True when `link` is one of this VMI's taps.
pub fn is_tap_of(node_namespace: &str, vmi_uid: &str, link: &str) -> bool {
    let prefix = tap_prefix(node_namespace);
    link.len() == prefix.len() + 10 && link.starts_with(&prefix) && link.ends_with(&short_hash(vmi_uid, 9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_are_stable() {
        let uid = "3f0c6a5e-8d7c-4c43-9b53-0a1c2b3d4e5f";
        for name in
            [pod_veth(uid), tap("n", uid, 0), tap("n", uid, 15), transit_links("converge").0, transit_links("x").1]
        {
            assert!(name.len() <= 15, "{name} is too long");
        }
        assert_eq!(pod_veth(uid), pod_veth(uid));
        assert_ne!(tap("n", uid, 0), tap("n", uid, 1));
        assert!(is_tap_of("n", uid, &tap("n", uid, 3)));
        assert!(!is_tap_of("n", "other", &tap("n", uid, 3)));
        assert!(!is_tap_of("m", uid, &tap("n", uid, 3)));
        assert_ne!(pod_namespace("n", uid), pod_namespace("n", "another"));
        assert!(pod_namespace("n", uid).starts_with(&pod_namespace_prefix("n")));
    }
}
