//! `/metrics` in Prometheus' text format: the process's instruments (requests, work queues, store
//! transactions) and, gathered at each scrape, KubeVirt's and CDI's families for the VMIs,
//! migrations and imports in the store and the guests this server's node runs.
//!
//! On the API's port it takes a token of a cluster-wide role (`view` or more): a token confined
//! to a namespace may not read other namespaces' guests nor the server's health. `--metrics-listen`
//! serves the same text without a token on an address of the operator's choosing, for a
//! scraper the operator has put beside it.

pub mod inventory;
pub mod requests;

use crate::auth::{Principal, Role};
use crate::server::ServeError;
use crate::state::AppState;
use actix_web::dev::ServerHandle;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use converge_engine::error::ApiError;
use converge_engine::kinds;
use converge_engine::node::NodeAgent;
use prometheus::Encoder;
use std::net::SocketAddr;
use std::sync::LazyLock;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static WATCHERS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    let gauge = prometheus::IntGauge::new(
        "converge_store_watchers",
        "Watches following the store's changes now (API watches, controllers' and the node's).",
    )
    .expect("metric");
    let _ = prometheus::register(Box::new(gauge.clone()));
    gauge
});

/// May this principal read the metrics? Cluster-wide roles only; never a node's token.
pub fn may_read(p: &Principal) -> Result<(), ApiError> {
    if p.node.is_some() || p.role == Role::Node || p.role < Role::View || !p.namespaces.is_empty() {
        return Err(ApiError::forbidden(format!(
            "User \"{}\" cannot get path \"/metrics\": metrics are cluster-wide, and this token is not",
            p.subject
        )));
    }
    Ok(())
}

/// `GET /metrics` on the API's port.
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let principal = req.extensions().get::<Principal>().cloned();
    let allowed = principal.ok_or_else(ApiError::unauthorized).and_then(|p| may_read(&p));
    if let Err(e) = allowed {
        return crate::response::status_response(&e);
    }
    respond(&state).await
}

/// `GET /metrics` on `--metrics-listen`.
pub async fn open_metrics(state: web::Data<AppState>) -> HttpResponse {
    respond(&state).await
}

async fn respond(state: &AppState) -> HttpResponse {
    text_response(render(state).await)
}

fn text_response(rendered: Result<String, ApiError>) -> HttpResponse {
    match rendered {
        Ok(text) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(text),
        Err(e) => crate::response::status_response(&e),
    }
}

/// The process's instruments and this scrape's families, as Prometheus reads them.
fn encode(scrape: &inventory::Families) -> Result<String, ApiError> {
    let mut families = prometheus::gather();
    families.extend(scrape.gather());
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    String::from_utf8(out).map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))
}

/// Everything, as Prometheus reads it.
pub async fn render(state: &AppState) -> Result<String, ApiError> {
    let scrape = inventory::Families::new();
    let vmis = state.store.list_values(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await?;
    inventory::vmi_info(&scrape, &vmis);
    let migrations = state.store.list_values(&kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION, None).await?;
    inventory::migrations(&scrape, &migrations, &vmis);
    inventory::imports(&scrape, &state.store.list_values(&kinds::DATA_VOLUME, None).await?);
    if let Some(node) = &state.node {
        inventory::guests(&scrape, &node.node_name, &node.guest_stats().await);
    }
    WATCHERS.set(state.store.watchers() as i64);
    encode(&scrape)
}

/// A joined node's own metrics (`converge node --metrics-listen`), as each virt-handler serves
/// its node's: its guests' figures and its process's instruments (its work queue, its storage).
pub async fn render_node(agent: &NodeAgent) -> Result<String, ApiError> {
    let scrape = inventory::Families::new();
    inventory::guests(&scrape, &agent.node_name, &agent.guest_stats().await);
    encode(&scrape)
}

async fn node_metrics(agent: web::Data<NodeAgent>) -> HttpResponse {
    text_response(render_node(&agent).await)
}

/// A `--metrics-listen` server: plain HTTP, `/metrics` alone; its handle, task and address.
pub type MetricsServer = (ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>, SocketAddr);

fn plain_server<D: Send + Sync + 'static>(
    listen: &str,
    data: web::Data<D>,
    route: fn() -> actix_web::Route,
) -> Result<MetricsServer, ServeError> {
    let failed = |e| ServeError::Listen { addr: listen.to_string(), source: e };
    let listener = std::net::TcpListener::bind(listen).map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().app_data(data.clone()).route("/metrics", route()))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .listen(listener)
            .map_err(failed)?
            .run();
    let handle = server.handle();
    Ok((handle, tokio::spawn(server), addr))
}

/// Starts a joined node's `--metrics-listen` server.
pub fn serve_node(listen: &str, agent: std::sync::Arc<NodeAgent>) -> Result<MetricsServer, ServeError> {
    plain_server(listen, web::Data::from(agent), || web::get().to(node_metrics))
}

/// Starts `serve`'s `--metrics-listen` server.
pub fn serve_open(listen: &str, state: web::Data<AppState>) -> Result<MetricsServer, ServeError> {
    plain_server(listen, state, || web::get().to(open_metrics))
}
