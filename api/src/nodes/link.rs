//! The API server's calls to a node agent in another process, as kube-apiserver's to a kubelet:
//! mutual TLS (the server shows its client certificate, the node its serving certificate, both
//! from the cluster CA), and the node's certificate must carry the name of the node the VMI runs
//! on — the server connects to the Node's published address and checks who answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use converge_engine::controllers::status::node_name;
use converge_engine::kinds;
use converge_engine::node::NodeAgent;
use converge_engine::{ApiError, ApiResult};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::pki::{Authority, PkiError};
use crate::state::AppState;

pub use converge_engine::node::register::AGENT_PORT_ANNOTATION;

/// How long a call to a node may take (a pause or a domain's XML), beside the console streams.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type NodeSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The node agent running a VMI, as this server reaches it.
pub enum NodeTarget {
    /// The agent inside this process (`serve` with its own node).
    Local(Arc<NodeAgent>),
    /// An agent that joined over the API (`converge node`).
    Remote(RemoteNode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub addr: SocketAddr,
}

impl RemoteNode {
    /// Where the Node says its agent serves: its InternalIP (parsed, never a host name a
    /// resolver would send elsewhere) and `daemonEndpoints.kubeletEndpoint.Port`.
    pub fn from_node(node: &Value) -> Result<RemoteNode, String> {
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        Self::at_port(node, port)
    }

    /// On a Kubernetes cluster the kubelet owns the Node's endpoints: the agent publishes its
    /// port in an annotation of its own (`AGENT_PORT_ANNOTATION`), parsed as a port.
    pub fn from_kubelets_node(node: &Value) -> Result<RemoteNode, String> {
        let annotation = format!("/metadata/annotations/{}", AGENT_PORT_ANNOTATION.replace('/', "~1"));
        let port =
            node.pointer(&annotation).and_then(Value::as_str).and_then(|p| p.parse::<u16>().ok()).filter(|p| *p != 0);
        Self::at_port(node, port)
    }

    fn at_port(node: &Value, port: Option<u16>) -> Result<RemoteNode, String> {
        let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let port =
            port.ok_or_else(|| format!("the node agent of node {name:?} serves no endpoint this server can reach"))?;
        let ip = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .find_map(|a| a.get("address").and_then(Value::as_str)?.parse::<IpAddr>().ok())
            .ok_or_else(|| format!("node {name:?} has no InternalIP address"))?;
        Ok(RemoteNode { name, addr: SocketAddr::new(ip, port) })
    }
}

/// Finds the agent of the node `vmi` runs on.
pub async fn locate(state: &AppState, vmi: &Value) -> ApiResult<NodeTarget> {
    let wanted = node_name(vmi).unwrap_or("");
    if let Some(local) = state.node.as_ref().filter(|n| n.node_name == wanted) {
        return Ok(NodeTarget::Local(Arc::clone(local)));
    }
    if wanted.is_empty() {
        return Err(ApiError::unavailable("the VMI is on no node"));
    }
    let node = state
        .store
        .get(&kinds::NODE, "", wanted)
        .await?
        .ok_or_else(|| ApiError::unavailable(format!("node {wanted:?} of the VMI is gone")))?;
    RemoteNode::from_node(&node).map(NodeTarget::Remote).map_err(ApiError::unavailable)
}

/// The server's side of the link: its client identity and the CA nodes must chain to.
pub struct NodeLink {
    tls: Arc<rustls::ClientConfig>,
}

impl NodeLink {
    pub fn new(authority: &Authority) -> Result<NodeLink, PkiError> {
        let identity = authority.api_client_identity()?;
        let roots = crate::pki::roots(&authority.ca_pem)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_root_certificates(roots).with_client_auth_cert(
                    vec![identity.cert_der.into()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(identity.key_der.into()),
                )
            })
            .map_err(|e| PkiError::Invalid(format!("the node link's TLS: {e}")))?;
        Ok(NodeLink { tls: Arc::new(tls) })
    }

    fn unreachable(node: &RemoteNode, e: impl std::fmt::Display) -> ApiError {
        ApiError::unavailable(format!("cannot reach the node agent of node {:?} at {}: {e}", node.name, node.addr))
    }

    /// One request to the node's agent; its answer's body on success, its `Status` kept otherwise.
    pub async fn call(&self, node: &RemoteNode, method: reqwest::Method, path: &str) -> ApiResult<String> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .resolve(&node.name, node.addr)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| ApiError::internal(format!("node client: {e}")))?;
        let url = format!("https://{}:{}{path}", node.name, node.addr.port());
        let response = client.request(method, url).send().await.map_err(|e| Self::unreachable(node, e))?;
        let code = response.status().as_u16();
        let body = response.text().await.map_err(|e| Self::unreachable(node, e))?;
        match code {
            200..=299 => Ok(body),
            _ => Err(answered_error(code, &body)),
        }
    }

    /// An upload's body to the node's agent, streamed; no limit on the whole (an image takes as
    /// long as it takes), only on connecting.
    pub async fn upload(&self, node: &RemoteNode, path: &str, body: reqwest::Body) -> ApiResult<()> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .resolve(&node.name, node.addr)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ApiError::internal(format!("node client: {e}")))?;
        let url = format!("https://{}:{}{path}", node.name, node.addr.port());
        let response = client.put(url).body(body).send().await.map_err(|e| Self::unreachable(node, e))?;
        let code = response.status().as_u16();
        let text = response.text().await.map_err(|e| Self::unreachable(node, e))?;
        match code {
            200..=299 => Ok(()),
            _ => Err(answered_error(code, &text)),
        }
    }

    /// A `plain.kubevirt.io` websocket to the node's agent.
    pub async fn websocket(&self, node: &RemoteNode, path: &str) -> ApiResult<NodeSocket> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(node.addr))
            .await
            .map_err(|_| Self::unreachable(node, "timed out"))?
            .map_err(|e| Self::unreachable(node, e))?;
        let server_name = rustls::pki_types::ServerName::try_from(node.name.clone())
            .map_err(|e| ApiError::internal(format!("node name as a TLS name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| Self::unreachable(node, e))?;
        let url = format!("wss://{}:{}{path}", node.name, node.addr.port());
        let mut request = url.as_str().into_client_request().map_err(|e| ApiError::internal(e.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static(crate::console::PLAIN_PROTOCOL),
        );
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
                Err(answered_error(resp.status().as_u16(), &body))
            }
            Err(e) => Err(Self::unreachable(node, e)),
        }
    }
}

/// What a node answered, as an error of this server: its `Status` where it sent one.
fn answered_error(code: u16, body: &str) -> ApiError {
    match serde_json::from_str::<Value>(body) {
        Ok(status) if status.get("kind").and_then(Value::as_str) == Some("Status") => ApiError::from_status(
            code,
            status.get("reason").and_then(Value::as_str).unwrap_or(""),
            status.get("message").and_then(Value::as_str).unwrap_or(""),
        ),
        _ => ApiError::from_status(502, "", format!("the node agent answered {code}: {}", body.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(port: Value, addresses: Value) -> Value {
        json!({"metadata": {"name": "n2"}, "status": {"addresses": addresses, "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})
    }

    #[test]
    fn a_node_is_reached_at_its_internal_ip_and_published_port() {
        let addrs =
            json!([{"type": "Hostname", "address": "evil.example"}, {"type": "InternalIP", "address": "10.0.0.7"}]);
        let remote = RemoteNode::from_node(&node(json!(10250), addrs.clone())).expect("reachable");
        assert_eq!(remote, RemoteNode { name: "n2".into(), addr: "10.0.0.7:10250".parse().expect("addr") });
        assert!(RemoteNode::from_node(&node(json!(0), addrs.clone())).is_err(), "the agent inside serve publishes 0");
        assert!(RemoteNode::from_node(&node(json!(70000), addrs.clone())).is_err());
        assert!(RemoteNode::from_node(&node(json!("10250"), addrs)).is_err());
        let by_name_only = json!([{"type": "InternalIP", "address": "node2.example"}]);
        assert!(RemoteNode::from_node(&node(json!(10250), by_name_only)).is_err(), "never resolved");
    }

    #[test]
    fn a_nodes_status_answer_is_kept() {
        let e = answered_error(404, r#"{"kind":"Status","code":404,"reason":"NotFound","message":"no domain"}"#);
        assert_eq!((e.code, e.message.as_str()), (404, "no domain"));
        assert_eq!(answered_error(500, "boom").code, 502);
    }
}
