//! `converge serve` as a real process, for tests that kill it: the binary this build made, on a
//! data dir and port that survive restarts, its libvirt domains named with a prefix of the
//! test's own (and removed whatever the test leaves).

use super::guests::{guest_dir, Cleanup};
use super::*;
use converge_engine::hypervisor::{DomainSummary, Hypervisor, Libvirt};
use std::process::Stdio;

pub struct ServeProcess {
    /// The client side: `server` is None, the process is `child`.
    pub app: TestApp,
    pub prefix: String,
    pub libvirt: Libvirt,
    child: Option<tokio::process::Child>,
    port: u16,
    starts: usize,
    extra_args: Vec<String>,
    _cleanup: Cleanup,
}

impl ServeProcess {
    /// A new data dir with the test images imported, and a server on it with `failpoints` armed.
    pub async fn start(failpoints: &str, extra_args: &[&str]) -> ServeProcess {
        Self::start_prepared(failpoints, extra_args, |_| {}).await
    }

    /// `start`, with `prepare` given the data dir before the first server starts on it (to put
    /// an older store there).
    pub async fn start_prepared(failpoints: &str, extra_args: &[&str], prepare: impl FnOnce(&Path)) -> ServeProcess {
        let prefix = format!("f{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = tempfile::tempdir().expect("tempdir");
        let guests = guest_dir();
        for image in ["oci-halt", "oci-kernel"] {
            let st = std::process::Command::new(env!("CARGO_BIN_EXE_converge"))
                .args(["image", "import"])
                .arg(guests.join(image))
                .arg("--data-dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .status()
                .expect("converge image import");
            assert!(st.success(), "image import of {image}");
        }
        prepare(dir.path());
        let port = servers::free_port();
        let app = TestApp {
            server: None,
            database_url: String::new(),
            base_url: format!("https://127.0.0.1:{port}"),
            kubeconfig: dir.path().join("kubeconfig"),
            token: String::new(),
            http: reqwest::Client::new(),
            config: converge_api::ServerConfig::new(dir.path()),
            dir,
        };
        let mut p = ServeProcess {
            app,
            libvirt: Libvirt::open("qemu:///system").expect("libvirt answers"),
            _cleanup: Cleanup(prefix.clone()),
            prefix,
            child: None,
            port,
            starts: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        p.spawn(failpoints).await;
        p
    }

    /// Starts `converge serve` (again) on the same data dir, and waits until it is ready.
    pub async fn spawn(&mut self, failpoints: &str) {
        assert!(self.child.is_none(), "the previous process is still running");
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.app.dir.path())
            .args(["--node-name", "node-1", "--domain-prefix", &self.prefix, "--pod-network", "none"])
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .env(converge_engine::failpoint::ENV, failpoints)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("converge serve");
        self.child = Some(child);
        let (ca, token) = (self.app.dir.path().join("ca.crt"), self.app.dir.path().join("admin.token"));
        let up = wait_until(Duration::from_secs(60), || async {
            if !ca.exists() || !token.exists() {
                return false;
            }
            let Ok(pem) = std::fs::read_to_string(&ca) else { return false };
            let http = http_client(&pem);
            let ready = http.get(self.app.url("/readyz")).send().await.map(|r| r.status().is_success());
            ready.unwrap_or(false)
        })
        .await;
        assert!(up, "converge serve did not become ready:\n{}", self.logs());
        self.app.http = http_client(&std::fs::read_to_string(&ca).expect("ca"));
        self.app.token = std::fs::read_to_string(&token).expect("token").trim().to_string();
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.app.dir.path().join(format!("serve-{start}.log"))
    }

    /// Everything every process so far wrote to stderr.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| format!("--- start {i}\n{}", std::fs::read_to_string(self.log_path(i)).unwrap_or_default()))
            .collect()
    }

    /// SIGTERM, as systemd stops a service, and waits for the server to exit (true: cleanly).
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        if let Some(pid) = child.id() {
            // SAFETY: a signal to the child this struct started and has not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        matches!(tokio::time::timeout(Duration::from_secs(30), child.wait()).await, Ok(Ok(s)) if s.success())
    }

    /// `kill -9` of the server.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Waits for the server to die by SIGKILL on its own (a fail point); true if it did.
    pub async fn wait_crash(&mut self, limit: Duration) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let Some(child) = self.child.as_mut() else { return false };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                status.signal() == Some(9)
            }
            _ => false,
        }
    }

    pub fn domains(&self) -> Vec<DomainSummary> {
        self.libvirt.list().unwrap_or_default().into_iter().filter(|d| d.name.starts_with(&self.prefix)).collect()
    }

    pub fn domain(&self, namespace: &str, name: &str) -> String {
        format!("{}{namespace}_{name}", self.prefix)
    }
}
