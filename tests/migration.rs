//! Live migration between two nodes on this machine, each a `converge node` process with a
//! libvirtd of its own (`scripts/node-libvirtd.sh`), joined to an API without a node: the guest
//! keeps running (same boot, its counter never restarts) while libvirt moves it peer to peer.

mod common;

use common::guests::{halt_vm, kernel_vm, within, Cleanup, GUEST_MARKER};
use common::joined::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);
const SETTLE: Duration = Duration::from_secs(90);
const VMIMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancemigrations";

/// Two nodes, each on its own libvirtd and publishing where guests migrate to it.
struct Pair {
    nodes: Vec<NodeProcess>,
    libvirtds: Vec<NodeLibvirtd>,
    prefix: String,
    _cleanup: Cleanup,
}

impl Pair {
    async fn new() -> (TestApp, Pair) {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let prefix = format!("m{tag}-");
        let app = api_without_a_node().await;
        let libvirtds = vec![NodeLibvirtd::start(&format!("m{tag}a")), NodeLibvirtd::start(&format!("m{tag}b"))];
        (app, Pair { nodes: vec![], libvirtds, _cleanup: Cleanup(prefix.clone()), prefix })
    }

    /// Joins node `i` (node-a, node-b) on its libvirtd.
    async fn join(&mut self, app: &TestApp, i: usize) {
        let name = ["node-a", "node-b"][i];
        let uri = self.libvirtds[i].uri.clone();
        let args = ["--pod-network", "none", "--libvirt-uri", &uri, "--migration-uri", &uri];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--migration-address", "127.0.0.1"]);
        let node = NodeProcess::join_with(app, name, &self.prefix, &args).await;
        let ready = wait_until(SETTLE, || node_ready(app, name)).await;
        assert!(ready, "{name} joins:\n{}", node.log_text());
        self.nodes.push(node);
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- {}\n{}", n.name, n.log_text())).collect()
    }

    async fn stop(mut self) {
        for n in &mut self.nodes {
            n.kill().await;
        }
    }
}

/// A kernel guest whose pod interface uses masquerade (bridge on the pod network does not migrate).
fn mover(name: &str) -> Value {
    let mut vm = kernel_vm(name, "Always");
    let spec = &mut vm["spec"]["template"]["spec"];
    spec["domain"]["devices"]["interfaces"] = json!([{"name": "default", "masquerade": {}}]);
    spec["networks"] = json!([{"name": "default", "pod": {}}]);
    vm
}

async fn migration(app: &TestApp, name: &str) -> Value {
    app.get(&format!("{VMIMS}/{name}")).await.1
}

/// What the guest answers on its console to `command` (its output follows `marker`).
async fn ask(app: &TestApp, vm: &str, command: &str, marker: &str) -> String {
    use futures::SinkExt;
    let mut console = api_socket(app, vm, "console").await;
    let line = format!("echo {marker}$({command})\n");
    console.send(tokio_tungstenite::tungstenite::Message::Binary(line.into_bytes().into())).await.expect("typed");
    let said = read_until(&mut console, &format!("\n{marker}"), Duration::from_secs(20)).await;
    let _ =
        tokio::time::timeout(Duration::from_millis(500), read_until(&mut console, "\r\n#", Duration::from_millis(400)))
            .await;
    said.rsplit(marker).next().unwrap_or_default().lines().next().unwrap_or_default().trim().to_string()
}

fn ticks(log: &str) -> Vec<u64> {
    log.split("tick-").skip(1).filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_moves_to_another_node_without_restarting() {
    let (app, mut pair) = Pair::new().await;
    pair.join(&app, 0).await;
    let app = &app;
    within(LIMIT, async {
        let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &mover("mover")).await;
        assert_eq!(code, 201, "{body}");
        let running = wait_until(SETTLE, || async { vmi(app, "mover").await["status"]["phase"] == "Running" }).await;
        assert!(running, "{}\n{}", vmi(app, "mover").await, pair.logs());
        let before = vmi(app, "mover").await;
        assert_eq!(before["status"]["nodeName"], "node-a");
        let migratable = st_condition(&before, "LiveMigratable");
        assert_eq!(migratable["status"], "True", "{before}");
        assert_eq!(before["status"]["migrationMethod"], "LiveMigration", "no disk to copy: {before}");
        let booted = wait_until(SETTLE, || async { pair.nodes[0].serial_log(&before).contains(GUEST_MARKER) }).await;
        assert!(booted, "{}", pair.nodes[0].serial_log(&before));

        // Alone, node-a has nowhere to send it: refused, with the scheduler's reason.
        let (code, body) =
            app.post(VMIMS, &json!({"metadata": {"name": "nowhere"}, "spec": {"vmiName": "mover"}})).await;
        assert_eq!(code, 201, "{body}");
        let failed =
            wait_until(SETTLE, || async { migration(app, "nowhere").await["status"]["phase"] == "Failed" }).await;
        let refused = migration(app, "nowhere").await;
        assert!(failed, "{refused}");
        let message = refused["status"]["conditions"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("1 node(s) were the source"), "{refused}");

        pair.join(app, 1).await;
        let boot_id = ask(app, "mover", "cat /proc/sys/kernel/random/boot_id", "boot-").await;
        assert_eq!(boot_id.len(), 36, "the guest's boot id: {boot_id:?}");
        let uptime_before: f64 = ask(app, "mover", "cut -d' ' -f1 /proc/uptime", "up-").await.parse().unwrap_or(0.0);
        type_line(app, "mover", "(i=0; while :; do i=$((i+1)); echo tick-$i; sleep 1; done) &").await;
        let counting = wait_until(SETTLE, || async { ticks(&pair.nodes[0].serial_log(&before)).len() >= 3 }).await;
        assert!(counting, "{}", pair.nodes[0].serial_log(&before));

        // virtctl's verb: a dry run makes nothing, the real one a migration.
        let (ok, out, err) = run_converge(&app.kubeconfig, &["migrate", "mover", "--dry-run"], None).await;
        assert!(ok, "{out}{err}");
        assert_eq!(app.get(VMIMS).await.1["items"].as_array().map(Vec::len), Some(1), "only the refused one");
        let (ok, out, err) = run_converge(&app.kubeconfig, &["migrate", "mover"], None).await;
        assert!(ok && out.contains("VM mover was scheduled to migrate"), "{out}{err}");
        let (_, list) = app.get(VMIMS).await;
        let name = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["metadata"]["name"].as_str())
            .find(|n| n.starts_with("kubevirt-migrate-vm-"))
            .unwrap_or_default()
            .to_string();
        let done = wait_until(SETTLE, || async { migration(app, &name).await["status"]["phase"] == "Succeeded" }).await;
        let m = migration(app, &name).await;
        assert!(done, "{m}\n{}\n{}", vmi(app, "mover").await, pair.logs());
        let phases: Vec<&str> = m["status"]["phaseTransitionTimestamps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["phase"].as_str())
            .collect();
        assert_eq!(
            phases,
            ["Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running", "Succeeded"],
            "{m}"
        );

        let after = vmi(app, "mover").await;
        assert_eq!(after["status"]["nodeName"], "node-b", "{after}");
        let state = &after["status"]["migrationState"];
        assert_eq!((state["sourceNode"].as_str(), state["targetNode"].as_str()), (Some("node-a"), Some("node-b")));
        assert_eq!(state["completed"], true, "{state}");
        assert!(state["startTimestamp"].is_string() && state["endTimestamp"].is_string(), "{state}");
        let relabelled = wait_until(SETTLE, || async {
            vmi(app, "mover").await["metadata"]["labels"]["kubevirt.io/nodeName"] == "node-b"
        })
        .await;
        assert!(relabelled, "{}", vmi(app, "mover").await);
        let domain_b = format!("{}node-b-default_mover", pair.prefix);
        assert_eq!(pair.libvirtds[1].domains(), vec![domain_b], "the guest runs on node-b's libvirtd");
        assert!(pair.libvirtds[0].domains().is_empty(), "and no longer on node-a's");

        // The same boot: its boot id, its uptime going on, and the counter going on from where it was.
        let last_on_a = ticks(&pair.nodes[0].serial_log(&before)).into_iter().max().unwrap_or(0);
        let went_on = wait_until(SETTLE, || async {
            ticks(&pair.nodes[1].serial_log(&after)).into_iter().any(|t| t > last_on_a + 2)
        })
        .await;
        let log_b = pair.nodes[1].serial_log(&after);
        assert!(went_on, "the counter goes on past tick-{last_on_a} on node-b: {log_b}");
        assert!(!log_b.contains(GUEST_MARKER), "no new boot on node-b: {log_b}");
        let first_on_b = ticks(&log_b).into_iter().min().unwrap_or(0);
        assert!(first_on_b > 1, "the counter never restarted (node-b's first: tick-{first_on_b})");
        assert_eq!(ask(app, "mover", "cat /proc/sys/kernel/random/boot_id", "boot-").await, boot_id);
        let uptime_after: f64 = ask(app, "mover", "cut -d' ' -f1 /proc/uptime", "up-").await.parse().unwrap_or(0.0);
        assert!(uptime_after > uptime_before, "uptime goes on: {uptime_before} then {uptime_after}");
        assert!(
            !pair.nodes[0].dir.path().join("node/vmis").join(after["metadata"]["uid"].as_str().unwrap_or("?")).exists(),
            "node-a let go of the guest's files"
        );
    })
    .await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_disk_guest_migrates_by_copying_its_overlay() {
    let (app, mut pair) = Pair::new().await;
    pair.join(&app, 0).await;
    let app = &app;
    within(LIMIT, async {
        let (code, body) =
            app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &halt_vm("disky", "Always")).await;
        assert_eq!(code, 201, "{body}");
        let running = wait_until(SETTLE, || async { vmi(app, "disky").await["status"]["phase"] == "Running" }).await;
        assert!(running, "{}", vmi(app, "disky").await);
        let before = vmi(app, "disky").await;
        assert_eq!(before["status"]["migrationMethod"], "BlockMigration", "{before}");
        pair.join(app, 1).await;
        let (code, body) = app.post(VMIMS, &json!({"metadata": {"name": "m1"}, "spec": {"vmiName": "disky"}})).await;
        assert_eq!(code, 201, "{body}");
        let done = wait_until(SETTLE, || async { migration(app, "m1").await["status"]["phase"] == "Succeeded" }).await;
        assert!(done, "{}\n{}", migration(app, "m1").await, pair.logs());
        let after = vmi(app, "disky").await;
        assert_eq!(after["status"]["nodeName"], "node-b");
        assert_eq!(after["status"]["phase"], "Running");
        let uid = after["metadata"]["uid"].as_str().unwrap_or_default();
        let overlay = pair.nodes[1].dir.path().join("node/vmis").join(uid).join("disks");
        assert!(overlay.exists(), "node-b holds the guest's overlay: {}", overlay.display());
        assert_eq!(pair.libvirtds[1].domains().len(), 1);

        // A second migration brings it back.
        let (code, body) = app.post(VMIMS, &json!({"metadata": {"name": "m2"}, "spec": {"vmiName": "disky"}})).await;
        assert_eq!(code, 201, "{body}");
        let back = wait_until(SETTLE, || async { migration(app, "m2").await["status"]["phase"] == "Succeeded" }).await;
        assert!(back, "{}\n{}", migration(app, "m2").await, pair.logs());
        assert_eq!(vmi(app, "disky").await["status"]["nodeName"], "node-a");
    })
    .await;
    pair.stop().await;
}

fn st_condition(obj: &Value, kind: &str) -> Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .cloned()
        .unwrap_or_default()
}
