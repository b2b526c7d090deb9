//! The `converge` binary: `converge serve` and the client verbs.

mod client;
mod config;

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
    /// Serve the API (and, in later releases, run guests) from one process.
    Serve(config::ServeArgs),
    /// Print the version.
    Version,
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
    /// Print the CA certificate that signs the server's certificate.
    Ca {
        #[arg(long, env = "CONVERGE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token; prints it once.
    Create {
        /// Confine the token to this namespace (repeatable); none: every namespace.
        #[arg(long = "namespace", short = 'n')]
        namespaces: Vec<String>,
        /// view, edit or admin.
        #[arg(long, default_value = "edit")]
        role: String,
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
                let settings = config::resolve(args, cli.log_format)?;
                init_logging(Some(&settings.log_format))?;
                serve(settings.server).await
            }
            Command::Version => {
                println!("converge {}", env!("CARGO_PKG_VERSION"));
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
                    TokenCommand::Create { namespaces, role, ttl, subject } => {
                        let ttl = config::parse_duration(&ttl)?;
                        let record =
                            api.create_token(&role, &namespaces, ttl.as_secs() as i64, subject.as_deref()).await?;
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
    let server = converge_api::start(config).await?;
    println!("converge serving at {}; kubeconfig: {}", server.base_url, server.kubeconfig.display());
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for a signal")?;
            tracing::info!("stopping");
            server.stop().await;
        }
        r = terminate() => {
            r?;
            tracing::info!("stopping");
            server.stop().await;
        }
    }
    Ok(())
}

async fn terminate() -> Result<()> {
    let mut s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    s.recv().await;
    Ok(())
}
