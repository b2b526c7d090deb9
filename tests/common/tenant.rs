//! A client holding one token, for the hostile-tenant suites.

use super::*;
use reqwest::Method;

/// A client holding one token.
pub struct Tenant<'a> {
    pub app: &'a TestApp,
    pub token: String,
}

impl Tenant<'_> {
    pub async fn call(&self, method: Method, path: &str, content_type: &str, body: Option<String>) -> (u16, Value) {
        let mut req = self.app.http.request(method, self.app.url(path)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b);
        }
        let resp = req.send().await.expect("the server answers (a dropped connection is a failure)");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, "", None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::POST, path, "application/json", Some(body.to_string())).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::PUT, path, "application/json", Some(body.to_string())).await
    }
    pub async fn patch(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        self.call(Method::PATCH, path, content_type, Some(body.to_string())).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, "", None).await
    }
}
