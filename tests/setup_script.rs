//! `scripts/setup.sh` leaves a working `qemu-img` that matches QEMU, even when installing QEMU
//! took the image's own qemu-utils away.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write stub");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod stub");
}

fn run_setup(stubs: &Path) -> (bool, String) {
    let path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("scripts/setup.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .output()
        .expect("run setup.sh");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn version_line(program: &str) -> String {
    let out = Command::new(program).arg("--version").output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} --version failed");
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string()
}

#[test]
fn setup_leaves_a_qemu_img_matching_qemu() {
    let (ok, out) = run_setup(Path::new("/nonexistent"));
    assert!(ok, "{out}");
    // "qemu-img version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" and QEMU's own line.
    let img = version_line("qemu-img");
    let qemu = version_line("qemu-system-x86_64");
    let debian = |line: &str| line.split('(').nth(1).map(|v| v.trim_end_matches(')').to_string());
    assert!(debian(&img).is_some() && debian(&img) == debian(&qemu), "{img} vs {qemu}");
}

#[test]
fn a_missing_qemu_img_is_reinstalled_at_qemus_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // qemu-img runs only once apt-get installed qemu-utils; apt-get records what it was asked.
    stub(dir.path(), "qemu-img", &format!("[ -f {d}/installed ] || exit 127; echo 'qemu-img version 7'"));
    stub(
        dir.path(),
        "apt-get",
        &format!("echo \"$@\" >> {d}/apt.log; case \"$*\" in *qemu-utils=1:7.2-test*) touch {d}/installed;; esac"),
    );
    stub(dir.path(), "dpkg-query", "echo '1:7.2-test'");
    let (ok, out) = run_setup(dir.path());
    assert!(ok, "{out}");
    let log = std::fs::read_to_string(dir.path().join("apt.log")).unwrap_or_default();
    assert!(log.contains("install") && log.contains("qemu-utils=1:7.2-test"), "{log}");

    // An install that does not bring qemu-img back fails setup, saying so.
    std::fs::remove_file(dir.path().join("installed")).ok();
    stub(dir.path(), "apt-get", "true");
    let (ok, out) = run_setup(dir.path());
    assert!(!ok && out.contains("qemu-img still does not run"), "{out}");
}
