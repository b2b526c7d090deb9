//! Real guests under libvirt and QEMU (TCG here): the user's flow from `kubectl apply` to a
//! console, and what happens when guests stop, crash, or the server restarts. Run apart with
//! `cargo test --test guests`; each test has its own deadline.

mod common;

use common::guests::*;
use common::*;
use converge_engine::hypervisor::{DomainState, Hypervisor};
use serde_json::{json, Value};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn apply_start_console_stop_restart() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(300), async {
        let manifest = serde_yaml_like(&kernel_vm("demo", "Halted"));
        let (ok, _, err) = g.app.kubectl_stdin(&["apply", "-f", "-"], Some(&manifest)).await;
        assert!(ok, "kubectl apply: {err}");
        assert!(g.wait_printable("demo", "Stopped", SETTLE).await, "a Halted VM reads Stopped");

        let (ok, out, err) = g.converge(&["start", "demo"], None).await;
        assert!(ok && out.contains("scheduled to start"), "{out}{err}");
        assert!(g.wait_phase("demo", "Running", BOOT).await, "VMI Running");
        assert!(g.wait_printable("demo", "Running", SETTLE).await);
        let vmi = g.vmi("demo").await;
        assert_eq!(vmi["status"]["nodeName"], "node-1");
        let emulation =
            vmi["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "SoftwareEmulation");
        assert_eq!(emulation.map(|c| c["status"].clone()), Some(json!("True")), "the probe picked TCG here: {vmi}");
        assert_eq!(g.domain_state("demo"), Some(DomainState::Running));
        let first_uid = vmi["metadata"]["uid"].as_str().unwrap().to_string();

        assert!(g.wait_marker("demo", GUEST_MARKER, BOOT).await, "the guest printed its marker");
        // The pod interface (QEMU's user-mode network until pod networking lands) answers DHCP.
        assert!(
            g.wait_marker("demo", "CONVERGE-GUEST-DHCP eth0 10.0.2.15", BOOT).await,
            "{}",
            g.serial_log("demo").await
        );
        let (ok, out, err) = g.converge(&["console", "demo"], Some("echo console-$((6*7))\n")).await;
        assert!(ok, "console: {err}");
        assert!(out.contains("console-42"), "the shell ran the command: {out:?}");

        let (ok, out, err) = g.app.kubectl(&["get", "vm", "demo"]).await;
        assert!(ok && out.contains("Running"), "{out}{err}");
        let (ok, out, err) = g.app.kubectl(&["describe", "vm", "demo"]).await;
        assert!(ok && out.contains("SuccessfulCreate"), "kubectl describe tells the story: {out}{err}");
        let (ok, out, err) = g.app.kubectl(&["describe", "vmi", "demo"]).await;
        assert!(ok && out.contains("VirtualMachineInstance started."), "{out}{err}");

        let (ok, _, err) = g.converge(&["stop", "demo"], None).await;
        assert!(ok, "{err}");
        assert!(g.wait_printable("demo", "Stopped", SETTLE).await, "stopped");
        assert!(wait_until(SETTLE, || async { g.domain_state("demo").is_none() }).await, "domain gone");

        let (ok, _, err) = g.converge(&["start", "demo"], None).await;
        assert!(ok, "{err}");
        assert!(g.wait_phase("demo", "Running", BOOT).await);
        let second_uid = g.vmi("demo").await["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let (ok, _, err) = g.converge(&["restart", "demo"], None).await;
        assert!(ok, "{err}");
        let restarted = wait_until(BOOT, || async {
            let v = g.vmi("demo").await;
            let uid = v["metadata"]["uid"].as_str().unwrap_or("").to_string();
            !uid.is_empty() && uid != second_uid && v["status"]["phase"] == "Running"
        })
        .await;
        assert!(restarted, "restart gives a new VMI");
        assert_ne!(first_uid, second_uid);
        assert_eq!(g.domains().len(), 1, "one domain, no duplicates: {:?}", g.domains());

        let (ok, xml, err) = g.converge(&["domxml", "demo"], None).await;
        assert!(ok && xml.contains("<domain type='qemu'"), "{xml}{err}");
    })
    .await;
}

/// kubectl reads JSON as YAML; keeps the manifests in one place.
fn serde_yaml_like(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deletion_poweroff_and_run_strategies() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(300), async {
        // A standalone VMI, deleted: its domain is gone within its grace period (0 here).
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                         "metadata": {"name": "solo", "namespace": "default"}, "spec": halt_vmi_spec()});
        let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await;
        assert_eq!(code, 201, "{body}");
        assert!(g.wait_phase("solo", "Running", BOOT).await);
        assert!(g.wait_marker("solo", HALT_MARKER, BOOT).await, "the boot sector ran");
        let (code, _) =
            g.app.delete("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/solo", None).await;
        assert_eq!(code, 200);
        assert!(wait_until(SETTLE, || async { g.domain_state("solo").is_none() }).await, "domain gone");
        assert!(
            wait_until(SETTLE, || async {
                g.app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/solo").await.0 == 404
            })
            .await
        );

        // The guest powers itself off: Succeeded, and with runStrategy Always it comes back.
        let (code, body) = g.app.post(VMS, &kernel_vm("always", "Always")).await;
        assert_eq!(code, 201, "{body}");
        assert!(g.wait_phase("always", "Running", BOOT).await);
        assert!(g.wait_marker("always", GUEST_MARKER, BOOT).await);
        let uid = g.vmi("always").await["metadata"]["uid"].as_str().unwrap().to_string();
        let (ok, _, err) = g.converge(&["console", "always"], Some("poweroff -f\n")).await;
        assert!(ok, "{err}");
        let back = wait_until(BOOT, || async {
            let v = g.vmi("always").await;
            v["metadata"]["uid"].as_str().is_some_and(|u| u != uid) && v["status"]["phase"] == "Running"
        })
        .await;
        assert!(back, "Always restarts a guest that powered off");

        // Halted → stopped for good; Succeeded seen on a Manual VM.
        let (code, _) = g.app.post(VMS, &kernel_vm("manual", "Manual")).await;
        assert_eq!(code, 201);
        assert!(g.wait_printable("manual", "Stopped", SETTLE).await, "Manual starts only on request");
        let (ok, _, err) = g.converge(&["start", "manual"], None).await;
        assert!(ok, "{err}");
        assert!(g.wait_phase("manual", "Running", BOOT).await);
        assert!(g.wait_marker("manual", GUEST_MARKER, BOOT).await);
        let (ok, _, err) = g.converge(&["console", "manual"], Some("poweroff -f\n")).await;
        assert!(ok, "{err}");
        assert!(g.wait_phase("manual", "Succeeded", SETTLE).await, "guest poweroff → Succeeded");
        assert!(g.wait_printable("manual", "Stopped", SETTLE).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_fail_rerun_and_back_off() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(300), async {
        let (code, body) = g.app.post(VMS, &halt_vm("crashy", "RerunOnFailure")).await;
        assert_eq!(code, 201, "{body}");
        let mut last_uid = String::new();
        let mut saw_backoff = false;
        for round in 0..3 {
            let up = wait_until(BOOT, || async {
                let v = g.vmi("crashy").await;
                v["status"]["phase"] == "Running" && v["metadata"]["uid"].as_str().is_some_and(|u| u != last_uid)
            })
            .await;
            assert!(up, "round {round}: a new VMI runs");
            last_uid = g.vmi("crashy").await["metadata"]["uid"].as_str().unwrap().to_string();
            kill_qemu(&g.domain("crashy"));
            let failed = wait_until(SETTLE, || async {
                let v = g.vmi("crashy").await;
                v["metadata"]["uid"].as_str() != Some(last_uid.as_str()) || v["status"]["phase"] == "Failed"
            })
            .await;
            assert!(failed, "round {round}: kill -9 of QEMU → Failed");
            if round > 0 {
                saw_backoff |= g.wait_printable("crashy", "CrashLoopBackOff", Duration::from_secs(10)).await;
            }
        }
        assert!(saw_backoff, "repeated crashes show CrashLoopBackOff");
        let failures = g.vm("crashy").await["status"]["startFailure"]["consecutiveFailCount"].as_i64().unwrap_or(0);
        assert!(failures >= 2, "failures are counted: {failures}");
    })
    .await;
}

fn kill_qemu(domain: &str) {
    let pid_file = format!("/run/libvirt/qemu/{domain}.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("QEMU pid file").trim().to_string();
    let status = std::process::Command::new("kill").args(["-9", &pid]).status().expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_survive_a_server_restart() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(300), async {
        for name in ["keep-a", "keep-b", "keep-c"] {
            let (code, body) = g.app.post(VMS, &halt_vm(name, "Always")).await;
            assert_eq!(code, 201, "{body}");
        }
        for name in ["keep-a", "keep-b", "keep-c"] {
            assert!(g.wait_phase(name, "Running", BOOT).await, "{name} runs");
        }
        let uids: Vec<String> = futures::future::join_all(["keep-a", "keep-b", "keep-c"].map(|n| g.vmi(n)))
            .await
            .iter()
            .map(|v| v["metadata"]["uid"].to_string())
            .collect();
        let pids: Vec<String> = ["keep-a", "keep-b", "keep-c"]
            .iter()
            .map(|n| std::fs::read_to_string(format!("/run/libvirt/qemu/{}.pid", g.domain(n))).unwrap_or_default())
            .collect();

        let GuestApp { app, prefix, libvirt, cleanup } = g;
        let app = app.restart().await;
        let g = GuestApp { app, prefix, libvirt, cleanup };
        tokio::time::sleep(Duration::from_secs(8)).await; // more than one resync of the agent
        for (i, name) in ["keep-a", "keep-b", "keep-c"].iter().enumerate() {
            let v = g.vmi(name).await;
            assert_eq!(v["status"]["phase"], "Running", "{name} still Running");
            assert_eq!(v["metadata"]["uid"].to_string(), uids[i], "{name}: same VMI");
            let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{}.pid", g.domain(name))).unwrap_or_default();
            assert_eq!(pid, pids[i], "{name}: the same QEMU process, adopted");
        }
        assert_eq!(g.domains().len(), 3, "no duplicates: {:?}", g.domains());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_sets_scale_guests() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(300), async {
        let rs = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
            "metadata": {"name": "fleet", "namespace": "default"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "fleet"}},
                     "template": {"metadata": {"labels": {"app": "fleet"}}, "spec": halt_vmi_spec()}},
        });
        let path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancereplicasets";
        let (code, body) = g.app.post(path, &rs).await;
        assert_eq!(code, 201, "{body}");
        let ready =
            wait_until(BOOT, || async { g.app.get(&format!("{path}/fleet")).await.1["status"]["readyReplicas"] == 3 })
                .await;
        assert!(ready, "3 ready replicas");
        assert_eq!(g.domains().len(), 3);
        let (ok, out, err) = g.app.kubectl(&["scale", "vmirs", "fleet", "--replicas=1"]).await;
        assert!(ok, "{out}{err}");
        assert!(wait_until(SETTLE, || async { g.domains().len() == 1 }).await, "2 guests stopped: {:?}", g.domains());
        let scaled = wait_until(SETTLE, || async {
            let s = g.app.get(&format!("{path}/fleet")).await.1;
            s["status"]["replicas"] == 1 && s["status"]["readyReplicas"] == 1
        })
        .await;
        assert!(scaled);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn efi_firmware_boots_the_guest() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(240), async {
        let mut spec = kernel_vmi_spec();
        spec["domain"]["firmware"]["bootloader"] = json!({"efi": {"secureBoot": false}});
        // OVMF and the kernel's decompression need more than the BIOS guest's 128Mi.
        spec["domain"]["resources"]["requests"]["memory"] = json!("512Mi");
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                         "metadata": {"name": "uefi", "namespace": "default"}, "spec": spec});
        let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await;
        assert_eq!(code, 201, "{body}");
        assert!(g.wait_phase("uefi", "Running", BOOT).await);
        assert!(
            g.wait_marker("uefi", GUEST_MARKER, BOOT).await,
            "OVMF booted the kernel: {}",
            g.serial_log("uefi").await
        );
        let xml = g.libvirt.xml(&g.domain("uefi")).unwrap();
        assert!(xml.contains("OVMF_CODE_4M.fd") && xml.contains("<nvram"), "{xml}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vnc_speaks_rfb_over_the_websocket() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(120), async {
        let mut spec = halt_vmi_spec();
        spec["domain"]["devices"]["autoattachGraphicsDevice"] = json!(true);
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                         "metadata": {"name": "screen", "namespace": "default"}, "spec": spec});
        assert_eq!(g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await.0, 201);
        assert!(g.wait_phase("screen", "Running", BOOT).await);
        // `converge vnc` serves a local port; a viewer's first read is the RFB banner.
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(["vnc", "screen", "--port", "0"])
            .env("KUBECONFIG", &g.app.kubeconfig)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().unwrap_or_default();
        let addr = first.rsplit(' ').next().unwrap().to_string();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut banner = [0u8; 12];
        tcp.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner[..4], b"RFB ", "{:?}", String::from_utf8_lossy(&banner));
        // Foreman's way: no header, the token in a subprotocol (standard base64, no padding).
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&g.app.token);
        let path = "/apis/subresources.kubevirt.io/v1alpha3/namespaces/default/virtualmachineinstances/screen/vnc";
        let (mut socket, chosen) =
            ws_with_protocols(&g.app, path, &format!("plain.kubevirt.io, base64url.bearer.authorization.k8s.io.{b64}"))
                .await
                .expect("websocket");
        assert_eq!(chosen, "plain.kubevirt.io");
        use futures::StreamExt;
        let first = socket.next().await.expect("a frame").expect("frame");
        assert!(first.is_binary() && first.into_data().starts_with(b"RFB "), "binary frames carry RFB");
        let refused =
            ws_with_protocols(&g.app, path, "plain.kubevirt.io, base64url.bearer.authorization.k8s.io.bm90LWEtdG9rZW4")
                .await;
        assert!(refused.is_err_and(|e| e.contains("401")), "a bad token is refused");
        // Without the token the websocket is refused.
        let (code, _) = {
            let r = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap()
                .get(
                    g.app
                        .url("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/screen/vnc"),
                )
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), ())
        };
        assert_eq!(code, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bootable_disk_image_boots_as_a_container_disk() {
    let g = spawn_guest_app().await;
    g.agent().images().import(&guest_dir().join("oci-disk"), None).expect("import disk image");
    within(Duration::from_secs(180), async {
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "disked", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 0, "domain": {
                "resources": {"requests": {"memory": "128Mi"}},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}], "autoattachGraphicsDevice": false}},
                "volumes": [{"name": "root", "containerDisk": {"image": "converge.dev/test/guest-disk:v1"}}]}});
        let (code, body) = g.app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await;
        assert_eq!(code, 201, "{body}");
        assert!(g.wait_phase("disked", "Running", BOOT).await);
        assert!(g.wait_marker("disked", GUEST_MARKER, BOOT).await, "syslinux booted the disk: {}", g.serial_log("disked").await);
        let xml = g.libvirt.xml(&g.domain("disked")).unwrap();
        assert!(xml.contains("<backingStore type='file'"), "the image is a backing file, never written: {xml}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_kvm_and_without_emulation_vmis_stay_unschedulable() {
    let prefix = format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = tempfile::tempdir().unwrap();
    let mut node = node_config(dir.path(), &prefix);
    node.allow_emulation = false;
    let database_url = format!("sqlite://{}?mode=rwc", dir.path().join("converge.db").display());
    let app = start_in(dir, database_url, move |c| c.node = Some(node)).await;
    let accel = app.server.as_ref().and_then(|s| s.node.as_ref()).map(|n| n.accel);
    if accel == Some(converge_engine::launcher::build::Accel::Kvm) {
        return; // KVM works on this machine: nothing to refuse.
    }
    within(Duration::from_secs(60), async {
        let mut vm = halt_vm("nokvm", "Always");
        vm["metadata"]["name"] = json!("nokvm");
        assert_eq!(app.post(VMS, &vm).await.0, 201);
        let refused = wait_until(SETTLE, || async {
            app.get(&format!("{VMS}/nokvm")).await.1["status"]["printableStatus"] == "ErrorUnschedulable"
        })
        .await;
        assert!(refused);
        let vmi = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/nokvm").await.1;
        let cond = vmi["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PodScheduled")
            .cloned()
            .unwrap();
        assert_eq!(cond["message"], "0/1 nodes are available: 1 Insufficient devices.kubevirt.io/kvm.");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_paused_then_unpause() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(120), async {
        assert_eq!(g.app.post(VMS, &halt_vm("sleeper", "Halted")).await.0, 201);
        assert!(g.wait_printable("sleeper", "Stopped", SETTLE).await);
        let (ok, _, err) = g.converge(&["start", "sleeper", "--paused"], None).await;
        assert!(ok, "{err}");
        assert!(g.wait_printable("sleeper", "Paused", BOOT).await, "{}", g.vm("sleeper").await);
        assert_eq!(g.vmi("sleeper").await["spec"]["startStrategy"], "Paused");
        assert_eq!(g.domain_state("sleeper"), Some(DomainState::Paused));
        let (ok, _, err) = g.converge(&["unpause", "sleeper"], None).await;
        assert!(ok, "{err}");
        assert!(g.wait_printable("sleeper", "Running", SETTLE).await);
        assert!(g.wait_marker("sleeper", HALT_MARKER, BOOT).await, "the guest ran once unpaused");
        let (ok, _, err) = g.converge(&["unpause", "sleeper"], None).await;
        assert!(!ok && err.contains("not paused"), "{err}");
    })
    .await;
}

/// A transient domain is gone from libvirt the moment it stops; the hypervisor still answers
/// how it stopped (from the stop event) until the domain is undefined — what a VMI started
/// but not yet made persistent is judged by.
#[tokio::test(flavor = "multi_thread")]
async fn a_transient_domain_stop_is_read_from_its_event() {
    let g = spawn_guest_app().await;
    within(Duration::from_secs(60), async {
        let name = format!("{}default_transient", g.prefix);
        let uuid = "2b7f0c6e-1d4a-4e59-9c39-1f4f1f0a7e11";
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>32</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"
        );
        g.libvirt.start(&xml, false).expect("a transient domain starts");
        assert_eq!(g.libvirt.state_by_uuid(uuid, &name).unwrap(), Some(DomainState::Running));
        assert!(g.libvirt.list().unwrap().iter().any(|d| d.name == name && !d.persistent));
        g.libvirt.destroy(&name).unwrap();
        assert_eq!(g.libvirt.state(&name).unwrap(), None, "transient: gone once off");
        let told = wait_until(SETTLE, || async {
            g.libvirt.state_by_uuid(uuid, &name).ok().flatten() == Some(DomainState::Destroyed)
        })
        .await;
        assert!(told, "the stop event's reason is kept");
        assert_eq!(g.libvirt.state_by_uuid(uuid, "someone_else").unwrap(), None);
        g.libvirt.undefine(&name).unwrap();
        assert_eq!(g.libvirt.state_by_uuid(uuid, &name).unwrap(), None, "forgotten once undefined");
    })
    .await;
}
