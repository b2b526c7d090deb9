//! The web console in a real browser: `api/ui/tests/browser.mjs` drives Debian's chromium
//! (Playwright, headless) against a server with a node and real guests — log in, create a VM
//! from the form, watch it reach Running, use its serial console and VNC screen, edit its YAML
//! through a conflict, stop it, upload an image, delete the VM, and meet an expired token.
//! Screenshots of every page land in `target/ui-screenshots` (kept as test artefacts).

mod common;

use common::guests::{guest_dir, within};
use common::netapp::spawn_net_app;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DISK_IMAGE: &str = "converge.dev/test/guest-disk:v1";

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("api/ui")
}

/// playwright-core and the bundle's packages, from the lockfile (`.ci/run` installs them first;
/// by hand, the first run does).
fn node_modules() {
    if ui_dir().join("node_modules/playwright-core").is_dir() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(ui_dir())
        .status()
        .expect("npm runs (scripts/setup.sh installs it)");
    assert!(status.success(), "npm ci in api/ui failed");
}

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&path).exists(), "no browser at {path}: scripts/setup.sh installs Debian's chromium");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_console_works_in_a_real_browser() {
    node_modules();
    let browser = chromium();
    // A node with a pod network (on addresses of this test's own, nothing leaving the host), so
    // the guest's address reaches the VM list.
    let net = spawn_net_app(42).await;
    let g = &net.g;
    g.agent().images().import(&guest_dir().join("oci-disk"), None).expect("import the disk image");
    // A small raw image to upload: 4 MiB that is not all zeroes, so it is really sent.
    let upload = g.app.dir.path().join("upload.img");
    let pattern: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&upload, pattern).expect("write the image to upload");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    let run = tokio::process::Command::new("node")
        .arg(ui_dir().join("tests/browser.mjs"))
        .env("CONVERGE_URL", &g.app.base_url)
        .env("CONVERGE_KUBECONFIG", &g.app.kubeconfig)
        .env("CONVERGE_IMAGE", DISK_IMAGE)
        .env("CONVERGE_UPLOAD_FILE", &upload)
        .env("CONVERGE_SCREENSHOTS", &shots)
        .env("CHROMIUM", browser)
        .kill_on_drop(true)
        .output();
    let out = within(Duration::from_secs(600), run).await.expect("node runs (scripts/setup.sh installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success(), "the browser test failed (screenshots in {}):\n{stdout}\n{stderr}", shots.display());
    assert!(stdout.contains("all steps passed"), "{stdout}");
}
