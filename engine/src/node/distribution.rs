//! The OCI distribution protocol's pull side, over reqwest with the importer's connection
//! rules: every host the node connects to — the registry, its token service, the storage a
//! blob redirects to — is resolved through `CheckedResolver` and refused when it is a loopback,
//! link-local or metadata address, unless the admin listed the registry (`--insecure-registry`,
//! which also means plain HTTP). Manifests and blobs are verified against their digests.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::registry::{Credentials, RegistryError};
use crate::storage::sources;

pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A manifest as the registry sent it: its bytes are what its digest names.
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub json: Value,
}

/// `Bearer realm="…",service="…",scope="…"` → (realm, service, scope).
pub fn bearer_challenge(header: &str) -> Option<(String, Option<String>, Option<String>)> {
    let rest = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut realm = None;
    let (mut service, mut scope) = (None, None);
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_string();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let v = chars.by_ref().take_while(|c| *c != '"').collect();
            let _ = chars.by_ref().take_while(|c| *c != ',').count();
            v
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_string()
        };
        match key.as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some((realm?, service, scope))
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    repository: String,
    creds: Option<Credentials>,
    bearer: Option<String>,
}

impl Client {
    /// A client for `repository` on `registry`; `listed`: the admin named this registry.
    pub fn new(
        registry: &str,
        repository: &str,
        creds: Option<&Credentials>,
        listed: bool,
    ) -> Result<Client, RegistryError> {
        let refused = |m: String| RegistryError::Refused(registry.to_string(), m);
        let authority = url::Url::parse(&format!("https://{registry}/"))
            .map_err(|e| RegistryError::BadReference(registry.to_string(), e.to_string()))?;
        // A literal address is never resolved, so the resolver cannot see it: checked here.
        let literal = matches!(authority.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        if literal && !listed && crate::storage::safety::private_host(authority.host()) {
            let host = authority.host_str().unwrap_or_default();
            return Err(refused(format!(
                "{host} is a loopback, link-local or metadata address (an admin may list it with --insecure-registry)"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .no_proxy()
            .redirect(sources::checked_redirects(listed));
        if !listed {
            builder = builder.dns_resolver(std::sync::Arc::new(sources::CheckedResolver));
        }
        let http = builder.build().map_err(|e| RegistryError::Pull(registry.to_string(), e.to_string()))?;
        let scheme = if listed { "http" } else { "https" };
        Ok(Client {
            http,
            base: format!("{scheme}://{registry}"),
            repository: repository.to_string(),
            creds: creds.cloned(),
            bearer: None,
        })
    }

    fn err(&self, message: impl Into<String>) -> RegistryError {
        RegistryError::Pull(format!("{}/{}", self.base, self.repository), message.into())
    }

    async fn send(&mut self, method: Method, url: &str, accept: &[&str]) -> Result<reqwest::Response, RegistryError> {
        for attempt in 0..2 {
            let mut req = self.http.request(method.clone(), url);
            if !accept.is_empty() {
                req = req.header(ACCEPT, accept.join(", "));
            }
            req = match (&self.bearer, &self.creds) {
                (Some(token), _) => req.header(AUTHORIZATION, format!("Bearer {token}")),
                (None, Some(c)) => req.basic_auth(&c.username, Some(&c.password)),
                (None, None) => req,
            };
            let resp = req.send().await.map_err(|e| self.err(sources::chain(&e)))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            self.bearer = Some(self.token(resp.headers()).await?);
        }
        Err(self.err("unauthorized"))
    }

    /// A token from the service the registry's challenge names (Docker's token protocol).
    async fn token(&self, headers: &HeaderMap) -> Result<String, RegistryError> {
        let challenge = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (realm, service, scope) =
            bearer_challenge(challenge).ok_or_else(|| self.err(format!("unauthorized ({challenge})")))?;
        let mut url = url::Url::parse(&realm).map_err(|e| self.err(format!("token realm {realm:?}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository)));
        }
        let mut req = self.http.get(url);
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().await.map_err(|e| self.err(sources::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("the token service answered {}", resp.status())));
        }
        let body: Value = resp.json().await.map_err(|e| self.err(format!("token: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.err("the token service gave no token"))
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!("{}/v2/{}/{kind}/{reference}", self.base, self.repository)
    }

    /// The digest the registry has for `reference` now (HEAD, as `crane digest` asks).
    pub async fn digest(&mut self, reference: &str) -> Result<String, RegistryError> {
        let url = self.url("manifests", reference);
        let resp = self.send(Method::HEAD, &url, MANIFEST_TYPES).await?;
        if !resp.status().is_success() {
            return Err(self.err(format!("{url}: the registry answered {}", resp.status())));
        }
        match resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            Some(d) => Ok(d.to_string()),
            None => Ok(self.manifest(reference).await?.digest),
        }
    }

    /// The manifest `reference` (a tag or a digest) names, verified when named by digest.
    pub async fn manifest(&mut self, reference: &str) -> Result<Manifest, RegistryError> {
        let url = self.url("manifests", reference);
        let resp = self.send(Method::GET, &url, MANIFEST_TYPES).await?;
        if !resp.status().is_success() {
            return Err(self.err(format!("{url}: the registry answered {}", resp.status())));
        }
        let bytes = resp.bytes().await.map_err(|e| self.err(sources::chain(&e)))?.to_vec();
        if bytes.len() > 4 << 20 {
            return Err(self.err("the manifest is larger than 4 MiB"));
        }
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(self.err(format!("the manifest's digest is {digest}, not {reference}")));
        }
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| self.err(format!("manifest: {e}")))?;
        Ok(Manifest { bytes, digest, json })
    }

    /// The image manifest for linux/amd64: the manifest itself, or the one its index names.
    pub async fn image_manifest(&mut self, reference: &str) -> Result<Manifest, RegistryError> {
        let m = self.manifest(reference).await?;
        let Some(entries) = m.json.get("manifests").and_then(Value::as_array) else { return Ok(m) };
        fn platform<'a>(e: &'a Value, key: &str) -> Option<&'a str> {
            e.get("platform").and_then(|p| p.get(key)).and_then(Value::as_str)
        }
        let chosen = entries
            .iter()
            .find(|e| platform(e, "os") == Some("linux") && platform(e, "architecture") == Some("amd64"))
            .or_else(|| entries.first())
            .and_then(|e| e.get("digest").and_then(Value::as_str))
            .map(str::to_string)
            .ok_or_else(|| self.err("the image index lists no linux/amd64 image"))?;
        self.manifest(&chosen).await
    }

    /// Streams blob `digest` into `path`, refusing it unless its bytes hash to that digest.
    pub async fn blob_to_file(&mut self, digest: &str, path: &Path) -> Result<(), RegistryError> {
        let url = self.url("blobs", digest);
        let resp = self.send(Method::GET, &url, &[]).await?;
        if !resp.status().is_success() {
            return Err(self.err(format!("{url}: the registry answered {}", resp.status())));
        }
        let mut file = tokio::fs::File::create(path).await?;
        let mut hasher = Sha256::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(sources::chain(&e)))?;
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            let _ = tokio::fs::remove_file(path).await;
            return Err(self.err(format!("blob {digest} arrived as {got}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        let (realm, service, scope) = bearer_challenge(h).expect("a challenge");
        assert_eq!(realm, "https://auth.docker.io/token");
        assert_eq!(service.as_deref(), Some("registry.docker.io"));
        assert_eq!(scope.as_deref(), Some("repository:library/busybox:pull"));
        assert!(bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert_eq!(bearer_challenge("Bearer realm=https://t/token").map(|c| c.0), Some("https://t/token".into()));
    }

    #[test]
    fn registries_on_private_addresses_are_refused_unless_listed() {
        for registry in ["127.0.0.1:5000", "169.254.169.254", "[::1]:5000"] {
            assert!(matches!(Client::new(registry, "x", None, false), Err(RegistryError::Refused(..))), "{registry}");
            assert!(Client::new(registry, "x", None, true).is_ok(), "{registry} listed");
        }
        assert!(Client::new("registry.example", "x", None, false).is_ok(), "names are checked at connect time");
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_connect_time() {
        let mut c = Client::new("localhost:1", "x", None, false).expect("client");
        let err = c.manifest("v1").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("loopback"), "{err}");
    }
}
