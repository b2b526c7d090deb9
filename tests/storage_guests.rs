//! Guests on storage: container disks pulled from a real registry, and VMs booting from
//! DataVolumes that were imported over HTTP, uploaded, and cloned from a DataSource in another
//! namespace. Real libvirt and QEMU; each test has its own time limit.

mod common;

use common::guests::*;
use common::servers;
use common::*;
use converge_engine::hypervisor::Hypervisor;
use serde_json::{json, Value};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(60);

/// A VM booting the test disk (syslinux → kernel → marker on the console) from `volume`.
fn disk_vm(name: &str, volume: Value, templates: Value) -> Value {
    let mut vol = volume;
    vol["name"] = json!("root");
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "dataVolumeTemplates": templates, "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {"resources": {"requests": {"memory": "128Mi"}},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}], "autoattachGraphicsDevice": false}},
            "volumes": [vol]}}}})
}

async fn boots(g: &GuestApp, name: &str) {
    assert!(g.wait_phase(name, "Running", BOOT).await, "{name}: {}", g.vm(name).await);
    assert!(g.wait_marker(name, GUEST_MARKER, BOOT).await, "{name} booted: {}", g.serial_log(name).await);
    assert!(g.wait_printable(name, "Running", SETTLE).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn container_disks_come_from_a_registry_and_share_the_node_cache() {
    let registry = servers::registry(Some(("bob", "builder"))).await;
    servers::push(&guest_dir().join("oci-disk"), registry.port, "guests/disk:v1", Some(("bob", "builder")));
    let host = format!("127.0.0.1:{}", registry.port);
    let g = spawn_guest_app_pulling_from(&host).await;
    within(Duration::from_secs(300), async {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:builder");
        let config = json!({"auths": {host.clone(): {"auth": auth}}}).to_string();
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull"}, "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config}});
        assert_eq!(g.app.post("/api/v1/namespaces/default/secrets", &secret).await.0, 201);
        let image = format!("{host}/guests/disk:v1");
        let cd = json!({"containerDisk": {"image": image, "imagePullSecret": "pull"}});
        for name in ["pulled-a", "pulled-b"] {
            assert_eq!(g.app.post(VMS, &disk_vm(name, cd.clone(), json!([]))).await.0, 201);
        }
        boots(&g, "pulled-a").await;
        boots(&g, "pulled-b").await;
        // One image in the cache, by digest; both overlays sit on the same file.
        let stored: Vec<(String, String)> = g.agent().images().list().into_iter().filter(|(r, _)| r.contains("guests/disk")).collect();
        assert_eq!(stored.len(), 1, "{stored:?}");
        let backing = |name: &str| {
            let xml = g.libvirt.xml(&g.domain(name)).unwrap();
            let start = xml.find("<backingStore type='file'").unwrap();
            let src = &xml[start..];
            let s = src.find("<source file='").unwrap() + 14;
            src[s..s + src[s..].find('\'').unwrap()].to_string()
        };
        assert_eq!(backing("pulled-a"), backing("pulled-b"));

        // By digest, as a user pins an image.
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "bob:builder", "--format", "{{.Digest}}"])
            .arg(format!("docker://{host}/guests/disk:v1"))
            .output()
            .unwrap();
        let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(digest.starts_with("sha256:"), "{digest} {}", String::from_utf8_lossy(&out.stderr));
        let pinned = json!({"containerDisk": {"image": format!("{host}/guests/disk@{digest}"), "imagePullSecret": "pull"}});
        assert_eq!(g.app.post(VMS, &disk_vm("pinned", pinned, json!([]))).await.0, 201);
        boots(&g, "pinned").await;
        // Never: only what the node has.
        let never = json!({"containerDisk": {"image": format!("{host}/guests/other:v1"), "imagePullPolicy": "Never"}});
        assert_eq!(g.app.post(VMS, &disk_vm("never", never, json!([]))).await.0, 201);
        assert!(g.wait_printable("never", "ErrImageNeverPull", SETTLE).await, "{}", g.vm("never").await);

        // A missing image: ErrImagePull, then ImagePullBackOff, on the VM.
        let missing = json!({"containerDisk": {"image": format!("{host}/guests/none:v1"), "imagePullSecret": "pull"}});
        assert_eq!(g.app.post(VMS, &disk_vm("missing", missing, json!([]))).await.0, 201);
        assert!(g.wait_printable("missing", "ErrImagePull", SETTLE).await, "{}", g.vm("missing").await);
        assert!(g.wait_printable("missing", "ImagePullBackOff", SETTLE).await, "{}", g.vm("missing").await);
        // No credentials: the registry refuses, and the message says so.
        let anonymous = json!({"containerDisk": {"image": format!("{host}/guests/disk:v1"), "imagePullPolicy": "Always"}});
        assert_eq!(g.app.post(VMS, &disk_vm("anon", anonymous, json!([]))).await.0, 201);
        assert!(g.wait_printable("anon", "ErrImagePull", SETTLE).await);
        let vmi = g.vmi("anon").await;
        let msg = vmi["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Synchronized").unwrap()["message"].to_string();
        assert!(msg.contains("authorized"), "{msg}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_boot_from_imported_uploaded_and_cloned_datavolumes() {
    let g = spawn_guest_app_with(|c| c.storage.allow_private_imports = true).await;
    let web_dir = tempfile::tempdir().unwrap();
    let disk = guest_dir().join("disk.qcow2");
    let gz = web_dir.path().join("disk.qcow2.gz");
    assert!(std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", disk.display(), gz.display()))
        .status()
        .unwrap()
        .success());
    let web = servers::http(web_dir.path()).await;
    within(Duration::from_secs(420), async {
        // dataVolumeTemplates with an HTTP source: the VM waits (Provisioning), then boots.
        let imported = json!([{"metadata": {"name": "imported-root"}, "spec": {
            "source": {"http": {"url": format!("http://127.0.0.1:{}/disk.qcow2.gz", web.port)}},
            "storage": {"resources": {"requests": {"storage": "256Mi"}}}}}]);
        let vm = disk_vm("imported", json!({"dataVolume": {"name": "imported-root"}}), imported);
        assert_eq!(g.app.post(VMS, &vm).await.0, 201);
        let provisioning = wait_until(SETTLE, || async {
            let p = g.printable("imported").await;
            p == "Provisioning" || p == "WaitingForVolumeBinding" || p == "Starting" || p == "Running"
        })
        .await;
        assert!(provisioning, "{}", g.vm("imported").await);
        boots(&g, "imported").await;
        let dv = g.app.get("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/imported-root").await.1;
        assert_eq!(dv["metadata"]["ownerReferences"][0]["kind"], "VirtualMachine");

        // Upload into a golden namespace; publish it as a DataSource other namespaces may clone.
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "os-images",
            "annotations": {"converge.dev/clone-to": "*"}}});
        assert_eq!(g.app.post("/api/v1/namespaces", &ns).await.0, 201);
        let d = disk.display().to_string();
        let (ok, _, err) = g
            .converge(
                &["image-upload", "dv", "busybox-golden", "-n", "os-images", "--size", "256Mi", "--image-path", &d],
                None,
            )
            .await;
        assert!(ok, "image-upload: {err}");
        let ds = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": "busybox"},
            "spec": {"source": {"pvc": {"name": "busybox-golden", "namespace": "os-images"}}}});
        assert_eq!(g.app.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/os-images/datasources", &ds).await.0, 201);

        // What Foreman sends: only sourceRef and a size.
        let from_ref = json!([{"metadata": {"name": "cloned-root"}, "spec": {
            "sourceRef": {"kind": "DataSource", "name": "busybox", "namespace": "os-images"},
            "storage": {"resources": {"requests": {"storage": "256Mi"}}}}}]);
        let vm = disk_vm("cloned", json!({"dataVolume": {"name": "cloned-root"}}), from_ref);
        assert_eq!(g.app.post(VMS, &vm).await.0, 201);
        boots(&g, "cloned").await;

        // The clone's guest writes don't reach the golden image.
        let golden_pvc = g.app.get("/api/v1/namespaces/os-images/persistentvolumeclaims/busybox-golden").await.1;
        let golden_pv = g
            .app
            .get(&format!("/api/v1/persistentvolumes/{}", golden_pvc["spec"]["volumeName"].as_str().unwrap()))
            .await
            .1;
        let golden = std::path::PathBuf::from(golden_pv["spec"]["hostPath"]["path"].as_str().unwrap());
        let before = std::fs::read(&golden).unwrap();
        let (ok, _, err) = g.converge(&["stop", "cloned"], None).await;
        assert!(ok, "{err}");
        assert!(g.wait_printable("cloned", "Stopped", SETTLE).await);
        assert_eq!(std::fs::read(&golden).unwrap(), before);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_mode_volume_boots_through_a_loop_device() {
    let g = spawn_guest_app_with(|c| c.storage.allow_private_imports = true).await;
    let web = servers::http(&guest_dir()).await;
    within(Duration::from_secs(240), async {
        let templates = json!([{"metadata": {"name": "block-root"}, "spec": {
            "source": {"http": {"url": format!("http://127.0.0.1:{}/disk.qcow2", web.port)}},
            "storage": {"volumeMode": "Block", "resources": {"requests": {"storage": "256Mi"}}}}}]);
        let vm = disk_vm("blocky", json!({"dataVolume": {"name": "block-root"}}), templates);
        assert_eq!(g.app.post(VMS, &vm).await.0, 201);
        boots(&g, "blocky").await;
        let xml = g.libvirt.xml(&g.domain("blocky")).unwrap();
        assert!(xml.contains("<disk type='block'") && xml.contains("/dev/loop"), "{xml}");
        let pvc = g.app.get("/api/v1/namespaces/default/persistentvolumeclaims/block-root").await.1;
        assert_eq!(pvc["spec"]["volumeMode"], "Block");
        let pv =
            g.app.get(&format!("/api/v1/persistentvolumes/{}", pvc["spec"]["volumeName"].as_str().unwrap())).await.1;
        let file = pv["spec"]["hostPath"]["path"].as_str().unwrap().to_string();
        let attached = |f: &str| {
            let out = std::process::Command::new("losetup").arg("-j").arg(f).output().unwrap();
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        };
        assert!(attached(&file));
        // The VM goes, and with it the loop device (and, by ownership, the volume).
        assert_eq!(g.app.delete(&format!("{VMS}/blocky"), None).await.0, 200);
        assert!(wait_until(SETTLE, || async { !attached(&file) }).await, "loop device still attached to {file}");
        assert!(
            wait_until(SETTLE, || async { !std::path::Path::new(&file).exists() }).await,
            "the volume was reclaimed"
        );
    })
    .await;
}

/// The other import paths a guest boots from: S3 (the qcow2) and HTTP (the same disk as raw.xz).
#[tokio::test(flavor = "multi_thread")]
async fn vms_boot_from_s3_and_xz_imports() {
    let g = spawn_guest_app_with(|c| c.storage.allow_private_imports = true).await;
    let web_dir = tempfile::tempdir().unwrap();
    let disk = guest_dir().join("disk.qcow2");
    let raw = web_dir.path().join("disk.raw");
    let script = format!(
        "qemu-img convert -q -f qcow2 -O raw {} {} && xz -0 -T1 {}",
        disk.display(),
        raw.display(),
        raw.display()
    );
    assert!(std::process::Command::new("sh").arg("-c").arg(script).status().unwrap().success());
    let web = servers::http(web_dir.path()).await;
    let s3 = servers::s3().await;
    servers::s3_put("golden", "disk.qcow2", std::fs::read(&disk).unwrap()).await;
    within(Duration::from_secs(300), async {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
            "stringData": {"accessKeyId": servers::S3_ACCESS_KEY, "secretKey": servers::S3_SECRET_KEY}});
        assert_eq!(g.app.post("/api/v1/namespaces/default/secrets", &secret).await.0, 201);
        let sources = [
            (
                "from-s3",
                json!({"s3": {"url": format!("http://127.0.0.1:{}/golden/disk.qcow2", s3.port), "secretRef": "s3"}}),
            ),
            ("from-xz", json!({"http": {"url": format!("http://127.0.0.1:{}/disk.raw.xz", web.port)}})),
        ];
        for (name, source) in &sources {
            let templates = json!([{"metadata": {"name": format!("{name}-root")}, "spec": {
                "source": source, "storage": {"resources": {"requests": {"storage": "128Mi"}}}}}]);
            let vm = disk_vm(name, json!({"dataVolume": {"name": format!("{name}-root")}}), templates);
            assert_eq!(g.app.post(VMS, &vm).await.0, 201);
        }
        for (name, _) in &sources {
            boots(&g, name).await;
        }
    })
    .await;
}
