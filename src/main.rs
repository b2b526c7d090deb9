//! The `converge` binary: `converge serve` and the client verbs.

mod backup;
mod client;
mod cluster_cmd;
mod config;
mod drain;
mod install;
mod upload;
mod verbs;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "converge", version, about = "Virtual machines as Kubernetes objects, with or without a cluster")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "CONVERGE_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and run guests on this host (the node agent), from one process.
    Serve(Box<config::ServeArgs>),
    /// Run this host as a node of an API in another process: the node agent alone (KVM probe,
    /// Node heartbeat, libvirt domains, disks, pod network).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Node(Box<cluster_cmd::NodeCommandArgs>),
    /// Run the VM, VMI, replica-set, node-lifecycle and endpoints controllers against an API in
    /// another process.
    Controllers(cluster_cmd::ControllersArgs),
    /// Print the version.
    Version,
    /// Print a shell completion script: `source <(converge completion bash)`, or save it where
    /// the shell loads completions (zsh: a file `_converge` on `$fpath`; fish:
    /// `~/.config/fish/completions/converge.fish`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print what a Kubernetes cluster needs to serve Converge's kinds (YAML for `kubectl apply
    /// -f -`): the namespace, CRDs and RBAC roles.
    Manifests {
        /// The namespace of Converge's own objects.
        #[arg(long, default_value = "converge-system")]
        namespace: String,
        /// Leave out the NetworkAttachmentDefinition CRD (where Multus installed its own).
        #[arg(long)]
        no_network_attachment_definitions: bool,
        /// Register the admission webhooks at this address (`https://HOST:PORT` of `converge
        /// controllers --kubernetes` running outside the cluster; give it HOST as --tls-san).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Register the aggregated API (`subresources.kubevirt.io`) at this address (IP:PORT of
        /// `converge controllers --kubernetes --aggregated-api-listen` outside the cluster).
        #[arg(long)]
        aggregated_api_endpoint: Option<std::net::SocketAddr>,
        /// Run Converge in the cluster from this image (the `converge` binary with libvirt's
        /// client library): the controllers as a Deployment, the node agents as a DaemonSet.
        #[arg(long)]
        image: Option<String>,
        /// The cluster's nodes run guests under software emulation (KubeVirt's useEmulation).
        #[arg(long)]
        use_emulation: bool,
    },
    /// Issue, list and revoke bearer tokens (talks to a running server as admin).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        /// Admin kubeconfig; default: $KUBECONFIG, else DATA_DIR/kubeconfig.
        #[arg(long, global = true)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, env = "CONVERGE_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
    },
    /// The node's local image store (container disks and kernel-boot images).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
        #[arg(long, env = "CONVERGE_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Start a VM (virtctl start).
    Start {
        #[command(flatten)]
        target: Target,
        /// Start the guest paused.
        #[arg(long)]
        paused: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a VM (virtctl stop).
    Stop {
        #[command(flatten)]
        target: Target,
        /// Seconds the guest gets to shut down.
        #[arg(long)]
        grace_period: Option<i64>,
        /// Pull the plug at once (grace period 0).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Restart a VM: its VMI is replaced by a new one (virtctl restart).
    Restart {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        grace_period: Option<i64>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Live-migrate a VM's guest to another node (virtctl migrate).
    Migrate {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        dry_run: bool,
    },
    /// Pause a running VMI.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Unpause a paused VMI.
    Unpause {
        #[command(flatten)]
        target: Target,
    },
    /// Reboot a VMI's guest through ACPI.
    Softreboot {
        #[command(flatten)]
        target: Target,
    },
    /// Attach to a VMI's serial console (escape with Ctrl-]); with --log, print what the guest
    /// wrote to it so far instead (kept by its node, rotated at 1 MiB).
    Console {
        #[command(flatten)]
        target: Target,
        /// Print the console's log and exit.
        #[arg(long)]
        log: bool,
        /// With --log: only the last N lines.
        #[arg(long, requires = "log")]
        tail: Option<u64>,
    },
    /// Serve a VMI's VNC display on a local port for a viewer.
    Vnc {
        #[command(flatten)]
        target: Target,
        /// Local port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
    },
    /// Expose a VM's or VMI's port as a Service (virtctl expose): `expose vm NAME --port 22
    /// --name NAME-ssh --type NodePort`.
    Expose {
        /// `vm NAME` or `vmi NAME`.
        #[command(flatten)]
        target: Target,
        /// The Service's name.
        #[arg(long)]
        name: String,
        /// The port the Service answers on.
        #[arg(long)]
        port: u16,
        /// The port on the guest (default: --port).
        #[arg(long)]
        target_port: Option<u16>,
        /// ClusterIP or NodePort.
        #[arg(long = "type", default_value = "ClusterIP")]
        service_type: String,
        /// TCP or UDP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
    },
    /// Print the libvirt domain XML of a running VMI.
    Domxml {
        #[command(flatten)]
        target: Target,
    },
    /// Upload a disk image into a new DataVolume (virtctl image-upload): `image-upload dv NAME
    /// --image-path FILE --size 2Gi`.
    #[command(name = "image-upload")]
    ImageUpload {
        /// `dv NAME` (or just NAME).
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        image_path: PathBuf,
        /// Size of the DataVolume to create (e.g. 2Gi).
        #[arg(long)]
        size: Option<String>,
        #[arg(long)]
        storage_class: Option<String>,
        /// Create a block-mode volume.
        #[arg(long)]
        block_volume: bool,
        /// Upload into an existing DataVolume.
        #[arg(long)]
        no_create: bool,
        /// Seconds to wait for the upload target, and for processing.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
        /// The file is a tar archive of files, not a disk image.
        #[arg(long)]
        archive: bool,
    },
    /// Install Converge as a systemd service (converge.service, Restart=always, after libvirtd),
    /// with a config file, and start it where systemd runs. Running a newer binary's `install`
    /// upgrades: the binary is replaced and the service restarted; guests run on.
    Install(Box<install::InstallArgs>),
    /// Stop every guest, stop and remove the service; --purge also removes the data.
    Uninstall(install::UninstallArgs),
    /// Write a consistent snapshot of the store, with the data dir's CA, signing key and admin
    /// token, to FILE (a gzipped tar; online: the server may be running). Guests' disks and
    /// volumes are not in it.
    Backup {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Load a backup into a fresh data dir (and, with --database, an empty PostgreSQL
    /// database); `converge serve` then runs on it, upgrading an older store.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the CA certificate that signs the server's certificate.
    Ca {
        #[arg(long, env = "CONVERGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Where the store is, as `converge serve` is told.
#[derive(clap::Args)]
struct StoreArgs {
    #[arg(long, env = "CONVERGE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "CONVERGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// postgres://… when the store is in PostgreSQL.
    #[arg(long, env = "CONVERGE_DATABASE")]
    database: Option<String>,
}

impl StoreArgs {
    fn location(self) -> Result<backup::Location> {
        let (data_dir, database) = config::store_location(self.config.as_ref(), self.data_dir, self.database)?;
        Ok(backup::Location { data_dir, database })
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token; prints it once.
    Create {
        /// Confine the token to this namespace (repeatable); none: every namespace.
        #[arg(long = "namespace", short = 'n')]
        namespaces: Vec<String>,
        /// view, edit, migrate (edit and live migrations), admin, or node (with --node).
        #[arg(long, default_value = "edit")]
        role: String,
        /// The Node a `node` token speaks for.
        #[arg(long)]
        node: Option<String>,
        /// Also write a kubeconfig with this token (and the server and CA of the one used), for
        /// `converge node --kubeconfig` on the joining machine.
        #[arg(long)]
        write_kubeconfig: Option<PathBuf>,
        /// The server URL the written kubeconfig names (default: the one used here, often
        /// https://127.0.0.1:6443, which another machine cannot reach).
        #[arg(long, requires = "write_kubeconfig")]
        server: Option<String>,
        /// Lifetime: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long)]
        subject: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
    /// List tokens.
    List,
}

/// A VM or VMI named as virtctl names them: `NAME`, or `vm NAME` / `vmi NAME`.
#[derive(clap::Args)]
struct Target {
    #[arg(num_args = 1..=2, required = true)]
    names: Vec<String>,
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long, env = "CONVERGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl Target {
    fn name(&self) -> &str {
        self.names.last().map(String::as_str).unwrap_or_default()
    }
    fn client(&self) -> Result<(client::Client, String)> {
        let path = verbs::kubeconfig_path(self.kubeconfig.clone(), self.data_dir.clone());
        let api = client::Client::from_kubeconfig(&path)?;
        let ns = self.namespace.clone().or_else(|| api.namespace.clone()).unwrap_or_else(|| "default".into());
        Ok((api, ns))
    }
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (a directory, or a tar of one, as `skopeo copy oci:`/`oci-archive:` write).
    Import {
        source: PathBuf,
        /// Reference to file it under (default: the layout's own ref.name annotations).
        #[arg(long)]
        reference: Option<String>,
    },
    /// List stored images.
    List,
}

fn init_logging(format: Option<&str>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format.unwrap_or("text") {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("unknown log format {other:?}: text or json"),
    }
    Ok(())
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let settings = config::resolve(*args, cli.log_format)?;
                init_logging(Some(&settings.log_format))?;
                serve(settings.server).await
            }
            Command::Node(args) => match args.action {
                Some(cluster_cmd::NodeAction::Drain { node, kubeconfig, data_dir, timeout }) => {
                    let api = client::Client::from_kubeconfig(&verbs::kubeconfig_path(kubeconfig, data_dir))?;
                    drain::drain(&api, &node, std::time::Duration::from_secs(timeout)).await
                }
                None => {
                    init_logging(cli.log_format.as_deref())?;
                    cluster_cmd::node(*args).await
                }
            },
            Command::Controllers(args) => {
                init_logging(cli.log_format.as_deref())?;
                cluster_cmd::controllers(args).await
            }
            Command::Manifests {
                namespace,
                no_network_attachment_definitions,
                webhook_url,
                aggregated_api_endpoint,
                image,
                use_emulation,
            } => {
                let options = converge_api::manifests::Options {
                    namespace,
                    network_attachment_definitions: !no_network_attachment_definitions,
                    webhook_url,
                    aggregated_api_endpoint,
                    image,
                    use_emulation,
                };
                print!("{}", converge_api::manifests::to_yaml(&converge_api::manifests::manifests(&options))?);
                Ok(())
            }
            Command::Version => {
                println!("converge {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            Command::Completion { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(shell, &mut Cli::command(), "converge", &mut std::io::stdout());
                Ok(())
            }
            Command::Start { target, paused, dry_run } => {
                let (api, ns) = target.client()?;
                verbs::start(&api, &ns, target.name(), paused, dry_run).await
            }
            Command::Stop { target, grace_period, force, dry_run } => {
                let (api, ns) = target.client()?;
                verbs::stop(&api, &ns, target.name(), grace_period, force, dry_run).await
            }
            Command::Restart { target, grace_period, dry_run } => {
                let (api, ns) = target.client()?;
                verbs::restart(&api, &ns, target.name(), grace_period, dry_run).await
            }
            Command::Migrate { target, dry_run } => {
                let (api, ns) = target.client()?;
                verbs::migrate(&api, &ns, target.name(), dry_run).await
            }
            Command::Pause { target } => {
                let (api, ns) = target.client()?;
                verbs::vmi_action(&api, &ns, target.name(), "pause").await
            }
            Command::Unpause { target } => {
                let (api, ns) = target.client()?;
                verbs::vmi_action(&api, &ns, target.name(), "unpause").await
            }
            Command::Softreboot { target } => {
                let (api, ns) = target.client()?;
                verbs::vmi_action(&api, &ns, target.name(), "softreboot").await
            }
            Command::Console { target, log, tail } => {
                let (api, ns) = target.client()?;
                if log {
                    verbs::console_log(&api, &ns, target.name(), tail).await
                } else {
                    verbs::console(&api, &ns, target.name()).await
                }
            }
            Command::Vnc { target, port, address } => {
                let (api, ns) = target.client()?;
                verbs::vnc(std::sync::Arc::new(api), ns, target.name().to_string(), &address, port).await
            }
            Command::Expose { target, name, port, target_port, service_type, protocol } => {
                let kind = match target.names.len() {
                    2 => target.names[0].clone(),
                    _ => "vm".to_string(),
                };
                let (api, ns) = target.client()?;
                let spec = verbs::ExposeSpec { name, port, target_port, service_type, protocol };
                verbs::expose(&api, &ns, &kind, target.name(), &spec).await
            }
            Command::Domxml { target } => {
                let (api, ns) = target.client()?;
                verbs::domxml(&api, &ns, target.name()).await
            }
            Command::Image { command, data_dir } => {
                let dir = data_dir.unwrap_or_else(config::default_data_dir).join("node").join("images");
                let store = converge_engine::node::images::ImageStore::open(&dir)?;
                match command {
                    ImageCommand::Import { source, reference } => {
                        for r in store.import(&source, reference.as_deref())? {
                            println!("imported {r}");
                        }
                    }
                    ImageCommand::List => {
                        for (r, digest) in store.list() {
                            println!("{r}\t{digest}");
                        }
                    }
                }
                Ok(())
            }
            Command::ImageUpload {
                target,
                image_path,
                size,
                storage_class,
                block_volume,
                no_create,
                wait_secs,
                archive,
            } => {
                if target.names.len() == 2 && !matches!(target.names[0].as_str(), "dv" | "datavolume") {
                    bail!("image-upload takes `dv NAME`; uploading into a bare PVC is not supported");
                }
                let (api, namespace) = target.client()?;
                let args = upload::UploadArgs {
                    namespace,
                    name: target.name().to_string(),
                    image_path,
                    size,
                    storage_class,
                    block: block_volume,
                    no_create,
                    wait: std::time::Duration::from_secs(wait_secs),
                    archive,
                };
                upload::image_upload(&api, args).await
            }
            Command::Install(args) => install::install(*args).await,
            Command::Uninstall(args) => install::uninstall(args).await,
            Command::Backup { file, store } => {
                let summary = backup::backup(&store.location()?, &file).await?;
                println!(
                    "backup written to {}: {} objects at resourceVersion {}, schema {}",
                    file.display(),
                    summary.objects,
                    summary.resource_version,
                    summary.schema
                );
                Ok(())
            }
            Command::Restore { file, store } => {
                let location = store.location()?;
                let summary = backup::restore(&file, &location).await?;
                println!(
                    "restored {} objects (resourceVersion {}, schema {}) into {}",
                    summary.objects,
                    summary.resource_version,
                    summary.schema,
                    location.database.as_deref().map(redact).unwrap_or_else(|| location.data_dir.display().to_string())
                );
                Ok(())
            }
            Command::Ca { data_dir } => {
                let dir = data_dir.unwrap_or_else(config::default_data_dir);
                let pem = std::fs::read_to_string(dir.join("ca.crt")).with_context(|| {
                    format!("reading {}/ca.crt (has `converge serve` run with this data dir?)", dir.display())
                })?;
                print!("{pem}");
                Ok(())
            }
            Command::Token { command, kubeconfig, data_dir } => {
                init_logging(cli.log_format.as_deref())?;
                let path = kubeconfig
                    .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
                    .unwrap_or_else(|| data_dir.unwrap_or_else(config::default_data_dir).join("kubeconfig"));
                let api = client::Client::from_kubeconfig(&path)?;
                match command {
                    TokenCommand::Create { namespaces, role, node, write_kubeconfig, server, ttl, subject } => {
                        let ttl = config::parse_duration(&ttl)?;
                        let request = client::TokenRequest {
                            role: &role,
                            node: node.as_deref(),
                            namespaces: &namespaces,
                            ttl_seconds: ttl.as_secs() as i64,
                            subject: subject.as_deref(),
                        };
                        let record = api.create_token(&request).await?;
                        if let Some(path) = write_kubeconfig {
                            let token = record["token"].as_str().context("the server answered no token")?;
                            let ca = String::from_utf8_lossy(api.ca_pem.as_deref().unwrap_or_default()).into_owned();
                            let server = server.as_deref().unwrap_or(&api.server);
                            if !server.starts_with("https://") {
                                bail!("--server {server}: an https:// URL");
                            }
                            let kubeconfig = converge_api::pki::kubeconfig(server, &ca, token);
                            write_private(&path, &kubeconfig)?;
                            eprintln!("kubeconfig written to {}", path.display());
                        }
                        println!("{}", serde_json::to_string_pretty(&record)?);
                    }
                    TokenCommand::Revoke { id } => {
                        api.revoke_token(&id).await?;
                        println!("token {id} revoked");
                    }
                    TokenCommand::List => println!("{}", serde_json::to_string_pretty(&api.list_tokens().await?)?),
                }
                Ok(())
            }
        }
    })
}

async fn serve(config: converge_api::ServerConfig) -> Result<()> {
    let unknown = converge_engine::failpoint::unknown();
    if !unknown.is_empty() {
        tracing::warn!(?unknown, known = ?converge_engine::failpoint::POINTS, "{} names unknown fail points", converge_engine::failpoint::ENV);
    }
    let server = converge_api::start(config).await?;
    println!("converge serving at {}; kubeconfig: {}", server.base_url, server.kubeconfig.display());
    notify_systemd("READY=1");
    until_stopped().await?;
    tracing::info!("stopping");
    notify_systemd("STOPPING=1");
    server.stop().await;
    Ok(())
}

/// Tells systemd (a `Type=notify` unit) how the server is doing, when it runs under one.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = std::os::unix::net::UnixDatagram::unbound();
    let sent = socket.and_then(|s| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket, as systemd gives it.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
            None => s.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "telling systemd {state}");
    }
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Writes a file only its owner may read (it holds a token).
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Returns at SIGINT or SIGTERM.
async fn until_stopped() -> Result<()> {
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for a signal"),
        r = terminate() => r,
    }
}

async fn terminate() -> Result<()> {
    let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    s.recv().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> config::ServeArgs {
        let mut all = vec!["converge", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Serve(a)) => *a,
            Ok(_) => panic!("not serve"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn boolean_flags_take_the_bare_form_and_a_value() {
        assert_eq!(serve_args(&["--allow-private-imports"]).allow_private_imports, Some(true));
        assert_eq!(serve_args(&["--allow-private-imports", "false"]).allow_private_imports, Some(false));
        assert_eq!(serve_args(&["--allow-private-imports=true"]).allow_private_imports, Some(true));
        assert_eq!(serve_args(&[]).allow_private_imports, None);
        let a = serve_args(&["--allow-emulation", "--pod-egress", "--listen", "127.0.0.1:1"]);
        assert_eq!((a.node.allow_emulation, a.node.pod_egress), (Some(true), Some(true)));
    }

    #[test]
    fn completion_scripts_name_the_verbs() {
        use clap::CommandFactory;
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "converge", &mut out);
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.contains("serve") && text.contains("migrate") && text.contains("allow-private-imports"),
                "{shell}"
            );
        }
    }
}
