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

/// The first value of `key:` in a kubeconfig (the ones Converge writes have one cluster and user).
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.trim().strip_prefix(&format!("{key}:")).map(|v| v.trim().trim_matches('"').to_string()))
}

impl Client {
    pub fn from_kubeconfig(path: &Path) -> Result<Self> {
        use base64::Engine;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let server = field(&text, "server").context("kubeconfig has no server")?;
        let token = field(&text, "token").context("kubeconfig has no token")?;
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        let mut ca_pem = None;
        if let Some(ca) = field(&text, "certificate-authority-data") {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(ca)
                .context("certificate-authority-data is not base64")?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
            ca_pem = Some(pem);
        }
        let namespace = field(&text, "namespace");
        Ok(Client { server, token, http: builder.build()?, ca_pem, namespace })
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

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("talking to {}", self.server))?;
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

    pub async fn create_token(
        &self,
        role: &str,
        namespaces: &[String],
        ttl_seconds: i64,
        subject: Option<&str>,
    ) -> Result<Value> {
        let body = json!({"role": role, "namespaces": namespaces, "ttlSeconds": ttl_seconds, "subject": subject});
        self.send(self.http.post(format!("{}/converge/v1/tokens", self.server)).json(&body)).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<Value> {
        self.send(self.http.delete(format!("{}/converge/v1/tokens/{id}", self.server))).await
    }

    pub async fn list_tokens(&self) -> Result<Value> {
        self.send(self.http.get(format!("{}/converge/v1/tokens", self.server))).await
    }
}
