//! The fault suite: `converge serve` killed with SIGKILL mid-work (from outside, and from inside
//! at every fail point), guests' QEMU killed, libvirtd restarted under running guests, a disk
//! filled during an import. After each, nothing acknowledged is lost, no libvirt domain is left
//! without its VMI or doubled, and every VM reaches the state it asks for.
//!
//! Real parts throughout: the `converge` binary, libvirt and QEMU (TCG), a loop-mounted ext4.
//! `scripts/test-faults` runs this group alone.

mod common;

use common::guests::{halt_vm, within};
use common::process::ServeProcess;
use common::*;
use converge_engine::failpoint;
use converge_engine::hypervisor::DomainState;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VMS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMIS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";
const CONVERGE: Duration = Duration::from_secs(240);

/// libvirtd's restart must not overlap other tests' guests starting: it takes this for writing,
/// every other test for reading.
static LIBVIRTD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let (code, body) = app.get(path).await;
    assert_eq!(code, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn uid_of(v: &Value) -> String {
    v["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

/// What is wrong with the VMs, their VMIs and the domains right now (empty: converged).
/// Every VM is at its run strategy's state; every VMI belongs to a VM and runs in exactly one
/// domain of its own uid; no domain is there without its VMI.
async fn divergence(p: &ServeProcess) -> Vec<String> {
    let mut wrong = vec![];
    let vms = list(&p.app, VMS_DEFAULT).await;
    let vmis: BTreeMap<String, Value> =
        list(&p.app, VMIS_DEFAULT).await.into_iter().map(|v| (name_of(&v), v)).collect();
    let domains = p.domains();
    for vm in &vms {
        let name = name_of(vm);
        let want_running = vm["spec"]["runStrategy"] == "Always";
        let printable = vm["status"]["printableStatus"].as_str().unwrap_or("").to_string();
        match (want_running, vmis.get(&name)) {
            (true, Some(vmi)) if vmi["status"]["phase"] == "Running" && printable == "Running" => {}
            (false, None) if printable == "Stopped" => {}
            (_, vmi) => wrong.push(format!(
                "{name}: wants running={want_running}, printable {printable:?}, VMI phase {:?}",
                vmi.map(|v| v["status"]["phase"].clone())
            )),
        }
    }
    let vm_names: BTreeSet<String> = vms.iter().map(name_of).collect();
    for (name, vmi) in &vmis {
        if !vm_names.contains(name) {
            wrong.push(format!("VMI {name} has no VM"));
        }
        let own: Vec<_> = domains.iter().filter(|d| d.name == p.domain("default", name)).collect();
        let running = vmi["status"]["phase"] == "Running";
        match own.as_slice() {
            [d] if running && d.state == DomainState::Running && d.vmi_uid.as_deref() == Some(&uid_of(vmi)) => {}
            [] if !running => {}
            other => wrong.push(format!(
                "VMI {name} ({}): phase {}, domains {:?}",
                uid_of(vmi),
                vmi["status"]["phase"],
                other.iter().map(|d| (&d.vmi_uid, d.state)).collect::<Vec<_>>()
            )),
        }
    }
    for d in &domains {
        let vmi = d.name.strip_prefix(&p.domain("default", "")).and_then(|n| vmis.get(n));
        if vmi.is_none_or(|v| d.vmi_uid.as_deref() != Some(&uid_of(v))) {
            wrong.push(format!("orphan domain {} ({:?}, {:?})", d.name, d.vmi_uid, d.state));
        }
    }
    wrong
}

async fn converged(p: &ServeProcess, limit: Duration) {
    let last = std::cell::RefCell::new(vec![]);
    let ok = wait_until(limit, || {
        let last = &last;
        async move {
            let wrong = divergence(p).await;
            let done = wrong.is_empty();
            *last.borrow_mut() = wrong;
            done
        }
    })
    .await;
    assert!(ok, "not converged after {limit:?}:\n{}\n{}", last.borrow().join("\n"), tail(&p.logs()));
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

const CREATES: usize = 1000;

async fn kill_during_concurrent_creates(database: Option<String>) {
    let _shared = LIBVIRTD.read().await;
    let args: Vec<String> = database.iter().flat_map(|d| ["--database".to_string(), d.clone()]).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = ServeProcess::start("", &args).await;
    let acknowledged: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut creates = vec![];
    for i in 0..CREATES {
        // 25 run; the rest are stopped VMs whose creates are cheap. There are enough of them that
        // the kill lands while creates are in flight even when the store takes thousands a second.
        let vm = halt_vm(&format!("vm-{i:04}"), if i < 100 && i % 4 == 0 { "Always" } else { "Halted" });
        let (http, url, token) = (p.app.http.clone(), p.app.url(VMS_DEFAULT), p.app.token.clone());
        let (acknowledged, answered) = (Arc::clone(&acknowledged), Arc::clone(&answered));
        creates.push(tokio::spawn(async move {
            let Ok(resp) = http.post(url).bearer_auth(token).json(&vm).send().await else { return };
            let code = resp.status().as_u16();
            let Ok(body) = resp.json::<Value>().await else { return };
            if code == 201 {
                acknowledged.lock().expect("lock").insert(name_of(&body), uid_of(&body));
            }
            answered.fetch_add(1, Ordering::SeqCst);
        }));
    }
    assert!(wait_until(Duration::from_secs(60), || async { answered.load(Ordering::SeqCst) >= 30 }).await);
    p.kill9().await;
    for c in creates {
        let _ = c.await;
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!((30..CREATES).contains(&acknowledged.len()), "the kill came mid-way: {} acknowledged", acknowledged.len());
    p.spawn("").await;
    let stored: BTreeMap<String, String> =
        list(&p.app, VMS_DEFAULT).await.iter().map(|v| (name_of(v), uid_of(v))).collect();
    for (name, uid) in &acknowledged {
        assert_eq!(stored.get(name), Some(uid), "acknowledged VM {name} is there with its uid");
    }
    converged(&p, CONVERGE).await;
    println!("{} of {CREATES} creates acknowledged before the kill; {} VMs stored", acknowledged.len(), stored.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_1000_concurrent_creates_loses_nothing_acknowledged() {
    within(Duration::from_secs(420), kill_during_concurrent_creates(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_1000_concurrent_creates_on_postgres() {
    let Some(base) = postgres_base() else {
        eprintln!("CONVERGE_TEST_POSTGRES unset: skipped");
        return;
    };
    let url = fresh_postgres(&base).await;
    within(Duration::from_secs(420), kill_during_concurrent_creates(Some(url))).await;
}

/// Arms `point`, drives a VM until the process kills itself there, starts it again unarmed,
/// and checks that everything converges. `stop_after_start` stops the VM once it runs, for the
/// points on the way down.
async fn crash_at_and_resume(point: &'static str, stop_after_start: bool) {
    let _shared = LIBVIRTD.read().await;
    let mut p = ServeProcess::start(point, &[]).await;
    answered_or_crashed(&p, reqwest::Method::POST, VMS_DEFAULT, "application/json", &halt_vm("guest", "Always"), 201)
        .await;
    if stop_after_start {
        let running = wait_until(CONVERGE, || async { divergence(&p).await.is_empty() }).await;
        assert!(running, "the VM runs before it is stopped:\n{}", tail(&p.logs()));
        let stop = json!({"spec": {"runStrategy": "Halted"}});
        let path = format!("{VMS_DEFAULT}/guest");
        answered_or_crashed(&p, reqwest::Method::PATCH, &path, "application/merge-patch+json", &stop, 200).await;
    }
    assert!(p.wait_crash(CONVERGE).await, "the process died at {point}:\n{}", tail(&p.logs()));
    assert!(p.logs().contains(&format!("failpoint {point} reached")), "{}", tail(&p.logs()));
    p.spawn("").await;
    converged(&p, CONVERGE).await;
    let vm = p.app.get(&format!("{VMS_DEFAULT}/guest")).await.1;
    let want = if stop_after_start { "Stopped" } else { "Running" };
    assert_eq!(vm["status"]["printableStatus"], want, "{vm}");
    if !stop_after_start {
        // Started as a transient domain: persistent once the next server has looked (a crash
        // before the persist leaves that to its resync).
        let persistent = wait_until(CONVERGE, || async { p.domains().iter().all(|d| d.persistent) }).await;
        assert!(persistent, "the guest's domain is persistent:\n{}", tail(&p.logs()));
    } else {
        assert!(
            p.domains().is_empty(),
            "no domain is left: {:?}",
            p.domains().iter().map(|d| &d.name).collect::<Vec<_>>()
        );
        let leftovers = std::fs::read_dir(p.app.dir.path().join("node/vmis")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftovers, 0, "the VMI's directory was released");
    }
}

/// A write whose commit the controllers act on at once: the process may die at the armed point
/// before this answer is sent. No answer is fine (the crash is checked next); a wrong one is not.
async fn answered_or_crashed(
    p: &ServeProcess,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: &Value,
    want: u16,
) {
    let answer = p
        .app
        .http
        .request(method, p.app.url(path))
        .bearer_auth(&p.app.token)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await;
    if let Ok(resp) = answer {
        assert_eq!(resp.status().as_u16(), want, "{:?}", resp.text().await);
    }
}

macro_rules! fail_point_tests {
    ($($test:ident: $point:expr, $stop:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $test() {
            within(Duration::from_secs(300), crash_at_and_resume($point, $stop)).await;
        }
    )*};
}

fail_point_tests! {
    crash_after_the_vmi_is_created: failpoint::VM_AFTER_VMI_CREATE, false;
    crash_after_the_vmi_is_deleted_to_stop: failpoint::VM_AFTER_VMI_DELETE, true;
    crash_after_the_node_label_before_the_status: failpoint::VMI_AFTER_NODE_LABEL, false;
    crash_after_disk_preparation_before_start: failpoint::NODE_AFTER_DISK_PREPARE, false;
    crash_after_start_before_persist: failpoint::NODE_BEFORE_PERSIST, false;
    crash_after_start_before_the_status_write: failpoint::NODE_AFTER_START, false;
    crash_after_teardown_before_release: failpoint::NODE_AFTER_TEARDOWN, true;
}

#[test]
fn every_fail_point_has_a_test() {
    let source = include_str!("faults.rs");
    for point in failpoint::POINTS {
        let constant = failpoint_constant(point);
        assert!(source.contains(&format!("failpoint::{constant}, ")), "{point} ({constant}) has no test");
    }
}

fn failpoint_constant(point: &str) -> String {
    point.to_uppercase().replace('-', "_")
}

fn qemu_pid(domain: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid")).ok()?.trim().parse().ok()
}

fn sh(cmd: &str) -> bool {
    std::process::Command::new("sh").arg("-c").arg(cmd).status().is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_a_guests_qemu_fails_its_vmi_and_the_vm_starts_a_new_one() {
    let _shared = LIBVIRTD.read().await;
    within(Duration::from_secs(300), async {
        let p = ServeProcess::start("", &[]).await;
        assert_eq!(p.app.post(VMS_DEFAULT, &halt_vm("guest", "Always")).await.0, 201);
        converged(&p, CONVERGE).await;
        let first = uid_of(&p.app.get(&format!("{VMIS_DEFAULT}/guest")).await.1);
        let pid = qemu_pid(&p.domain("default", "guest")).expect("QEMU's pid file");
        let failed = watch_for_phase(&p.app, VMIS_DEFAULT, &first, "Failed");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(sh(&format!("kill -9 {pid}")));
        let replaced = wait_until(CONVERGE, || async {
            let vmi = p.app.get(&format!("{VMIS_DEFAULT}/guest")).await.1;
            !uid_of(&vmi).is_empty() && uid_of(&vmi) != first
        })
        .await;
        assert!(replaced, "a new VMI replaced the crashed one:\n{}", tail(&p.logs()));
        converged(&p, CONVERGE).await;
        assert_ne!(qemu_pid(&p.domain("default", "guest")), Some(pid));
        let failed = tokio::time::timeout(Duration::from_secs(10), failed).await;
        let reason = failed.ok().and_then(Result::ok).flatten().expect("a watch saw the crashed VMI Failed");
        assert_eq!(reason, "QEMU exited unexpectedly");
    })
    .await;
}

/// Watches `path` for the object of `uid` reaching `phase`; resolves to its Ready message.
fn watch_for_phase(app: &TestApp, path: &str, uid: &str, phase: &str) -> tokio::task::JoinHandle<Option<String>> {
    use futures::StreamExt;
    let request = app.http.get(app.url(&format!("{path}?watch=true"))).bearer_auth(&app.token);
    let (uid, phase) = (uid.to_string(), phase.to_string());
    tokio::spawn(async move {
        let mut body = request.send().await.ok()?.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                let obj = &event["object"];
                if uid_of(obj) == uid && obj["status"]["phase"] == phase.as_str() {
                    let conditions = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    let ready = conditions.iter().find(|c| c["type"] == "Ready");
                    return Some(ready.and_then(|c| c["message"].as_str()).unwrap_or("").to_string());
                }
            }
        }
        None
    })
}

/// Each VMI's uid and the pid of the QEMU running it.
async fn guests_and_their_qemu(p: &ServeProcess) -> BTreeMap<String, (String, Option<u32>)> {
    let vmis = list(&p.app, VMIS_DEFAULT).await;
    vmis.iter().map(|v| (name_of(v), (uid_of(v), qemu_pid(&p.domain("default", &name_of(v)))))).collect()
}

/// libvirtd restarts (an upgrade, a crash): QEMU processes carry on, Converge reconnects, its
/// guests are neither failed nor restarted, and new work goes through the new daemon.
#[tokio::test(flavor = "multi_thread")]
async fn a_libvirtd_restart_leaves_running_guests_running() {
    let _alone = LIBVIRTD.write().await;
    within(Duration::from_secs(300), async {
        let p = ServeProcess::start("", &[]).await;
        for name in ["a", "b", "c"] {
            assert_eq!(p.app.post(VMS_DEFAULT, &halt_vm(name, "Always")).await.0, 201);
        }
        converged(&p, CONVERGE).await;
        let before = guests_and_their_qemu(&p).await;
        assert!(sh("pkill -x libvirtd"), "libvirtd was running");
        assert!(wait_until(Duration::from_secs(30), || async { !sh("pgrep -x libvirtd >/dev/null") }).await);
        // While it is down the API still answers, from the store.
        assert_eq!(p.app.get(VMIS_DEFAULT).await.0, 200);
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/libvirt.sh");
        assert!(sh(&script.display().to_string()), "libvirtd started again");
        converged(&p, CONVERGE).await;
        let after = guests_and_their_qemu(&p).await;
        assert_eq!(before, after, "the same VMIs in the same QEMU processes");
        // New work reaches the new daemon: a start and a stop.
        assert_eq!(p.app.post(VMS_DEFAULT, &halt_vm("d", "Always")).await.0, 201);
        let stop = json!({"spec": {"runStrategy": "Halted"}});
        assert_eq!(p.app.patch(&format!("{VMS_DEFAULT}/a"), "application/merge-patch+json", &stop).await.0, 200);
        converged(&p, CONVERGE).await;
        assert_eq!(p.domains().len(), 3, "b, c and d run");
    })
    .await;
}

/// A loop-mounted ext4 of `mib` MiB at `dir`, unmounted on drop.
struct LoopFs(PathBuf);

impl LoopFs {
    fn new(dir: &std::path::Path, mib: u32) -> LoopFs {
        let (image, mount) = (dir.join("fs.img"), dir.join("mnt"));
        std::fs::create_dir_all(&mount).expect("mount point");
        assert!(sh(&format!("truncate -s {mib}M {0} && mkfs.ext4 -q -m 0 {0}", image.display())));
        assert!(sh(&format!("mount -o loop {} {}", image.display(), mount.display())), "mount (needs root)");
        LoopFs(mount)
    }

    fn free_bytes(&self) -> u64 {
        let out = std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&self.0).output().expect("df");
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        sh(&format!("umount -l {}", self.0.display()));
    }
}

fn dv(name: &str, url: &str, size: &str) -> Value {
    json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": {"http": {"url": url}},
                 "storage": {"storageClassName": "tiny", "resources": {"requests": {"storage": size}}}}})
}

const DVS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes";

/// An import that fills its pool's disk fails for good, with the reason (a retry would only fill
/// it again); what it wrote is removed at once, the volume beside it is untouched, the server
/// keeps serving, and the next import on the same disk succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn an_import_that_fills_the_disk_fails_with_the_reason_and_harms_nothing_else() {
    within(Duration::from_secs(240), async {
        let app = spawn_app_with(None, |c| c.storage.allow_private_imports = true).await;
        let app = &app;
        let work = tempfile::tempdir().expect("tempdir");
        let fs = LoopFs::new(work.path(), 48);
        let web_dir = work.path().join("web");
        std::fs::create_dir_all(&web_dir).expect("web dir");
        // Random bytes: nothing a converter could leave as holes.
        assert!(sh(&format!(
            "head -c 4M /dev/urandom > {0}/small.raw && head -c 96M /dev/urandom > {0}/big.raw",
            web_dir.display()
        )));
        let web = servers::http(&web_dir).await;
        let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "tiny"},
            "provisioner": converge_engine::storage::PROVISIONER, "parameters": {"path": fs.0.display().to_string()}});
        assert_eq!(app.post("/apis/storage.k8s.io/v1/storageclasses", &class).await.0, 201);
        let url = |f: &str| format!("http://127.0.0.1:{}/{f}", web.port);
        let phase = |name: &'static str| async move {
            app.get(&format!("{DVS}/{name}")).await.1["status"]["phase"].as_str().unwrap_or("").to_string()
        };
        assert_eq!(app.post(DVS, &dv("small", &url("small.raw"), "4Mi")).await.0, 201);
        assert!(wait_until(Duration::from_secs(60), || async { phase("small").await == "Succeeded" }).await);
        let pvc = app.get("/api/v1/namespaces/default/persistentvolumeclaims/small").await.1;
        let pv =
            app.get(&format!("/api/v1/persistentvolumes/{}", pvc["spec"]["volumeName"].as_str().unwrap_or(""))).await.1;
        let small_file = PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().expect("small's volume"));
        let small_bytes = std::fs::read(&small_file).expect("small's volume");
        let free_before = fs.free_bytes();

        assert_eq!(app.post(DVS, &dv("big", &url("big.raw"), "96Mi")).await.0, 201);
        let last = std::cell::RefCell::new(Value::Null);
        let failed = wait_until(Duration::from_secs(90), || {
            let last = &last;
            async move {
                let dv = app.get(&format!("{DVS}/big")).await.1;
                let messages = dv["status"]["conditions"].to_string();
                let done = messages.contains("No space left on device") && dv["status"]["phase"] == "Failed";
                *last.borrow_mut() = dv;
                done
            }
        })
        .await;
        assert!(failed, "the import fails with the reason: {}", last.borrow());
        // Its volume stays (a claim the user may reuse or delete), sparse, not full of half an image.
        let given_back =
            wait_until(Duration::from_secs(30), || async { fs.free_bytes() + (1 << 20) >= free_before }).await;
        assert!(given_back, "the failed import's data is gone: {} free, {free_before} before", fs.free_bytes());
        assert_eq!(app.get("/readyz").await.0, 200);
        assert_eq!(std::fs::read(&small_file).expect("small's volume"), small_bytes, "the volume beside it is intact");
        assert_eq!(phase("small").await, "Succeeded");

        assert_eq!(app.delete(&format!("{DVS}/big"), None).await.0, 200);
        let freed = wait_until(Duration::from_secs(60), || async { fs.free_bytes() >= free_before }).await;
        assert!(freed, "deleting the DataVolume gives the space back: {} < {free_before}", fs.free_bytes());
        assert_eq!(app.post(DVS, &dv("again", &url("small.raw"), "4Mi")).await.0, 201);
        assert!(wait_until(Duration::from_secs(60), || async { phase("again").await == "Succeeded" }).await);
    })
    .await;
}

/// A host request for the bridge's crash tests: a Secret, two blank disks and a VM.
fn bridge_host(name: &str, second_class: &str) -> Value {
    json!({"name": name, "memory": "64Mi", "start": false, "nics": [],
        "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 me@laptop"],
        "disks": [{"name": "root", "size": "16Mi", "source": {"blank": {}}},
                  {"name": "data", "size": "16Mi", "storageClass": second_class, "source": {"blank": {}}}]})
}

async fn post_host(app: &TestApp, body: &Value, key: &str) -> Result<(u16, Value), String> {
    let resp = app
        .http
        .post(app.url("/bridge/v1/hosts"))
        .bearer_auth(&app.token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or_default()))
}

/// The objects of host `name` there are now, by kind and name.
async fn host_objects(app: &TestApp, name: &str) -> Vec<String> {
    let mut out = vec![];
    for (kind, path) in [
        ("Secret", "/api/v1/namespaces/default/secrets"),
        ("DataVolume", "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes"),
        ("VirtualMachine", VMS_DEFAULT),
    ] {
        for o in list(app, &format!("{path}?labelSelector=bridge.converge.dev/host={name}")).await {
            out.push(format!("{kind} {}", name_of(&o)));
        }
    }
    out
}

/// kill -9 just after a host request made its first object: the next server finishes the
/// request, and the client's retry with the same key gets the one host.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_the_middle_of_a_host_request_is_resumed_into_one_whole_host() {
    within(Duration::from_secs(300), async {
        let _shared = LIBVIRTD.read().await;
        let mut p = ServeProcess::start(failpoint::BRIDGE_AFTER_OBJECT, &[]).await;
        let cut = post_host(&p.app, &bridge_host("resumed", "local"), "crash-1").await;
        assert!(cut.is_err(), "the request died with the server: {cut:?}");
        assert!(p.wait_crash(CONVERGE).await, "{}", tail(&p.logs()));
        p.spawn("").await;
        let path = "/bridge/v1/hosts/default/resumed";
        let created = wait_until(CONVERGE, || async { p.app.get(path).await.1["state"] == "Created" }).await;
        let view = p.app.get(path).await.1;
        assert!(created, "{view}\n{}", tail(&p.logs()));
        let states: Vec<&str> =
            view["steps"].as_array().expect("steps").iter().map(|s| s["state"].as_str().unwrap_or("")).collect();
        assert_eq!(states, ["Done", "Done", "Done", "Done"]);
        let (code, again) = post_host(&p.app, &bridge_host("resumed", "local"), "crash-1").await.expect("retry");
        assert_eq!((code, &again["id"]), (201, &view["id"]), "{again}");
        assert_eq!(
            host_objects(&p.app, "resumed").await,
            [
                "Secret resumed-cloudinit",
                "DataVolume resumed-data",
                "DataVolume resumed-root",
                "VirtualMachine resumed"
            ]
        );
    })
    .await;
}

/// kill -9 after a step failed and before anything was removed: the next server finishes the
/// rollback, and the retry gets the failure, naming the step.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_a_rollback_is_rolled_back_by_the_next_server() {
    within(Duration::from_secs(300), async {
        let _shared = LIBVIRTD.read().await;
        let mut p = ServeProcess::start(failpoint::BRIDGE_BEFORE_ROLLBACK, &[]).await;
        let cut = post_host(&p.app, &bridge_host("undone", "no-such-class"), "crash-2").await;
        assert!(cut.is_err(), "the request died with the server: {cut:?}");
        assert!(p.wait_crash(CONVERGE).await, "{}", tail(&p.logs()));
        p.spawn("").await;
        let path = "/bridge/v1/hosts/default/undone";
        let failed = wait_until(CONVERGE, || async { p.app.get(path).await.1["state"] == "Failed" }).await;
        let view = p.app.get(path).await.1;
        assert!(failed, "{view}\n{}", tail(&p.logs()));
        let (code, again) = post_host(&p.app, &bridge_host("undone", "no-such-class"), "crash-2").await.expect("retry");
        assert_eq!((code, again["error"]["step"].as_str()), (422, Some("disk/data")), "{again}");
        let gone = wait_until(CONVERGE, || async { host_objects(&p.app, "undone").await.is_empty() }).await;
        assert!(gone, "{:?}", host_objects(&p.app, "undone").await);
    })
    .await;
}
