//! The webhooks' certificate on a Kubernetes cluster, as KubeVirt's operator keeps virt-api's:
//! a CA in a Secret of Converge's namespace (made by the first start, kept by the next ones, so
//! the apiserver's trust survives restarts), a serving certificate it signs at every start, and
//! the CA written into the webhook configurations' `caBundle`.

use crate::pki;
use base64::Engine;
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::cluster::Cluster;
use converge_engine::error::ApiError;
use converge_engine::kinds;
use serde_json::{json, Value};

/// The Secret holding the CA.
pub const SECRET: &str = "converge-api-ca";
/// The Service in front of the aggregated API (and, in the cluster, the webhooks).
pub const SERVICE: &str = "converge-api";
/// The name of both webhook configurations.
pub const WEBHOOKS: &str = "converge-webhooks";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the webhooks' CA Secret: {0}")]
    Secret(ApiError),
    #[error("the webhooks' certificate: {0}")]
    Certificate(#[from] pki::PkiError),
    #[error("writing the CA into {0}: {1}")]
    Bundle(String, String),
}

fn decoded(secret: &Value, key: &str) -> Option<String> {
    let text = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}

/// The names the serving certificate answers to: the Service's DNS names, then `extra` (the
/// address of a `url:` client config, for controllers run outside the cluster).
pub fn names(namespace: &str, extra: &[String]) -> Vec<String> {
    let mut out = vec![format!("{SERVICE}.{namespace}.svc"), format!("{SERVICE}.{namespace}.svc.cluster.local")];
    out.extend(extra.iter().cloned());
    out
}

/// The CA from the Secret (made and stored on first start; a racing start's Secret wins) and a
/// serving certificate for `sans`.
pub async fn certificate(
    cluster: &KubeCluster,
    namespace: &str,
    sans: &[String],
) -> Result<pki::KeptAuthority, TlsError> {
    for _ in 0..3 {
        if let Some(secret) = cluster.get(&kinds::SECRET, namespace, SECRET).await.map_err(TlsError::Secret)? {
            let key = decoded(&secret, "ca.key").ok_or_else(|| {
                TlsError::Secret(ApiError::internal(format!("Secret {namespace}/{SECRET} has no ca.key")))
            })?;
            return Ok(pki::serving_from_kept_ca(Some(&key), sans)?);
        }
        let fresh = pki::serving_from_kept_ca(None, sans)?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "converge"}},
            "type": "Opaque",
            "data": {"ca.key": b64(&fresh.ca_key_pem), "ca.crt": b64(&fresh.ca_pem)},
        });
        match cluster.create(&kinds::SECRET, secret).await {
            Ok(_) => return Ok(fresh),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(TlsError::Secret(e)),
        }
    }
    Err(TlsError::Secret(ApiError::unavailable("the CA Secret kept changing")))
}

/// Writes `ca_pem` into every webhook of both configurations and into the APIServices, those
/// that exist (a JSON merge patch cannot reach into a list, so each is read and replaced).
pub async fn inject_ca_bundle(cluster: &KubeCluster, ca_pem: &str) -> Result<(), TlsError> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut paths: Vec<String> = ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"]
        .iter()
        .map(|plural| format!("/apis/admissionregistration.k8s.io/v1/{plural}/{WEBHOOKS}"))
        .collect();
    paths.extend(
        crate::subresources::VERSIONS
            .iter()
            .map(|v| format!("/apis/apiregistration.k8s.io/v1/apiservices/{v}.{}", crate::subresources::GROUP)),
    );
    for path in paths {
        let fail = |e: String| TlsError::Bundle(path.clone(), e);
        let mut object = match cluster.raw_get(&path).await {
            Ok(object) => object,
            // Not installed (yet): the next round looks again.
            Err(e) if e.code == 404 => continue,
            Err(e) => return Err(fail(e.message)),
        };
        let mut changed = false;
        let mut set = |client_config: &mut Value| {
            if client_config.get("caBundle").and_then(Value::as_str) != Some(bundle.as_str()) {
                client_config["caBundle"] = json!(bundle);
                changed = true;
            }
        };
        match object.get_mut("webhooks").and_then(Value::as_array_mut) {
            Some(hooks) => hooks.iter_mut().for_each(|hook| set(&mut hook["clientConfig"])),
            None => set(&mut object["spec"]),
        }
        if changed {
            cluster.raw_put(&path, &object).await.map_err(|e| fail(e.message))?;
        }
    }
    Ok(())
}
