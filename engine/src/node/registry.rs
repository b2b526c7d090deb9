//! Pulls container images from OCI registries (with `oci-client`) into the node's image store:
//! the manifest and layers become a one-image OCI layout, which the store unpacks by digest as
//! it does for `converge image import`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};

use super::images::{ImageError, ImageStore};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {0:?}: {1}")]
    BadReference(String, String),
    #[error("pulling {0}: {1}")]
    Pull(String, String),
    #[error(transparent)]
    Store(#[from] ImageError),
    #[error("image store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("registry {0}: {1}")]
    Refused(String, String),
}

/// A registry a tenant names must not be on a loopback, link-local or metadata address, unless
/// the admin listed it (`--insecure-registry`): the node pulls as root on the host's network.
/// Checked before each pull; blob redirects that oci-client follows itself are not seen here.
pub async fn check_registry_address(registry: &str, insecure: &[String]) -> Result<(), RegistryError> {
    if insecure.iter().any(|r| r == registry) {
        return Ok(());
    }
    // `host`, `host:port` or `[v6]:port`, as a URL authority reads them.
    let authority = url::Url::parse(&format!("https://{registry}/"))
        .map_err(|e| RegistryError::BadReference(registry.to_string(), e.to_string()))?;
    let host = authority.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| RegistryError::Pull(registry.to_string(), format!("cannot resolve {host}: {e}")))?;
    for a in addrs {
        if crate::storage::safety::private_address(a.ip()) {
            return Err(RegistryError::Refused(
                registry.to_string(),
                format!("resolves to {}, a loopback, link-local or metadata address (an admin may list it with --insecure-registry)", a.ip()),
            ));
        }
    }
    Ok(())
}

/// Credentials for one registry.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// The registry part of a reference (`127.0.0.1:5000`, `docker.io`).
pub fn registry_of(reference: &str) -> Result<String, RegistryError> {
    let r = parse(reference)?;
    Ok(r.resolve_registry().to_string())
}

fn parse(reference: &str) -> Result<Reference, RegistryError> {
    let trimmed = reference.strip_prefix("docker://").unwrap_or(reference);
    Reference::try_from(trimmed).map_err(|e| RegistryError::BadReference(reference.to_string(), e.to_string()))
}

/// Credentials for `registry` from a `kubernetes.io/dockerconfigjson` (or legacy `.dockercfg`)
/// Secret's data, or from CDI's `accessKeyId` / `secretKey` pair.
pub fn credentials_from_secret(data: &BTreeMap<String, Vec<u8>>, registry: &str) -> Option<Credentials> {
    if let (Some(user), Some(pass)) = (data.get("accessKeyId"), data.get("secretKey")) {
        let text = |b: &Vec<u8>| String::from_utf8_lossy(b).trim().to_string();
        return Some(Credentials { username: text(user), password: text(pass) });
    }
    let doc: Value = [".dockerconfigjson", ".dockercfg"]
        .iter()
        .find_map(|k| data.get(*k))
        .and_then(|raw| serde_json::from_slice(raw).ok())?;
    let auths = doc.get("auths").unwrap_or(&doc).as_object()?;
    let entry = auths.iter().find(|(k, _)| {
        let host = k.trim_start_matches("https://").trim_start_matches("http://");
        host.split('/').next() == Some(registry)
    })?;
    let e = entry.1;
    if let (Some(u), Some(p)) = (e.get("username").and_then(Value::as_str), e.get("password").and_then(Value::as_str)) {
        return Some(Credentials { username: u.into(), password: p.into() });
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(e.get("auth")?.as_str()?).ok()?;
    let (u, p) = String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some(Credentials { username: u, password: p })
}

fn client(insecure: &[String]) -> Client {
    Client::new(ClientConfig { protocol: ClientProtocol::HttpsExcept(insecure.to_vec()), ..ClientConfig::default() })
}

fn auth(creds: Option<&Credentials>) -> RegistryAuth {
    match creds {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// The digest the registry has for `reference` now.
pub async fn remote_digest(
    reference: &str,
    creds: Option<&Credentials>,
    insecure: &[String],
) -> Result<String, RegistryError> {
    let r = parse(reference)?;
    check_registry_address(r.resolve_registry(), insecure).await?;
    client(insecure)
        .fetch_manifest_digest(&r, &auth(creds))
        .await
        .map_err(|e| RegistryError::Pull(reference.to_string(), e.to_string()))
}

/// Pulls `reference` into `store` under that name; returns the manifest digest.
pub async fn pull(
    store: &ImageStore,
    scratch: &Path,
    reference: &str,
    creds: Option<&Credentials>,
    insecure: &[String],
) -> Result<String, RegistryError> {
    let r = parse(reference)?;
    check_registry_address(r.resolve_registry(), insecure).await?;
    let c = client(insecure);
    let pull_err =
        |e: oci_client::errors::OciDistributionError| RegistryError::Pull(reference.to_string(), e.to_string());
    let (manifest, digest) = c.pull_image_manifest(&r, &auth(creds)).await.map_err(pull_err)?;
    std::fs::create_dir_all(scratch)?;
    let layout = tempfile::tempdir_in(scratch)?;
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for layer in &manifest.layers {
        let hex =
            layer.digest.strip_prefix("sha256:").filter(|h| h.chars().all(|c| c.is_ascii_hexdigit())).ok_or_else(
                || RegistryError::Pull(reference.to_string(), format!("unsupported layer digest {}", layer.digest)),
            )?;
        let file = tokio::fs::File::create(blobs.join(hex)).await?;
        c.pull_blob(&r, layer, file).await.map_err(pull_err)?;
    }
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| RegistryError::Pull(reference.to_string(), e.to_string()))?;
    let manifest_hex = digest.strip_prefix("sha256:").unwrap_or(&digest);
    std::fs::write(blobs.join(manifest_hex), &manifest_bytes)?;
    std::fs::write(layout.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": manifest_bytes.len(),
    }]});
    std::fs::write(layout.path().join("index.json"), index.to_string())?;
    store.import(layout.path(), Some(reference))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_docker_config_secrets() {
        let cfg = json!({"auths": {"127.0.0.1:5000": {"auth": base64::engine::general_purpose::STANDARD.encode("alice:s3cret")}}});
        let data = BTreeMap::from([(".dockerconfigjson".to_string(), cfg.to_string().into_bytes())]);
        let c = credentials_from_secret(&data, "127.0.0.1:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "s3cret"));
        assert!(credentials_from_secret(&data, "other:5000").is_none());
        let cdi =
            BTreeMap::from([("accessKeyId".to_string(), b"bob".to_vec()), ("secretKey".to_string(), b"pw".to_vec())]);
        assert_eq!(credentials_from_secret(&cdi, "any").unwrap().username, "bob");
        assert_eq!(registry_of("docker://127.0.0.1:5000/disks/a:1").unwrap(), "127.0.0.1:5000");
    }
}
