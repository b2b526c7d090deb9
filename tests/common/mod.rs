//! Test harness: a real server on port 0 with a fresh database, kubectl pointed at it, and a
//! reqwest client holding the admin token.
#![allow(dead_code)]

use converge_api::{RunningServer, ServerConfig};
use converge_engine::store::{Store, StoreConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TestApp {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    pub base_url: String,
    pub kubeconfig: PathBuf,
    pub token: String,
    pub http: reqwest::Client,
    /// What the server was started with; a restart reuses it.
    pub config: ServerConfig,
}

/// PostgreSQL is tested when CONVERGE_TEST_POSTGRES names a server (CI sets it); each test gets
/// a database of its own.
pub fn postgres_base() -> Option<String> {
    std::env::var("CONVERGE_TEST_POSTGRES").ok().filter(|s| !s.is_empty())
}

pub async fn fresh_postgres(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("converge_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn =
        sqlx::PgConnection::connect(base).await.expect("CONVERGE_TEST_POSTGRES is set but PostgreSQL does not answer");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("postgres URL with a database");
    format!("{prefix}/{name}")
}

/// The databases every store test runs on: SQLite always, PostgreSQL when configured.
pub async fn database_urls(dir: &Path) -> Vec<(String, String)> {
    let mut urls = vec![(
        "sqlite".to_string(),
        format!("sqlite://{}?mode=rwc", dir.join(format!("{}.db", uuid::Uuid::new_v4().simple())).display()),
    )];
    if let Some(base) = postgres_base() {
        urls.push(("postgres".to_string(), fresh_postgres(&base).await));
    }
    urls
}

pub async fn open_store(url: &str) -> Arc<Store> {
    Store::open(&StoreConfig::new(url)).await.expect("open store")
}

pub fn http_client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca"))
        .build()
        .expect("client")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(None, |_| {}).await
}

/// The API server alone: no controllers write status behind the test's back.
pub async fn spawn_api_only() -> TestApp {
    spawn_app_with(None, |c| c.controllers = false).await
}

/// Start a server; `database_url` None means SQLite in the data dir.
pub async fn spawn_app_with(database_url: Option<String>, tweak: impl FnOnce(&mut ServerConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url =
        database_url.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("converge.db").display()));
    start_in(dir, database_url, tweak).await
}

pub async fn start_in(dir: tempfile::TempDir, database_url: String, tweak: impl FnOnce(&mut ServerConfig)) -> TestApp {
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".into();
    config.database_url = Some(database_url.clone());
    config.workers = 2;
    tweak(&mut config);
    start_with(dir, database_url, config).await
}

async fn start_with(dir: tempfile::TempDir, database_url: String, config: ServerConfig) -> TestApp {
    let server = converge_api::start(config.clone()).await.expect("server starts");
    let http = http_client(&server.ca_pem);
    TestApp {
        base_url: server.base_url.clone(),
        kubeconfig: server.kubeconfig.clone(),
        token: server.admin_token.clone(),
        server: Some(server),
        dir,
        database_url,
        http,
        config,
    }
}

impl TestApp {
    /// Stop and start again on the same data dir and database.
    pub async fn restart(mut self) -> TestApp {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        start_with(self.dir, self.database_url, self.config).await
    }

    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.server.as_ref().expect("running").store)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<String>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, v, _) = self.request(reqwest::Method::GET, path, "", None).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.request(reqwest::Method::POST, path, "application/json", Some(body.to_string())).await;
        (s, v)
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.request(reqwest::Method::PUT, path, "application/json", Some(body.to_string())).await;
        (s, v)
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.request(reqwest::Method::PATCH, path, content_type, Some(body.to_string())).await;
        (s, v)
    }

    pub async fn delete(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (s, v, _) =
            self.request(reqwest::Method::DELETE, path, "application/json", body.map(Value::to_string)).await;
        (s, v)
    }

    /// Run the machine's kubectl against this server; (exit ok, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_stdin(args, None).await
    }

    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        run_kubectl(&self.kubeconfig, self.dir.path(), args, stdin, Duration::from_secs(60)).await
    }
}

/// The machine's kubectl with `kubeconfig` (and its caches under `home`), `stdin` fed to it;
/// (exit ok, stdout, stderr).
pub async fn run_kubectl(
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is installed");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
    }
    drop(pipe);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} finished in {limit:?}"))
        .expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `converge` binary against the API of `kubeconfig`: `input` typed a line at a time (a
/// console's user), then the console's escape (Ctrl-]); (exit ok, stdout, stderr).
pub async fn run_converge(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("converge binary");
    let mut pipe = child.stdin.take().expect("stdin");
    match input.map(str::to_string) {
        Some(input) => {
            tokio::spawn(async move {
                for line in input.split_inclusive('\n') {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let _ = pipe.write_all(line.as_bytes()).await;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = pipe.write_all(&[0x1d]).await;
            });
        }
        None => drop(pipe),
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("converge finished in 60s")
        .expect("converge output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Poll `condition` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn vm_manifest(name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {
                    "devices": {"disks": [{"name": "root", "disk": {}}], "interfaces": [{"name": "default", "masquerade": {}}]},
                    "resources": {"requests": {"memory": "128Mi"}}
                },
                "networks": [{"name": "default", "pod": {}}],
                "volumes": [{"name": "root", "containerDisk": {"image": "registry.local/busybox"}}]
            }}
        }
    })
}

pub const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
pub mod cassette;
pub mod fog;
pub mod guests;
pub mod joined;
pub mod kubelet;
pub mod kubernetes;
pub mod kubernetes_agents;
pub mod netapp;
pub mod process;
pub mod pxe;
pub mod servers;
pub mod tenant;
