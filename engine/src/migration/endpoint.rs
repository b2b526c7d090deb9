//! What a node publishes so that guests can migrate to it: where its libvirtd is reached, where
//! its QEMUs listen, and its layout (state directory, domain name prefix), for the source to
//! name the target's files and domain. On the Node (which only the node itself and admins
//! write), in one annotation, parsed before anyone acts on it.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const ANNOTATION: &str = "converge.dev/migration-endpoint";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The node's libvirtd as a peer libvirtd reaches it.
    #[serde(rename = "libvirtURI")]
    pub libvirt_uri: String,
    /// Where its QEMUs listen for incoming guests.
    pub address: IpAddr,
    pub state_dir: PathBuf,
    pub domain_prefix: String,
    /// The node namespace of its pod network, when it has one: the guest's taps there are named
    /// from it (`network::names::tap`), so the source names them in the target's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("the node publishes no migration endpoint (its agent runs without --migration-uri)")]
    Missing,
    #[error("the node's migration endpoint is malformed: {0}")]
    Malformed(String),
}

/// Schemes a peer libvirtd may be reached by: a local socket, TLS, or SSH; plain TCP is
/// libvirt's unauthenticated transport, refused.
const SCHEMES: [&str; 3] = ["qemu+unix://", "qemu+tls://", "qemu+ssh://"];

fn safe_path(path: &Path) -> bool {
    path.is_absolute()
        && path.as_os_str().len() <= 512
        && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.to_str().is_some_and(|s| !s.chars().any(|c| c.is_control() || "'\"<>&".contains(c)))
}

impl Endpoint {
    pub fn validate(&self) -> Result<(), EndpointError> {
        let bad = |m: &str| Err(EndpointError::Malformed(m.to_string()));
        let uri = &self.libvirt_uri;
        if uri.len() > 1024 || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("libvirtURI has spaces or is too long");
        }
        let Some(scheme) = SCHEMES.iter().find(|s| uri.starts_with(**s)) else {
            return bad("libvirtURI must be qemu+unix://, qemu+tls:// or qemu+ssh://");
        };
        if *scheme == "qemu+unix://" {
            let socket = uri.strip_prefix("qemu+unix:///system?socket=").map(Path::new);
            if !socket.is_some_and(safe_path) {
                return bad("a qemu+unix libvirtURI must be qemu+unix:///system?socket=/absolute/path");
            }
        } else if uri[scheme.len()..].starts_with('/') {
            return bad("libvirtURI names no host");
        }
        if !safe_path(&self.state_dir) {
            return bad("stateDir must be an absolute path without .. or quotes");
        }
        if self.domain_prefix.len() > 63
            || !self.domain_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("domainPrefix may hold letters, digits, -, _ and . only");
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            return bad("address must be a unicast address");
        }
        let namespace_ok = |n: &String| {
            !n.is_empty() && n.len() <= 63 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !self.network_namespace.as_ref().is_none_or(namespace_ok) {
            return bad("networkNamespace may hold letters, digits, -, _ and . only");
        }
        Ok(())
    }

    /// Whether guests come to this node encrypted: a node whose libvirtd peers reach over TLS
    /// has its QEMUs take the guest's memory and disks over TLS too (their certificates are of
    /// the same CA, as KubeVirt's virt-handlers' are), never in the clear beside it.
    pub fn stream_over_tls(&self) -> bool {
        self.libvirt_uri.starts_with("qemu+tls://")
    }

    /// The endpoint a Node publishes.
    pub fn of_node(node: &Value) -> Result<Endpoint, EndpointError> {
        let text = node
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ANNOTATION))
            .and_then(Value::as_str)
            .ok_or(EndpointError::Missing)?;
        let endpoint: Endpoint = serde_json::from_str(text).map_err(|e| EndpointError::Malformed(e.to_string()))?;
        endpoint.validate()?;
        Ok(endpoint)
    }

    pub fn annotation_value(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn endpoint() -> Endpoint {
        Endpoint {
            libvirt_uri: "qemu+unix:///system?socket=/run/converge-libvirt/b/sock/libvirt-sock".into(),
            address: "127.0.0.1".parse().unwrap(),
            state_dir: "/var/lib/converge/b".into(),
            domain_prefix: "b-".into(),
            network_namespace: Some("cvb".into()),
        }
    }

    #[test]
    fn a_published_endpoint_reads_back() {
        let e = endpoint();
        let node = json!({"metadata": {"annotations": {ANNOTATION: e.annotation_value()}}});
        assert_eq!(Endpoint::of_node(&node), Ok(e));
        assert_eq!(Endpoint::of_node(&json!({"metadata": {}})), Err(EndpointError::Missing));
    }

    #[test]
    fn what_a_source_would_act_on_is_checked() {
        type Change = Box<dyn Fn(&mut Endpoint)>;
        let cases: Vec<(&str, Change)> = vec![
            ("plain tcp", Box::new(|e| e.libvirt_uri = "qemu+tcp://10.0.0.2/system".into())),
            ("relative socket", Box::new(|e| e.libvirt_uri = "qemu+unix:///system?socket=sock".into())),
            ("dotdot socket", Box::new(|e| e.libvirt_uri = "qemu+unix:///system?socket=/run/../etc/x".into())),
            ("no host", Box::new(|e| e.libvirt_uri = "qemu+tls:///system".into())),
            ("space", Box::new(|e| e.libvirt_uri = "qemu+tls://a b/system".into())),
            ("relative dir", Box::new(|e| e.state_dir = "var/lib".into())),
            ("dotdot dir", Box::new(|e| e.state_dir = "/var/lib/../../etc".into())),
            ("quote in dir", Box::new(|e| e.state_dir = "/var/lib/x'".into())),
            ("prefix", Box::new(|e| e.domain_prefix = "a/b".into())),
            ("address", Box::new(|e| e.address = "0.0.0.0".parse().unwrap())),
            ("namespace", Box::new(|e| e.network_namespace = Some("a b".into()))),
            ("empty namespace", Box::new(|e| e.network_namespace = Some(String::new()))),
        ];
        for (what, change) in cases {
            let mut e = endpoint();
            change(&mut e);
            assert!(e.validate().is_err(), "{what} accepted");
        }
        let mut e = endpoint();
        assert!(!e.stream_over_tls(), "a local socket: one machine");
        e.libvirt_uri = "qemu+tls://node-b.example/system".into();
        assert_eq!(e.validate(), Ok(()));
        assert!(e.stream_over_tls(), "a libvirtd reached over TLS takes its guests over TLS");
        let node = json!({"metadata": {"annotations": {ANNOTATION: "{\"libvirtURI\": 1}"}}});
        assert!(matches!(Endpoint::of_node(&node), Err(EndpointError::Malformed(_))));
    }
}
