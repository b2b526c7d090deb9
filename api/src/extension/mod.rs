//! The extension API server `converge controllers --kubernetes` runs beside kube-apiserver, as
//! virt-api runs: the admission webhooks (`admission`) on one listener, and the aggregated
//! `subresources.kubevirt.io` API (`aggregated`) on another, which only kube-apiserver's front
//! proxy may open (its client certificate is required at the handshake). Both serve a
//! certificate of Converge's own CA (`tls`), which the server writes into the webhook
//! configurations and APIServices. The same CA signs node agents' serving certificates
//! (`signer`) and the client certificate the aggregated API shows them.

pub mod admission;
pub mod aggregated;
pub mod front_proxy;
pub mod review;
pub mod signer;
pub mod tls;

use actix_web::{web, App, HttpResponse, HttpServer};
use admission::{StatusWriters, MUTATE_PATH, VALIDATE_PATH};
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::cluster::Cluster;
use converge_engine::error::ApiError;
use converge_engine::host_access::HostAccess;
use converge_engine::kinds;
use converge_engine::macpool::{MacRange, MemoryPool};
use rustls::server::danger::ClientCertVerifier;
use std::sync::Arc;

/// How often the configurations' `caBundle` is checked.
const CA_BUNDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

pub struct ExtensionSettings {
    pub namespace: String,
    /// Where the webhooks listen.
    pub webhook_listener: std::net::TcpListener,
    /// Where the aggregated API listens, if it is served.
    pub aggregated_listener: Option<std::net::TcpListener>,
    /// Names the serving certificate answers to besides the Service's.
    pub tls_sans: Vec<String>,
    pub mac_range: MacRange,
    pub status_writers: StatusWriters,
    /// What of the host guests may reach: nothing unless the admin says so.
    pub host: HostAccess,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("reading the VMs and VMIs for the MAC pool: {0}")]
    Pool(ApiError),
    #[error("the front proxy's settings: {0}")]
    FrontProxy(ApiError),
    #[error("serving: {0}")]
    Serve(String),
    #[error("the CA: {0}")]
    Authority(#[from] crate::pki::PkiError),
    #[error("publishing the CA: {0}")]
    PublishCa(ApiError),
}

/// The running servers; stopped when dropped.
pub struct ExtensionServer {
    pub webhook_addr: std::net::SocketAddr,
    pub aggregated_addr: Option<std::net::SocketAddr>,
    handles: Vec<actix_web::dev::ServerHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ExtensionServer {
    fn drop(&mut self) {
        for handle in self.handles.clone() {
            tokio::spawn(async move { handle.stop(false).await });
        }
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Takes the certificate, fills the MAC pool from the cluster's VMs and VMIs (before the first
/// review: a MAC handed out must not be one already stored), serves, and writes the CA into the
/// webhook configurations and APIServices (again whenever they are applied anew).
pub async fn start(cluster: Arc<KubeCluster>, settings: ExtensionSettings) -> Result<ExtensionServer, ExtensionError> {
    let sans = tls::names(&settings.namespace, &settings.tls_sans);
    let cert = tls::certificate(&cluster, &settings.namespace, &sans).await?;
    let authority = Arc::new(crate::pki::Authority::from_kept(&cert.ca_key_pem, &cert.ca_pem)?);
    signer::publish_ca(&cluster, &settings.namespace, &cert.ca_pem).await.map_err(ExtensionError::PublishCa)?;
    let mut pool = MemoryPool::new();
    let events = cluster.watch(&[&kinds::VIRTUAL_MACHINE, &kinds::VIRTUAL_MACHINE_INSTANCE]);
    admission::fill_pool(&*cluster, &mut pool).await.map_err(ExtensionError::Pool)?;
    let state = Arc::new(admission::State {
        cluster: Arc::clone(&cluster),
        pool: tokio::sync::Mutex::new(pool),
        mac_range: settings.mac_range,
        status_writers: settings.status_writers,
        host: settings.host,
    });
    let mut tasks = vec![
        tokio::spawn(admission::follow_pool(Arc::clone(&state), events)),
        tokio::spawn(signer::run(Arc::clone(&cluster), Arc::clone(&authority))),
    ];
    let mut handles = vec![];
    let webhook_addr = settings.webhook_listener.local_addr().map_err(|e| ExtensionError::Serve(e.to_string()))?;
    let data = web::Data::from(Arc::clone(&state));
    let webhooks = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
            .route(MUTATE_PATH, web::post().to(|s, body| admission::answer(s, body, true)))
            .route(VALIDATE_PATH, web::post().to(|s, body| admission::answer(s, body, false)))
            .route("/healthz", web::get().to(|| async { HttpResponse::Ok().body("ok") }))
    });
    let tls = server_tls(&cert, None).map_err(ExtensionError::Serve)?;
    let webhooks = webhooks
        .workers(2)
        .disable_signals()
        .shutdown_timeout(2)
        .listen_rustls_0_23(settings.webhook_listener, tls)
        .map_err(|e| ExtensionError::Serve(e.to_string()))?
        .run();
    handles.push(webhooks.handle());
    tasks.push(spawn_server("webhook", webhooks));
    let mut aggregated_addr = None;
    if let Some(listener) = settings.aggregated_listener {
        let proxy = front_proxy::read(&*cluster).await.map_err(ExtensionError::FrontProxy)?;
        let verifier = front_proxy::ProxyCertVerifier::new(&proxy).map_err(ExtensionError::Serve)?;
        let tls = server_tls(&cert, Some(Arc::new(verifier))).map_err(ExtensionError::Serve)?;
        aggregated_addr = Some(listener.local_addr().map_err(|e| ExtensionError::Serve(e.to_string()))?);
        let node_link = crate::nodes::link::NodeLink::new(&authority)?;
        let data = web::Data::new(aggregated::Aggregated { cluster: Arc::clone(&cluster), proxy, node_link });
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(aggregated::routes))
            .workers(2)
            .disable_signals()
            .shutdown_timeout(2)
            .listen_rustls_0_23(listener, tls)
            .map_err(|e| ExtensionError::Serve(e.to_string()))?
            .run();
        handles.push(server.handle());
        tasks.push(spawn_server("aggregated API", server));
    }
    tls::inject_ca_bundle(&cluster, &cert.ca_pem).await?;
    let ca = cert.ca_pem.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::time::sleep(CA_BUNDLE_CHECK).await;
            if let Err(e) = tls::inject_ca_bundle(&cluster, &ca).await {
                tracing::warn!(error = %e, "writing the CA bundle");
            }
        }
    }));
    Ok(ExtensionServer { webhook_addr, aggregated_addr, handles, tasks })
}

fn spawn_server(what: &'static str, server: actix_web::dev::Server) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the {what} server stopped");
        }
    })
}

fn server_tls(
    cert: &crate::pki::KeptAuthority,
    clients: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients.unwrap_or_else(|| rustls::server::WebPkiClientVerifier::no_client_auth()))
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())
}
