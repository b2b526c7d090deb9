//! `converge node` and `converge controllers`: the node agent alone, or the controllers alone,
//! joined to an API in another process (Converge's `serve`, or any Kubernetes API) through a
//! kubeconfig.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use converge_api::extension::admission::StatusWriters;
use converge_api::extension::{ExtensionServer, ExtensionSettings};
use converge_api::nodes::certificate::ServingCertificate;
use converge_api::nodes::server::ServingKey;
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::controllers::launcher_pod::PodSettings;
use converge_engine::controllers::ApiKind;
use converge_engine::host_access::HostAccess;
use converge_engine::macpool::MacRange;

use crate::config::{self, NodeArgs};

#[derive(Args, Debug)]
pub struct NodeCommandArgs {
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    /// The API to join: a kubeconfig whose user is this node's token
    /// (`converge token create --role node --node NAME`).
    #[arg(long, env = "KUBECONFIG", required_unless_present = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Run in a pod of a Kubernetes cluster (the DaemonSet of `converge manifests`), with its
    /// service account (implies --kubernetes).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub in_cluster: bool,
    /// A TOML file with the node's settings (the node's keys of `serve`'s file).
    #[arg(long, env = "CONVERGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where this node keeps its state: guests' sockets and disks, images, pod address leases.
    #[arg(long, env = "CONVERGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The cluster's Service range, routed into the node's pod network (default 10.96.0.0/16).
    #[arg(long, env = "CONVERGE_SERVICE_CIDR")]
    pub service_cidr: Option<String>,
    /// Let imports into this node's volumes fetch from loopback, link-local and private addresses.
    #[arg(long, env = "CONVERGE_ALLOW_PRIVATE_IMPORTS", num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_imports: Option<bool>,
    /// The largest volume a claim on this node may ask for (a quantity: 100Gi).
    #[arg(long, env = "CONVERGE_MAX_VOLUME_SIZE")]
    pub max_volume_size: Option<String>,
    /// Where the agent serves the API server (consoles, VNC, pause) with the certificate the API
    /// signs for it; published in the Node's `daemonEndpoints` (on Kubernetes, in its annotation
    /// `converge.dev/agent-port`). Port 0 picks a free one. Default 0.0.0.0:10250, and
    /// 0.0.0.0:8186 on Kubernetes (virt-handler's port: the kubelet has 10250 there).
    #[arg(long, env = "CONVERGE_NODE_LISTEN")]
    pub listen: Option<String>,
    /// The API is a real kube-apiserver with Converge's CRDs: use the Node its kubelet
    /// registered (--node-name) and add only labels, devices and the agent's port to it; guests
    /// are the VMIs whose launcher pods kube-scheduler bound here. The serving certificate comes
    /// through the cluster's CertificateSigningRequest API; the volumes of
    /// claims in WaitForFirstConsumer classes of Converge's provisioner live here.
    #[arg(long)]
    pub kubernetes: bool,
    /// Converge's namespace on a Kubernetes cluster: where the controllers publish the CA this
    /// agent trusts (with --kubernetes).
    #[arg(long, default_value = "converge-system")]
    pub namespace: String,
    /// ADDR:PORT to serve this node's /metrics on (its guests' figures, its work queue) over
    /// plain HTTP without a token, for a scraper beside it, as each virt-handler serves its own.
    #[arg(long, env = "CONVERGE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Args, Debug)]
pub struct ControllersArgs {
    /// The API to run against: a kubeconfig of an admin (or the controllers' own) token.
    #[arg(long, env = "KUBECONFIG", required_unless_present = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Run in a pod of a Kubernetes cluster (the Deployment of `converge manifests`), with its
    /// service account (implies --kubernetes).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub in_cluster: bool,
    /// Give Nodes their pod ranges here (as kube-controller-manager's flag of that name). Off by
    /// default: against `converge serve`, the server gives them, and one allocator must.
    #[arg(long)]
    pub allocate_node_cidrs: bool,
    /// The cluster's pod range, sliced for the nodes (with --allocate-node-cidrs).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// Each node's slice of it.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// The API is a real kube-apiserver with Converge's CRDs (`converge manifests`): serve the
    /// admission webhooks, and leave Nodes' lifecycle and Services' endpoints to
    /// kube-controller-manager.
    #[arg(long)]
    pub kubernetes: bool,
    /// Where the admission webhooks listen (with --kubernetes).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub webhook_listen: String,
    /// Where the aggregated API (`subresources.kubevirt.io`) listens (with --kubernetes); only
    /// kube-apiserver's front proxy may connect. Not served without it.
    #[arg(long)]
    pub aggregated_api_listen: Option<String>,
    /// Converge's namespace on the cluster: the webhooks' CA Secret lives there, and its
    /// service accounts may write VMIs' status.
    #[arg(long, default_value = "converge-system")]
    pub namespace: String,
    /// More names for the webhooks' serving certificate (the host of `converge manifests
    /// --webhook-url`, when these controllers run outside the cluster).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// The MAC pool the webhooks assign from (START-END).
    #[arg(long)]
    pub mac_range: Option<String>,
    /// The image of the launcher pods' one container (with --kubernetes): a placeholder that
    /// holds the guest's resources while `converge node` runs the guest.
    #[arg(long, default_value = converge_engine::controllers::launcher_pod::DEFAULT_IMAGE)]
    pub launcher_image: String,
    /// Guests run under software emulation on this cluster's nodes (KubeVirt's `useEmulation`):
    /// launcher pods do not ask for the KVM device.
    #[arg(long)]
    pub use_emulation: bool,
    /// Host bridges NetworkAttachmentDefinitions may name (with --kubernetes, the webhooks'
    /// check; repeatable, `PREFIX*` for a prefix); none: NADs of type bridge are refused. Each
    /// node agent checks its own `--nad-bridge` too.
    #[arg(long = "nad-bridge", env = "CONVERGE_NAD_BRIDGES", value_delimiter = ',')]
    pub nad_bridge: Vec<String>,
}

/// Where the API is: a kubeconfig, or the pod's own service account.
#[derive(Debug, Clone)]
enum ApiSource {
    Kubeconfig(PathBuf),
    InCluster,
}

impl ApiSource {
    fn of(kubeconfig: &Option<PathBuf>, in_cluster: bool) -> Result<ApiSource> {
        match (kubeconfig, in_cluster) {
            (_, true) => Ok(ApiSource::InCluster),
            (Some(path), false) => Ok(ApiSource::Kubeconfig(path.clone())),
            (None, false) => anyhow::bail!("--kubeconfig (or $KUBECONFIG) or --in-cluster"),
        }
    }

    async fn connect(&self) -> Result<Arc<KubeCluster>> {
        match self {
            ApiSource::Kubeconfig(path) => connect(path).await,
            ApiSource::InCluster => KubeCluster::in_cluster().context("joining the API of this pod's cluster"),
        }
    }
}

impl std::fmt::Display for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiSource::Kubeconfig(path) => write!(f, "{}", path.display()),
            ApiSource::InCluster => write!(f, "this pod's cluster"),
        }
    }
}

async fn connect(kubeconfig: &std::path::Path) -> Result<Arc<KubeCluster>> {
    KubeCluster::from_kubeconfig(kubeconfig)
        .await
        .with_context(|| format!("joining the API of {}", kubeconfig.display()))
}

/// What `converge node` does besides running the agent.
#[derive(clap::Subcommand, Debug)]
pub enum NodeAction {
    /// Cordon NODE and move its guests off it, each as its evictionStrategy says: live-migrated
    /// (LiveMigrate, LiveMigrateIfPossible when it can move) or shut down (its VM restarts it
    /// elsewhere); done when none is left (kubectl drain's role, for guests).
    Drain {
        node: String,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, env = "CONVERGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Seconds to wait for the node to be empty.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

pub async fn node(args: NodeCommandArgs) -> Result<()> {
    let input = config::NodeCommandInput {
        config: args.config,
        data_dir: args.data_dir,
        service_cidr: args.service_cidr,
        allow_private_imports: args.allow_private_imports,
        max_volume_size: args.max_volume_size,
    };
    let mut settings = config::resolve_node_command(input, args.node)?;
    let kubeconfig = match ApiSource::of(&args.kubeconfig, args.in_cluster)? {
        ApiSource::Kubeconfig(path) if !args.kubernetes => path,
        kubernetes => {
            let listen = args.listen.as_deref().unwrap_or("0.0.0.0:8186");
            let listener = std::net::TcpListener::bind(listen).with_context(|| format!("--listen {listen}"))?;
            return kubernetes_node(&kubernetes, settings, listener, &args.namespace, args.metrics_listen.as_deref())
                .await;
        }
    };
    let listen = args.listen.as_deref().unwrap_or("0.0.0.0:10250");
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("--listen {listen}"))?;
    let api = crate::client::Client::from_kubeconfig(&kubeconfig)?;
    let key = ServingKey::generate()?;
    let signed = serving_certificate(&api, &settings.config.name, &key).await?;
    settings.config.serving_port = listener.local_addr()?.port();
    let cluster = connect(&kubeconfig).await?;
    let agent = converge_engine::node::start_on_libvirt(cluster.clone(), settings.config, &settings.libvirt_uri)
        .await
        .context("starting the node agent")?;
    let agent = Arc::new(agent);
    let storage = converge_engine::storage::spawn(cluster, settings.storage)
        .await
        .map_err(|e| anyhow::anyhow!("starting the node's storage: {}", e.message))?;
    let storage = Arc::new(storage);
    let server =
        converge_api::nodes::server::start(Arc::clone(&agent), Some(Arc::clone(&storage)), listener, key, &signed)
            .context("serving the API server")?;
    let metrics = node_metrics(args.metrics_listen.as_deref(), &agent)?;
    println!(
        "converge node {} joined the API of {}, serving it on {}",
        agent.node_name,
        kubeconfig.display(),
        server.addr
    );
    crate::until_stopped().await?;
    tracing::info!("stopping");
    if let Some((handle, _, _)) = metrics {
        handle.stop(true).await;
    }
    drop(server);
    drop(storage);
    drop(agent);
    Ok(())
}

/// `converge node --kubernetes`: the agent on a kubelet's Node, serving the controllers'
/// aggregated API with a certificate the controllers sign through the CSR API.
async fn kubernetes_node(
    source: &ApiSource,
    mut settings: config::NodeSettings,
    listener: std::net::TcpListener,
    namespace: &str,
    metrics_listen: Option<&str>,
) -> Result<()> {
    use converge_api::nodes::csr;
    settings.config.kubelet_owns_node = true;
    settings.config.serving_port = listener.local_addr()?.port();
    let cluster = source.connect().await?;
    cluster.kinds_are_crds();
    let key = ServingKey::generate()?;
    let ca = csr::published_ca(&cluster, namespace).await.context("reading the controllers' CA")?;
    let certificate =
        csr::obtain(&cluster, &settings.config.name, &key).await.context("this node's serving certificate")?;
    let agent = converge_engine::node::start_on_libvirt(cluster.clone(), settings.config, &settings.libvirt_uri)
        .await
        .context("starting the node agent")?;
    let agent = Arc::new(agent);
    // The volumes that live here: made for claims kube-scheduler selected this node for, bound
    // by kube-controller-manager, filled and reclaimed here.
    let storage = converge_engine::storage::spawn(cluster, settings.storage)
        .await
        .map_err(|e| anyhow::anyhow!("starting the node's storage: {}", e.message))?;
    let storage = Arc::new(storage);
    let signed = ServingCertificate { certificate, ca };
    let server =
        converge_api::nodes::server::start(Arc::clone(&agent), Some(Arc::clone(&storage)), listener, key, &signed)
            .context("serving the controllers")?;
    let metrics = node_metrics(metrics_listen, &agent)?;
    println!("converge node {} joined the Kubernetes API of {source}, serving on {}", agent.node_name, server.addr);
    crate::until_stopped().await?;
    if let Some((handle, _, _)) = metrics {
        handle.stop(true).await;
    }
    tracing::info!("stopping");
    drop(server);
    drop(storage);
    drop(agent);
    Ok(())
}

/// The API server signs this node's serving certificate for `key` (the node token says which
/// node it may be).
async fn serving_certificate(api: &crate::client::Client, node: &str, key: &ServingKey) -> Result<ServingCertificate> {
    let answer = api
        .post_json(&format!("/converge/v1/nodes/{node}/servingcertificate"), &serde_json::to_value(key.request())?)
        .await
        .context("asking the API server for this node's serving certificate")?;
    serde_json::from_value(answer).context("the API server's serving certificate")
}

pub async fn controllers(args: ControllersArgs) -> Result<()> {
    let ranges = match args.allocate_node_cidrs {
        true => {
            let cluster = converge_engine::network::Cidr::parse(&args.cluster_cidr)
                .map_err(|e| anyhow::anyhow!("--cluster-cidr {}: {e}", args.cluster_cidr))?;
            if args.node_cidr_mask_size < cluster.prefix() || args.node_cidr_mask_size > 30 {
                anyhow::bail!("--node-cidr-mask-size: between the cluster range's prefix and 30");
            }
            Some(converge_engine::controllers::nodeipam::PodRanges { cluster, node_prefix: args.node_cidr_mask_size })
        }
        false => None,
    };
    let source = ApiSource::of(&args.kubeconfig, args.in_cluster)?;
    let kubernetes = args.kubernetes || args.in_cluster;
    let cluster = source.connect().await?;
    if kubernetes {
        cluster.kinds_are_crds();
    }
    let webhooks = match kubernetes {
        true => Some(serve_extension(&args, Arc::clone(&cluster)).await?),
        false => None,
    };
    let api = match kubernetes {
        true => ApiKind::Kubernetes(PodSettings { image: args.launcher_image.clone(), kvm: !args.use_emulation }),
        false => ApiKind::Converge,
    };
    // On Kubernetes no `serve` runs the storage controllers: DataVolumes, profiles and
    // DataSources are kept here, volumes by the nodes' agents.
    let storage = match kubernetes {
        true => Some(
            converge_engine::storage::spawn(cluster.clone(), converge_engine::storage::StorageConfig::cluster())
                .await
                .map_err(|e| anyhow::anyhow!("starting the storage controllers: {}", e.message))?,
        ),
        false => None,
    };
    let controllers = converge_engine::controllers::spawn(cluster, ranges, api);
    match &webhooks {
        Some(w) => println!(
            "converge controllers running against the Kubernetes API of {source}, webhooks on {}{}",
            w.webhook_addr,
            w.aggregated_addr.map(|a| format!(", aggregated API on {a}")).unwrap_or_default()
        ),
        None => println!("converge controllers running against the API of {source}"),
    }
    crate::until_stopped().await?;
    tracing::info!("stopping");
    drop(controllers);
    drop(storage);
    drop(webhooks);
    Ok(())
}

/// The webhooks and, when asked, the aggregated API.
async fn serve_extension(args: &ControllersArgs, cluster: Arc<KubeCluster>) -> Result<ExtensionServer> {
    let listener = std::net::TcpListener::bind(&args.webhook_listen)
        .with_context(|| format!("--webhook-listen {}", args.webhook_listen))?;
    let aggregated = match &args.aggregated_api_listen {
        Some(addr) => {
            Some(std::net::TcpListener::bind(addr).with_context(|| format!("--aggregated-api-listen {addr}"))?)
        }
        None => None,
    };
    let mac_range = match &args.mac_range {
        Some(text) => MacRange::parse(text).map_err(|e| anyhow::anyhow!("--mac-range {text}: {e}"))?,
        None => MacRange::default(),
    };
    let settings = ExtensionSettings {
        namespace: args.namespace.clone(),
        webhook_listener: listener,
        aggregated_listener: aggregated,
        tls_sans: args.tls_sans.clone(),
        mac_range,
        status_writers: StatusWriters::of_namespace(&args.namespace),
        host: HostAccess { nad_bridges: args.nad_bridge.clone(), ..HostAccess::default() },
    };
    converge_api::extension::start(cluster, settings).await.context("serving the webhooks and the aggregated API")
}

/// A node's `--metrics-listen` server, when asked for (its guests, its own instruments).
fn node_metrics(
    listen: Option<&str>,
    agent: &Arc<converge_engine::node::NodeAgent>,
) -> Result<Option<converge_api::metrics::MetricsServer>> {
    let Some(listen) = listen else { return Ok(None) };
    let server = converge_api::metrics::serve_node(listen, Arc::clone(agent))?;
    println!("metrics on http://{}/metrics", server.2);
    Ok(Some(server))
}
