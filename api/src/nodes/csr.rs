//! A node agent's serving certificate on a Kubernetes cluster, through the cluster's own
//! CertificateSigningRequest API, as kubelet gets its serving certificate: the agent asks with a
//! PKCS#10 request for signer `converge.dev/node-serving`, Converge's controllers (which hold
//! Converge's CA) approve and sign it when the asker may speak for that Node, and the agent reads
//! the CA it must trust from the ConfigMap the controllers publish.

use std::time::Duration;

use base64::Engine;
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::ApiError;
use serde_json::{json, Value};

use super::server::ServingKey;

/// The signer Converge's controllers serve; kube-controller-manager leaves it alone.
pub const SIGNER: &str = "converge.dev/node-serving";
/// The ConfigMap (in Converge's namespace) with the CA that signs node and API certificates.
pub const CA_CONFIG_MAP: &str = "converge-ca";
/// The subject's common name prefix, as kubelet's: `system:node:NAME`.
const NODE_PREFIX: &str = "system:node:";
/// What kube-apiserver puts in a pod-bound service account token's user info: the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
/// How long an agent waits for its certificate before giving up with the request's name.
const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the certificate request: {0}")]
    Request(String),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("CertificateSigningRequest {0} was denied: {1}")]
    Denied(String, String),
    #[error("CertificateSigningRequest {0} was not signed within {1:?}: are Converge's controllers running?")]
    Unsigned(String, Duration),
    #[error("the CA: {0}")]
    Ca(String),
}

/// What a node's request asks for, once parsed: which node, and the key to certify.
#[derive(Debug, PartialEq, Eq)]
pub struct NodeRequest {
    pub node: String,
    pub public_key: Vec<u8>,
}

/// The PKCS#10 request (PEM) for `node`'s serving certificate with `key`.
pub fn request_pem(key: &ServingKey, node: &str) -> Result<String, CsrError> {
    let mut params =
        rcgen::CertificateParams::new(vec![node.to_string()]).map_err(|e| CsrError::Request(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{NODE_PREFIX}{node}"));
    let csr = params.serialize_request(key.key_pair()).map_err(|e| CsrError::Request(e.to_string()))?;
    csr.pem().map_err(|e| CsrError::Request(e.to_string()))
}

/// Reads a request's node (from its subject, `system:node:NAME`, a valid Node name) and its
/// P-256 key. Nothing else of it is used: the certificate is made from Converge's own template.
/// kube-apiserver has checked the request's signature when it took the object.
pub fn parse_request(pem_text: &str) -> Result<NodeRequest, CsrError> {
    use rustls::pki_types::{pem::PemObject, CertificateSigningRequestDer};
    let bad = |m: &str| CsrError::Request(m.to_string());
    let der = CertificateSigningRequestDer::from_pem_slice(pem_text.as_bytes())
        .map_err(|e| CsrError::Request(format!("not a PEM CERTIFICATE REQUEST: {e}")))?;
    let der = der.as_ref().to_vec();
    let (subject, algorithm, curve, key) = yasna::parse_der(&der, |r| {
        r.read_sequence(|r| {
            let info = r.next().read_sequence(|r| {
                r.next().read_u8()?;
                let subject = r.next().read_der()?;
                let spki = r.next().read_sequence(|r| {
                    let (algorithm, curve) = r.next().read_sequence(|r| {
                        let algorithm = r.next().read_oid()?;
                        let curve = r.read_optional(|r| r.read_oid())?;
                        Ok((algorithm, curve))
                    })?;
                    let (key, _) = r.next().read_bitvec_bytes()?;
                    Ok((algorithm, curve, key))
                })?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok((subject, spki.0, spki.1, spki.2))
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(info)
        })
    })
    .map_err(|e| CsrError::Request(format!("not a PKCS#10 request: {e}")))?;
    const EC_PUBLIC_KEY: [u64; 6] = [1, 2, 840, 10045, 2, 1];
    const P256: [u64; 7] = [1, 2, 840, 10045, 3, 1, 7];
    let is_p256 = algorithm.components().as_slice() == EC_PUBLIC_KEY
        && curve.as_ref().is_some_and(|c| c.components().as_slice() == P256);
    if !is_p256 {
        return Err(bad("the key must be an ECDSA P-256 key"));
    }
    crate::pki::P256PublicKey::parse(&key).map_err(|e| CsrError::Request(e.to_string()))?;
    let cn = crate::extension::front_proxy::common_name_of_name(&subject).ok_or_else(|| bad("no common name"))?;
    let node = cn.strip_prefix(NODE_PREFIX).ok_or_else(|| bad("the common name must be system:node:NAME"))?;
    if !converge_engine::meta::dns1123_subdomain_errors(node).is_empty() {
        return Err(CsrError::Request(format!("{node:?} is not a valid Node name")));
    }
    Ok(NodeRequest { node: node.to_string(), public_key: key })
}

/// Whether the CSR object is still waiting for an answer (neither signed nor refused).
pub fn pending(csr: &Value) -> bool {
    let signed = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    let settled = conditions(csr).any(|(t, _)| t == "Denied" || t == "Failed");
    !signed && !settled
}

pub fn approved(csr: &Value) -> bool {
    conditions(csr).any(|(t, s)| t == "Approved" && s == "True")
}

fn conditions(csr: &Value) -> impl Iterator<Item = (&str, &str)> {
    csr.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().map(|c| {
        (c.get("type").and_then(Value::as_str).unwrap_or(""), c.get("status").and_then(Value::as_str).unwrap_or(""))
    })
}

/// A pod-bound token names the node its pod runs on: such an asker speaks for that node alone.
pub fn bound_node(csr: &Value) -> Option<Vec<String>> {
    let values = csr.pointer(&format!("/spec/extra/{}", NODE_NAME_EXTRA.replace('/', "~1")))?.as_array()?;
    Some(values.iter().filter_map(Value::as_str).map(str::to_string).collect())
}

/// The node's side: asks for a certificate for `key`, waits for the controllers to sign it,
/// and answers the certificate (PEM).
pub async fn obtain(cluster: &KubeCluster, node: &str, key: &ServingKey) -> Result<String, CsrError> {
    let request = request_pem(key, node)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&request);
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": format!("converge-node-{node}-"), "labels": {"app.kubernetes.io/part-of": "converge"}},
        "spec": {"request": b64, "signerName": SIGNER, "usages": ["digital signature", "server auth"],
                 "expirationSeconds": 365 * 24 * 3600},
    });
    let created = cluster.raw_post(CSRS, &csr).await?;
    let name = created.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    tracing::info!(csr = %name, "asked for this node's serving certificate");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let current = cluster.raw_get(&format!("{CSRS}/{name}")).await?;
        if let Some(cert) = current.pointer("/status/certificate").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(cert)
                .map_err(|e| CsrError::Request(format!("the issued certificate is not base64: {e}")))?;
            return String::from_utf8(pem).map_err(|e| CsrError::Request(e.to_string()));
        }
        if !pending(&current) {
            let why = current.pointer("/status/conditions/0/message").and_then(Value::as_str).unwrap_or("");
            return Err(CsrError::Denied(name, why.to_string()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CsrError::Unsigned(name, WAIT));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The CA the controllers publish in `namespace` (waiting for their first start).
pub async fn published_ca(cluster: &KubeCluster, namespace: &str) -> Result<String, CsrError> {
    let path = format!("/api/v1/namespaces/{namespace}/configmaps/{CA_CONFIG_MAP}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match cluster.raw_get(&path).await {
            Ok(cm) => {
                let ca = cm.pointer("/data/ca.crt").and_then(Value::as_str).unwrap_or("");
                crate::pki::roots(ca).map_err(|e| CsrError::Ca(e.to_string()))?;
                return Ok(ca.to_string());
            }
            Err(e) if e.code == 404 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => return Err(CsrError::Ca(format!("ConfigMap {namespace}/{CA_CONFIG_MAP}: {}", e.message))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_request_names_the_node_and_its_key() {
        let key = ServingKey::generate().expect("key");
        let pem = request_pem(&key, "node-a").expect("request");
        let parsed = parse_request(&pem).expect("parsed");
        assert_eq!(parsed.node, "node-a");
        assert_eq!(parsed.public_key, key.key_pair().public_key_raw());
    }

    #[test]
    fn other_requests_are_refused() {
        let key = ServingKey::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["node-a".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
        let not_a_node = params.serialize_request(key.key_pair()).expect("csr").pem().expect("pem");
        assert!(parse_request(&not_a_node).is_err());
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:../etc");
        let bad_name = params.serialize_request(key.key_pair()).expect("csr").pem().expect("pem");
        assert!(parse_request(&bad_name).is_err());
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:node-a");
        let other_key = params.serialize_request(&rsa).expect("csr").pem().expect("pem");
        assert!(parse_request(&other_key).is_err(), "only P-256");
        assert!(
            parse_request("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n").is_err()
        );
        assert!(parse_request("hello").is_err());
    }

    #[test]
    fn a_csr_is_pending_until_signed_or_refused() {
        let fresh = json!({"status": {}});
        assert!(pending(&fresh) && !approved(&fresh));
        let approved_only = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        assert!(pending(&approved_only) && approved(&approved_only));
        assert!(!pending(&json!({"status": {"certificate": "AAAA"}})));
        assert!(!pending(&json!({"status": {"conditions": [{"type": "Denied", "status": "True"}]}})));
        let bound = json!({"spec": {"extra": {NODE_NAME_EXTRA: ["node-a"]}}});
        assert_eq!(bound_node(&bound), Some(vec!["node-a".to_string()]));
        assert_eq!(bound_node(&fresh), None);
    }
}
