//! Pod networking on the node: every VMI gets a network namespace of its own (its "pod") on a
//! bridge inside one namespace Converge owns (the node namespace), with the pod's address leased
//! from the store. Bindings follow KubeVirt: `bridge` (the guest takes the pod's address by
//! DHCP) and `masquerade` (the guest at 10.0.2.2 behind NAT in the pod namespace). Secondary
//! networks come from NetworkAttachmentDefinitions naming a host Linux bridge, with VLANs.
//!
//! Everything that touches the kernel is a list of [`host::Step`]s run by a [`host::NetworkHost`];
//! the plans themselves are pure and unit-tested.

pub mod cidr;
pub mod counters;
pub mod dhcp;
pub mod host;
pub mod ipam;
pub mod nad;
pub mod names;
pub mod pci;
pub mod plan;
pub mod pod_addresses;
pub mod services;
pub mod setup;
pub mod vlans;

pub use cidr::Cidr;

/// What the node's networking is built from.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The cluster's pod addresses: every node's pod range is a slice of it (`--pod-cidr`).
    pub cluster_cidr: Cidr,
    /// This node's pod addresses (its Node's `spec.podCIDR`, given by the controllers); the
    /// first address is the node bridge's (every pod's gateway).
    pub pod_cidr: Cidr,
    /// Service cluster IPs: routed into the node namespace, unreachable there unless a rule matches.
    pub service_cidr: Cidr,
    /// The /30 between the host and the node namespace: host `.1`, node namespace `.2`.
    pub transit: Cidr,
    /// The network namespace Converge owns.
    pub node_namespace: String,
    /// Route pod traffic to the outside through the host, masqueraded (sets the host's
    /// `net.ipv4.ip_forward`). Without it the node namespace's default route is unreachable.
    pub egress: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            cluster_cidr: Cidr::parse("10.244.0.0/16").unwrap_or(Cidr::ZERO),
            pod_cidr: Cidr::parse("10.244.0.0/24").unwrap_or(Cidr::ZERO),
            service_cidr: Cidr::parse("10.96.0.0/16").unwrap_or(Cidr::ZERO),
            transit: Cidr::parse("169.254.244.0/30").unwrap_or(Cidr::ZERO),
            node_namespace: "converge".into(),
            egress: true,
        }
    }
}

impl NetworkConfig {
    /// The pods' gateway: the node bridge's address.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.pod_cidr.nth(1)
    }
    pub fn host_transit(&self) -> std::net::Ipv4Addr {
        self.transit.nth(1)
    }
    pub fn node_transit(&self) -> std::net::Ipv4Addr {
        self.transit.nth(2)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("interface {0:?}: {1}")]
    Interface(String, String),
    #[error("network {0:?}: {1}")]
    Network(String, String),
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error("DHCP responder: {0}")]
    Dhcp(String),
    #[error(transparent)]
    PodAddresses(#[from] pod_addresses::PodAddressError),
}
