//! Converge's own processes beside the real control plane: `converge controllers --kubernetes`
//! and `converge node --kubernetes` outside the cluster, the veth the aggregated API listens on,
//! and the kubectl readings the Kubernetes tests share.

use super::kubernetes::RealCluster;
use serde_json::Value;

pub async fn ok(c: &RealCluster, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = c.kubectl(args, stdin).await;
    assert!(ok, "kubectl {args:?}: {err}{}", c.logs());
    out
}

pub fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `converge controllers --kubernetes` outside the cluster, its webhooks registered by URL.
pub struct Controllers {
    _child: tokio::process::Child,
}

pub async fn start_controllers(c: &RealCluster, port: u16, aggregated: Option<&str>) -> Controllers {
    let log = std::fs::File::create(c.dir.join(format!("controllers-{port}.log"))).expect("log");
    let mut extra = vec![];
    if let Some(addr) = aggregated {
        extra = vec!["--aggregated-api-listen", addr];
    }
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["controllers", "--kubernetes", "--use-emulation", "--tls-san", "127.0.0.1"])
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("converge controllers starts");
    Controllers { _child: child }
}

/// `converge node --kubernetes` on a stand-in Node, with the test images in its own data dir,
/// serving the controllers on a port of its own.
pub struct NodeAgent {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
}

pub async fn start_node(c: &RealCluster, name: &str, prefix: &str) -> NodeAgent {
    let dir = tempfile::tempdir().expect("tempdir");
    for image in ["oci-halt", "oci-kernel"] {
        let st = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["image", "import"])
            .arg(super::guests::guest_dir().join(image))
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("converge image import");
        assert!(st.success(), "image import of {image}");
    }
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args([
            "node",
            "--kubernetes",
            "--node-name",
            name,
            "--domain-prefix",
            &format!("{prefix}{name}-"),
            "--pod-network",
            "none",
            // Each agent its own port on the stand-in Nodes' InternalIP (127.0.0.1).
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("converge node starts");
    NodeAgent { _child: child, dir }
}

impl NodeAgent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

pub async fn vmi_json(c: &RealCluster, ns: &str, name: &str) -> Value {
    let (found, out, _) = c.kubectl(&["get", "vmi", name, "-n", ns, "-o", "json"], None).await;
    if found {
        json_of(&out)
    } else {
        Value::Null
    }
}

pub async fn launcher_pods(c: &RealCluster, ns: &str) -> Vec<Value> {
    let out = ok(c, &["get", "pods", "-n", ns, "-l", "kubevirt.io=virt-launcher", "-o", "json"], None).await;
    json_of(&out)["items"].as_array().cloned().unwrap_or_default()
}

/// A veth pair into a network namespace of the test's own, for an address that is not loopback.
pub struct TestLink;

impl TestLink {
    pub const NETNS: &'static str = "cvk-aggregated";
    pub const HOST_LINK: &'static str = "cvkagg0";
    pub const HOST_ADDRESS: &'static str = "10.213.77.1";

    pub fn make() -> TestLink {
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip").args(args).status().expect("ip runs");
            assert!(st.success(), "ip {args:?}");
        };
        TestLink::remove();
        ip(&["netns", "add", Self::NETNS]);
        ip(&["link", "add", Self::HOST_LINK, "type", "veth", "peer", "name", "cvkagg1", "netns", Self::NETNS]);
        ip(&["addr", "add", &format!("{}/30", Self::HOST_ADDRESS), "dev", Self::HOST_LINK]);
        ip(&["link", "set", Self::HOST_LINK, "up"]);
        ip(&["-n", Self::NETNS, "addr", "add", "10.213.77.2/30", "dev", "cvkagg1"]);
        ip(&["-n", Self::NETNS, "link", "set", "cvkagg1", "up"]);
        TestLink
    }
}

impl TestLink {
    fn remove() {
        for args in [["netns", "del", Self::NETNS], ["link", "del", Self::HOST_LINK]] {
            let _ = std::process::Command::new("ip").args(args).stderr(std::process::Stdio::null()).status();
        }
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        TestLink::remove();
    }
}
