//! `converge serve` settings: flags over environment over the config file over defaults.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML file with any of: data_dir, listen, database, tls_san, mac_range, metrics_listen, log_format,
    /// no_node, no_controllers, node_name, allow_emulation, libvirt_uri, allow_private_imports, insecure_registry,
    /// max_volume_size, pod_network, pod_cidr, node_cidr_mask_size, service_cidr, service_node_port_range,
    /// node_transit_cidr, node_netns, pod_egress, host_disk_dir, nad_bridge, sriov_device.
    #[arg(long, env = "CONVERGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the database, certificates and kubeconfig live.
    #[arg(long, env = "CONVERGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// ADDR:PORT to serve HTTPS on (default 127.0.0.1:6443).
    #[arg(long, env = "CONVERGE_LISTEN")]
    pub listen: Option<String>,
    /// postgres://… to use PostgreSQL; default: SQLite in the data dir.
    #[arg(long, env = "CONVERGE_DATABASE")]
    pub database: Option<String>,
    /// Extra names for the serving certificate (repeatable).
    #[arg(long = "tls-san", env = "CONVERGE_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// MACs handed to interfaces without one: START-END.
    #[arg(long, env = "CONVERGE_MAC_RANGE")]
    pub mac_range: Option<String>,
    /// Serve the API only: run no guests on this host.
    #[arg(long, env = "CONVERGE_NO_NODE")]
    pub no_node: bool,
    /// Run no VM, VMI, replica-set, node-lifecycle or endpoints controllers here (`converge
    /// controllers` runs them elsewhere). The storage controllers and the collector stay.
    #[arg(long, env = "CONVERGE_NO_CONTROLLERS")]
    pub no_controllers: bool,
    /// Let DataVolume imports fetch from loopback, link-local and metadata addresses.
    #[arg(long, env = "CONVERGE_ALLOW_PRIVATE_IMPORTS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_imports: Option<bool>,
    /// The largest volume a claim may ask for (e.g. 500Gi).
    #[arg(long, env = "CONVERGE_MAX_VOLUME_SIZE")]
    pub max_volume_size: Option<String>,
    /// Service cluster IPs (default 10.96.0.0/16).
    #[arg(long, env = "CONVERGE_SERVICE_CIDR")]
    pub service_cidr: Option<String>,
    /// The prefix length of each node's slice of the pod range (default 24: 254 pods a node).
    #[arg(long, env = "CONVERGE_NODE_CIDR_MASK_SIZE")]
    pub node_cidr_mask_size: Option<u8>,
    /// Node ports: LOW-HIGH (default 30000-32767).
    #[arg(long, env = "CONVERGE_SERVICE_NODE_PORT_RANGE")]
    pub service_node_port_range: Option<String>,
    /// ADDR:PORT to serve /metrics on over plain HTTP without a token, for a scraper beside the
    /// server (the API's own /metrics takes a cluster-wide token of the view role or more).
    #[arg(long, env = "CONVERGE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What the node agent is told, in `serve` and in `converge node` alike.
#[derive(Args, Debug, Default, Clone)]
pub struct NodeArgs {
    /// This host's Node name (default: the host name).
    #[arg(long, env = "CONVERGE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Prefix of this node's libvirt domain names, for several nodes (or test runs) on one libvirt.
    #[arg(long, env = "CONVERGE_DOMAIN_PREFIX")]
    pub domain_prefix: Option<String>,
    /// Run guests under software emulation (TCG) when KVM is unusable (default true).
    #[arg(long, env = "CONVERGE_ALLOW_EMULATION", num_args = 0..=1, default_missing_value = "true")]
    pub allow_emulation: Option<bool>,
    /// libvirt connection URI (default qemu:///system).
    #[arg(long, env = "CONVERGE_LIBVIRT_URI")]
    pub libvirt_uri: Option<String>,
    /// Pod network: none = QEMU's user-mode network stands in for it (no root needed);
    /// default: on when running as root.
    #[arg(long, env = "CONVERGE_POD_NETWORK", value_parser = ["on", "none"])]
    pub pod_network: Option<String>,
    /// The cluster's pod addresses (default 10.244.0.0/16); each node's share is its Node's
    /// spec.podCIDR, given by the server.
    #[arg(long, env = "CONVERGE_POD_CIDR")]
    pub pod_cidr: Option<String>,
    /// The /30 between the host and the node's network namespace (default 169.254.244.0/30).
    #[arg(long, env = "CONVERGE_NODE_TRANSIT_CIDR")]
    pub node_transit_cidr: Option<String>,
    /// The network namespace the node's pod network lives in (default converge).
    #[arg(long, env = "CONVERGE_NODE_NETNS")]
    pub node_netns: Option<String>,
    /// Route pods' traffic to the outside, masqueraded by the host (sets the host's
    /// net.ipv4.ip_forward); default true.
    #[arg(long, env = "CONVERGE_POD_EGRESS", num_args = 0..=1, default_missing_value = "true")]
    pub pod_egress: Option<bool>,
    /// Directories hostDisk volumes may lie under (repeatable); none: hostDisk is refused.
    #[arg(long = "host-disk-dir", env = "CONVERGE_HOST_DISK_DIRS", value_delimiter = ',')]
    pub host_disk_dir: Vec<PathBuf>,
    /// Host bridges NetworkAttachmentDefinitions may name (repeatable; `PREFIX*` for a prefix);
    /// none: NADs of type bridge are refused.
    #[arg(long = "nad-bridge", env = "CONVERGE_NAD_BRIDGES", value_delimiter = ',')]
    pub nad_bridge: Vec<String>,
    /// SR-IOV functions (PCI addresses, DDDD:BB:SS.F) NADs may name (repeatable).
    #[arg(long = "sriov-device", env = "CONVERGE_SRIOV_DEVICES", value_delimiter = ',')]
    pub sriov_device: Vec<String>,
    /// Registries (HOST:PORT) spoken to over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", env = "CONVERGE_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// This node's libvirtd as the other nodes' libvirtds reach it (qemu+tls://HOST/system, or
    /// qemu+unix:///system?socket=PATH for nodes on one machine): guests may migrate to this
    /// node. Without it the node takes part in no live migration.
    #[arg(long, env = "CONVERGE_MIGRATION_URI")]
    pub migration_uri: Option<String>,
    /// Where incoming guests' memory and disks arrive (default: the node's InternalIP).
    #[arg(long, env = "CONVERGE_MIGRATION_ADDRESS")]
    pub migration_address: Option<std::net::IpAddr>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    database: Option<String>,
    #[serde(default)]
    tls_san: Vec<String>,
    mac_range: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    no_node: Option<bool>,
    no_controllers: Option<bool>,
    node_name: Option<String>,
    domain_prefix: Option<String>,
    allow_emulation: Option<bool>,
    libvirt_uri: Option<String>,
    migration_uri: Option<String>,
    migration_address: Option<std::net::IpAddr>,
    allow_private_imports: Option<bool>,
    #[serde(default)]
    insecure_registry: Vec<String>,
    max_volume_size: Option<String>,
    pod_network: Option<String>,
    pod_cidr: Option<String>,
    service_cidr: Option<String>,
    service_node_port_range: Option<String>,
    node_cidr_mask_size: Option<u8>,
    node_transit_cidr: Option<String>,
    node_netns: Option<String>,
    pod_egress: Option<bool>,
    #[serde(default)]
    host_disk_dir: Vec<PathBuf>,
    #[serde(default)]
    nad_bridge: Vec<String>,
    #[serde(default)]
    sriov_device: Vec<String>,
}

pub struct Settings {
    pub server: converge_api::ServerConfig,
    pub log_format: String,
}

pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/converge");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("converge")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn read_file(path: Option<&PathBuf>) -> Result<FileConfig> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        None => Ok(FileConfig::default()),
    }
}

pub fn resolve(args: ServeArgs, log_format: Option<String>) -> Result<Settings> {
    let file = read_file(args.config.as_ref())?;
    let data_dir = args.data_dir.clone().or(file.data_dir.clone()).unwrap_or_else(default_data_dir);
    let mut server = converge_api::ServerConfig::new(data_dir.clone());
    if let Some(cidr) = args.service_cidr.clone().or(file.service_cidr.clone()) {
        server.service_network.cidr = cidr_arg("--service-cidr", &cidr)?;
    }
    if let Some(cidr) = args.node.pod_cidr.clone().or(file.pod_cidr.clone()) {
        server.pod_ranges.cluster = cidr_arg("--pod-cidr", &cidr)?;
    }
    if let Some(mask) = args.node_cidr_mask_size.or(file.node_cidr_mask_size) {
        if mask < server.pod_ranges.cluster.prefix() || mask > 30 {
            bail!(
                "--node-cidr-mask-size {mask}: between the pod range's prefix ({}) and 30",
                server.pod_ranges.cluster.prefix()
            );
        }
        server.pod_ranges.node_prefix = mask;
    }
    let node = resolve_node(args.node, &file, &data_dir, server.service_network.cidr)?;
    server.storage.insecure_registries = node.config.insecure_registries.clone();
    server.storage.allow_private_imports = args.allow_private_imports.or(file.allow_private_imports).unwrap_or(false);
    server.host_access = node.config.host_access.clone();
    if let Some(max) = max_volume_bytes(args.max_volume_size.or(file.max_volume_size.clone()))? {
        server.storage.max_volume_bytes = Some(max);
    }
    server.libvirt_uri = node.libvirt_uri;
    server.vm_controllers = !(args.no_controllers || file.no_controllers.unwrap_or(false));
    if !(args.no_node || file.no_node.unwrap_or(false)) {
        server.node = Some(node.config);
    }
    if let Some(range) = args.service_node_port_range.or(file.service_node_port_range.clone()) {
        let parsed = range.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((lo, hi)) if lo > 0 && lo <= hi => server.service_network.node_ports = (lo, hi),
            _ => bail!("--service-node-port-range {range}: expected LOW-HIGH, e.g. 30000-32767"),
        }
    }
    if let Some(listen) = args.listen.or(file.listen.clone()) {
        server.listen = listen;
    }
    server.database_url = args.database.or(file.database.clone());
    server.metrics_listen = args.metrics_listen.or(file.metrics_listen.clone());
    server.tls_sans = if args.tls_san.is_empty() { file.tls_san.clone() } else { args.tls_san };
    if let Some(range) = args.mac_range.or(file.mac_range.clone()) {
        server.mac_range = converge_engine::macpool::MacRange::parse(&range)
            .map_err(|e| anyhow::anyhow!("--mac-range {range}: {e}"))?;
    }
    let log_format = log_format.or(file.log_format).unwrap_or_else(|| "text".into());
    Ok(Settings { server, log_format })
}

/// Where a store lives, as `serve` would find it from the same flags and config file: the data
/// dir, and the database URL (`None`: SQLite in the data dir).
pub fn store_location(
    config: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    database: Option<String>,
) -> Result<(PathBuf, Option<String>)> {
    let file = read_file(config)?;
    let data_dir = data_dir.or(file.data_dir).unwrap_or_else(default_data_dir);
    Ok((data_dir, database.or(file.database)))
}

/// Whether the config file at `path` says `no_node`.
pub fn no_node(path: &PathBuf) -> Result<bool> {
    Ok(read_file(Some(path))?.no_node.unwrap_or(false))
}

/// `converge node`'s settings: its flags over the file's node keys.
/// What `converge node` reads beyond the node's own flags.
pub struct NodeCommandInput {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub service_cidr: Option<String>,
    pub allow_private_imports: Option<bool>,
    pub max_volume_size: Option<String>,
}

pub fn resolve_node_command(input: NodeCommandInput, args: NodeArgs) -> Result<NodeSettings> {
    let file = read_file(input.config.as_ref())?;
    let data_dir = input.data_dir.or(file.data_dir.clone()).unwrap_or_else(default_data_dir);
    let service_cidr = match input.service_cidr.or(file.service_cidr.clone()) {
        Some(cidr) => cidr_arg("--service-cidr", &cidr)?,
        None => converge_engine::network::ipam::ServiceNetwork::default().cidr,
    };
    let mut settings = resolve_node(args, &file, &data_dir, service_cidr)?;
    // The node keeps the volumes that live on it: its own pool, imports and clones into it.
    let storage = &mut settings.storage;
    storage.role = converge_engine::storage::placement::StorageRole::Node;
    storage.node = Some(settings.config.name.clone());
    storage.insecure_registries = settings.config.insecure_registries.clone();
    storage.allow_private_imports = input.allow_private_imports.or(file.allow_private_imports).unwrap_or(false);
    storage.max_volume_bytes = max_volume_bytes(input.max_volume_size.or(file.max_volume_size.clone()))?;
    Ok(settings)
}

fn max_volume_bytes(flag: Option<String>) -> Result<Option<u64>> {
    match flag {
        Some(max) => {
            let bytes =
                converge_engine::quantity::parse(&max).map_err(|e| anyhow::anyhow!("--max-volume-size {max}: {e}"))?;
            Ok(Some(bytes as u64))
        }
        None => Ok(None),
    }
}

/// The node agent's settings, as `serve` and `converge node` read them.
pub struct NodeSettings {
    pub config: converge_engine::node::NodeConfig,
    pub libvirt_uri: String,
    /// The storage of a node alone (`converge node`); `serve` has its own.
    pub storage: converge_engine::storage::StorageConfig,
}

fn resolve_node(
    args: NodeArgs,
    file: &FileConfig,
    data_dir: &std::path::Path,
    service_cidr: converge_engine::network::Cidr,
) -> Result<NodeSettings> {
    let host_disk_dirs = flag_or_file(args.host_disk_dir, file.host_disk_dir.clone());
    for dir in &host_disk_dirs {
        if !dir.is_absolute() || dir.parent().is_none() {
            bail!("--host-disk-dir {}: an absolute directory other than /", dir.display());
        }
    }
    let sriov_devices = flag_or_file(args.sriov_device, file.sriov_device.clone())
        .iter()
        .map(|d| converge_engine::network::pci::PciAddress::parse(d).map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--sriov-device: {e}"))?;
    let mut node = converge_engine::node::NodeConfig::new(data_dir.join("node"));
    node.host_access = converge_engine::host_access::HostAccess {
        host_disk_dirs,
        nad_bridges: flag_or_file(args.nad_bridge, file.nad_bridge.clone()),
        sriov_devices,
    };
    if let Some(name) = args.node_name.or(file.node_name.clone()) {
        node.name = name;
    }
    if let Some(prefix) = args.domain_prefix.or(file.domain_prefix.clone()) {
        node.domain_prefix = prefix;
    }
    node.allow_emulation = args.allow_emulation.or(file.allow_emulation).unwrap_or(true);
    node.insecure_registries = flag_or_file(args.insecure_registry, file.insecure_registry.clone());
    let pod_network = args.pod_network.or(file.pod_network.clone());
    if pod_network.as_deref() == Some("on") || (pod_network.is_none() && is_root()) {
        node.network = Some(network_config(
            args.pod_cidr.or(file.pod_cidr.clone()),
            args.node_transit_cidr.or(file.node_transit_cidr.clone()),
            args.node_netns.or(file.node_netns.clone()),
            args.pod_egress.or(file.pod_egress),
            service_cidr,
        )?);
    }
    let libvirt_uri = args.libvirt_uri.or(file.libvirt_uri.clone()).unwrap_or_else(|| "qemu:///system".into());
    if let Some(uri) = args.migration_uri.or(file.migration_uri.clone()) {
        let address = args
            .migration_address
            .or(file.migration_address)
            .or(converge_engine::node::host::gather().internal_ip.map(std::net::IpAddr::V4));
        let Some(address) = address else {
            bail!("--migration-uri: the host has no address; give --migration-address")
        };
        node.migration = Some(converge_engine::node::migration::MigrationConfig { libvirt_uri: uri, address });
        if let Err(e) = converge_engine::node::migration::checked_endpoint(&node) {
            bail!("--migration-uri/--migration-address: {e}");
        }
    }
    let storage = converge_engine::storage::StorageConfig::new(data_dir);
    Ok(NodeSettings { config: node, libvirt_uri, storage })
}

/// A repeatable flag given on the command line (or in the environment) replaces the file's list.
fn flag_or_file<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

fn cidr_arg(flag: &str, text: &str) -> Result<converge_engine::network::Cidr> {
    converge_engine::network::Cidr::parse(text).map_err(|e| anyhow::anyhow!("{flag} {text}: {e}"))
}

fn network_config(
    pod_cidr: Option<String>,
    transit: Option<String>,
    netns: Option<String>,
    egress: Option<bool>,
    service_cidr: converge_engine::network::Cidr,
) -> Result<converge_engine::network::NetworkConfig> {
    let mut net = converge_engine::network::NetworkConfig { service_cidr, ..Default::default() };
    if let Some(c) = pod_cidr {
        net.cluster_cidr = cidr_arg("--pod-cidr", &c)?;
    }
    if let Some(c) = transit {
        net.transit = cidr_arg("--node-transit-cidr", &c)?;
        if net.transit.prefix() != 30 {
            bail!("--node-transit-cidr {c}: must be a /30");
        }
    }
    if let Some(n) = netns {
        net.node_namespace = n;
    }
    net.egress = egress.unwrap_or(true);
    for (a, b, what) in [
        (net.cluster_cidr, net.service_cidr, "--pod-cidr and --service-cidr"),
        (net.cluster_cidr, net.transit, "--pod-cidr and --node-transit-cidr"),
        (net.service_cidr, net.transit, "--service-cidr and --node-transit-cidr"),
    ] {
        if a.overlaps(&b) {
            bail!("{what} overlap ({a} and {b}): pods, services and the transit link need ranges of their own");
        }
    }
    Ok(net)
}

/// `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().with_context(|| format!("{text:?} is not a duration like 24h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("{text:?}: the unit is one of s, m, h, d"),
    };
    if secs == 0 {
        bail!("a token's lifetime must be positive");
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_ranges_must_not_overlap() {
        let args = |pod: &str| ServeArgs {
            node: NodeArgs { pod_network: Some("on".into()), pod_cidr: Some(pod.into()), ..NodeArgs::default() },
            service_cidr: Some("10.96.0.0/16".into()),
            data_dir: Some("/tmp/converge-config-test".into()),
            ..ServeArgs::default()
        };
        let ok = resolve(args("10.244.0.0/16"), None).expect("distinct ranges");
        assert_eq!(ok.server.pod_ranges.cluster.to_string(), "10.244.0.0/16");
        let net = ok.server.node.and_then(|n| n.network).expect("pod network on");
        assert_eq!(net.cluster_cidr.to_string(), "10.244.0.0/16");
        let err = resolve(args("10.96.0.0/12"), None).err().expect("overlap refused").to_string();
        assert!(err.contains("overlap"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").ok(), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90").ok(), Some(Duration::from_secs(90)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:7000\"\ndatabase = \"sqlite://x\"\nlog_format = \"json\"\n")
            .expect("write");
        let args = ServeArgs { config: Some(file), listen: Some("127.0.0.1:1".into()), ..Default::default() };
        let s = resolve(args, None).expect("resolve");
        assert_eq!(s.server.listen, "127.0.0.1:1");
        assert_eq!(s.server.database_url.as_deref(), Some("sqlite://x"));
        assert_eq!(s.log_format, "json");
    }
}
