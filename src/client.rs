//! A small client for the verbs that talk to a running server, configured by a kubeconfig.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

pub struct Client {
    pub server: String,
    pub token: String,
    http: reqwest::Client,
    /// PEM of the cluster CA from the kubeconfig, for websocket connections.
    pub ca_pem: Option<Vec<u8>>,
    /// The kubeconfig context's namespace.
    pub namespace: Option<String>,
}

/// A token to issue (`/converge/v1/tokens`).
pub struct TokenRequest<'a> {
    pub role: &'a str,
    pub node: Option<&'a str>,
    pub namespaces: &'a [String],
    pub ttl_seconds: i64,
    pub subject: Option<&'a str>,
}

/// What a kubeconfig's current context points at, read as kubectl reads it.
#[derive(Debug, Default, PartialEq)]
pub struct KubeconfigTarget {
    pub server: String,
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub namespace: Option<String>,
}

fn named<'a>(doc: &'a serde_yaml::Value, list: &str, name: &str, inner: &str) -> Option<&'a serde_yaml::Value> {
    doc.get(list)?.as_sequence()?.iter().find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name))?.get(inner)
}

/// current-context → its cluster (server, CA data or file) and user (token or tokenFile).
pub fn read_kubeconfig(text: &str, base: &Path) -> Result<KubeconfigTarget> {
    use base64::Engine;
    let doc: serde_yaml::Value = serde_yaml::from_str(text).context("kubeconfig is not YAML")?;
    let str_of = |v: Option<&serde_yaml::Value>, key: &str| {
        v.and_then(|v| v.get(key)).and_then(|s| s.as_str()).map(str::to_string)
    };
    let current = doc.get("current-context").and_then(|c| c.as_str()).unwrap_or("");
    let context = named(&doc, "contexts", current, "context")
        .or_else(|| doc.get("contexts")?.as_sequence()?.first()?.get("context"));
    let cluster_name = str_of(context, "cluster").unwrap_or_default();
    let user_name = str_of(context, "user").unwrap_or_default();
    let cluster = named(&doc, "clusters", &cluster_name, "cluster")
        .or_else(|| doc.get("clusters")?.as_sequence()?.first()?.get("cluster"));
    let user =
        named(&doc, "users", &user_name, "user").or_else(|| doc.get("users")?.as_sequence()?.first()?.get("user"));
    let server = str_of(cluster, "server").context("kubeconfig: the current context's cluster has no server")?;
    let relative = |p: String| if Path::new(&p).is_absolute() { p.into() } else { base.join(p) };
    let ca_pem = match (str_of(cluster, "certificate-authority-data"), str_of(cluster, "certificate-authority")) {
        (Some(data), _) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("certificate-authority-data is not base64")?,
        ),
        (None, Some(file)) => Some(std::fs::read(relative(file)).context("reading certificate-authority")?),
        (None, None) => None,
    };
    let token = match (str_of(user, "token"), str_of(user, "tokenFile")) {
        (Some(t), _) => Some(t),
        (None, Some(file)) => {
            Some(std::fs::read_to_string(relative(file)).context("reading tokenFile")?.trim().to_string())
        }
        (None, None) => None,
    };
    Ok(KubeconfigTarget { server, token, ca_pem, namespace: str_of(context, "namespace") })
}

impl Client {
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let target = read_kubeconfig(&text, path.parent().unwrap_or(Path::new(".")))?;
        let token = target.token.context("kubeconfig: the current context's user has no token")?;
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(pem) = &target.ca_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        Ok(Client {
            server: target.server,
            token,
            http: builder.build()?,
            ca_pem: target.ca_pem,
            namespace: target.namespace,
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// POST a JSON object; the created object back.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.server)).json(body)).await
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("talking to {}", self.server))
    }

    /// GET a JSON object; `None` on 404.
    pub async fn get_json(&self, path: &str) -> Result<Option<Value>> {
        let resp = self.get(path).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{}: {}", status, body.get("message").and_then(Value::as_str).unwrap_or("request failed"));
        }
        Ok(Some(body))
    }

    /// PUT to a subresource; 2xx with any (or no) body is success.
    pub async fn put(&self, path: &str, body: &Value) -> Result<()> {
        let resp = self
            .http
            .put(format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("talking to {}", self.server))?;
        let status = resp.status();
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("{}", body.get("message").and_then(Value::as_str).unwrap_or(status.as_str()));
        }
        Ok(())
    }

    /// A JSON merge patch; the patched object back.
    pub async fn merge_patch(&self, path: &str, body: &Value) -> Result<Value> {
        let req = self
            .http
            .patch(format!("{}{path}", self.server))
            .header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json")
            .body(body.to_string());
        self.send(req).await
    }

    /// DELETE; gone already is fine.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let resp = self
            .http
            .delete(format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("talking to {}", self.server))?;
        let status = resp.status();
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("{}", body.get("message").and_then(Value::as_str).unwrap_or(status.as_str()));
        }
        Ok(())
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self.get(path).await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!("{}", body.get("message").and_then(Value::as_str).unwrap_or(status.as_str()));
        }
        Ok(text)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let resp = req.bearer_auth(&self.token).send().await.with_context(|| format!("talking to {}", self.server))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{}: {}", status, body.get("message").and_then(Value::as_str).unwrap_or("request failed"));
        }
        Ok(body)
    }

    pub async fn create_token(&self, r: &TokenRequest<'_>) -> Result<Value> {
        let mut body =
            json!({"role": r.role, "namespaces": r.namespaces, "ttlSeconds": r.ttl_seconds, "subject": r.subject});
        if let Some(node) = r.node {
            body["node"] = json!(node);
        }
        self.send(self.http.post(format!("{}/converge/v1/tokens", self.server)).json(&body)).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<Value> {
        self.send(self.http.delete(format!("{}/converge/v1/tokens/{id}", self.server))).await
    }

    pub async fn list_tokens(&self) -> Result<Value> {
        self.send(self.http.get(format!("{}/converge/v1/tokens", self.server))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_context_decides() {
        let text = r#"
apiVersion: v1
kind: Config
current-context: second
clusters:
- name: one
  cluster: {server: "https://one:6443", certificate-authority-data: "QUJD"}
- name: two
  cluster: {server: "https://two:6443"}
users:
- name: alice
  user: {token: "a-token"}
- name: bob
  user: {token: "b-token"}
contexts:
- name: first
  context: {cluster: one, user: alice}
- name: second
  context: {cluster: two, user: bob, namespace: team-b}
"#;
        let t = read_kubeconfig(text, Path::new("/")).unwrap();
        assert_eq!(t.server, "https://two:6443");
        assert_eq!(t.token.as_deref(), Some("b-token"));
        assert_eq!(t.namespace.as_deref(), Some("team-b"));
        assert_eq!(t.ca_pem, None);
        let first = read_kubeconfig(&text.replace("current-context: second", "current-context: first"), Path::new("/"))
            .unwrap();
        assert_eq!(first.ca_pem.as_deref(), Some(&b"ABC"[..]));
    }
}
