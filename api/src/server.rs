//! `converge serve`: data dir, TLS, auth middleware, routes, the collector — and a handle tests
//! start on port 0.

use crate::auth::{self, Authenticator, Principal, Role};
use crate::response::{json_response, status_response};
use crate::state::AppState;
use crate::{bridge, discovery, openapi, openapi_k8s, pki, resources, subresources, tokens, upload};
use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, HttpServer};
use converge_engine::controllers::nodeipam::PodRanges;
use converge_engine::controllers::Controllers;
use converge_engine::macpool::MacRange;
use converge_engine::node::{NodeAgent, NodeConfig};
use converge_engine::storage::{StorageConfig, StorageControllers};
use converge_engine::store::{Store, StoreConfig};
use converge_engine::ApiError;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("store: {0}")]
    Store(ApiError),
    #[error("listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("node agent: {0}")]
    Node(String),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data dir.
    pub database_url: Option<String>,
    pub tls_sans: Vec<String>,
    pub mac_range: MacRange,
    /// Where Services get cluster IPs and node ports.
    pub service_network: converge_engine::network::ipam::ServiceNetwork,
    pub bookmark_interval: Duration,
    pub workers: usize,
    /// Run the controllers (VM, VMI, replica set); off only for tests of the API alone.
    pub controllers: bool,
    /// Of the controllers, run the VM, VMI, replica-set, node-lifecycle and endpoints ones here
    /// (off when `converge controllers` runs them against this API).
    pub vm_controllers: bool,
    /// Run a node agent in this process (VMIs become libvirt domains here); `None`: API only.
    pub node: Option<NodeConfig>,
    pub libvirt_uri: String,
    /// Pools, import limits and registries for the storage controllers (run with the others).
    pub storage: StorageConfig,
    /// What of the host guests may reach (hostDisk, NAD bridges, SR-IOV functions).
    pub host_access: converge_engine::host_access::HostAccess,
    /// The cluster's pod range and each node's slice of it: this server gives Nodes theirs.
    pub pod_ranges: PodRanges,
    /// ADDR:PORT to serve `/metrics` on without a token, over plain HTTP (for a scraper beside
    /// the server); `None`: only on the API's port, with a token.
    pub metrics_listen: Option<String>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir: PathBuf = data_dir.into();
        ServerConfig {
            storage: StorageConfig::new(&data_dir),
            data_dir,
            listen: "127.0.0.1:6443".into(),
            database_url: None,
            tls_sans: vec![],
            mac_range: MacRange::default(),
            service_network: Default::default(),
            bookmark_interval: Duration::from_secs(60),
            workers: 2,
            controllers: true,
            vm_controllers: true,
            node: None,
            libvirt_uri: "qemu:///system".into(),
            host_access: Default::default(),
            pod_ranges: PodRanges::default(),
            metrics_listen: None,
        }
    }
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub kubeconfig: PathBuf,
    pub admin_token: String,
    pub ca_pem: String,
    pub store: Arc<Store>,
    pub auth: Arc<Authenticator>,
    pub node: Option<Arc<NodeAgent>>,
    controllers: Option<Controllers>,
    pub storage: Option<Arc<StorageControllers>>,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    collector: tokio::task::JoinHandle<()>,
    node_ranges: Option<tokio::task::JoinHandle<()>>,
    bridge_recovery: tokio::task::JoinHandle<()>,
    revocations: tokio::task::JoinHandle<()>,
    /// The `--metrics-listen` server, and where it listens.
    metrics: Option<(ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>)>,
    pub metrics_addr: Option<SocketAddr>,
}

impl RunningServer {
    /// Serve until the server stops (a signal, or `stop`).
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.server.await.unwrap_or(Ok(()));
        if let Some((handle, _)) = &self.metrics {
            handle.stop(true).await;
        }
        self.collector.abort();
        self.node_ranges.iter().for_each(tokio::task::JoinHandle::abort);
        self.bridge_recovery.abort();
        self.revocations.abort();
        drop(self.controllers);
        drop(self.storage);
        drop(self.node);
        self.store.close().await;
        result
    }

    pub async fn stop(self) {
        if let Some((handle, server)) = self.metrics {
            handle.stop(true).await;
            let _ = server.await;
        }
        self.handle.stop(true).await;
        let _ = self.server.await;
        self.collector.abort();
        self.node_ranges.iter().for_each(tokio::task::JoinHandle::abort);
        self.bridge_recovery.abort();
        self.revocations.abort();
        drop(self.controllers);
        drop(self.storage);
        drop(self.node);
        self.store.close().await;
    }
}

const ADMIN_TOKEN_TTL: i64 = 10 * 365 * 24 * 3600;

async fn admin_token(config: &ServerConfig, auth: &Authenticator, store: &Store) -> Result<String, ServeError> {
    let path = config.data_dir.join("admin.token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if auth.verify(existing.trim()).is_ok_and(|p| p.role == Role::Admin) {
            return Ok(existing.trim().to_string());
        }
    }
    let (_, token) = auth
        .issue(store.pool(), "converge-admin", Role::Admin, vec![], ADMIN_TOKEN_TTL)
        .await
        .map_err(ServeError::Store)?;
    pki::write_private(&path, &token)?;
    Ok(token)
}

/// Starts the node agent on this host, on the server's own store.
async fn start_node(store: &Arc<Store>, config: NodeConfig, uri: &str) -> Result<NodeAgent, ServeError> {
    // The node inside `serve` is the server's host: one admin, one set of host-access flags.
    let mut config = config;
    config.host_access = store.host_access().clone();
    converge_engine::node::start_on_libvirt(store.clone(), config, uri)
        .await
        .map_err(|e| ServeError::Node(e.to_string()))
}

pub async fn start(config: ServerConfig) -> Result<RunningServer, ServeError> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServeError::DataDir { path: data_dir.display().to_string(), source: e })?;
    close_data_dir(data_dir).map_err(|e| ServeError::DataDir { path: data_dir.display().to_string(), source: e })?;
    let pki = pki::ensure(data_dir, &pki::default_sans(&config.tls_sans))?;
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("converge.db").display()));
    let mut store_config = StoreConfig::new(url);
    store_config.mac_range = config.mac_range;
    store_config.service_network = config.service_network;
    store_config.host_access = config.host_access.clone();
    let store = Store::open(&store_config).await.map_err(ServeError::Store)?;
    close_database_files(data_dir);
    let auth = Arc::new(Authenticator::new(&pki.signing_secret));
    auth.load_revoked(store.pool()).await.map_err(ServeError::Store)?;
    let token = admin_token(&config, &auth, &store).await?;
    // Nodes wait for their pod range before they set up their pod network: the allocator runs
    // first, and here whatever else runs (the API server owns the cluster's ranges, as one
    // allocator must: two could give two nodes the same slice).
    let node_ranges = config
        .controllers
        .then(|| tokio::spawn(converge_engine::controllers::nodeipam::run(store.clone(), config.pod_ranges)));
    let node = match &config.node {
        Some(node_config) => Some(Arc::new(start_node(&store, node_config.clone(), &config.libvirt_uri).await?)),
        None => None,
    };

    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| ServeError::Listen { addr: config.listen.clone(), source: e })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Listen { addr: config.listen.clone(), source: e })?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let base_url = format!("https://{host}:{}", addr.port());

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(pki.serving_cert_der.clone())],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.serving_key_der.clone().into()),
        )?;

    // The server keeps the volumes of its pool and of its own node.
    let mut storage_config = config.storage.clone();
    storage_config.node = storage_config.node.or_else(|| config.node.as_ref().map(|n| n.name.clone()));
    let storage = match config.controllers {
        true => Some(Arc::new(
            converge_engine::storage::spawn(store.clone(), storage_config).await.map_err(ServeError::Store)?,
        )),
        false => None,
    };
    let provisioner = converge_bridge::provision::Provisioner::new(Arc::clone(&store), &base_url);
    let state = web::Data::new(AppState {
        bridge: Arc::clone(&provisioner),
        storage: storage.clone(),
        upload_auth: Arc::new(upload::authenticator(&pki.signing_secret)),
        store: Arc::clone(&store),
        auth: Arc::clone(&auth),
        server_address: format!("{host}:{}", addr.port()),
        bookmark_interval: config.bookmark_interval,
        node: node.clone(),
        node_link: Arc::new(crate::nodes::link::NodeLink::new(&pki.authority)?),
        authority: Arc::clone(&pki.authority),
    });
    let metrics = match &config.metrics_listen {
        Some(listen) => Some(crate::metrics::serve_open(listen, state.clone())?),
        None => None,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(authenticate))
            .wrap(from_fn(catch_panics))
            .route("/healthz", web::get().to(healthz))
            .route("/livez", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/version", web::get().to(version))
            .route("/metrics", web::get().to(crate::metrics::metrics))
            .route("/api", web::get().to(api_versions))
            .route("/apis", web::get().to(api_groups))
            .route("/api/{version}", web::get().to(core_resources))
            .service(
                web::resource("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
                    .route(web::get().to(crate::crds::list))
                    .default_service(web::to(crate::crds::read_only)),
            )
            .service(
                web::resource("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                    .route(web::get().to(crate::crds::get))
                    .default_service(web::to(crate::crds::read_only)),
            )
            .route(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                web::post().to(crate::access_review::access_review),
            )
            .route(
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                web::post().to(crate::access_review::self_review),
            )
            .route("/apis/{group}", web::get().to(api_group))
            .route("/apis/{group}/{version}", web::get().to(group_resources))
            .route("/openapi/v2", web::get().to(openapi_v2))
            .route("/openapi/v3", web::get().to(openapi_v3_index))
            .route("/openapi/v3/api/{version}", web::get().to(openapi_v3_core))
            .route("/openapi/v3/apis/{group}/{version}", web::get().to(openapi_v3_group))
            .route("/openapi.json", web::get().to(own_openapi))
            .route("/docs", web::get().to(docs))
            .configure(crate::ui::routes)
            .service(
                web::resource("/converge/v1/tokens")
                    .route(web::post().to(tokens::create))
                    .route(web::get().to(tokens::list)),
            )
            .route("/converge/v1/tokens/{id}", web::delete().to(tokens::revoke))
            .route("/converge/v1/nodes/{name}/servingcertificate", web::post().to(crate::nodes::certificate::sign))
            .route(
                "/converge/v1/namespaces/{namespace}/virtualmachineinstances/{name}/domain",
                web::get().to(subresources::domain_xml),
            )
            .route(
                "/converge/v1/namespaces/{namespace}/virtualmachineinstances/{name}/consolelog",
                web::get().to(crate::console_log::console_log),
            )
            .route(
                "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{namespace}/uploadtokenrequests",
                web::post().to(upload::token_request),
            )
            .route("/v1beta1/upload", web::post().to(upload::upload))
            .route("/v1beta1/upload", web::put().to(upload::upload))
            .route("/v1beta1/upload-async", web::post().to(upload::upload))
            .route("/v1beta1/upload-async", web::put().to(upload::upload))
            .route("/v1beta1/upload-form", web::post().to(upload::upload))
            .route("/v1beta1/upload-form-async", web::post().to(upload::upload))
            .route("/v1alpha1/upload", web::post().to(upload::upload))
            .route("/v1alpha1/upload-async", web::post().to(upload::upload))
            .route("/apis/subresources.kubevirt.io/{version}", web::get().to(subresources::group_version))
            .route("/apis/subresources.kubevirt.io/{version}/{tail:.*}", web::to(subresources::handle))
            .configure(bridge::configure)
            .default_service(web::to(resources::dispatch))
    })
    .workers(config.workers.max(1))
    // kube-apiserver's idle timeout, which Go's transport (kubectl, client-go) matches: a server
    // that drops idle connections first (actix's default is 5 s) races clients reusing them, and
    // a POST sent on one as it closes fails with "connection closed before message completed".
    .keep_alive(Duration::from_secs(90))
    .disable_signals()
    .shutdown_timeout(5)
    .listen_rustls_0_23(listener, tls)
    .map_err(|e| ServeError::Listen { addr: config.listen.clone(), source: e })?
    .run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    let collector = tokio::spawn(converge_engine::gc::run(Arc::clone(&store)));
    let controllers = (config.controllers && config.vm_controllers).then(|| {
        converge_engine::controllers::spawn(store.clone(), None, converge_engine::controllers::ApiKind::Converge)
    });
    // Host requests a crash cut off are resumed at once, deletions settled as they finish.
    let bridge_recovery =
        tokio::spawn(converge_bridge::provision::executor::run_recovery(provisioner, Duration::from_secs(1)));

    let revocations =
        tokio::spawn(Arc::clone(&auth).follow_revocations(store.pool().clone(), Duration::from_millis(500)));
    let kubeconfig = data_dir.join("kubeconfig");
    pki::write_private(&kubeconfig, &pki::kubeconfig(&base_url, &pki.ca_pem, &token))?;
    tracing::info!(%base_url, kubeconfig = %kubeconfig.display(), "converge is serving");
    Ok(RunningServer {
        addr,
        base_url,
        kubeconfig,
        admin_token: token,
        ca_pem: pki.ca_pem,
        store,
        auth,
        node,
        controllers,
        storage,
        handle,
        server,
        collector,
        node_ranges,
        bridge_recovery,
        revocations,
        metrics_addr: metrics.as_ref().map(|(_, _, addr)| *addr),
        metrics: metrics.map(|(handle, server, _)| (handle, server)),
    })
}

/// The data dir holds the database (every Secret), the signing key and the volumes: closed to
/// everyone but root and, for traversal only, QEMU's group (guests' disks and sockets are
/// below it). 0710, or 0700 where QEMU runs as this user.
fn close_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let running_as_root = converge_engine::node::running_as_root();
    match converge_engine::node::qemu_owner().filter(|_| running_as_root) {
        Some((_, gid)) => {
            std::os::unix::fs::chown(dir, None, Some(gid))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
        }
        None => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)),
    }
}

/// SQLite makes its files with the umask's mode (0644 as a rule): they hold every Secret.
fn close_database_files(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for name in ["converge.db", "converge.db-wal", "converge.db-shm", "converge.db-journal"] {
        let path = dir.join(name);
        if path.exists() {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Routes anyone may call: health and version, as on a Kubernetes apiserver; and the docs shell,
/// which holds no data and asks for a token before it loads anything (the web console's routes,
/// `ui::is_public`, likewise).
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/docs"];

async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let (method, path) = (req.method().clone(), req.path().to_string());
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let labels = crate::metrics::requests::classify(method.as_str(), &path, req.query_string(), content_type);
    if !PUBLIC_PATHS.contains(&req.path()) && !upload::PATHS.contains(&req.path()) && !crate::ui::is_public(req.path())
    {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let token = auth::bearer_token(header("authorization").as_deref(), header("sec-websocket-protocol").as_deref());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let principal: Result<Principal, ApiError> = match (token, state) {
            (Some(t), Some(s)) => s.auth.verify(&t),
            _ => Err(ApiError::unauthorized()),
        };
        match principal {
            Ok(p) => {
                req.extensions_mut().insert(p);
            }
            Err(e) => {
                tracing::debug!(%method, %path, "unauthorized");
                let resp = if path.starts_with(bridge::PREFIX) {
                    bridge::error_response(&e.into())
                } else {
                    status_response(&e)
                };
                crate::metrics::requests::observe(&labels, resp.status().as_u16(), started.elapsed());
                return Ok(req.into_response(resp).map_into_right_body());
            }
        }
    }
    let resp = next.call(req).await?;
    crate::metrics::requests::observe(&labels, resp.status().as_u16(), started.elapsed());
    tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    Ok(resp.map_into_left_body())
}

/// A handler that panics answers a logged 500 `Status`; without this, actix drops the
/// connection with no answer at all and the client cannot tell a bug from a network fault.
async fn catch_panics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use futures::FutureExt;
    // Only strings: a clone of the request would stop the router from matching it.
    let (method, path) = (req.method().to_string(), req.path().to_string());
    let query = req.query_string().to_string();
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let started = std::time::Instant::now();
    match std::panic::AssertUnwindSafe(next.call(req)).catch_unwind().await {
        Ok(resp) => resp,
        Err(panic) => {
            // The request never reached the counting middleware's end: a bug is a 500 there too.
            let labels = crate::metrics::requests::classify(&method, &path, &query, &content_type);
            crate::metrics::requests::observe(&labels, 500, started.elapsed());
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(%method, %path, panic = %what, "handler panicked");
            let e = ApiError::internal("the server hit a bug handling this request; it is logged");
            let resp =
                if path.starts_with(bridge::PREFIX) { bridge::error_response(&e.into()) } else { status_response(&e) };
            Err(actix_web::error::InternalError::from_response(what, resp).into())
        }
    }
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "discovery", responses((status = 200, description = "ok", body = String)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "discovery", responses((status = 200, description = "ok", body = String), (status = 503, description = "the store does not answer")))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.current_rv().await {
        Ok(_) => HttpResponse::Ok().content_type("text/plain").body("ok"),
        Err(e) => status_response(&ApiError::unavailable(e.message)),
    }
}

/// Kubernetes-style version info (kubectl checks it for skew).
#[utoipa::path(get, path = "/version", tag = "discovery", responses((status = 200, description = "Version info", body = Object)))]
pub async fn version() -> HttpResponse {
    json_response(200, &version_info(), &[])
}

pub fn version_info() -> serde_json::Value {
    json!({
        "major": "1", "minor": "32",
        "gitVersion": format!("v1.32.0+converge-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "", "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
        "converge": env!("CARGO_PKG_VERSION"),
    })
}

/// The core API's versions.
#[utoipa::path(get, path = "/api", tag = "discovery", responses((status = 200, description = "APIVersions", body = Object)), security(("BearerToken" = [])))]
pub async fn api_versions(state: web::Data<AppState>) -> HttpResponse {
    json_response(200, &discovery::api_versions(&state.server_address), &[])
}

/// API groups served.
#[utoipa::path(get, path = "/apis", tag = "discovery", responses((status = 200, description = "APIGroupList", body = Object)), security(("BearerToken" = [])))]
pub async fn api_groups() -> HttpResponse {
    json_response(200, &discovery::api_group_list(), &[])
}

async fn core_resources(version: web::Path<String>) -> HttpResponse {
    match discovery::api_resource_list("", &version) {
        Some(list) => json_response(200, &list, &[]),
        None => status_response(&ApiError::route_not_found()),
    }
}

async fn api_group(group: web::Path<String>) -> HttpResponse {
    match discovery::api_group(&group) {
        Some(g) => json_response(200, &g, &[]),
        None => status_response(&ApiError::route_not_found()),
    }
}

async fn group_resources(path: web::Path<(String, String)>) -> HttpResponse {
    match discovery::api_resource_list(&path.0, &path.1) {
        Some(list) => json_response(200, &list, &[]),
        None => status_response(&ApiError::route_not_found()),
    }
}

/// Protobuf when the client asks for it first (kubectl, client-go), else JSON.
async fn openapi_v2(req: HttpRequest) -> HttpResponse {
    let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    if crate::openapi_pb::wants_protobuf(accept) {
        return HttpResponse::Ok().content_type(crate::openapi_pb::CONTENT_TYPE).body(crate::openapi_pb::v2_document());
    }
    HttpResponse::Ok().content_type("application/json").body(openapi_k8s::v2_document())
}

async fn openapi_v3_index() -> HttpResponse {
    json_response(200, &openapi_k8s::v3_index(), &[])
}

fn v3_response(group: &str, version: &str) -> HttpResponse {
    match openapi_k8s::v3_document(group, version) {
        Some((text, hash)) => HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("ETag", format!("\"{hash}\"")))
            .body(text.clone()),
        None => status_response(&ApiError::route_not_found()),
    }
}

async fn openapi_v3_core(version: web::Path<String>) -> HttpResponse {
    v3_response("", &version)
}

async fn openapi_v3_group(path: web::Path<(String, String)>) -> HttpResponse {
    v3_response(&path.0, &path.1)
}

async fn own_openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(openapi::document_text())
}

async fn docs(_req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(openapi::DOCS_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn bug() -> HttpResponse {
        panic!("an index out of range, say")
    }

    #[actix_web::test]
    async fn a_panicking_handler_answers_a_500_status() {
        let app = actix_web::test::init_service(
            App::new()
                .wrap(from_fn(catch_panics))
                .route("/boom", web::get().to(bug))
                .route("/ok", web::get().to(healthz)),
        )
        .await;
        let req = actix_web::test::TestRequest::get().uri("/boom").to_request();
        // The server turns the middleware's error into its response; the test harness hands it over.
        let err = actix_web::test::try_call_service(&app, req).await.err().expect("the panic becomes an error");
        let resp = err.error_response();
        assert_eq!(resp.status().as_u16(), 500);
        let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "InternalError");
        let again =
            actix_web::test::call_service(&app, actix_web::test::TestRequest::get().uri("/ok").to_request()).await;
        assert_eq!(again.status().as_u16(), 200, "the worker lives on");
        // …and the bug is counted as the 500 it answered.
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &prometheus::gather(), &mut text)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.lines().any(|l| l.starts_with("apiserver_request_total{code=\"500\"") && l.contains("verb=\"GET\"")),
            "{text}"
        );
    }
}
