//! Converge's own processes beside the real control plane: `converge controllers --kubernetes`
//! and `converge node --kubernetes` outside the cluster, the veth the aggregated API listens on,
//! installing and uninstalling the manifests, and the kubectl readings the Kubernetes tests
//! share.

use super::kubernetes::{cluster, RealCluster};
use super::wait_until;
use serde_json::Value;
use std::time::Duration;

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
        .args(["controllers", "--kubernetes", "--use-emulation", "--tls-san", "127.0.0.1", "--nad-bridge", "cv*"])
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
    start_node_with(c, name, prefix, &[]).await
}

/// `start_node` with more arguments for the agent.
pub async fn start_node_with(c: &RealCluster, name: &str, prefix: &str, extra: &[&str]) -> NodeAgent {
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
            // Each agent its own port on the stand-in Nodes' InternalIP (127.0.0.1).
            "--listen",
            "127.0.0.1:0",
        ])
        // No pod network unless the test gives one.
        .args(if extra.contains(&"--pod-network") { &[][..] } else { &["--pod-network", "none"][..] })
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--data-dir")
        .arg(dir.path())
        .args(extra)
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

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// What the guest of `vmi` printed on its serial port.
    pub fn serial_log(&self, vmi: &Value) -> String {
        let uid = vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        std::fs::read_to_string(self.dir.path().join("node/vmis").join(uid).join("serial0.log")).unwrap_or_default()
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

/// The tests install and uninstall Converge on the one cluster: one at a time.
pub static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until a previous install is wholly gone (the image test's ends in the background),
/// then prints the manifests.
pub async fn manifests(args: &[&str]) -> String {
    if let Some(c) = cluster() {
        let gone = wait_until(Duration::from_secs(120), || install_gone(c)).await;
        assert!(gone, "the previous install never went away");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .arg("manifests")
        .args(args)
        .output()
        .await
        .expect("converge manifests runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 manifests")
}

/// `kubectl apply -f -` of the manifests, then the CRDs established; kubectl's answer.
pub async fn install(c: &RealCluster, text: &str) -> String {
    let applied = ok(c, &["apply", "-f", "-"], Some(text)).await;
    ok(
        c,
        &["wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=converge", "--timeout=60s"],
        None,
    )
    .await;
    applied
}

/// Whether Converge's CRDs and namespace are all gone.
pub async fn install_gone(c: &RealCluster) -> bool {
    let (_, crds, _) = c.kubectl(&["get", "crd", "-l", "app.kubernetes.io/part-of=converge", "-o", "name"], None).await;
    let (_, ns, _) =
        c.kubectl(&["get", "namespace", "converge-system", "--ignore-not-found", "-o", "name"], None).await;
    crds.trim().is_empty() && ns.trim().is_empty()
}

/// `kubectl delete -f -` of the manifests, then up to three minutes for the CRDs and namespace to
/// go; what is left, and why, when that is not enough. A CRD's deletion lists its objects right
/// after the deletion reset the CRD's storage, and kube-apiserver answers "storage is
/// (re)initializing" until its cache is filled again; its finalizer controller then retries with
/// a backoff that doubles up to 1000 s (the namespace controller likewise). Touching the object
/// retries at once, as an admin would: what lingers is annotated every 10 s.
pub async fn uninstall(c: &RealCluster, text: &str, logs: &dyn Fn() -> String) -> String {
    let (deleted, out, err) = c.kubectl(&["delete", "-f", "-", "--ignore-not-found", "--wait=false"], Some(text)).await;
    assert!(deleted, "kubectl delete: {err}");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(180) {
        if wait_until(Duration::from_secs(10), || install_gone(c)).await {
            return out;
        }
        let nudge = format!("converge.dev/uninstall-retry={}", started.elapsed().as_secs());
        let _ = c
            .kubectl(&["annotate", "--overwrite", "crd", "-l", "app.kubernetes.io/part-of=converge", &nudge], None)
            .await;
        let _ = c.kubectl(&["annotate", "--overwrite", "namespace", "converge-system", &nudge], None).await;
    }
    let mut left = String::new();
    for args in [
        &["get", "namespace", "converge-system", "-o", "yaml"][..],
        &["get", "all", "-n", "converge-system", "-o", "wide"],
        &["get", "crd", "-o", "custom-columns=NAME:.metadata.name,DELETING:.metadata.deletionTimestamp,CONDITIONS:.status.conditions[*].message"],
        &["get", "vmi,vm,dv,pods", "-A", "-o", "yaml"],
        &["get", "apiservices", "-o", "wide"],
    ] {
        let (_, out, err) = c.kubectl(args, None).await;
        left.push_str(&format!("kubectl {args:?}:\n{out}{err}\n"));
    }
    let kcm = std::fs::read_to_string(c.dir.join("kcm.log")).unwrap_or_default();
    let deletion: Vec<&str> = kcm.lines().filter(|l| l.contains("namespace") || l.contains("garbage")).collect();
    let deletion = deletion[deletion.len().saturating_sub(30)..].join("\n");
    panic!(
        "uninstall left this after 3 minutes:\n{left}\n{}\n--- kcm.log (namespaces, GC)\n{deletion}\n{}",
        logs(),
        c.logs()
    );
}
