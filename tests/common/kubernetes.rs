//! A real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
//! etcd) for `tests/kubernetes.rs`: started once per test binary by `scripts/kubernetes.sh run`
//! on free loopback ports, and stopped when the test process ends (the script stops everything
//! when its stdin, held here, closes).

use super::kubelet::{Admin, KubeletStandIn};
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
        super::run_kubectl(kubeconfig, &self.dir, args, stdin, Duration::from_secs(120)).await
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
        super::kubelet::stand_in(self.admin(), nodes).await
    }
}
