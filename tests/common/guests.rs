//! Harness for tests with real guests: a server with an in-process node agent on the machine's
//! libvirt, the project's test images imported, and domains named with a prefix of this test's
//! own so that a failing test never leaves guests behind or touches another test's.

use super::*;
use converge_engine::hypervisor::{DomainState, Hypervisor, Libvirt};
use converge_engine::node::NodeConfig;
use serde_json::json;

pub const KERNEL_IMAGE: &str = "converge.dev/test/guest-kernel:v1";
pub const HALT_IMAGE: &str = "converge.dev/test/halt:v1";
pub const GUEST_MARKER: &str = "CONVERGE-GUEST-READY";
pub const HALT_MARKER: &str = "CONVERGE-HALT-READY";

pub struct GuestApp {
    pub app: TestApp,
    pub prefix: String,
    pub libvirt: Libvirt,
    pub cleanup: Cleanup,
}

/// Whatever a test leaves (a panic included): domains with its prefix go.
pub struct Cleanup(pub String);

pub fn guest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVERGE_GUEST_DIR") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest/build.sh");
    let out = std::process::Command::new(script).output().expect("scripts/guest/build.sh runs");
    assert!(out.status.success(), "guest build failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn node_config(dir: &Path, prefix: &str) -> NodeConfig {
    let mut node = NodeConfig::new(dir.join("node"));
    node.name = "node-1".into();
    node.domain_prefix = prefix.to_string();
    node.resync = Duration::from_secs(3);
    node.heartbeat = Duration::from_secs(5);
    node
}

pub async fn spawn_guest_app() -> GuestApp {
    spawn_guest_app_with(|_| {}).await
}

/// A guest app whose node pulls from `registry` (`HOST:PORT`, plain HTTP on loopback) as an
/// admin listed it.
pub async fn spawn_guest_app_pulling_from(registry: &str) -> GuestApp {
    let listed = registry.to_string();
    spawn_guest_app_with(move |c| {
        if let Some(node) = c.node.as_mut() {
            node.insecure_registries = vec![listed];
        }
    })
    .await
}

/// A guest app with the server's configuration adjusted (node included) before it starts.
pub async fn spawn_guest_app_with(tweak: impl FnOnce(&mut converge_api::ServerConfig)) -> GuestApp {
    let prefix = format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let p = prefix.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_config(dir.path(), &p);
    let database_url = format!("sqlite://{}?mode=rwc", dir.path().join("converge.db").display());
    let app = start_in(dir, database_url, move |c| {
        c.node = Some(node);
        tweak(c);
    })
    .await;
    let guests = guest_dir();
    let agent = app.server.as_ref().and_then(|s| s.node.clone()).expect("node agent runs");
    for image in ["oci-kernel", "oci-halt"] {
        agent.images().import(&guests.join(image), None).expect("import test image");
    }
    let libvirt = Libvirt::open("qemu:///system").expect("libvirt answers");
    GuestApp { app, cleanup: Cleanup(prefix.clone()), prefix, libvirt }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(libvirt) = Libvirt::open("qemu:///system") else { return };
        if let Ok(domains) = libvirt.list() {
            for d in domains.into_iter().filter(|d| d.name.starts_with(&self.0)) {
                let _ = libvirt.destroy(&d.name);
                let _ = libvirt.undefine(&d.name);
            }
        }
    }
}

impl GuestApp {
    pub fn domain(&self, name: &str) -> String {
        format!("{}default_{name}", self.prefix)
    }

    pub fn domain_state(&self, name: &str) -> Option<DomainState> {
        self.libvirt.state(&self.domain(name)).ok().flatten()
    }

    pub fn domains(&self) -> Vec<String> {
        self.libvirt
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.name.starts_with(&self.prefix))
            .map(|d| d.name)
            .collect()
    }

    pub fn agent(&self) -> std::sync::Arc<converge_engine::node::NodeAgent> {
        self.app.server.as_ref().and_then(|s| s.node.clone()).expect("node agent")
    }

    pub async fn vmi(&self, name: &str) -> Value {
        self.app.get(&format!("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/{name}")).await.1
    }

    pub async fn vm(&self, name: &str) -> Value {
        self.app.get(&format!("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/{name}")).await.1
    }

    pub async fn vmi_phase(&self, name: &str) -> String {
        self.vmi(name).await.pointer("/status/phase").and_then(Value::as_str).unwrap_or("").to_string()
    }

    pub async fn printable(&self, name: &str) -> String {
        self.vm(name).await.pointer("/status/printableStatus").and_then(Value::as_str).unwrap_or("").to_string()
    }

    pub async fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> bool {
        wait_until(timeout, || async { self.vmi_phase(name).await == phase }).await
    }

    pub async fn wait_printable(&self, name: &str, status: &str, timeout: Duration) -> bool {
        wait_until(timeout, || async { self.printable(name).await == status }).await
    }

    /// The guest's serial console log so far.
    pub async fn serial_log(&self, name: &str) -> String {
        self.serial_log_in("default", name).await
    }

    /// `serial_log` of a VMI in `namespace`.
    pub async fn serial_log_in(&self, namespace: &str, name: &str) -> String {
        let vmi = self
            .app
            .get(&format!("/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{name}"))
            .await
            .1;
        let uid = vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
        std::fs::read(self.agent().serial_log(&uid))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub async fn wait_marker(&self, name: &str, marker: &str, timeout: Duration) -> bool {
        self.wait_marker_in("default", name, marker, timeout).await
    }

    pub async fn wait_marker_in(&self, namespace: &str, name: &str, marker: &str, timeout: Duration) -> bool {
        wait_until(timeout, || async { self.serial_log_in(namespace, name).await.contains(marker) }).await
    }

    /// Runs the `converge` binary against this server.
    pub async fn converge(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        super::run_converge(&self.app.kubeconfig, args, stdin).await
    }
}

/// A VM booting the busybox guest by kernelBoot (marker, shell on the console, poweroff -f).
pub fn kernel_vm(name: &str, strategy: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runStrategy": strategy,
            "template": {"metadata": {"labels": {"guest": name}}, "spec": kernel_vmi_spec()},
        },
    })
}

pub fn kernel_vmi_spec() -> Value {
    json!({
        "terminationGracePeriodSeconds": 2,
        "domain": {
            "firmware": {"kernelBoot": {
                "kernelArgs": "console=ttyS0 quiet",
                "container": {"image": KERNEL_IMAGE, "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initramfs.gz"},
            }},
            "resources": {"requests": {"memory": "128Mi"}},
            "devices": {"autoattachGraphicsDevice": false},
        },
    })
}

/// A VMI spec that boots a sector that prints a marker and halts: costs no CPU once up.
pub fn halt_vmi_spec() -> Value {
    json!({
        "terminationGracePeriodSeconds": 0,
        "domain": {
            "resources": {"requests": {"memory": "32Mi"}},
            "devices": {"disks": [{"name": "boot", "disk": {"bus": "sata"}}], "autoattachGraphicsDevice": false,
                        "autoattachPodInterface": false,
                        "autoattachMemBalloon": false},
        },
        "volumes": [{"name": "boot", "containerDisk": {"image": HALT_IMAGE}}],
    })
}

pub fn halt_vm(name: &str, strategy: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": strategy, "template": {"spec": halt_vmi_spec()}},
    })
}

/// Runs a future with a deadline, so a hung guest fails the test instead of hanging CI.
pub async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f).await.expect("the test finished within its time limit")
}

pub type TestSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A websocket to `path` offering `protocols`, with no Authorization header: the token, if any,
/// travels in a protocol as Foreman's console sends it.
pub async fn ws_with_protocols(app: &TestApp, path: &str, protocols: &str) -> Result<(TestSocket, String), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = app.url(path).replacen("https://", "wss://", 1);
    let addr = app.base_url.trim_start_matches("https://").to_string();
    let server = app.server.as_ref().expect("running");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.expect("CA")).expect("root");
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await.expect("tls handshake");
    let mut request = url.as_str().into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, resp)) => {
            let chosen =
                resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            Ok((socket, chosen))
        }
        Err(e) => Err(e.to_string()),
    }
}
