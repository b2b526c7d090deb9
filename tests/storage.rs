//! Storage against real files, real tools and real servers (no guests): claims and volumes,
//! DataVolume imports from HTTP, S3 and a registry, uploads, clones, and CDI's safety list.

mod common;

use common::servers;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn sh(cmd: &str) {
    assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success(), "{cmd}");
}

async fn storage_app(allow_private: bool) -> TestApp {
    spawn_app_with(None, move |c| {
        c.storage.allow_private_imports = allow_private;
        c.storage.insecure_registries = vec![];
    })
    .await
}

fn dvs(ns: &str) -> String {
    format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes")
}

fn dv(name: &str, source: Value, size: &str) -> Value {
    json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": size}}}}})
}

async fn wait_dv(app: &TestApp, ns: &str, name: &str, phases: &[&str]) -> Value {
    let path = format!("{}/{name}", dvs(ns));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let last = app.get(&path).await.1;
        if phases.contains(&last["status"]["phase"].as_str().unwrap_or("")) {
            return last;
        }
        assert!(std::time::Instant::now() < deadline, "DataVolume {name} never reached {phases:?}: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The file behind a claim.
async fn volume_file(app: &TestApp, ns: &str, claim: &str) -> PathBuf {
    let pvc = app.get(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")).await.1;
    let pv = pvc["spec"]["volumeName"].as_str().expect("bound").to_string();
    let pv = app.get(&format!("/api/v1/persistentvolumes/{pv}")).await.1;
    PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().expect("hostPath"))
}

fn running_message(dv: &Value) -> String {
    dv["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Running")
        .map(|c| c["message"].to_string())
        .unwrap_or_default()
}

/// Images every import test uses: 4 MiB of random data as raw, raw.gz, raw.xz and qcow2.
fn images(dir: &Path) -> Vec<u8> {
    let d = dir.display();
    sh(&format!("head -c 2097152 /dev/urandom > {d}/img.raw && truncate -s 4M {d}/img.raw"));
    sh(&format!("gzip -k -1 {d}/img.raw && xz -k -0 -T1 {d}/img.raw"));
    sh(&format!("qemu-img convert -q -f raw -O qcow2 {d}/img.raw {d}/img.qcow2"));
    std::fs::read(dir.join("img.raw")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_bind_to_volumes_in_the_pool_and_are_reclaimed() {
    // The server keeps the volumes of node "pool" (as `serve` does its own node's): a Node with no
    // agent stands for it, so guests are placed there and never run.
    let app = spawn_app_with(None, |c| c.storage.node = Some("pool".into())).await;
    // The default class exists, with its profile.
    let sc = app.get("/apis/storage.k8s.io/v1/storageclasses/local").await;
    assert_eq!(sc.0, 200, "{}", sc.1);
    assert!(
        wait_until(WAIT, || async {
            app.get("/apis/cdi.kubevirt.io/v1beta1/storageprofiles/local").await.1["status"]["claimPropertySets"]
                .is_array()
        })
        .await
    );

    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}});
    assert_eq!(app.post("/api/v1/namespaces/default/persistentvolumeclaims", &pvc).await.0, 201);
    assert!(
        wait_until(WAIT, || async {
            app.get("/api/v1/namespaces/default/persistentvolumeclaims/data").await.1["status"]["phase"] == "Bound"
        })
        .await
    );
    let got = app.get("/api/v1/namespaces/default/persistentvolumeclaims/data").await.1;
    assert_eq!(got["status"]["capacity"]["storage"], "16Mi");
    assert_eq!(got["spec"]["volumeMode"], "Filesystem");
    let file = volume_file(&app, "default", "data").await;
    assert!(file.starts_with(app.dir.path()), "{}", file.display());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);
    let (ok, out, _) = app.kubectl(&["get", "pvc", "data", "-o", "jsonpath={.status.phase}"]).await;
    assert!(ok && out == "Bound", "{out}");

    // Bad claims are refused with their causes.
    let mut bad = pvc.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["resources"]["requests"]["storage"] = json!("0");
    bad["spec"]["accessModes"] = json!(["ReadWriteSometimes"]);
    let (code, body) = app.post("/api/v1/namespaces/default/persistentvolumeclaims", &bad).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["details"]["causes"].as_array().unwrap().len(), 2, "{body}");

    // WaitForFirstConsumer: Pending until a guest names the claim.
    let late = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "late"},
        "provisioner": "converge.dev/local-pool", "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Retain"});
    assert_eq!(app.post("/apis/storage.k8s.io/v1/storageclasses", &late).await.0, 201);
    let mut lazy = pvc.clone();
    lazy["metadata"]["name"] = json!("lazy");
    lazy["spec"]["storageClassName"] = json!("late");
    assert_eq!(app.post("/api/v1/namespaces/default/persistentvolumeclaims", &lazy).await.0, 201);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.get("/api/v1/namespaces/default/persistentvolumeclaims/lazy").await.1["status"]["phase"], "Pending");
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pool",
        "labels": {"kubernetes.io/hostname": "pool", "converge.dev/software-emulation": "true"}}});
    assert_eq!(app.post("/api/v1/nodes", &node).await.0, 201);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = json!({"status": {"allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110", "devices.kubevirt.io/kvm": "0"},
        "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    assert_eq!(app.patch("/api/v1/nodes/pool/status", "application/merge-patch+json", &status).await.0, 200);
    let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "consumer"},
        "spec": {"domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {"disks": [{"name": "d", "disk": {}}]}},
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "lazy"}}]}});
    assert_eq!(app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await.0, 201);
    assert!(
        wait_until(WAIT, || async {
            app.get("/api/v1/namespaces/default/persistentvolumeclaims/lazy").await.1["status"]["phase"] == "Bound"
        })
        .await
    );
    let lazy_file = volume_file(&app, "default", "lazy").await;
    // Made on the node its first guest was placed on, and pinned there.
    let lazy = app.get("/api/v1/namespaces/default/persistentvolumeclaims/lazy").await.1;
    assert_eq!(lazy["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "pool", "{lazy}");
    let pv =
        app.get(&format!("/api/v1/persistentvolumes/{}", lazy["spec"]["volumeName"].as_str().unwrap_or("?"))).await.1;
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["pool"]),
        "{pv}"
    );

    // Delete reclaims the volume and its file; Retain keeps both, Released.
    assert_eq!(app.delete("/api/v1/namespaces/default/persistentvolumeclaims/data", None).await.0, 200);
    assert!(wait_until(WAIT, || async { !file.exists() }).await, "the Delete policy removed {}", file.display());
    app.delete("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/consumer", None).await;
    // The claim is protected while the VMI exists; the VMI has no node to finalize it here.
    app.delete("/api/v1/namespaces/default/persistentvolumeclaims/lazy", None).await;
    let vmi_path = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/consumer";
    let vmi_now = app.get(vmi_path).await.1;
    if vmi_now["metadata"]["finalizers"].is_array() {
        let mut v = vmi_now.clone();
        v["metadata"]["finalizers"] = json!([]);
        app.put(vmi_path, &v).await;
    }
    assert!(
        wait_until(WAIT, || async { app.get("/api/v1/namespaces/default/persistentvolumeclaims/lazy").await.0 == 404 })
            .await
    );
    let released = wait_until(WAIT, || async {
        let pvs = app.get("/api/v1/persistentvolumes").await.1;
        pvs["items"].as_array().unwrap().iter().filter(|p| p["status"]["phase"] == "Released").count() == 1
    })
    .await;
    assert!(released, "{}", app.get("/api/v1/persistentvolumes").await.1);
    assert!(lazy_file.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn datavolumes_import_from_http_and_s3_with_rising_progress() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    let want = images(dir.path());
    let web = servers::http(dir.path()).await;
    let s3 = servers::s3().await;
    servers::s3_put("images", "img.qcow2", std::fs::read(dir.path().join("img.qcow2")).unwrap()).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"},
        "stringData": {"accessKeyId": servers::S3_ACCESS_KEY, "secretKey": servers::S3_SECRET_KEY}});
    assert_eq!(app.post("/api/v1/namespaces/default/secrets", &secret).await.0, 201);
    let sha = {
        use sha2::Digest;
        format!("sha256:{:x}", sha2::Sha256::digest(std::fs::read(dir.path().join("img.raw.gz")).unwrap()))
    };
    let cases = [
        ("from-qcow2", json!({"http": {"url": format!("http://127.0.0.1:{}/img.qcow2", web.port)}})),
        ("from-gz", json!({"http": {"url": format!("http://127.0.0.1:{}/img.raw.gz", web.port), "checksum": sha}})),
        ("from-xz", json!({"http": {"url": format!("http://127.0.0.1:{}/img.raw.xz", web.port)}})),
        (
            "from-s3",
            json!({"s3": {"url": format!("http://127.0.0.1:{}/images/img.qcow2", s3.port), "secretRef": "s3-creds"}}),
        ),
    ];
    for (name, source) in &cases {
        let (code, body) = app.post(&dvs("default"), &dv(name, source.clone(), "8Mi")).await;
        assert_eq!(code, 201, "{body}");
    }
    for (name, _) in &cases {
        // Progress is watched as it moves; it never goes back.
        let mut seen: Vec<f64> = vec![];
        let deadline = std::time::Instant::now() + WAIT;
        let done = loop {
            let dv = app.get(&format!("{}/{name}", dvs("default"))).await.1;
            if let Some(p) = dv["status"]["progress"].as_str().and_then(|p| p.trim_end_matches('%').parse::<f64>().ok())
            {
                seen.push(p);
            }
            if dv["status"]["phase"] == "Succeeded" || dv["status"]["phase"] == "Failed" {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let dv = app.get(&format!("{}/{name}", dvs("default"))).await.1;
        assert!(done && dv["status"]["phase"] == "Succeeded", "{name}: {dv}");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{name}: progress went back: {seen:?}\n{dv}");
        assert_eq!(dv["status"]["progress"], "100.0%");
        let ready =
            dv["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
        assert_eq!(ready["status"], "True", "{name}");
        let data = std::fs::read(volume_file(&app, "default", name).await).unwrap();
        assert_eq!(data.len(), 8 << 20, "{name}: grown to the volume");
        assert!(data[..want.len()] == want[..], "{name}: the guest sees the image's bytes");
    }
    let (ok, out, _) = app.kubectl(&["get", "dv"]).await;
    assert!(ok && out.contains("from-s3"), "{out}");
}

/// CDI's lessons, one DataVolume each: refused with the reason, nothing written outside the pool.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_imports_fail_with_their_reason() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!("qemu-img create -q -f raw {d}/base.raw 1M && qemu-img create -q -f qcow2 -F raw -b /etc/shadow {d}/backed.qcow2 1M"));
    sh(&format!("qemu-img create -q -f qcow2 -o data_file={d}/data.raw {d}/datafile.qcow2 1M"));
    sh(&format!("qemu-img create -q -f qcow2 {d}/huge.qcow2 1G"));
    sh(&format!("head -c 1048576 /dev/urandom > {d}/r.raw && qemu-img convert -q -O qcow2 -f raw {d}/r.raw {d}/full.qcow2 && head -c 300000 {d}/full.qcow2 > {d}/truncated.qcow2"));
    sh(&format!("printf '<html>hello</html>' > {d}/page.html && head -c 3145728 /dev/urandom > {d}/big.raw"));
    sh(&format!("qemu-img convert -q -f raw -O qcow2 {d}/big.raw {d}/big.qcow2"));
    // qcow2 is decoded while it arrives: an L2 entry mapping a cluster a TiB past the image's
    // end must not become a raw volume, whatever the decoder makes of it.
    let mut ahead = std::fs::read(dir.path().join("full.qcow2")).unwrap();
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let l1 = be64(&ahead, 40) as usize;
    let l2 = (be64(&ahead, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    ahead[l2..l2 + 8].copy_from_slice(&((1u64 << 63) | (1 << 40)).to_be_bytes());
    std::fs::write(dir.path().join("ahead.qcow2"), ahead).unwrap();
    let web = servers::http(dir.path()).await;
    // A pool on a 2 MiB tmpfs: the disk fills.
    let tiny = tempfile::tempdir().unwrap();
    sh(&format!("mount -t tmpfs -o size=2m tmpfs {}", tiny.path().display()));
    // Unmounted however the test ends.
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tiny.path().to_path_buf());
    let small = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "tiny"},
        "provisioner": "converge.dev/local-pool", "parameters": {"path": tiny.path().display().to_string()}});
    assert_eq!(app.post("/apis/storage.k8s.io/v1/storageclasses", &small).await.0, 201);
    let url = |f: &str| format!("http://127.0.0.1:{}/{f}", web.port);
    let cases = [
        ("backed", json!({"http": {"url": url("backed.qcow2")}}), "backing file", None),
        ("datafile", json!({"http": {"url": url("datafile.qcow2")}}), "external data file", None),
        ("huge", json!({"http": {"url": url("huge.qcow2")}}), "larger than the volume", None),
        ("truncated", json!({"http": {"url": url("truncated.qcow2")}}), "damaged or truncated", None),
        ("page", json!({"http": {"url": url("page.html")}}), "not a disk image", None),
        ("badsum", json!({"http": {"url": url("r.raw"), "checksum": "sha256:0000"}}), "checksum mismatch", None),
        ("full", json!({"http": {"url": url("big.raw")}}), "No space left", Some("tiny")),
        ("full-qcow2", json!({"http": {"url": url("big.qcow2")}}), "No space left", Some("tiny")),
        ("ahead", json!({"http": {"url": url("ahead.qcow2")}}), "damaged or truncated", None),
    ];
    for (name, source, _, class) in &cases {
        let mut d = dv(name, source.clone(), "64Mi");
        if let Some(c) = class {
            d["spec"]["storage"]["storageClassName"] = json!(c);
        }
        assert_eq!(app.post(&dvs("default"), &d).await.0, 201);
    }
    for (name, _, want, _) in &cases {
        let got = wait_dv(&app, "default", name, &["Failed", "Succeeded"]).await;
        assert_eq!(got["status"]["phase"], "Failed", "{name}: {got}");
        assert!(running_message(&got).contains(want), "{name}: {}", running_message(&got));
    }

    // Loopback is refused unless the node allows it; claims over the node's cap never bind, and
    // the DataVolume says why.
    let strict = spawn_app_with(None, |c| c.storage.max_volume_bytes = Some(1 << 30)).await;
    assert_eq!(strict.post(&dvs("default"), &dv("too-big", json!({"blank": {}}), "2Gi")).await.0, 201);
    let said = wait_until(WAIT, || async {
        let d = strict.get(&format!("{}/too-big", dvs("default"))).await.1;
        let bound = d["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Bound").cloned();
        bound.is_some_and(|c| c["message"].as_str().unwrap_or("").contains("cap"))
    })
    .await;
    assert!(said, "{}", strict.get(&format!("{}/too-big", dvs("default"))).await.1);
    assert_eq!(strict.post(&dvs("default"), &dv("local", json!({"http": {"url": url("r.raw")}}), "8Mi")).await.0, 201);
    let got = wait_dv(&strict, "default", "local", &["Failed"]).await;
    assert!(running_message(&got).contains("loopback"), "{got}");
    // Invalid DataVolumes never reach the store.
    let (code, body) = strict.post(&dvs("default"), &dv("nosrc", json!({"gcs": {"url": "gs://x"}}), "1Mi")).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not supported"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_and_clones_across_namespaces_when_allowed() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    let want = images(dir.path());
    let image = dir.path().join("img.qcow2");
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "golden"}});
    assert_eq!(app.post("/api/v1/namespaces", &ns).await.0, 201);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"))
        .args(["image-upload", "dv", "golden-disk", "--namespace", "golden", "--size", "8Mi", "--image-path"])
        .arg(&image)
        .env("KUBECONFIG", &app.kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "image-upload: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("completed successfully"));
    let src = volume_file(&app, "golden", "golden-disk").await;
    assert_eq!(&std::fs::read(&src).unwrap()[..want.len()], &want[..]);

    // A second upload into the finished volume is refused.
    let token_req = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "again"}, "spec": {"pvcName": "golden-disk"}});
    let (code, body) =
        app.post("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/golden/uploadtokenrequests", &token_req).await;
    assert_eq!(code, 201, "{body}");
    let token = body["status"]["token"].as_str().unwrap().to_string();
    let r = app.http.post(app.url("/v1beta1/upload")).bearer_auth(&token).body(vec![0u8; 512]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r =
        app.http.post(app.url("/v1beta1/upload")).bearer_auth(&app.token).body(vec![0u8; 512]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "an API token is no upload token");

    // A DataSource in the golden namespace; a clone from another namespace is refused until the
    // golden namespace allows it.
    let ds = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": "debian"},
        "spec": {"source": {"pvc": {"name": "golden-disk", "namespace": "golden"}}}});
    assert_eq!(app.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/golden/datasources", &ds).await.0, 201);
    let ready = wait_until(WAIT, || async {
        let ds = app.get("/apis/cdi.kubevirt.io/v1beta1/namespaces/golden/datasources/debian").await.1;
        ds["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
    .await;
    assert!(ready, "{}", app.get("/apis/cdi.kubevirt.io/v1beta1/namespaces/golden/datasources/debian").await.1);
    let by_ref = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "root"},
        "spec": {"sourceRef": {"kind": "DataSource", "name": "debian", "namespace": "golden"},
                 "storage": {"resources": {"requests": {"storage": "16Mi"}}}}});
    assert_eq!(app.post(&dvs("default"), &by_ref).await.0, 201);
    let refused = wait_dv(&app, "default", "root", &["Failed"]).await;
    assert!(running_message(&refused).contains("not allowed"), "{refused}");
    // A guest using the golden claim holds the clone back until it is gone.
    let user = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "user"},
        "spec": {"domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {"disks": [{"name": "d", "disk": {}}]}},
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "golden-disk"}}]}});
    let vmi_path = "/apis/kubevirt.io/v1/namespaces/golden/virtualmachineinstances";
    assert_eq!(app.post(vmi_path, &user).await.0, 201);
    let mut ns = app.get("/api/v1/namespaces/golden").await.1;
    ns["metadata"]["annotations"] = json!({"converge.dev/clone-to": "default"});
    assert_eq!(app.put("/api/v1/namespaces/golden", &ns).await.0, 200);
    let waiting = wait_until(WAIT, || async {
        let d = app.get(&format!("{}/root", dvs("default"))).await.1;
        d["status"]["phase"] == "CloneScheduled" && running_message(&d).contains("in use")
    })
    .await;
    assert!(waiting, "{}", app.get(&format!("{}/root", dvs("default"))).await.1);
    // No node runs it here: the test plays the node and lets it go.
    let mut v = app.get(&format!("{vmi_path}/user")).await.1;
    v["metadata"]["finalizers"] = json!([]);
    assert_eq!(app.put(&format!("{vmi_path}/user"), &v).await.0, 200);
    assert_eq!(app.delete(&format!("{vmi_path}/user"), None).await.0, 200);
    let cloned = wait_dv(&app, "default", "root", &["Succeeded"]).await;
    assert_eq!(cloned["status"]["progress"], "100.0%");
    let copy = volume_file(&app, "default", "root").await;
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 16 << 20, "grown to the target's size");
    // Writes to the clone don't reach the source.
    std::fs::write(&copy, b"guest writes here").unwrap();
    assert_eq!(&std::fs::read(&src).unwrap()[..want.len()], &want[..]);

    // Clones that name no size take their source's, as CDI's `storage: {}` example does: by
    // DataSource with the storage API, and by claim with the pvc API.
    let golden = app.get("/api/v1/namespaces/golden/persistentvolumeclaims/golden-disk").await.1;
    let golden_size = golden.pointer("/status/capacity/storage").cloned().expect("the source is bound");
    let by_ref_unsized = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "root-unsized"},
        "spec": {"sourceRef": {"kind": "DataSource", "name": "debian", "namespace": "golden"}, "storage": {}}});
    let by_claim_unsized = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "pvc-unsized"},
        "spec": {"source": {"pvc": {"name": "golden-disk", "namespace": "golden"}}, "pvc": {"accessModes": ["ReadWriteOnce"]}}});
    for dv in [&by_ref_unsized, &by_claim_unsized] {
        let (code, body) = app.post(&dvs("default"), dv).await;
        assert_eq!(code, 201, "{body}");
        let name = dv["metadata"]["name"].as_str().unwrap();
        wait_dv(&app, "default", name, &["Succeeded"]).await;
        let claim = app.get(&format!("/api/v1/namespaces/default/persistentvolumeclaims/{name}")).await.1;
        assert_eq!(claim.pointer("/spec/resources/requests/storage"), Some(&golden_size), "{claim}");
    }
    // An import has no source to size it by.
    let unsized_import = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "blank-unsized"},
        "spec": {"source": {"blank": {}}, "storage": {}}});
    let (code, body) = app.post(&dvs("default"), &unsized_import).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("spec.storage.resources[storage]"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_come_as_multipart_forms_too() {
    let app = storage_app(false).await;
    let dir = tempfile::tempdir().unwrap();
    let want = images(dir.path());
    let image = std::fs::read(dir.path().join("img.qcow2")).unwrap();
    let (code, body) = app.post(&dvs("default"), &dv("form-disk", json!({"upload": {}}), "8Mi")).await;
    assert_eq!(code, 201, "{body}");
    wait_dv(&app, "default", "form-disk", &["UploadReady"]).await;
    let token_req = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "form"}, "spec": {"pvcName": "form-disk"}});
    let (code, body) =
        app.post("/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/uploadtokenrequests", &token_req).await;
    assert_eq!(code, 201, "{body}");
    let token = body["status"]["token"].as_str().unwrap().to_string();
    // What a browser's FormData sends: another field first, then the file.
    let boundary = "----converge-test-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"img.qcow2\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&image);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let no_file =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--{boundary}--\r\n");
    let post = |body: Vec<u8>| {
        app.http
            .post(app.url("/v1beta1/upload-form"))
            .bearer_auth(&token)
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body)
            .send()
    };
    let r = post(no_file.into_bytes()).await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "a form without its file is an error");
    let text = r.text().await.unwrap();
    assert!(text.contains("the upload form has no"), "{text}");
    wait_dv(&app, "default", "form-disk", &["UploadReady"]).await;
    let r = post(form).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
    wait_dv(&app, "default", "form-disk", &["Succeeded"]).await;
    let file = volume_file(&app, "default", "form-disk").await;
    assert_eq!(&std::fs::read(&file).unwrap()[..want.len()], &want[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_sources_pull_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let want = images(dir.path());
    let registry = servers::registry(Some(("alice", "wonderland"))).await;
    let layout = servers::disk_layout(dir.path(), &dir.path().join("img.qcow2"), "disks/test:1");
    servers::push(&layout, registry.port, "disks/test:1", Some(("alice", "wonderland")));
    let host = format!("127.0.0.1:{}", registry.port);
    let h = host.clone();
    let app = spawn_app_with(None, move |c| {
        c.storage.allow_private_imports = true;
        c.storage.insecure_registries = vec![h];
    })
    .await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "reg"},
        "stringData": {"accessKeyId": "alice", "secretKey": "wonderland"}});
    assert_eq!(app.post("/api/v1/namespaces/default/secrets", &secret).await.0, 201);
    let url = format!("docker://{host}/disks/test:1");
    assert_eq!(
        app.post(&dvs("default"), &dv("pulled", json!({"registry": {"url": url, "secretRef": "reg"}}), "8Mi")).await.0,
        201
    );
    assert_eq!(app.post(&dvs("default"), &dv("anonymous", json!({"registry": {"url": url}}), "8Mi")).await.0, 201);
    wait_dv(&app, "default", "pulled", &["Succeeded"]).await;
    assert_eq!(&std::fs::read(volume_file(&app, "default", "pulled").await).unwrap()[..want.len()], &want[..]);
    // Without credentials the registry says no, and the import keeps retrying with backoff.
    let got = wait_until(WAIT, || async {
        let d = app.get(&format!("{}/anonymous", dvs("default"))).await.1;
        d["status"]["restartCount"].as_i64().unwrap_or(0) >= 1 && running_message(&d).contains("authorized")
    })
    .await;
    assert!(got, "{}", app.get(&format!("{}/anonymous", dvs("default"))).await.1);
}

/// `converge serve` stops in the middle of an import: after the restart the import starts over
/// cleanly and finishes; nothing half-written is left or taken for done.
#[tokio::test(flavor = "multi_thread")]
async fn an_import_cut_by_a_restart_starts_over_and_finishes() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    let want = images(dir.path());
    let slow = servers::slow_http(&dir.path().join("img.raw"), Duration::from_millis(40)).await;
    let source = json!({"http": {"url": format!("http://127.0.0.1:{}/img.raw", slow.port)}});
    assert_eq!(app.post(&dvs("default"), &dv("slow", source, "8Mi")).await.0, 201);
    let midway = wait_until(WAIT, || async {
        let d = app.get(&format!("{}/slow", dvs("default"))).await.1;
        let p =
            d["status"]["progress"].as_str().and_then(|p| p.trim_end_matches('%').parse::<f64>().ok()).unwrap_or(0.0);
        d["status"]["phase"] == "ImportInProgress" && p > 5.0
    })
    .await;
    assert!(midway, "{}", app.get(&format!("{}/slow", dvs("default"))).await.1);
    let app = app.restart().await;
    let done = wait_dv(&app, "default", "slow", &["Succeeded", "Failed"]).await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    let file = volume_file(&app, "default", "slow").await;
    assert_eq!(&std::fs::read(&file).unwrap()[..want.len()], &want[..]);
    let leftovers: Vec<String> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "disk.img")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Foreman's plugin makes volumes by hand and claims them by name and selector (its recorded
/// requests): they bind without provisioning, and Retain keeps the admin's directory.
#[tokio::test(flavor = "multi_thread")]
async fn hand_made_volumes_bind_to_the_claims_that_name_them() {
    let app = storage_app(false).await;
    let data = tempfile::tempdir().unwrap();
    let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "my-local-storage",
        "labels": {"type": "local", "component": "test", "tier": "dev"}},
        "spec": {"storageClassName": "manual", "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": data.path().display().to_string(), "type": "Directory"}}});
    let (code, created) = app.post("/api/v1/persistentvolumes", &pv).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(created["metadata"]["finalizers"], json!(["kubernetes.io/pv-protection"]));
    assert!(
        wait_until(WAIT, || async {
            app.get("/api/v1/persistentvolumes/my-local-storage").await.1["status"]["phase"] == "Available"
        })
        .await
    );
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "my-local-storage-pvc", "namespace": "default"},
        "spec": {"storageClassName": "manual", "resources": {"requests": {"storage": "512Mi"}, "limits": {"storage": "1Gi"}},
                 "selector": {"matchLabels": {"component": "test"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev"]}]},
                 "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem", "volumeName": "my-local-storage"}});
    assert_eq!(app.post("/api/v1/namespaces/default/persistentvolumeclaims", &pvc).await.0, 201);
    let path = "/api/v1/namespaces/default/persistentvolumeclaims/my-local-storage-pvc";
    assert!(
        wait_until(WAIT, || async { app.get(path).await.1["status"]["phase"] == "Bound" }).await,
        "{}",
        app.get(path).await.1
    );
    let claimed = app.get("/api/v1/persistentvolumes/my-local-storage").await.1;
    assert_eq!(claimed["spec"]["claimRef"]["name"], "my-local-storage-pvc");
    assert_eq!(claimed["status"]["phase"], "Bound");
    // A claim naming a volume that isn't there waits and says so.
    let mut orphan = pvc.clone();
    orphan["metadata"]["name"] = json!("orphan");
    orphan["spec"]["volumeName"] = json!("nowhere");
    assert_eq!(app.post("/api/v1/namespaces/default/persistentvolumeclaims", &orphan).await.0, 201);
    let said = wait_until(WAIT, || async {
        let events = app.get("/api/v1/namespaces/default/events").await.1;
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "FailedBinding" && e["message"].as_str().unwrap_or("").contains("nowhere"))
    })
    .await;
    assert!(said);
    std::fs::write(data.path().join("keep.txt"), b"admin data").unwrap();
    assert_eq!(app.delete(path, None).await.0, 200);
    assert!(
        wait_until(WAIT, || async {
            app.get("/api/v1/persistentvolumes/my-local-storage").await.1["status"]["phase"] == "Released"
        })
        .await
    );
    assert!(data.path().join("keep.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_applies_datavolumes_and_prints_storage_like_a_cluster() {
    let app = storage_app(false).await;
    let manifest = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: scratch\nspec:\n  source:\n    blank: {}\n  storage:\n    resources:\n      requests:\n        storage: 64Mi\n";
    let (ok, out, err) = app.kubectl_stdin(&["apply", "-f", "-"], Some(manifest)).await;
    assert!(ok, "{out}{err}");
    wait_dv(&app, "default", "scratch", &["Succeeded"]).await;
    let (ok, out, err) = app.kubectl(&["get", "dv"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("PHASE") && out.contains("PROGRESS") && out.contains("Succeeded") && out.contains("100.0%"),
        "{out}"
    );
    let (_, out, _) = app.kubectl(&["get", "pvc"]).await;
    assert!(
        out.contains("scratch")
            && out.contains("Bound")
            && out.contains("64Mi")
            && out.contains("RWO")
            && out.contains("local"),
        "{out}"
    );
    let (_, out, _) = app.kubectl(&["get", "sc"]).await;
    assert!(
        out.contains("local (default)") && out.contains("converge.dev/local-pool") && out.contains("Immediate"),
        "{out}"
    );
    let (_, out, _) = app.kubectl(&["get", "pv"]).await;
    assert!(out.contains("Delete") && out.contains("default/scratch"), "{out}");
    let (ok, _, err) = app.kubectl(&["get", "uploadtokenrequests"]).await;
    assert!(!ok && err.contains("not allowed") || err.contains("MethodNotAllowed") || err.contains("405"), "{err}");
}

/// CDI's HTTP options against a server that insists on them: a CA from a ConfigMap, basic auth
/// from a Secret, and extra headers (plain and from a Secret).
#[tokio::test(flavor = "multi_thread")]
async fn http_imports_use_the_ca_credentials_and_headers_they_are_given() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    let want = images(dir.path());
    let (web, ca) = servers::guarded_https(dir.path(), "carol", "s3same", "X-Image-Token: opensesame").await;
    let objects = [
        (
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-ca"}, "data": {"ca.pem": ca}}),
        ),
        (
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-auth"}, "stringData": {"accessKeyId": "carol", "secretKey": "s3same"}}),
        ),
        (
            "/api/v1/namespaces/default/secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-header"}, "stringData": {"token": "X-Image-Token: opensesame"}}),
        ),
    ];
    for (path, obj) in &objects {
        assert_eq!(app.post(path, obj).await.0, 201);
    }
    let url = format!("https://127.0.0.1:{}/img.qcow2", web.port);
    let full = json!({"http": {"url": url, "certConfigMap": "web-ca", "secretRef": "web-auth", "extraHeaders": ["X-Image-Token: opensesame"]}});
    let secret_header = json!({"http": {"url": url, "certConfigMap": "web-ca", "secretRef": "web-auth", "secretExtraHeaders": ["web-header"]}});
    let no_ca = json!({"http": {"url": url, "secretRef": "web-auth", "extraHeaders": ["X-Image-Token: opensesame"]}});
    let no_auth =
        json!({"http": {"url": url, "certConfigMap": "web-ca", "extraHeaders": ["X-Image-Token: opensesame"]}});
    for (name, source) in [("full", &full), ("secret-header", &secret_header), ("no-ca", &no_ca), ("no-auth", &no_auth)]
    {
        assert_eq!(app.post(&dvs("default"), &dv(name, source.clone(), "8Mi")).await.0, 201);
    }
    for name in ["full", "secret-header"] {
        wait_dv(&app, "default", name, &["Succeeded"]).await;
        assert_eq!(
            &std::fs::read(volume_file(&app, "default", name).await).unwrap()[..want.len()],
            &want[..],
            "{name}"
        );
    }
    // Without the CA or the credentials: retried, and the condition says what the server said.
    for (name, want) in [("no-ca", "certificate"), ("no-auth", "401")] {
        let said = wait_until(WAIT, || async {
            let d = app.get(&format!("{}/{name}", dvs("default"))).await.1;
            d["status"]["phase"] == "ImportInProgress" && running_message(&d).contains(want)
        })
        .await;
        assert!(said, "{name}: {}", app.get(&format!("{}/{name}", dvs("default"))).await.1);
    }
}

/// A VM waits for its DataVolumes and says which way: binding, provisioning, or an error.
#[tokio::test(flavor = "multi_thread")]
async fn vms_show_what_their_datavolumes_are_doing() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("page.html"), b"<html>not an image</html>").unwrap();
    let web = servers::http(dir.path()).await;
    let external = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "ebs"}, "provisioner": "ebs.csi.aws.com"});
    assert_eq!(app.post("/apis/storage.k8s.io/v1/storageclasses", &external).await.0, 201);
    let vm = |name: &str, template: Value| {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"runStrategy": "Always", "dataVolumeTemplates": [template], "template": {"spec": {
                "domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {"disks": [{"name": "root", "disk": {}}]}},
                "volumes": [{"name": "root", "dataVolume": {"name": format!("{name}-root")}}]}}}})
    };
    let broken = json!({"metadata": {"name": "broken-root"}, "spec": {"source": {"http": {"url": format!("http://127.0.0.1:{}/page.html", web.port)}},
        "storage": {"resources": {"requests": {"storage": "8Mi"}}}}});
    let unbound = json!({"metadata": {"name": "unbound-root"}, "spec": {"source": {"blank": {}},
        "storage": {"storageClassName": "ebs", "resources": {"requests": {"storage": "8Mi"}}}}});
    assert_eq!(app.post(VMS, &vm("broken", broken)).await.0, 201);
    assert_eq!(app.post(VMS, &vm("unbound", unbound)).await.0, 201);
    let printable = |name: &'static str| {
        let app = &app;
        async move {
            app.get(&format!("{VMS}/{name}")).await.1["status"]["printableStatus"].as_str().unwrap_or("").to_string()
        }
    };
    assert!(
        wait_until(WAIT, || async { printable("broken").await == "DataVolumeError" }).await,
        "{}",
        app.get(&format!("{VMS}/broken")).await.1
    );
    assert!(wait_until(WAIT, || async { printable("unbound").await == "WaitingForVolumeBinding" }).await);
    let failure = app.get(&format!("{VMS}/broken")).await.1["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failure")
        .cloned()
        .unwrap();
    assert!(failure["message"].as_str().unwrap().contains("not a disk image"), "{failure}");
    // No VMI was made for either.
    assert_eq!(
        app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances").await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let dv = app.get(&format!("{}/unbound-root", dvs("default"))).await.1;
    let bound = dv["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Bound").cloned().unwrap();
    assert!(bound["message"].as_str().unwrap().contains("ebs.csi.aws.com"), "{bound}");
}

/// contentType archive: a tar.gz of files lands as files in the volume, not as a disk.
#[tokio::test(flavor = "multi_thread")]
async fn archives_land_as_files() {
    let app = storage_app(true).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!("mkdir -p {d}/src/etc && echo hello > {d}/src/etc/motd && tar -C {d}/src -czf {d}/files.tar.gz etc"));
    let web = servers::http(dir.path()).await;
    let mut archive =
        dv("files", json!({"http": {"url": format!("http://127.0.0.1:{}/files.tar.gz", web.port)}}), "8Mi");
    archive["spec"]["contentType"] = json!("archive");
    assert_eq!(app.post(&dvs("default"), &archive).await.0, 201);
    wait_dv(&app, "default", "files", &["Succeeded"]).await;
    let volume_dir = volume_file(&app, "default", "files").await.parent().unwrap().to_path_buf();
    assert_eq!(std::fs::read_to_string(volume_dir.join("fs/etc/motd")).unwrap(), "hello\n");
}
