//! More than one machine, on one: an API with its controllers and no node of its own, and node
//! agents as separate `converge node` processes that join it over HTTPS with node tokens, each
//! with its own node name, data dir and domain-name prefix on the machine's libvirt.

mod common;

use common::guests::{guest_dir, halt_vm, kernel_vm, within, Cleanup, GUEST_MARKER};
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(240);
const SETTLE: Duration = Duration::from_secs(90);

/// A `converge node` process joined to `app`.
struct NodeProcess {
    name: String,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    starts: usize,
}

fn converge() -> tokio::process::Command {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
}

impl NodeProcess {
    /// Issues node `name` a token through the CLI (which writes its kubeconfig), imports the
    /// test images into a data dir of its own, and starts the agent.
    async fn join(app: &TestApp, name: &str, prefix: &str) -> NodeProcess {
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
            .arg("--kubeconfig")
            .arg(&app.kubeconfig)
            .output()
            .await
            .expect("converge token create");
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let record: Value = serde_json::from_slice(&out.stdout).expect("the token record");
        assert_eq!((record["role"].as_str(), record["node"].as_str()), (Some("node"), Some(name)), "{record}");
        let args = vec![
            "--node-name".to_string(),
            name.to_string(),
            "--domain-prefix".to_string(),
            format!("{prefix}{name}-"),
            "--pod-network".to_string(),
            "none".to_string(),
        ];
        let mut node = NodeProcess { name: name.to_string(), dir, kubeconfig, args, child: None, starts: 0 };
        node.start();
        node
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("node-{}.log", self.starts))
    }

    fn start(&mut self) {
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
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    fn serial_log(&self, vmi: &Value) -> String {
        let uid = vmi["metadata"]["uid"].as_str().unwrap_or_default();
        std::fs::read_to_string(self.dir.path().join("node/vmis").join(uid).join("serial0.log")).unwrap_or_default()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

async fn node_ready(app: &TestApp, name: &str) -> bool {
    let (_, node) = app.get(&format!("/api/v1/nodes/{name}")).await;
    node["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

async fn vmi(app: &TestApp, name: &str) -> Value {
    app.get(&format!("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/{name}")).await.1
}

/// The API with its controllers and no node: guests run only on nodes that join.
async fn api_without_a_node() -> TestApp {
    spawn_app_with(None, |c| c.node = None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_over_the_api_and_runs_a_guest_from_start_to_stop() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    let app = api_without_a_node().await;
    let mut node = NodeProcess::join(&app, "node-a", &prefix).await;
    within(LIMIT, async {
        let joined = wait_until(SETTLE, || node_ready(&app, "node-a")).await;
        assert!(joined, "node-a registers and posts Ready:\n{}", node.log_text());
        let (_, registered) = app.get("/api/v1/nodes/node-a").await;
        assert_eq!(registered["metadata"]["labels"]["kubevirt.io/schedulable"], "true", "{registered}");

        let (code, body) =
            app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &kernel_vm("far", "Always")).await;
        assert_eq!(code, 201, "{body}");
        let running = wait_until(SETTLE, || async { vmi(&app, "far").await["status"]["phase"] == "Running" }).await;
        let placed = vmi(&app, "far").await;
        assert!(running, "the guest runs on the joined node: {placed}\n{}", node.log_text());
        assert_eq!(placed["status"]["nodeName"], "node-a");
        assert_eq!(placed["metadata"]["labels"]["kubevirt.io/nodeName"], "node-a");
        let booted = wait_until(SETTLE, || async { node.serial_log(&placed).contains(GUEST_MARKER) }).await;
        assert!(booted, "the guest boots on the node's libvirt: {}", node.serial_log(&placed));
        let (_, vm) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/far").await;
        assert_eq!(vm["status"]["printableStatus"], "Running", "{vm}");

        let (code, body) = app
            .patch(
                "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/far",
                "application/merge-patch+json",
                &json!({"spec": {"runStrategy": "Halted"}}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let gone = wait_until(SETTLE, || async {
            app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/far").await.0 == 404
        })
        .await;
        assert!(gone, "stopped: the node shut the guest down and dropped the VMI's finalizer\n{}", node.log_text());
        let libvirt = converge_engine::hypervisor::Libvirt::open("qemu:///system").expect("libvirt");
        use converge_engine::hypervisor::Hypervisor;
        let left: Vec<String> =
            libvirt.list().unwrap_or_default().into_iter().map(|d| d.name).filter(|n| n.starts_with(&prefix)).collect();
        assert!(left.is_empty(), "no domain left: {left:?}");
    })
    .await;
    node.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_spread_over_two_nodes() {
    let prefix = format!("c{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let _cleanup = Cleanup(prefix.clone());
    let app = api_without_a_node().await;
    let mut nodes =
        vec![NodeProcess::join(&app, "node-a", &prefix).await, NodeProcess::join(&app, "node-b", &prefix).await];
    within(LIMIT, async {
        for n in &nodes {
            assert!(wait_until(SETTLE, || node_ready(&app, &n.name)).await, "{} joins:\n{}", n.name, n.log_text());
        }
        for i in 0..4 {
            let (code, body) = app
                .post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &halt_vm(&format!("h{i}"), "Always"))
                .await;
            assert_eq!(code, 201, "{body}");
        }
        let all_running = wait_until(SETTLE, || async {
            let (_, list) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances").await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            items.len() == 4 && items.iter().all(|v| v["status"]["phase"] == "Running")
        })
        .await;
        let (_, list) = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances").await;
        assert!(all_running, "{list}");
        let on = |node: &str| {
            list["items"].as_array().into_iter().flatten().filter(|v| v["status"]["nodeName"] == node).count()
        };
        assert!(
            on("node-a") >= 1 && on("node-b") >= 1,
            "both nodes take guests: a {} b {}",
            on("node-a"),
            on("node-b")
        );
    })
    .await;
    for n in &mut nodes {
        n.kill().await;
    }
}
