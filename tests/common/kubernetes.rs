//! A real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
//! etcd) for `tests/kubernetes.rs`: started once per test binary by `scripts/kubernetes.sh run`
//! on free loopback ports, and stopped when the test process ends (the script stops everything
//! when its stdin, held here, closes).

use super::servers::free_port;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct RealCluster {
    pub dir: PathBuf,
    /// Admin (system:masters) kubeconfig.
    pub kubeconfig: PathBuf,
    pub server: String,
    /// The supervising script; its stdin is the cluster's lifeline.
    _supervisor: Mutex<Child>,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/kubernetes.sh build` puts the binaries; `None` when they are not built.
fn built_binaries() -> Option<PathBuf> {
    let out = Command::new(repo().join("scripts/kubernetes.sh")).arg("bin-dir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

/// The shared cluster, started on first use; `None` (with the reason printed) when the binaries
/// are absent. `scripts/test` builds them first, so CI never skips.
pub fn cluster() -> Option<&'static RealCluster> {
    static CLUSTER: OnceLock<Option<RealCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            let Some(bin) = built_binaries() else {
                eprintln!("SKIPPED: the Kubernetes binaries are not built (scripts/kubernetes.sh build)");
                return None;
            };
            Some(start(&bin))
        })
        .as_ref()
}

fn start(bin: &Path) -> RealCluster {
    let dir = std::env::temp_dir().join(format!("converge-kubernetes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cluster dir");
    let apiserver_port = free_port();
    let child = Command::new(repo().join("scripts/kubernetes.sh"))
        .arg("run")
        .arg(&dir)
        .env("CONVERGE_ETCD_PORT", free_port().to_string())
        .env("CONVERGE_ETCD_PEER_PORT", free_port().to_string())
        .env("CONVERGE_APISERVER_PORT", apiserver_port.to_string())
        .env("CONVERGE_KUBERNETES_BIN", bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).expect("run log"))
        .spawn()
        .expect("scripts/kubernetes.sh runs");
    let ready = dir.join("ready");
    let end = Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        assert!(Instant::now() < end, "the control plane was not ready in 120 s: {}", log_tail(&dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    RealCluster {
        kubeconfig: dir.join("admin.kubeconfig"),
        server: format!("https://127.0.0.1:{apiserver_port}"),
        dir,
        _supervisor: Mutex::new(child),
    }
}

fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for log in ["run.log", "apiserver.log", "etcd.log"] {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(dir.join(log)) {
            let _ = f.read_to_string(&mut text);
        }
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        out.push_str(&format!("\n--- {log}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    out
}

impl RealCluster {
    /// kubectl as the cluster's admin; (exit ok, stdout, stderr).
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        self.kubectl_with(&self.kubeconfig, args, stdin).await
    }

    /// kubectl with another kubeconfig (a tenant's).
    pub async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl is installed");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).await.expect("write stdin");
        }
        drop(pipe);
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("kubectl finished in 120 s")
            .expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A kubeconfig for `token`, trusting the cluster's CA.
    pub fn kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {name}}}\ncurrent-context: test\n",
            self.server,
            self.dir.join("ca.crt").display()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// The last lines of the control plane's logs, for failure messages.
    pub fn logs(&self) -> String {
        log_tail(&self.dir)
    }
}

/// What a kubelet does that the tests need, for Nodes no kubelet runs on: registers the Node
/// with its capacity, posts `Ready` and renews the Node's Lease every few seconds (else
/// kube-controller-manager taints it and kube-scheduler binds nothing there), and finishes the
/// deletion of pods bound to it (a kubelet confirms a pod's end; without one it stays
/// Terminating). Never the node agent's job on a real cluster.
pub struct KubeletStandIn {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The apiserver as its admin, over HTTPS.
#[derive(Clone)]
pub struct Admin {
    pub http: reqwest::Client,
    pub token: String,
    pub server: String,
}

impl Admin {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> (u16, String) {
        let answer = self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("the apiserver answers");
        let code = answer.status().as_u16();
        (code, answer.text().await.unwrap_or_default())
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let answer = self.http.get(format!("{}{path}", self.server)).bearer_auth(&self.token).send().await;
        match answer {
            Ok(a) => a.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }
}

impl RealCluster {
    pub fn admin(&self) -> Admin {
        let ca = std::fs::read_to_string(self.dir.join("ca.crt")).expect("ca.crt");
        let tokens = std::fs::read_to_string(self.dir.join("tokens.csv")).expect("tokens.csv");
        let token = tokens.lines().next().and_then(|l| l.split(',').next()).unwrap_or_default().to_string();
        Admin { http: super::http_client(&ca), token, server: self.server.clone() }
    }

    /// Registers Nodes (name, cpu, memory) as kubelets would, and keeps them Ready until the
    /// stand-in is dropped.
    pub async fn kubelet_stand_in(&self, nodes: &[(&str, &str, &str)]) -> KubeletStandIn {
        let admin = self.admin();
        let apply = "application/apply-patch+yaml";
        for (name, cpu, memory) in nodes {
            let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}});
            let (code, text) = admin.send(reqwest::Method::POST, "/api/v1/nodes", "application/json", &node).await;
            assert!(code == 201 || code == 409, "registering {name}: {code} {text}");
            let status = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                           "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                           "addresses": [{"type": "Hostname", "address": name}],
                           "nodeInfo": {"kubeletVersion": "v1.34.4-stand-in", "operatingSystem": "linux", "architecture": "amd64"}}});
            let path = format!("/api/v1/nodes/{name}/status?fieldManager=kubelet-capacity&force=true");
            let (code, text) = admin.send(reqwest::Method::PATCH, &path, apply, &status).await;
            assert_eq!(code, 200, "{name}'s capacity: {text}");
        }
        let names: Vec<String> = nodes.iter().map(|(n, _, _)| n.to_string()).collect();
        beat(&admin, &names).await;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                beat(&admin, &names).await;
            }
        });
        KubeletStandIn { task }
    }
}

/// One round of the stand-in's work.
async fn beat(admin: &Admin, nodes: &[String]) {
    let apply = "application/apply-patch+yaml";
    let now = chrono::Utc::now();
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let micro = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for name in nodes {
        let ready = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "the tests' kubelet stand-in", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]}});
        let path = format!("/api/v1/nodes/{name}/status?fieldManager=kubelet-ready&force=true");
        admin.send(reqwest::Method::PATCH, &path, apply, &ready).await;
        let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro}});
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}?fieldManager=kubelet&force=true"
        );
        admin.send(reqwest::Method::PATCH, &path, apply, &lease).await;
    }
    // Pods bound here and being deleted: a kubelet would stop their containers and confirm.
    let pods = admin.get("/api/v1/pods").await;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let node = pod.pointer("/spec/nodeName").and_then(serde_json::Value::as_str).unwrap_or("");
        if nodes.iter().any(|n| n == node) && pod.pointer("/metadata/deletionTimestamp").is_some() {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
            let body = serde_json::json!({"gracePeriodSeconds": 0});
            admin.send(reqwest::Method::DELETE, &path, "application/json", &body).await;
        }
    }
}
