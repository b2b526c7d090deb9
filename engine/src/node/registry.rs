//! Pulls container images from OCI registries (with `oci-client`) into the node's image store:
//! the manifest and layers become a one-image OCI layout, which the store unpacks by digest as
//! it does for `converge image import`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use oci_client::Reference;
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

/// Credentials for one registry (no Debug: a password must not reach a log line).
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

/// A distribution client for `reference`'s repository; a registry the admin listed is spoken
/// to over plain HTTP and may be on a private address.
fn client_for(
    r: &Reference,
    creds: Option<&Credentials>,
    insecure: &[String],
) -> Result<super::distribution::Client, RegistryError> {
    let registry = r.resolve_registry();
    let listed = insecure.iter().any(|i| i == registry);
    super::distribution::Client::new(registry, r.repository(), creds, listed)
}

/// What a reference names in its repository: its digest if pinned, else its tag.
fn tag_or_digest(r: &Reference) -> String {
    r.digest().map(str::to_string).unwrap_or_else(|| r.tag().unwrap_or("latest").to_string())
}

/// The digest the registry has for `reference` now.
pub async fn remote_digest(
    reference: &str,
    creds: Option<&Credentials>,
    insecure: &[String],
) -> Result<String, RegistryError> {
    let r = parse(reference)?;
    client_for(&r, creds, insecure)?.digest(&tag_or_digest(&r)).await
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
    let mut c = client_for(&r, creds, insecure)?;
    let manifest = c.image_manifest(&tag_or_digest(&r)).await?;
    std::fs::create_dir_all(scratch)?;
    let layout = tempfile::tempdir_in(scratch)?;
    let blobs = layout.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for layer in manifest.json.get("layers").and_then(Value::as_array).into_iter().flatten() {
        let digest = layer.get("digest").and_then(Value::as_str).unwrap_or_default();
        let hex = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
        let hex = hex.ok_or_else(|| {
            RegistryError::Pull(reference.to_string(), format!("unsupported layer digest {digest:?}"))
        })?;
        c.blob_to_file(digest, &blobs.join(hex)).await?;
    }
    let manifest_hex = manifest.digest.strip_prefix("sha256:").unwrap_or(&manifest.digest);
    std::fs::write(blobs.join(manifest_hex), &manifest.bytes)?;
    std::fs::write(layout.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest.digest,
        "size": manifest.bytes.len(),
    }]});
    std::fs::write(layout.path().join("index.json"), index.to_string())?;
    store.import(layout.path(), Some(reference))?;
    Ok(manifest.digest)
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
