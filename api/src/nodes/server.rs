//! What a node agent in its own process (`converge node`) serves the API server, as virt-handler
//! serves virt-api: the guests' console and VNC websockets, pause / unpause / softreboot, and a
//! domain's XML, and uploads into the volumes that live here. Only a client certificate from the cluster CA made for client use gets in — the
//! API server's (`pki::Authority::api_client_identity`); a node's serving certificate is for
//! serving alone, so one node cannot call another.

use std::sync::Arc;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use converge_engine::node::NodeAgent;
use converge_engine::storage::StorageControllers;
use converge_engine::{ApiError, ApiResult};
use rcgen::KeyPair;
use tokio::task::JoinHandle;

use super::certificate::{ServingCertificate, ServingCertificateRequest};
use crate::response::status_response;
use crate::subresources::VmiOp;

#[derive(Debug, thiserror::Error)]
pub enum NodeServerError {
    #[error("key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listening: {0}")]
    Listen(#[from] std::io::Error),
}

/// The key a node's serving certificate is made for; it never leaves the node.
pub struct ServingKey(KeyPair);

impl ServingKey {
    pub fn generate() -> Result<ServingKey, NodeServerError> {
        Ok(ServingKey(KeyPair::generate()?))
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.0
    }

    /// What the node sends the API server to have its certificate signed.
    pub fn request(&self) -> ServingCertificateRequest {
        ServingCertificateRequest {
            public_key: base64::engine::general_purpose::STANDARD.encode(self.0.public_key_raw()),
        }
    }
}

/// A running node server; stopped when dropped.
pub struct NodeServer {
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move { handle.stop(false).await });
        self.task.abort();
    }
}

fn tls_config(key: ServingKey, signed: &ServingCertificate) -> Result<rustls::ServerConfig, NodeServerError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| NodeServerError::Tls(e.to_string());
    let roots = crate::pki::roots(&signed.ca).map_err(|e| tls(&e))?;
    let chain = CertificateDer::pem_slice_iter(signed.certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key.0.serialize_der().into()))
        .map_err(|e| tls(&e))
}

/// The node's storage, which takes uploads into the volumes that live here.
struct NodeStorage(Option<Arc<StorageControllers>>);

/// Serves `agent` (and `storage`'s uploads) on `listener` with the certificate the API server
/// signed for `key`.
pub fn start(
    agent: Arc<NodeAgent>,
    storage: Option<Arc<StorageControllers>>,
    listener: std::net::TcpListener,
    key: ServingKey,
    signed: &ServingCertificate,
) -> Result<NodeServer, NodeServerError> {
    let tls = tls_config(key, signed)?;
    let addr = listener.local_addr()?;
    let agent = web::Data::from(agent);
    let storage = web::Data::new(NodeStorage(storage));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(agent.clone())
            .app_data(storage.clone())
            .route("/v1/uploads/{namespace}/{claim}", web::put().to(upload))
            .route("/healthz", web::get().to(|| async { HttpResponse::Ok().body("ok") }))
            // `domain` is not an operation of the subresource group: it is `converge domxml`'s.
            .route("/v1/namespaces/{namespace}/virtualmachineinstances/{name}/domain", web::get().to(domain_xml))
            .route(
                "/v1/namespaces/{namespace}/virtualmachineinstances/{name}/consolelog",
                web::get().to(crate::console_log::on_node),
            )
            .route("/v1/namespaces/{namespace}/virtualmachineinstances/{name}/{op}", web::to(vmi_request))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen_rustls_0_23(listener, tls)?
    .run();
    let handle = server.handle();
    Ok(NodeServer { addr, handle, task: tokio::spawn(server) })
}

/// A request's target, checked: names by the name rules, the uid as a UUID (it names a
/// directory of the node's state).
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub op: VmiOp,
}

pub fn parse(method: &str, namespace: &str, name: &str, op: &str, query: &str) -> ApiResult<Target> {
    let op = VmiOp::from_path(op).ok_or_else(ApiError::route_not_found)?;
    if method != op.method() {
        return Err(ApiError::method_not_allowed(format!("{} takes {}", op.path(), op.method())));
    }
    if !converge_engine::meta::dns1123_label_errors(namespace).is_empty()
        || !converge_engine::meta::dns1123_subdomain_errors(name).is_empty()
    {
        return Err(ApiError::bad_request(format!("{namespace}/{name} is not a valid VMI name")));
    }
    let uid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("uid="))
        .and_then(|u| uuid::Uuid::parse_str(u).ok())
        .ok_or_else(|| ApiError::bad_request("uid: the VMI's uid is required"))?;
    Ok(Target { namespace: namespace.into(), name: name.into(), uid: uid.to_string(), op })
}

async fn vmi_request(req: HttpRequest, payload: web::Payload, agent: web::Data<NodeAgent>) -> HttpResponse {
    let info = req.match_info();
    let parsed = parse(
        req.method().as_str(),
        info.get("namespace").unwrap_or(""),
        info.get("name").unwrap_or(""),
        info.get("op").unwrap_or(""),
        req.query_string(),
    );
    let result: ApiResult<HttpResponse> = async {
        let t = parsed?;
        let shown = format!("{}/{}", t.namespace, t.name);
        match t.op {
            VmiOp::Console | VmiOp::Vnc => {
                crate::console::attach(&req, payload, &agent, &t.uid, t.op == VmiOp::Console, &shown).await
            }
            op => {
                // The domain of that name must be the VMI the server meant, not a successor.
                runs(&agent, &t).await?;
                crate::subresources::domain_op(&agent, &t.namespace, &t.name, op).await?;
                Ok(HttpResponse::Ok().finish())
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| status_response(&e))
}

/// The VMI a read (its domain's XML, its console log) names, checked as a pause is: the same
/// names and uid.
pub fn read_target(req: &HttpRequest) -> ApiResult<Target> {
    let info = req.match_info();
    parse("PUT", info.get("namespace").unwrap_or(""), info.get("name").unwrap_or(""), "pause", req.query_string())
}

async fn domain_xml(req: HttpRequest, agent: web::Data<NodeAgent>) -> HttpResponse {
    let result: ApiResult<HttpResponse> = async {
        let t = read_target(&req)?;
        runs(&agent, &t).await?;
        let xml = agent.with_domain(&t.namespace, &t.name, |hv, d| hv.xml(d)).await.map_err(|e| {
            ApiError::not_found("kubevirt.io", "virtualmachineinstances", &format!("{} (domain: {e})", t.name))
        })?;
        Ok(HttpResponse::Ok().content_type("application/xml").body(xml))
    }
    .await;
    result.unwrap_or_else(|e| status_response(&e))
}

/// An upload the API server relays: into which claim, of what size, answered when.
#[derive(Debug, PartialEq, Eq)]
pub struct UploadTarget {
    pub namespace: String,
    pub claim: String,
    pub size: Option<u64>,
    pub is_async: bool,
}

pub fn parse_upload(namespace: &str, claim: &str, query: &str) -> ApiResult<UploadTarget> {
    if !converge_engine::meta::dns1123_label_errors(namespace).is_empty()
        || !converge_engine::meta::dns1123_subdomain_errors(claim).is_empty()
    {
        return Err(ApiError::bad_request(format!("{namespace}/{claim} is not a valid claim name")));
    }
    let mut target = UploadTarget { namespace: namespace.into(), claim: claim.into(), size: None, is_async: false };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("async", v)) => target.is_async = v == "true",
            Some(("size", v)) => {
                let size =
                    v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("size {v:?} is not a byte count")))?;
                target.size = (size > 0).then_some(size);
            }
            _ => return Err(ApiError::bad_request(format!("unknown parameter {pair:?}"))),
        }
    }
    Ok(target)
}

async fn upload(req: HttpRequest, payload: web::Payload, storage: web::Data<NodeStorage>) -> HttpResponse {
    let info = req.match_info();
    let parsed = parse_upload(info.get("namespace").unwrap_or(""), info.get("claim").unwrap_or(""), req.query_string());
    let result: ApiResult<()> = async {
        let t = parsed?;
        let storage = storage.0.as_ref().ok_or_else(|| ApiError::unavailable("this node runs no storage"))?;
        let session =
            storage.begin_upload(&t.namespace, &t.claim, t.size).await.map_err(crate::upload::upload_error)?;
        crate::upload::feed(session, crate::upload::raw_body(payload), t.is_async).await
    }
    .await;
    match result {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => status_response(&e),
    }
}

/// The agent runs the guest `t.uid` (its state directory is there).
async fn runs(agent: &NodeAgent, t: &Target) -> ApiResult<()> {
    match tokio::fs::metadata(agent.serial_socket(&t.uid)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::not_found("kubevirt.io", "virtualmachineinstances", &t.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6c3a3e-5f6e-4c1e-9a55-3f1f7a0f2f11";

    #[test]
    fn requests_parse_to_checked_targets() {
        let t = parse("GET", "team", "vm1", "console", &format!("uid={UID}")).expect("console");
        assert_eq!(t, Target { namespace: "team".into(), name: "vm1".into(), uid: UID.into(), op: VmiOp::Console });
        assert_eq!(parse("PUT", "team", "vm1", "pause", &format!("x=1&uid={UID}")).expect("pause").op, VmiOp::Pause);
        assert_eq!(parse("GET", "team", "vm1", "pause", &format!("uid={UID}")).unwrap_err().code, 405);
        assert_eq!(parse("PUT", "team", "vm1", "explode", &format!("uid={UID}")).unwrap_err().code, 404);
        assert_eq!(parse("GET", "team", "vm1", "console", "uid=../../etc").unwrap_err().code, 400);
        assert_eq!(parse("GET", "team", "vm1", "console", "").unwrap_err().code, 400);
        assert_eq!(parse("GET", "Team", "vm1", "console", &format!("uid={UID}")).unwrap_err().code, 400);
        assert_eq!(parse("GET", "team", "a..b", "console", &format!("uid={UID}")).unwrap_err().code, 400);
    }

    #[test]
    fn uploads_parse_to_checked_targets() {
        let t = parse_upload("team", "disk", "async=true&size=1024").expect("upload");
        assert_eq!(
            t,
            UploadTarget { namespace: "team".into(), claim: "disk".into(), size: Some(1024), is_async: true }
        );
        assert_eq!(parse_upload("team", "disk", "").expect("plain").size, None);
        assert_eq!(parse_upload("team", "disk", "size=-1").unwrap_err().code, 400);
        assert_eq!(parse_upload("team", "disk", "size=99999999999999999999999").unwrap_err().code, 400);
        assert_eq!(parse_upload("team", "../x", "").unwrap_err().code, 400);
        assert_eq!(parse_upload("team", "disk", "path=/etc").unwrap_err().code, 400);
    }
}
