//! Node agents as separate `converge node` processes joined to an API without a node of its
//! own (each with its own node name, data dir and domain-name prefix), and what tests do with
//! their guests through the API: consoles, VMIs, readiness.

use super::guests::{guest_dir, ws_with_protocols, TestSocket};
use super::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A `converge node` process joined to `app`.
pub struct NodeProcess {
    pub name: String,
    pub dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    starts: usize,
}

pub fn converge() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
}

impl NodeProcess {
    /// Issues node `name` a token through the CLI (which writes its kubeconfig), imports the
    /// test images into a data dir of its own, and starts the agent.
    pub async fn join(app: &TestApp, name: &str, prefix: &str) -> NodeProcess {
        Self::join_with(app, name, prefix, &["--pod-network", "none"]).await
    }

    /// `join` with these network flags.
    pub async fn join_with(app: &TestApp, name: &str, prefix: &str, network: &[&str]) -> NodeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        for image in ["oci-kernel", "oci-halt"] {
            let st = converge()
                .args(["image", "import"])
                .arg(guest_dir().join(image))
                .arg("--data-dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .status()
                .await
                .expect("converge image import");
            assert!(st.success(), "image import of {image}");
        }
        let kubeconfig = dir.path().join("kubeconfig");
        let out = converge()
            .args(["token", "create", "--role", "node", "--node", name, "--ttl", "1h", "--write-kubeconfig"])
            .arg(&kubeconfig)
            .args(["--server", &app.base_url])
            .arg("--kubeconfig")
            .arg(&app.kubeconfig)
            .output()
            .await
            .expect("converge token create");
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let record: Value = serde_json::from_slice(&out.stdout).expect("the token record");
        assert_eq!((record["role"].as_str(), record["node"].as_str()), (Some("node"), Some(name)), "{record}");
        let mut args = vec!["--node-name".to_string(), name.to_string(), "--domain-prefix".to_string()];
        args.push(format!("{prefix}{name}-"));
        args.extend(["--listen".to_string(), "0.0.0.0:0".to_string()]);
        args.extend(network.iter().map(|a| a.to_string()));
        let mut node = NodeProcess { name: name.to_string(), dir, kubeconfig, args, child: None, starts: 0 };
        node.start();
        node
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join(format!("node-{}.log", self.starts))
    }

    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.log()).expect("log file");
        let child = converge()
            .arg("node")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("converge node starts");
        self.child = Some(child);
    }

    /// `kill -9`: no goodbye to the API.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    pub fn serial_log(&self, vmi: &Value) -> String {
        let uid = vmi["metadata"]["uid"].as_str().unwrap_or_default();
        std::fs::read_to_string(self.dir.path().join("node/vmis").join(uid).join("serial0.log")).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

/// A websocket to the VMI `name`'s console or VNC through the API, which relays it to the agent
/// of the VMI's node; the token travels as Foreman's console sends it.
pub async fn api_socket(app: &TestApp, name: &str, what: &str) -> TestSocket {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&app.token);
    let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/{name}/{what}");
    let protocols = format!("plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{b64}");
    ws_with_protocols(app, &path, &protocols).await.expect("a websocket through the API").0
}

/// Types `line` at the guest's serial console through the API.
pub async fn type_line(app: &TestApp, name: &str, line: &str) {
    use futures::SinkExt;
    let mut console = api_socket(app, name, "console").await;
    console.send(Message::Binary(format!("{line}\n").into_bytes().into())).await.expect("typed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = console.close(None).await;
}

/// What the console says until `marker` shows (or `limit` passes).
pub async fn read_until(socket: &mut TestSocket, marker: &str, limit: Duration) -> String {
    use futures::StreamExt;
    let mut seen = String::new();
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(frame)) = socket.next().await {
            seen.push_str(&String::from_utf8_lossy(&frame.into_data()));
            if seen.contains(marker) {
                return;
            }
        }
    })
    .await;
    seen
}

pub async fn node_ready(app: &TestApp, name: &str) -> bool {
    let (_, node) = app.get(&format!("/api/v1/nodes/{name}")).await;
    node["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub async fn vmi(app: &TestApp, name: &str) -> Value {
    app.get(&format!("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/{name}")).await.1
}

/// The API with its controllers and no node: guests run only on nodes that join.
pub async fn api_without_a_node() -> TestApp {
    spawn_app_with(None, |c| c.node = None).await
}

/// A libvirtd of one node's own (`scripts/node-libvirtd.sh`): several nodes on this machine are
/// then several hosts to libvirt, as migration needs. Dropped: its domains destroyed, stopped.
pub struct NodeLibvirtd {
    pub name: String,
    pub uri: String,
    /// With TLS: the URI peers' libvirtds reach it by (TLS on 127.0.0.1).
    pub tls_uri: Option<String>,
}

fn node_libvirtd_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/node-libvirtd.sh")
}

impl NodeLibvirtd {
    pub fn start(name: &str) -> NodeLibvirtd {
        Self::start_with(name, None)
    }

    /// With `tls_ca` (a directory; a CA is made there for the first node): peers reach it over
    /// TLS with a certificate of that CA, and its QEMUs take migrations over TLS.
    pub fn start_with(name: &str, tls_ca: Option<&std::path::Path>) -> NodeLibvirtd {
        // Each libvirtd of this process its own ports: they all share the machine's.
        static STARTED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let slot = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 300;
        let min = 20000 + 32 * slot;
        let mut script = std::process::Command::new(node_libvirtd_script());
        script.args(["start", name]).env("MIGRATION_PORTS", format!("{min}-{}", min + 31));
        if let Some(ca) = tls_ca {
            let port = 16000 + slot;
            script.env("TLS_CA", ca).env("TLS_PORT", port.to_string());
        }
        let out = script.output().expect("scripts/node-libvirtd.sh runs");
        assert!(out.status.success(), "node libvirtd {name}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = stdout.lines().map(|l| l.trim().to_string());
        let uri = lines.next().unwrap_or_default();
        let tls_uri = lines.next().filter(|_| tls_ca.is_some());
        NodeLibvirtd { name: name.to_string(), uri, tls_uri }
    }

    /// What the QEMU of `domain` answers to a QMP command (through libvirt).
    pub fn qmp(&self, domain: &str, command: &str) -> String {
        let out = std::process::Command::new("virsh")
            .args(["-c", &self.uri, "qemu-monitor-command", domain, command])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// The names of the domains this libvirtd runs or keeps.
    pub fn domains(&self) -> Vec<String> {
        use converge_engine::hypervisor::{Hypervisor, Libvirt};
        let Ok(libvirt) = Libvirt::open(&self.uri) else { return vec![] };
        libvirt.list().unwrap_or_default().into_iter().map(|d| d.name).collect()
    }
}

impl Drop for NodeLibvirtd {
    fn drop(&mut self) {
        use converge_engine::hypervisor::{Hypervisor, Libvirt};
        if let Ok(libvirt) = Libvirt::open(&self.uri) {
            for d in libvirt.list().unwrap_or_default() {
                let _ = libvirt.destroy(&d.name);
                let _ = libvirt.undefine(&d.name);
            }
        }
        let _ = std::process::Command::new(node_libvirtd_script()).args(["stop", &self.name]).status();
    }
}
