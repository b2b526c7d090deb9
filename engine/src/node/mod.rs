//! The node agent: registers this host as a Node, and makes the VMIs scheduled to it real under
//! libvirt — disks, domain, lifecycle — reporting back through VMI status. It never decides
//! policy; it only follows the objects in the cluster (see `agent.rs`).

pub mod disks;
pub mod distribution;
pub mod host;
pub mod images;
pub mod network;
pub mod qcow2;
pub mod register;
pub mod registry;
mod volumes;

mod agent;
pub mod console_log;
mod launch_timing;
pub mod migration;
mod persist;
mod routes;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::controllers::Key;
use crate::hypervisor::Hypervisor;
use crate::kinds;
use crate::launcher::build::Accel;
use crate::launcher::probe::{probe_kvm, KvmProbe};
use crate::meta;
use crate::store::UpdateMode;
use crate::worker::WorkQueue;

pub use agent::domain_name_of;
pub use volumes::secret_names;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name; the host name by default.
    pub name: String,
    /// Holds `vmis/<uid>/` (sockets, console log, overlays) and `images/`.
    pub state_dir: PathBuf,
    /// Run guests under TCG when KVM is unusable (KubeVirt's `useEmulation`).
    pub allow_emulation: bool,
    /// QEMU's translation-block cache per guest under TCG.
    pub tb_cache_mib: u64,
    /// Prepended to every domain name (tests sharing one libvirtd use it).
    pub domain_prefix: String,
    pub heartbeat: Duration,
    pub resync: Duration,
    /// Skip the KVM probe and use this (tests that run where the answer is known).
    pub accel_override: Option<Accel>,
    /// Registries pulled from over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// The pod network; without it, pod interfaces are QEMU's user-mode network.
    pub network: Option<crate::network::NetworkConfig>,
    /// What of this host guests may reach (hostDisk directories, NAD bridges, SR-IOV functions):
    /// the node checks again what admission let through. Nothing unless the admin says.
    pub host_access: crate::host_access::HostAccess,
    /// The port this node's agent serves the API server on (consoles, VNC, pause), published in
    /// the Node's `daemonEndpoints.kubeletEndpoint.Port`; 0 when the API runs the agent itself.
    pub serving_port: u16,
    /// The Node is a kubelet's (a Kubernetes cluster): the agent never registers it or posts its
    /// conditions, it only adds its labels and devices.
    pub kubelet_owns_node: bool,
    /// Where other nodes' libvirtds send guests to this node; `None`: it takes part in no
    /// live migration.
    pub migration: Option<migration::MigrationConfig>,
}

impl NodeConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> NodeConfig {
        let hostname = host::gather().hostname;
        NodeConfig {
            name: if hostname.is_empty() { "localhost".into() } else { hostname.to_lowercase() },
            state_dir: state_dir.into(),
            allow_emulation: true,
            tb_cache_mib: 32,
            domain_prefix: String::new(),
            heartbeat: Duration::from_secs(20),
            resync: Duration::from_secs(15),
            accel_override: None,
            insecure_registries: vec![],
            network: None,
            host_access: crate::host_access::HostAccess::default(),
            serving_port: 0,
            kubelet_owns_node: false,
            migration: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node state directory {0}: {1}")]
    StateDir(String, std::io::Error),
    #[error("registering the Node: {0}")]
    Register(String),
    #[error("connecting to libvirt: {0}")]
    Libvirt(String),
    #[error(transparent)]
    Images(#[from] images::ImageError),
    #[error("setting up the pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
}

/// How often the guests' console logs are looked at for rotation: a guest writing at a serial
/// port's full speed (~11 KiB/s at 115200 baud) adds ~110 KiB in that time.
const CONSOLE_LOG_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// What the agent's workers share.
pub(crate) struct Shared {
    pub cluster: Arc<dyn Cluster>,
    pub hv: Arc<dyn Hypervisor>,
    pub tool: Arc<dyn disks::DiskTool>,
    pub images: images::ImageStore,
    pub config: NodeConfig,
    pub accel: Accel,
    /// Why KVM is not used, for the SoftwareEmulation condition.
    pub emulation_reason: Option<String>,
    pub node_uid: String,
    pub qemu_owner: Option<(u32, u32)>,
    /// VMI uid → when its graceful shutdown must end.
    pub shutdown_deadlines: Mutex<HashMap<String, Instant>>,
    pub queue: Arc<WorkQueue<Key>>,
    /// VMI uid → consecutive image pull failures (ErrImagePull, then ImagePullBackOff).
    pub pull_failures: Mutex<HashMap<String, volumes::PullFailure>>,
    /// VMI uid → files of block-mode claims attached through loop devices for it.
    pub loop_backed: Mutex<HashMap<String, Vec<PathBuf>>>,
    pub net: Option<Arc<network::NodeNetwork>>,
    /// Domain name → (VMI uid, domain UUID) of each domain this agent started: a sync finds it
    /// by UUID without reading its XML (which libvirtd answers slowly while it starts others).
    pub started_domains: Mutex<HashMap<String, (String, String)>>,
    /// Domain starts in flight at once (see `agent::START_SLOTS`).
    pub start_slots: tokio::sync::Semaphore,
    /// Started domains to define once no start is in flight (see `persist`).
    pub pending_persist: persist::PendingPersist,
    /// Guests this node is migrating away.
    pub outgoing: migration::Outgoing,
}

pub struct NodeAgent {
    pub accel: Accel,
    pub node_name: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the API's subresources ask of the node that runs a VMI.
impl NodeAgent {
    pub fn images(&self) -> &images::ImageStore {
        &self.shared.images
    }
    pub fn serial_socket(&self, vmi_uid: &str) -> PathBuf {
        crate::launcher::build::serial_socket(&self.shared.config.state_dir.join("vmis").join(vmi_uid))
    }
    pub fn serial_log(&self, vmi_uid: &str) -> PathBuf {
        crate::launcher::build::serial_log(&self.shared.config.state_dir.join("vmis").join(vmi_uid))
    }
    /// The guest's console log so far (both generations), cut to `window`.
    pub async fn console_log(&self, vmi_uid: &str, window: console_log::Window) -> std::io::Result<Vec<u8>> {
        let log = self.serial_log(vmi_uid);
        tokio::task::spawn_blocking(move || console_log::read(&log, window)).await.map_err(std::io::Error::other)?
    }
    pub fn vnc_socket(&self, vmi_uid: &str) -> PathBuf {
        crate::launcher::build::vnc_socket(&self.shared.config.state_dir.join("vmis").join(vmi_uid))
    }
    /// The pod addresses this node leased: (address, `namespace/name` of the VMI).
    pub fn pod_addresses(&self) -> Vec<(std::net::Ipv4Addr, String)> {
        self.shared.net.as_ref().map_or_else(Vec::new, |n| n.addresses.leases())
    }
    /// DHCP responders running (one per VMI on the pod network).
    pub fn dhcp_responders(&self) -> usize {
        self.shared.net.as_ref().map_or(0, |n| n.dhcp.count())
    }
    pub fn domain_name(&self, namespace: &str, name: &str) -> String {
        agent::domain_name_of(&self.shared.config.domain_prefix, namespace, name)
    }
    /// The statistics of the guests this node runs: (namespace, VMI name, its domain's figures).
    /// Domains of other agents or not Converge's are left out.
    pub async fn guest_stats(&self) -> Vec<(String, String, crate::hypervisor::stats::DomainStats)> {
        let hv = Arc::clone(&self.shared.hv);
        let prefix = self.shared.config.domain_prefix.clone();
        let node_uid = self.shared.node_uid.clone();
        let pod_network = self.shared.net.as_ref().map(|n| n.config.node_namespace.clone());
        let read = tokio::task::spawn_blocking(move || {
            let stats = hv.stats()?;
            Ok::<_, crate::hypervisor::HypervisorError>(
                stats
                    .into_iter()
                    .filter_map(|mut s| {
                        let (namespace, name) = agent::key_of_domain(&prefix, &s.name)?;
                        // One read of the XML: whose domain it is, and the VMI's names for its devices.
                        let xml = hv.xml(&s.name).ok()?;
                        if crate::hypervisor::node_uid_from_xml(&xml).as_deref() != Some(node_uid.as_str()) {
                            return None;
                        }
                        let uid = crate::hypervisor::vmi_uid_from_xml(&xml)?;
                        if let Some(node_namespace) = &pod_network {
                            network::count_pod_taps(&mut s, node_namespace, &uid);
                        }
                        crate::hypervisor::stats::name_devices(&mut s, &xml);
                        Some((namespace, name, s))
                    })
                    .collect(),
            )
        });
        match read.await {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading guests' statistics");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Runs a hypervisor call for the domain of `namespace/name` off the async threads.
    pub async fn with_domain<T: Send + 'static>(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&dyn Hypervisor, &str) -> crate::hypervisor::HvResult<T> + Send + 'static,
    ) -> Result<T, crate::hypervisor::HypervisorError> {
        let hv = Arc::clone(&self.shared.hv);
        let domain = self.domain_name(namespace, name);
        let key = (namespace.to_string(), name.to_string());
        let queue = Arc::clone(&self.shared.queue);
        let result = tokio::task::spawn_blocking(move || f(hv.as_ref(), &domain))
            .await
            .map_err(|e| crate::hypervisor::HypervisorError::Libvirt(e.to_string()))?;
        // The agent reports what changed without waiting for libvirt's event.
        queue.add(key);
        result
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid QEMU runs as under `qemu:///system` (Debian: libvirt-qemu), so its sockets and
/// disks can live in directories Converge makes.
pub fn qemu_owner() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("libvirt-qemu").ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// QEMU (another user) must reach files below `dir`. An ancestor closed to others is opened to
/// QEMU's group alone (its group becomes QEMU's where it was root's, plus the group traverse
/// bit), never to the world: the data dir holds the database and the signing key.
pub(crate) fn allow_traverse(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let qemu_gid = qemu_owner().map(|(_, gid)| gid);
    for ancestor in dir.ancestors() {
        let Ok(m) = std::fs::metadata(ancestor) else { continue };
        let mode = m.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        match qemu_gid {
            Some(gid) if m.gid() == gid || m.gid() == 0 => {
                if m.gid() != gid {
                    std::os::unix::fs::chown(ancestor, None, Some(gid))?;
                }
                if mode & 0o010 == 0 {
                    std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o010))?;
                }
            }
            // QEMU runs as this user (qemu:///session) or the group is someone else's: leave it.
            _ => {}
        }
    }
    Ok(())
}

/// Registers (or refreshes) the Node and posts its status; a write that lost a race with another
/// writer of the Node (the pod range allocator, an admin's cordon) is redone on the new version.
async fn register(
    cluster: &dyn Cluster,
    config: &NodeConfig,
    accel: Accel,
    hv_version: &str,
) -> Result<Value, NodeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match register_once(cluster, config, accel, hv_version).await {
            Err(e) if e.code == 409 && attempt < 5 => continue,
            other => return other.map_err(|e| NodeError::Register(e.to_string())),
        }
    }
}

async fn register_once(
    cluster: &dyn Cluster,
    config: &NodeConfig,
    accel: Accel,
    hv_version: &str,
) -> crate::ApiResult<Value> {
    let facts = host::gather();
    let nf = register::NodeFacts {
        name: &config.name,
        host: &facts,
        accel,
        emulation_allowed: config.allow_emulation,
        hypervisor_version: hv_version,
        serving_port: config.serving_port,
    };
    if config.kubelet_owns_node {
        return join_kubelets_node(cluster, config, &nf).await;
    }
    let now = meta::now_rfc3339();
    let endpoint = migration::endpoint(config);
    let node = match cluster.get(&kinds::NODE, "", &config.name).await? {
        Some(mut existing) => {
            let labels = meta::at_mut(&mut existing, &["metadata", "labels"]);
            if let (Some(map), Some(new)) = (labels.as_object_mut(), register::labels(&nf).as_object()) {
                map.remove(crate::controllers::scheduler::EMULATION_LABEL);
                map.extend(new.clone());
            }
            register::set_migration_endpoint(&mut existing, endpoint.as_ref());
            cluster.update(&kinds::NODE, existing, UpdateMode::Main).await?
        }
        None => {
            let mut node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": config.name, "labels": register::labels(&nf)},
                "spec": {},
            });
            register::set_migration_endpoint(&mut node, endpoint.as_ref());
            cluster.create(&kinds::NODE, node).await?
        }
    };
    let status = register::merge_heartbeat(node.get("status"), register::status(&nf, &now));
    let mut with_status = node.clone();
    with_status["status"] = status;
    cluster.update(&kinds::NODE, with_status, UpdateMode::Status).await
}

/// A kubelet's Node: labelled and given this node's devices, nothing else touched.
async fn join_kubelets_node(
    cluster: &dyn Cluster,
    config: &NodeConfig,
    nf: &register::NodeFacts<'_>,
) -> crate::ApiResult<Value> {
    let Some(mut node) = cluster.get(&kinds::NODE, "", &config.name).await? else {
        return Err(crate::ApiError::not_found_message(format!(
            "Node {} does not exist: on a Kubernetes cluster the node's kubelet registers it (--node-name names it)",
            config.name
        )));
    };
    if let Some(labelled) = register::joined_labels(&node, nf) {
        node = cluster.update(&kinds::NODE, labelled, UpdateMode::Main).await?;
    }
    if let Some(with_devices) = register::joined_status(&node, nf.accel) {
        node = cluster.update(&kinds::NODE, with_devices, UpdateMode::Status).await?;
    }
    Ok(node)
}

/// How often a node waiting for its pod range looks again, and says so in its log.
const POD_RANGE_POLL: Duration = Duration::from_millis(250);
const POD_RANGE_NAG: Duration = Duration::from_secs(10);

/// Waits until the controllers give this Node its pod range (`spec.podCIDR`), inside the
/// cluster's; answers it with the Node as it then reads.
async fn await_pod_range(
    cluster: &dyn Cluster,
    name: &str,
    cluster_cidr: crate::network::Cidr,
) -> Result<(crate::network::Cidr, Value), NodeError> {
    let started = Instant::now();
    let mut nagged = Duration::ZERO;
    loop {
        let node = cluster.get(&kinds::NODE, "", name).await.map_err(|e| NodeError::Register(e.message))?;
        let range = node.as_ref().and_then(|n| n.pointer("/spec/podCIDR")).and_then(Value::as_str);
        if let (Some(node), Some(text)) = (&node, range) {
            let cidr = crate::network::Cidr::parse(text)
                .map_err(|e| NodeError::Register(format!("the Node's spec.podCIDR {text:?}: {e}")))?;
            if !cluster_cidr.covers(&cidr) {
                return Err(NodeError::Register(format!(
                    "the Node's spec.podCIDR {cidr} is outside the cluster's pod range {cluster_cidr} (--pod-cidr)"
                )));
            }
            return Ok((cidr, node.clone()));
        }
        if started.elapsed() >= nagged + POD_RANGE_NAG {
            nagged = started.elapsed();
            tracing::warn!(node = name, "waiting for the controllers to give this node its pod range (spec.podCIDR)");
        }
        tokio::time::sleep(POD_RANGE_POLL).await;
    }
}

/// Connects to libvirt at `uri` and starts the agent on it.
pub async fn start_on_libvirt(
    cluster: Arc<dyn Cluster>,
    config: NodeConfig,
    uri: &str,
) -> Result<NodeAgent, NodeError> {
    use crate::hypervisor::Libvirt;
    let owned = uri.to_string();
    let libvirt = tokio::task::spawn_blocking(move || Libvirt::open(&owned))
        .await
        .map_err(|e| NodeError::Libvirt(e.to_string()))?
        .map_err(|e| NodeError::Libvirt(format!("{e} (is libvirtd running? `libvirtd -d` as root)")))?;
    let version = libvirt.version();
    let hv: Arc<dyn Hypervisor> = Arc::new(libvirt);
    start(cluster, config, hv, Arc::new(disks::SystemDiskTool), &version).await
}

/// Probes KVM, registers the Node and starts reconciling the VMIs scheduled to it.
pub async fn start(
    cluster: Arc<dyn Cluster>,
    config: NodeConfig,
    hv: Arc<dyn Hypervisor>,
    tool: Arc<dyn disks::DiskTool>,
    hv_version: &str,
) -> Result<NodeAgent, NodeError> {
    let net_host: Arc<dyn crate::network::host::NetworkHost> = Arc::new(crate::network::host::SystemNetworkHost);
    start_with(cluster, config, hv, tool, hv_version, net_host).await
}

/// [`start`], with the network's OS boundary given (a recording one in unit tests).
pub async fn start_with(
    cluster: Arc<dyn Cluster>,
    config: NodeConfig,
    hv: Arc<dyn Hypervisor>,
    tool: Arc<dyn disks::DiskTool>,
    hv_version: &str,
    net_host: Arc<dyn crate::network::host::NetworkHost>,
) -> Result<NodeAgent, NodeError> {
    let state_err = |e: std::io::Error| NodeError::StateDir(config.state_dir.display().to_string(), e);
    std::fs::create_dir_all(config.state_dir.join("vmis")).map_err(state_err)?;
    allow_traverse(&config.state_dir.join("vmis")).map_err(state_err)?;
    let images = images::ImageStore::open(config.state_dir.join("images"))?;
    allow_traverse(&config.state_dir.join("images")).map_err(state_err)?;

    let (accel, emulation_reason) = match config.accel_override {
        Some(a) => (a, (a == Accel::Tcg).then(|| "software emulation chosen by configuration".to_string())),
        None => match tokio::task::spawn_blocking(|| probe_kvm(Duration::from_secs(2))).await {
            Ok(KvmProbe::Works) => (Accel::Kvm, None),
            Ok(KvmProbe::Unusable(why)) => (Accel::Tcg, Some(why)),
            Err(e) => (Accel::Tcg, Some(format!("the KVM probe did not finish: {e}"))),
        },
    };
    if let Some(why) = &emulation_reason {
        if config.allow_emulation {
            tracing::warn!(reason = %why, "KVM is unusable on this node: guests run under software emulation (TCG)");
        } else {
            tracing::warn!(reason = %why, "KVM is unusable and emulation is not allowed: no VMI can run on this node");
        }
    }
    let mut node = register(cluster.as_ref(), &config, accel, hv_version).await?;
    let net = match &config.network {
        Some(cfg) => {
            let (pod_cidr, registered) = await_pod_range(cluster.as_ref(), &config.name, cfg.cluster_cidr).await?;
            node = registered;
            let cfg = crate::network::NetworkConfig { pod_cidr, ..cfg.clone() };
            let addresses = crate::network::pod_addresses::PodAddresses::open(config.state_dir.join("pod-addresses"))
                .map_err(crate::network::NetworkError::from)?;
            let net = Arc::new(network::NodeNetwork::new(cfg, net_host, addresses));
            network::setup_node(&net).await?;
            Some(net)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        node_uid: meta::uid(&node).to_string(),
        cluster: Arc::clone(&cluster),
        hv,
        tool,
        images,
        accel,
        emulation_reason,
        qemu_owner: qemu_owner(),
        shutdown_deadlines: Mutex::new(HashMap::new()),
        pull_failures: Mutex::new(HashMap::new()),
        loop_backed: Mutex::new(HashMap::new()),
        started_domains: Mutex::new(HashMap::new()),
        start_slots: tokio::sync::Semaphore::new(agent::START_SLOTS),
        pending_persist: persist::PendingPersist::default(),
        outgoing: migration::Outgoing::default(),
        queue: WorkQueue::new(),
        config: config.clone(),
        net,
    });
    if let Some(net) = &shared.net {
        let live: Vec<Value> = cluster
            .list(&kinds::VIRTUAL_MACHINE_INSTANCE, None)
            .await
            .map_err(|e| NodeError::Register(e.message))?
            .into_iter()
            .filter(|v| {
                // A guest migrating here holds its pod here already.
                let incoming = crate::migration::in_flight(v).and_then(crate::migration::target_node);
                v.pointer("/status/nodeName").and_then(Value::as_str) == Some(config.name.as_str())
                    || incoming == Some(config.name.as_str())
            })
            .collect();
        network::sweep_orphans(net, &live).await;
    }
    let mut tasks = agent::spawn(Arc::clone(&shared));
    let agent_shared = Arc::clone(&shared);
    let heartbeat_config = config.clone();
    let hv_version = hv_version.to_string();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat_config.heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = register(cluster.as_ref(), &heartbeat_config, accel, &hv_version).await {
                tracing::warn!(error = %e, "node heartbeat failed");
            }
        }
    }));
    let vmis_dir = config.state_dir.join("vmis");
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(CONSOLE_LOG_CHECK);
        loop {
            tick.tick().await;
            let dir = vmis_dir.clone();
            let _ = tokio::task::spawn_blocking(move || console_log::rotate_all(&dir, console_log::LOG_LIMIT)).await;
        }
    }));
    Ok(NodeAgent { accel, node_name: config.name, shared: agent_shared, tasks })
}

#[cfg(test)]
mod tests;
