//! `converge install` / `uninstall`. This machine's PID 1 is not systemd, so the unit is checked
//! with `systemd-analyze verify` and its ExecStart command line is run as systemd would run it:
//! with a NOTIFY_SOCKET the test listens on (the unit is `Type=notify`), stopped by SIGTERM.
//! Where systemd runs, `install` also does `daemon-reload` and `restart`, which no test here
//! reaches.

mod common;

use common::guests::{halt_vm, within};
use common::process::ServeProcess;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn converge(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_converge")).args(args).output().expect("converge");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

struct Installed {
    root: tempfile::TempDir,
}

impl Installed {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
    fn paths(&self) -> Vec<String> {
        let p = |rel: &str| self.path(rel).to_string_lossy().into_owned();
        vec![
            "--config".into(),
            p("etc/converge/config.toml"),
            "--unit-dir".into(),
            p("unit"),
            "--bin".into(),
            p("bin/converge"),
        ]
    }
    fn unit(&self) -> String {
        std::fs::read_to_string(self.path("unit/converge.service")).expect("unit")
    }
}

fn install(extra: &[&str]) -> (Installed, String) {
    let installed = Installed { root: tempfile::tempdir().expect("tempdir") };
    let mut args: Vec<String> = vec!["install".into()];
    args.extend(installed.paths());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = converge(&args);
    assert!(ok, "install: {out}");
    (installed, out)
}

fn verify(unit: &Path) {
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(unit).output().expect("systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify {}:\n{text}", unit.display());
}

#[test]
fn the_unit_of_a_node_verifies_and_needs_libvirt() {
    let (installed, out) = install(&[]);
    assert!(out.contains("systemd is not running on this machine") || out.contains("running"), "{out}");
    let unit = installed.unit();
    assert!(unit.contains("Requires=libvirtd.service"), "{unit}");
    verify(&installed.path("unit/converge.service"));
    let link = installed.path("unit/multi-user.target.wants/converge.service");
    assert_eq!(std::fs::read_link(&link).expect("enabled"), installed.path("unit/converge.service"));
    // The installed binary is this build's.
    let (ok, version) = {
        let out = std::process::Command::new(installed.path("bin/converge")).arg("version").output().expect("run");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert!(ok && version.starts_with("converge "), "{version}");
    // Installing again keeps the operator's config, and refuses flags that would change it.
    let mut again: Vec<String> = vec!["install".into()];
    again.extend(installed.paths());
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    let (ok, out) = converge(&again);
    assert!(ok && out.contains("kept"), "{out}");
    let mut flags = again.clone();
    flags.extend(["--listen", "0.0.0.0:7443"]);
    let (ok, out) = converge(&flags);
    assert!(!ok && out.contains("exists: edit it"), "{out}");
}

/// The ExecStart line, split as systemd splits a line without quotes.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    line.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_units_command_line_serves_tells_systemd_it_is_ready_and_stops_on_sigterm() {
    let port = common::servers::free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().join("data");
    let (installed, out) = install(&["--no-node", "--listen", &listen, "--data-dir", data_dir.to_str().expect("dir")]);
    assert!(out.contains(&format!("kubeconfig: {}", data_dir.join("kubeconfig").display())), "{out}");
    let unit = installed.unit();
    assert!(!unit.contains("libvirtd"), "an API-only server does not need libvirt:\n{unit}");
    verify(&installed.path("unit/converge.service"));

    let socket_path = installed.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let argv = exec_start(&unit);
    let mut server = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ExecStart runs");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: the kubeconfig it printed works.
    let kubeconfig = data_dir.join("kubeconfig");
    let out = std::process::Command::new("kubectl")
        .args(["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("kubectl");
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/default"), "{out:?}");
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = server.wait().expect("exit");
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_stops_every_guest_then_purge_removes_the_data() {
    within(Duration::from_secs(300), async {
        let mut p = ServeProcess::start("", &[]).await;
        assert_eq!(p.app.post(VMS_DEFAULT, &halt_vm("kept", "Always")).await.0, 201);
        let bare = serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "bare"}, "spec": common::guests::halt_vmi_spec(),
        });
        assert_eq!(p.app.post(VMIS_DEFAULT, &bare).await.0, 201);
        let running = wait_until(Duration::from_secs(120), || async { p.domains().len() == 2 }).await;
        assert!(running, "{}", p.logs());
        // The service's config names the server's data dir; the node has no pod network here.
        let root = tempfile::tempdir().expect("tempdir");
        let config = root.path().join("config.toml");
        let text = format!("data_dir = {:?}\npod_network = \"none\"\n", p.app.dir.path().display().to_string());
        std::fs::write(&config, text).expect("config");
        let unit_dir = root.path().join("unit");
        std::fs::create_dir_all(&unit_dir).expect("unit dir");
        std::fs::write(unit_dir.join("converge.service"), "[Unit]\n").expect("unit");
        let bin = root.path().join("converge");
        let args = |purge: bool| {
            let mut a = vec!["uninstall".to_string(), "--config".into(), config.display().to_string()];
            a.extend(["--unit-dir".into(), unit_dir.display().to_string(), "--bin".into(), bin.display().to_string()]);
            a.extend(["--timeout".into(), "120".into()]);
            if purge {
                a.push("--purge".into());
            }
            a
        };
        let run = |a: Vec<String>| async move {
            let out =
                tokio::process::Command::new(env!("CARGO_BIN_EXE_converge")).args(&a).output().await.expect("run");
            (
                out.status.success(),
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            )
        };
        let (ok, out) = run(args(false)).await;
        assert!(ok, "uninstall: {out}\n{}", p.logs());
        assert!(p.domains().is_empty(), "every guest shut down");
        let vm = p.app.get(&format!("{VMS_DEFAULT}/kept")).await.1;
        assert_eq!(vm["spec"]["runStrategy"], "Halted", "{vm}");
        assert_eq!(p.app.get(&format!("{VMIS_DEFAULT}/bare")).await.0, 404);
        assert!(!unit_dir.join("converge.service").exists());
        assert!(p.app.dir.path().join("converge.db").exists(), "data kept without --purge");
        assert!(out.contains("stop `converge serve` yourself"), "{out}");
        p.kill9().await;
        let (ok, out) = run(args(true)).await;
        assert!(ok, "uninstall --purge: {out}");
        assert!(!p.app.dir.path().join("converge.db").exists() && !config.exists(), "{out}");
    })
    .await;
}

const VMS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMIS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";
