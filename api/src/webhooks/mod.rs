//! Admission webhooks for a Kubernetes cluster (`converge controllers`): the admission the
//! embedded API runs on a create or update — defaults, presets, instancetypes, validation with
//! field causes, the MAC pool — answered to kube-apiserver's AdmissionReviews, as virt-api's
//! webhooks and KubeMacPool answer them.
//!
//! `/mutate` admits and answers the changes as a JSON patch; `/validate` admits the final object
//! again (after every mutating webhook) and only allows or denies.

pub mod review;
pub mod tls;

use actix_web::{web, App, HttpResponse, HttpServer};
use converge_engine::admission::{self, Context};
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::cluster::Cluster;
use converge_engine::error::{ApiError, ApiResult};
use converge_engine::host_access::HostAccess;
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::macpool::{self, MacRange, MemoryPool};
use converge_engine::store::WatchEventType;
use review::{Operation, Review};
use serde_json::Value;
use std::sync::Arc;

/// The paths the webhook configurations call.
pub const MUTATE_PATH: &str = "/mutate";
pub const VALIDATE_PATH: &str = "/validate";
/// How often the configurations' `caBundle` is checked.
const CA_BUNDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Whose writes to a VMI's status are kept (the VMI kind has no status subresource, as
/// KubeVirt's has none): Converge's own service accounts, and cluster admins.
#[derive(Debug, Clone)]
pub struct StatusWriters {
    pub users: Vec<String>,
}

impl StatusWriters {
    /// The controllers' and node agents' service accounts in `namespace`.
    pub fn of_namespace(namespace: &str) -> StatusWriters {
        StatusWriters {
            users: ["converge-controllers", "converge-node"]
                .iter()
                .map(|sa| format!("system:serviceaccount:{namespace}:{sa}"))
                .collect(),
        }
    }

    fn allows(&self, user: &review::UserInfo) -> bool {
        self.users.contains(&user.username) || user.groups.iter().any(|g| g == "system:masters")
    }
}

pub struct WebhookSettings {
    pub namespace: String,
    pub listener: std::net::TcpListener,
    /// Names the serving certificate answers to besides the Service's.
    pub tls_sans: Vec<String>,
    pub mac_range: MacRange,
    pub status_writers: StatusWriters,
    /// What of the host guests may reach: nothing unless the admin says so.
    pub host: HostAccess,
}

struct State {
    cluster: Arc<KubeCluster>,
    pool: tokio::sync::Mutex<MemoryPool>,
    mac_range: MacRange,
    status_writers: StatusWriters,
    host: HostAccess,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("reading the VMs and VMIs for the MAC pool: {0}")]
    Pool(ApiError),
    #[error("serving: {0}")]
    Serve(String),
}

/// The running webhook server; stops when dropped.
pub struct WebhookServer {
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Takes the certificate, fills the MAC pool from the cluster's VMs and VMIs (before the first
/// review: a MAC handed out must not be one already stored), writes the CA into the webhook
/// configurations, and serves.
pub async fn start(cluster: Arc<KubeCluster>, settings: WebhookSettings) -> Result<WebhookServer, WebhookError> {
    let sans = tls::names(&settings.namespace, &settings.tls_sans);
    let cert = tls::certificate(&cluster, &settings.namespace, &sans).await?;
    let mut pool = MemoryPool::new();
    let events = cluster.watch(&[&kinds::VIRTUAL_MACHINE, &kinds::VIRTUAL_MACHINE_INSTANCE]);
    fill_pool(&*cluster, &mut pool).await.map_err(WebhookError::Pool)?;
    let state = Arc::new(State {
        cluster: Arc::clone(&cluster),
        pool: tokio::sync::Mutex::new(pool),
        mac_range: settings.mac_range,
        status_writers: settings.status_writers,
        host: settings.host,
    });
    let feeder = tokio::spawn(follow_pool(Arc::clone(&state), events));
    let tls = server_tls(&cert).map_err(WebhookError::Serve)?;
    let addr = settings.listener.local_addr().map_err(|e| WebhookError::Serve(e.to_string()))?;
    let data = web::Data::from(Arc::clone(&state));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
            .route(MUTATE_PATH, web::post().to(|s: web::Data<State>, body: web::Bytes| answer(s, body, true)))
            .route(VALIDATE_PATH, web::post().to(|s: web::Data<State>, body: web::Bytes| answer(s, body, false)))
            .route("/healthz", web::get().to(|| async { HttpResponse::Ok().body("ok") }))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(2)
    .listen_rustls_0_23(settings.listener, tls)
    .map_err(|e| WebhookError::Serve(e.to_string()))?
    .run();
    let handle = server.handle();
    let serving = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the webhook server stopped");
        }
    });
    tls::inject_ca_bundle(&cluster, &cert.ca_pem).await?;
    let ca = cert.ca_pem.clone();
    // The configurations may be installed (or applied again) after this start.
    let injector = tokio::spawn(async move {
        loop {
            tokio::time::sleep(CA_BUNDLE_CHECK).await;
            if let Err(e) = tls::inject_ca_bundle(&cluster, &ca).await {
                tracing::warn!(error = %e, "writing the webhooks' CA bundle");
            }
        }
    });
    Ok(WebhookServer { addr, handle, tasks: vec![feeder, serving, injector] })
}

fn server_tls(cert: &crate::pki::KeptAuthority) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())
}

async fn fill_pool(cluster: &dyn Cluster, pool: &mut MemoryPool) -> ApiResult<()> {
    for kind in [&kinds::VIRTUAL_MACHINE, &kinds::VIRTUAL_MACHINE_INSTANCE] {
        for obj in cluster.list(kind, None).await? {
            pool.observe(kind, &obj);
        }
    }
    Ok(())
}

/// Keeps the pool at what is stored: a VM's MACs are free once the VM is gone or no longer
/// names them.
async fn follow_pool(
    state: Arc<State>,
    mut events: tokio::sync::broadcast::Receiver<Arc<converge_engine::store::WatchEvent>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                let Some(kind) = kinds::by_store_key(&event.kind_key) else { continue };
                let mut pool = state.pool.lock().await;
                match event.event_type {
                    WatchEventType::Deleted => pool.forget(kind, &event.object),
                    _ => pool.observe(kind, &event.object),
                }
            }
            Err(RecvError::Lagged(_)) => {
                let mut fresh = MemoryPool::new();
                match fill_pool(&*state.cluster, &mut fresh).await {
                    Ok(()) => state.pool.lock().await.replace_stored(fresh),
                    Err(e) => tracing::warn!(error = %e.message, "re-reading the VMs for the MAC pool"),
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn answer(state: web::Data<State>, body: web::Bytes, mutate: bool) -> HttpResponse {
    let reply = match review::parse(&body) {
        Ok(review) => match admit(&state, &review, mutate).await {
            Ok((after, warnings)) => {
                review::allowed(&review.uid, &review.object, if mutate { &after } else { &review.object }, &warnings)
            }
            Err(e) => review::denied(&review.uid, &e),
        },
        Err(e) => review::denied(&review::uid_of(&body), &ApiError::bad_request(e.to_string())),
    };
    HttpResponse::Ok().json(reply)
}

/// What the embedded API does on a create or an update of the main resource.
#[tracing::instrument(skip_all, fields(kind = review.kind.kind, op = ?review.operation, mutate))]
async fn admit(state: &State, review: &Review, mutate: bool) -> ApiResult<(Value, Vec<String>)> {
    let kind: &'static ResourceKind = review.kind;
    let mut obj = review.object.clone();
    let op = match review.operation {
        Operation::Create => admission::Operation::Create,
        Operation::Update => admission::Operation::Update,
        Operation::Delete | Operation::Connect => return Ok((obj, vec![])),
    };
    let old = review.old_object.as_ref();
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        if !state.status_writers.allows(&review.user) {
            // KubeVirt's webhook turns back a status change by anyone but its own.
            match old.and_then(|o| o.get("status")) {
                Some(status) => obj["status"] = status.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // A status write (the node agent's, mostly) changes nothing admission looks at.
        if old.is_some_and(|o| o.get("spec") == obj.get("spec")) {
            return Ok((obj, vec![]));
        }
    }
    let presets = match (op, mutate) {
        (admission::Operation::Create, true) => {
            admission::presets_for(&*state.cluster, kind, &review.namespace).await?
        }
        _ => vec![],
    };
    let mut probe = obj.clone();
    if let Some(status) = old.and_then(|o| o.get("status")) {
        // The frozen revision lives in the stored status.
        probe["status"] = status.clone();
    }
    let (instancetype, preference) = admission::lookup_instancetypes(&*state.cluster, kind, &probe).await?;
    let ctx = Context { old, presets: &presets, instancetype, preference, host: Some(&state.host) };
    admission::admit(kind, op, &mut obj, &ctx)?;
    if mutate {
        if review.dry_run {
            let mut scratch = state.pool.lock().await.clone();
            macpool::sync(&mut scratch, kind, &mut obj, old, &state.mac_range).await?;
        } else {
            macpool::sync(&mut *state.pool.lock().await, kind, &mut obj, old, &state.mac_range).await?;
        }
    }
    let warnings = admission::warnings(kind, &obj);
    Ok((obj, warnings))
}
