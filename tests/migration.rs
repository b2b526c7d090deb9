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
    pod_network: Option<PodNetwork>,
    /// The CA of the libvirtds' certificates, when they take migrations over TLS.
    _tls_ca: Option<tempfile::TempDir>,
    _cleanup: Cleanup,
}

/// A pod network of this test's own on both nodes: its ranges, a node namespace each, and
/// their removal however the test ends. Nothing is routed off the machine (no egress).
struct PodNetwork {
    pods: String,
    services: String,
    netns: Vec<String>,
    tag: u32,
    _cleanup: Vec<common::netapp::NetCleanup>,
}

impl PodNetwork {
    fn new() -> PodNetwork {
        let tag = std::process::id() % 40;
        let netns: Vec<String> = (0..2).map(|i| format!("cvm{}{}", std::process::id() % 100_000, i)).collect();
        let cleanup = netns
            .iter()
            .map(|ns| {
                let net = converge_engine::network::NetworkConfig { node_namespace: ns.clone(), ..Default::default() };
                common::netapp::NetCleanup(net)
            })
            .collect();
        // Ranges no other test uses (those of tests/cluster.rs and common::netapp are above 10.100).
        let (pods, services) = (format!("10.{}.0.0/16", 40 + tag), format!("10.{}.0.0/16", 80 + tag));
        PodNetwork { pods, services, netns, tag, _cleanup: cleanup }
    }

    fn args(&self, i: usize) -> Vec<String> {
        let transit = format!("169.254.{}.{}/30", 40 + self.tag, 4 * i);
        [
            "--pod-network",
            "on",
            "--pod-cidr",
            &self.pods,
            "--service-cidr",
            &self.services,
            "--node-netns",
            &self.netns[i],
            "--node-transit-cidr",
            &transit,
            "--pod-egress",
            "false",
        ]
        .map(str::to_string)
        .to_vec()
    }
}

impl Pair {
    async fn new() -> (TestApp, Pair) {
        Self::start(None, false).await
    }

    /// Both nodes on a pod network of the test's own.
    async fn with_pod_network() -> (TestApp, Pair) {
        Self::start(Some(PodNetwork::new()), false).await
    }

    /// Libvirtds that reach each other over TLS, their QEMUs too, with certificates of one CA.
    async fn with_tls() -> (TestApp, Pair) {
        Self::start(None, true).await
    }

    async fn start(pod_network: Option<PodNetwork>, tls: bool) -> (TestApp, Pair) {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let prefix = format!("m{tag}-");
        let app = match &pod_network {
            None => api_without_a_node().await,
            Some(net) => {
                let pods = converge_engine::network::Cidr::parse(&net.pods).expect("pods");
                let services = converge_engine::network::Cidr::parse(&net.services).expect("services");
                spawn_app_with(None, |c| {
                    c.node = None;
                    c.pod_ranges.cluster = pods;
                    c.service_network.cidr = services;
                })
                .await
            }
        };
        let tls_ca = tls.then(|| tempfile::tempdir().expect("a CA directory"));
        let ca = tls_ca.as_ref().map(|d| d.path());
        let libvirtds =
            vec![NodeLibvirtd::start_with(&format!("m{tag}a"), ca), NodeLibvirtd::start_with(&format!("m{tag}b"), ca)];
        let cleanup = Cleanup(prefix.clone());
        (app, Pair { nodes: vec![], libvirtds, _cleanup: cleanup, prefix, pod_network, _tls_ca: tls_ca })
    }

    /// Joins node `i` (node-a, node-b) on its libvirtd.
    async fn join(&mut self, app: &TestApp, i: usize) {
        let name = ["node-a", "node-b"][i];
        let uri = self.libvirtds[i].uri.clone();
        let peers_uri = self.libvirtds[i].tls_uri.clone().unwrap_or_else(|| uri.clone());
        let mut args: Vec<String> = match &self.pod_network {
            None => vec!["--pod-network".into(), "none".into()],
            Some(net) => net.args(i),
        };
        let migration = ["--libvirt-uri", &uri, "--migration-uri", &peers_uri, "--migration-address", "127.0.0.1"];
        args.extend(migration.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
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
    vm["spec"]["template"]["metadata"]["labels"]["app"] = json!(name);
    vm
}

fn pod_ip(vmi: &Value) -> Option<std::net::Ipv4Addr> {
    converge_engine::network::services::pod_ip(vmi)
}

async fn pod_range(app: &TestApp, node: &str) -> converge_engine::network::Cidr {
    let (_, n) = app.get(&format!("/api/v1/nodes/{node}")).await;
    converge_engine::network::Cidr::parse(n["spec"]["podCIDR"].as_str().unwrap_or_default()).expect("a pod range")
}

/// The page the guest serves, fetched from the host (the cluster IP routes into a node namespace).
async fn fetch(url: &str) -> String {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("client");
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn endpoint_addresses(app: &TestApp, service: &str) -> Vec<String> {
    let (_, e) = app.get(&format!("/api/v1/namespaces/default/endpoints/{service}")).await;
    let subsets = e["subsets"].as_array().cloned().unwrap_or_default();
    let addresses = subsets.iter().flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default());
    addresses.filter_map(|a| a["ip"].as_str().map(str::to_string)).collect()
}

async fn migration(app: &TestApp, name: &str) -> Value {
    app.get(&format!("{VMIMS}/{name}")).await.1
}

/// What the guest answers on its console to `command` (its output follows `marker`).
async fn ask(app: &TestApp, vm: &str, command: &str, marker: &str) -> String {
    use futures::{SinkExt, StreamExt};
    let mut console = api_socket(app, vm, "console").await;
    let line = format!("echo {marker}$({command})\n");
    console.send(tokio_tungstenite::tungstenite::Message::Binary(line.into_bytes().into())).await.expect("typed");
    // The answer is the line after the marker at a line's start (the echoed command has it
    // after `echo `), once that line is complete.
    let start = format!("\n{marker}");
    let mut seen = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(frame)) = console.next().await {
            seen.push_str(&String::from_utf8_lossy(&frame.into_data()));
            if seen.rsplit_once(&start).is_some_and(|(_, rest)| rest.contains('\n')) {
                return;
            }
        }
    })
    .await;
    let answer = seen.rsplit_once(&start).map(|(_, rest)| rest).unwrap_or_default();
    answer.lines().next().unwrap_or_default().trim().to_string()
}

fn ticks(log: &str) -> Vec<u64> {
    log.split("tick-").skip(1).filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_moves_to_another_node_without_restarting() {
    let (app, mut pair) = Pair::with_pod_network().await;
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

        // A Service reaches it on node-a, by its pod address there.
        let range_a = pod_range(app, "node-a").await;
        let ip_a = pod_ip(&before).expect("a pod address");
        assert!(range_a.contains(ip_a), "{ip_a} from node-a's range {range_a}");
        type_line(app, "mover", "mkdir -p /www; echo mover-$((6*7)) > /www/index.html; httpd -p 8080 -h /www").await;
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mover"},
            "spec": {"selector": {"app": "mover"}, "ports": [{"port": 80, "targetPort": 8080}]}});
        let (code, svc) = app.post("/api/v1/namespaces/default/services", &service).await;
        assert_eq!(code, 201, "{svc}");
        let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
        let url = format!("http://{cluster_ip}/");
        let served = wait_until(SETTLE, || async { fetch(&url).await.contains("mover-42") }).await;
        assert!(served, "the Service {cluster_ip} reaches the guest on node-a: {}", pair.logs());
        assert_eq!(endpoint_addresses(app, "mover").await, vec![ip_a.to_string()]);

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

        let (ok, out, err) = app.kubectl(&["get", "vmim", &name]).await;
        assert!(ok && out.contains("PHASE") && out.contains("Succeeded") && out.contains("mover"), "{out}{err}");
        // KubeVirt's migration metrics say so.
        let (_, metrics) = app.get("/metrics").await;
        let metrics = metrics.as_str().unwrap_or_default().to_string();
        let succeeded =
            format!("kubevirt_vmi_migration_succeeded{{name=\"{name}\",namespace=\"default\",vmi=\"mover\"}} 1");
        assert!(metrics.contains(&succeeded), "{succeeded} in\n{metrics}");
        assert!(metrics.contains("kubevirt_vmi_migrations_in_running_phase 0"), "{metrics}");
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

        // The guest keeps its MAC and, behind masquerade, its own side of the pod (10.0.2.2); its
        // pod address is node-b's now, and the Service and its endpoints follow it there.
        let range_b = pod_range(app, "node-b").await;
        let ip_b = pod_ip(&after).expect("a pod address on node-b");
        assert!(range_b.contains(ip_b), "{ip_b} from node-b's range {range_b}: {after}");
        assert_eq!(after["status"]["interfaces"][0]["mac"], before["status"]["interfaces"][0]["mac"]);
        assert_eq!(ask(app, "mover", "ifconfig eth0 | grep -o 10.0.2.2 | head -n1", "addr-").await, "10.0.2.2");
        let followed = wait_until(SETTLE, || async {
            endpoint_addresses(app, "mover").await == vec![ip_b.to_string()] && fetch(&url).await.contains("mover-42")
        })
        .await;
        assert!(
            followed,
            "the Service reaches the guest on node-b ({:?}): {}",
            endpoint_addresses(app, "mover").await,
            pair.logs()
        );
        let moved =
            wait_until(SETTLE, || async { fetch(&format!("http://{ip_b}:8080/")).await.contains("mover-42") }).await;
        assert!(moved, "and so does its new pod address {ip_b}");
        assert!(fetch(&format!("http://{ip_a}:8080/")).await.is_empty(), "node-a let go of its pod address {ip_a}");
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
    // Over TLS: libvirtd to libvirtd, and QEMU to QEMU for the memory and the overlay (NBD).
    let (app, mut pair) = Pair::with_tls().await;
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

/// Fills 48 MiB of the guest's memory with random bytes, so that a migration of it at 1 MiB/s
/// runs for a while.
async fn fill_memory(app: &TestApp, pair: &Pair, vm: &str) {
    let v = vmi(app, vm).await;
    type_line(app, vm, "dd if=/dev/urandom of=/fill bs=1M count=48 2>/dev/null; echo fill-$((40+2))").await;
    let filled = wait_until(SETTLE, || async { pair.nodes[0].serial_log(&v).contains("fill-42") }).await;
    assert!(filled, "{}", pair.nodes[0].serial_log(&v));
}

async fn running_on(app: &TestApp, vm: &str, node: &str) -> bool {
    let v = vmi(app, vm).await;
    v["status"]["phase"] == "Running" && v["status"]["nodeName"] == node
}

/// The target's QEMU process (its pid file under its libvirtd's state).
fn target_qemu_pid(libvirtd: &NodeLibvirtd, domain: &str) -> Option<i32> {
    let file = format!("/run/converge-libvirt/{}/run/qemu/{domain}.pid", libvirtd.name);
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_or_broken_migration_leaves_the_guest_on_its_source() {
    let (app, mut pair) = Pair::with_tls().await;
    pair.join(&app, 0).await;
    let app = &app;
    within(LIMIT, async {
        let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &mover("slow")).await;
        assert_eq!(code, 201, "{body}");
        assert!(wait_until(SETTLE, || running_on(app, "slow", "node-a")).await, "{}", vmi(app, "slow").await);
        let v = vmi(app, "slow").await;
        let booted = wait_until(SETTLE, || async { pair.nodes[0].serial_log(&v).contains(GUEST_MARKER) }).await;
        assert!(booted, "{}", pair.nodes[0].serial_log(&v));
        let boot_id = ask(app, "slow", "cat /proc/sys/kernel/random/boot_id", "boot-").await;
        fill_memory(app, &pair, "slow").await;
        let policy = json!({"apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": "trickle"},
            "spec": {"selectors": {"virtualMachineInstanceSelector": {"guest": "slow"}}, "bandwidthPerMigration": "1Mi"}});
        let (code, body) = app.post("/apis/migrations.kubevirt.io/v1alpha1/migrationpolicies", &policy).await;
        assert_eq!(code, 201, "{body}");
        pair.join(app, 1).await;

        // Deleting a running migration aborts it.
        let (code, body) = app.post(VMIMS, &json!({"metadata": {"name": "aborted"}, "spec": {"vmiName": "slow"}})).await;
        assert_eq!(code, 201, "{body}");
        let started = wait_until(SETTLE, || async { migration(app, "aborted").await["status"]["phase"] == "Running" }).await;
        let m = migration(app, "aborted").await;
        assert!(started, "{m}\n{}", pair.logs());
        assert_eq!(m["status"]["migrationState"]["migrationPolicyName"], "trickle", "{m}");
        // Its progress shows in its status while it runs (1 MiB/s: far from done).
        let progressing = wait_until(SETTLE, || async {
            let p = &migration(app, "aborted").await["status"]["migrationState"]["progress"];
            p["dataRemainingBytes"].as_u64().unwrap_or(0) > 0 && p["dataProcessedBytes"].as_u64().unwrap_or(0) > 0
        })
        .await;
        let m = migration(app, "aborted").await;
        assert!(progressing, "{m}");
        let rate = m["status"]["migrationState"]["progress"]["memoryTransferRateBytesPerSecond"].as_u64();
        assert!(rate.is_some_and(|r| r <= 4 << 20), "held to about the policy's 1 MiB/s: {m}");
        // …and in KubeVirt's migration metrics.
        let (_, metrics) = app.get("/metrics").await;
        let metrics = metrics.as_str().unwrap_or_default().to_string();
        assert!(metrics.contains("kubevirt_vmi_migrations_in_running_phase 1"), "{metrics}");
        let remaining = "kubevirt_vmi_migration_data_remaining_bytes{name=\"slow\",namespace=\"default\",node=\"node-a\"}";
        assert!(metrics.contains(remaining), "{remaining} in\n{metrics}");
        // The stream is TLS: the source QEMU sends with libvirt's TLS credentials, checking the
        // target's certificate for its address.
        let domain_a = format!("{}node-a-default_slow", pair.prefix);
        let parameters = pair.libvirtds[0].qmp(&domain_a, r#"{"execute": "query-migrate-parameters"}"#);
        assert!(parameters.contains(r#""tls-creds":"objlibvirt_migrate_tls0""#), "{parameters}");
        assert!(parameters.contains(r#""tls-hostname":"127.0.0.1""#), "{parameters}");

        // node-a's agent restarts mid-way: libvirt's job goes on, and the agent, back, follows it.
        pair.nodes[0].kill().await;
        pair.nodes[0].start();
        let before_restart = m["status"]["migrationState"]["progress"]["timestamp"].clone();
        let followed = wait_until(SETTLE, || async {
            let now = migration(app, "aborted").await;
            now["status"]["phase"] == "Running" && now["status"]["migrationState"]["progress"]["timestamp"] != before_restart
        })
        .await;
        assert!(followed, "still running, its progress read again: {}\n{}", migration(app, "aborted").await, pair.logs());
        let (code, body) = app.delete(&format!("{VMIMS}/aborted"), None).await;
        assert!(code == 200 || code == 202, "{code} {body}");
        let gone = wait_until(SETTLE, || async { app.get(&format!("{VMIMS}/aborted")).await.0 == 404 }).await;
        assert!(gone, "the finalizer goes once the abort ended: {}", migration(app, "aborted").await);
        let v = vmi(app, "slow").await;
        let state = &v["status"]["migrationState"];
        assert_eq!((state["failed"].as_bool(), state["abortStatus"].as_str()), (Some(true), Some("Succeeded")), "{v}");
        assert!(running_on(app, "slow", "node-a").await, "{v}");
        assert_eq!(ask(app, "slow", "cat /proc/sys/kernel/random/boot_id", "boot-").await, boot_id);
        let cleaned = wait_until(SETTLE, || async { pair.libvirtds[1].domains().is_empty() }).await;
        assert!(cleaned, "nothing left on the target: {:?}", pair.libvirtds[1].domains());

        // The target dies mid-way (its QEMU killed): the migration fails, the guest stays.
        let (code, body) = app.post(VMIMS, &json!({"metadata": {"name": "doomed"}, "spec": {"vmiName": "slow"}})).await;
        assert_eq!(code, 201, "{body}");
        let started = wait_until(SETTLE, || async { migration(app, "doomed").await["status"]["phase"] == "Running" }).await;
        assert!(started, "{}", migration(app, "doomed").await);
        let domain_b = format!("{}node-b-default_slow", pair.prefix);
        let incoming = wait_until(SETTLE, || async { target_qemu_pid(&pair.libvirtds[1], &domain_b).is_some() }).await;
        assert!(incoming, "the incoming QEMU on node-b");
        let pid = target_qemu_pid(&pair.libvirtds[1], &domain_b).unwrap_or_default();
        // SAFETY: kill(2) of the target QEMU this test's migration started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let failed = wait_until(SETTLE, || async { migration(app, "doomed").await["status"]["phase"] == "Failed" }).await;
        let m = migration(app, "doomed").await;
        assert!(failed, "{m}\n{}", pair.logs());
        assert!(running_on(app, "slow", "node-a").await, "{}", vmi(app, "slow").await);
        assert_eq!(ask(app, "slow", "cat /proc/sys/kernel/random/boot_id", "boot-").await, boot_id, "the same guest");
    })
    .await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_is_left_empty() {
    let (app, mut pair) = Pair::new().await;
    pair.join(&app, 0).await;
    let app = &app;
    within(LIMIT, async {
        // Three guests that migrate (two with containerDisks, one kernel-booted) and one that
        // shuts down and starts again elsewhere (KubeVirt's default strategy, None).
        let mut vms = vec![];
        for (name, strategy) in [("d1", "LiveMigrate"), ("d2", "LiveMigrate"), ("d3", "None")] {
            let mut vm = halt_vm(name, "Always");
            vm["spec"]["template"]["spec"]["evictionStrategy"] = json!(strategy);
            vms.push(vm);
        }
        let mut k = mover("d4");
        k["spec"]["template"]["spec"]["evictionStrategy"] = json!("LiveMigrateIfPossible");
        vms.push(k);
        for vm in &vms {
            let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", vm).await;
            assert_eq!(code, 201, "{body}");
        }
        for name in ["d1", "d2", "d3", "d4"] {
            assert!(wait_until(SETTLE, || running_on(app, name, "node-a")).await, "{}", vmi(app, name).await);
        }
        let restarted_uid = vmi(app, "d3").await["metadata"]["uid"].clone();
        let migrated_uid = vmi(app, "d1").await["metadata"]["uid"].clone();
        pair.join(app, 1).await;

        let (ok, out, err) =
            run_converge(&app.kubeconfig, &["node", "drain", "node-a", "--timeout", "240"], None).await;
        assert!(ok, "drain: {out}{err}\n{}", pair.logs());
        assert!(out.contains("node/node-a cordoned") && out.contains("node/node-a drained"), "{out}");
        assert!(out.contains("virtualmachineinstance/default/d1: migrating"), "{out}");
        assert!(out.contains("virtualmachineinstance/default/d3: shutting down"), "{out}");
        let (_, node) = app.get("/api/v1/nodes/node-a").await;
        assert_eq!(node["spec"]["unschedulable"], true, "{node}");
        assert!(pair.libvirtds[0].domains().is_empty(), "node-a runs nothing: {:?}", pair.libvirtds[0].domains());
        for name in ["d1", "d2", "d3", "d4"] {
            let there = wait_until(SETTLE, || running_on(app, name, "node-b")).await;
            assert!(there, "{name} runs on node-b: {}", vmi(app, name).await);
        }
        assert_eq!(vmi(app, "d1").await["metadata"]["uid"], migrated_uid, "d1 moved, the same VMI");
        assert_ne!(vmi(app, "d3").await["metadata"]["uid"], restarted_uid, "d3 was started again");
    })
    .await;
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_on_a_shared_volume_migrates_without_copying_it() {
    let (app, mut pair) = Pair::new().await;
    pair.join(&app, 0).await;
    let app = &app;
    let pool = tempfile::tempdir().expect("pool");
    within(LIMIT, async {
        // The admin's class: a pool every node reaches at one path (here a directory of this machine).
        let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "shared"},
            "provisioner": "converge.dev/local-pool",
            "parameters": {"path": pool.path().display().to_string(), "shared": "true"}});
        let (code, body) = app.post("/apis/storage.k8s.io/v1/storageclasses", &class).await;
        assert_eq!(code, 201, "{body}");
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"storageClassName": "shared", "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "16Mi"}}}});
        let (code, body) = app.post("/api/v1/namespaces/default/persistentvolumeclaims", &claim).await;
        assert_eq!(code, 201, "{body}");
        let bound = wait_until(SETTLE, || async {
            app.get("/api/v1/namespaces/default/persistentvolumeclaims/data").await.1["status"]["phase"] == "Bound"
        })
        .await;
        assert!(bound, "{}", app.get("/api/v1/namespaces/default/persistentvolumeclaims/data").await.1);
        let mut vm = mover("keeper");
        let spec = &mut vm["spec"]["template"]["spec"];
        spec["domain"]["devices"]["disks"] = json!([{"name": "data", "disk": {"bus": "virtio"}}]);
        spec["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]);
        let (code, body) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachines", &vm).await;
        assert_eq!(code, 201, "{body}");
        assert!(wait_until(SETTLE, || running_on(app, "keeper", "node-a")).await, "{}", vmi(app, "keeper").await);
        let before = vmi(app, "keeper").await;
        assert_eq!(st_condition(&before, "LiveMigratable")["status"], "True", "{before}");
        assert_eq!(before["status"]["migrationMethod"], "LiveMigration", "nothing to copy: {before}");
        let booted = wait_until(SETTLE, || async { pair.nodes[0].serial_log(&before).contains(GUEST_MARKER) }).await;
        assert!(booted, "{}", pair.nodes[0].serial_log(&before));
        let written = ask(app, "keeper", "echo shared-before > /dev/vda; sync; head -c 13 /dev/vda", "disk-").await;
        assert_eq!(written, "shared-before", "the guest writes its shared disk");

        pair.join(app, 1).await;
        let (code, body) = app.post(VMIMS, &json!({"metadata": {"name": "keep"}, "spec": {"vmiName": "keeper"}})).await;
        assert_eq!(code, 201, "{body}");
        let done =
            wait_until(SETTLE, || async { migration(app, "keep").await["status"]["phase"] == "Succeeded" }).await;
        assert!(done, "{}\n{}", migration(app, "keep").await, pair.logs());
        assert!(running_on(app, "keeper", "node-b").await, "{}", vmi(app, "keeper").await);
        let read = ask(app, "keeper", "head -c 13 /dev/vda", "disk-").await;
        assert_eq!(read, "shared-before", "the same volume on node-b");
        let _ = ask(app, "keeper", "echo shared-after! > /dev/vda; sync; head -c 13 /dev/vda", "disk-").await;
        let pv =
            app.get("/api/v1/namespaces/default/persistentvolumeclaims/data").await.1["spec"]["volumeName"].clone();
        let file = pool.path().join(pv.as_str().unwrap_or("?")).join("disk.img");
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            bytes.starts_with(b"shared-after!"),
            "the guest on node-b wrote the shared file itself: {}",
            file.display()
        );
    })
    .await;
    pair.stop().await;
}
