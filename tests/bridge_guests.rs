//! `/bridge/v1` end to end with a real guest: a host from an HTTP image URL boots on the pod
//! network, reports its MAC and address, restarts, and is deleted with nothing left — VM, VMI,
//! DataVolume, claim, Secret, libvirt domain — while its record stays, marked Deleted.

mod common;

use common::guests::*;
use common::netapp::*;
use common::servers;
use common::*;
use converge_engine::hypervisor::Hypervisor;
use serde_json::{json, Value};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const SETTLE: Duration = Duration::from_secs(60);
const HOST: &str = "/bridge/v1/hosts/default/pipeline";

async fn view(g: &GuestApp) -> Value {
    g.app.get(HOST).await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_from_an_image_url_boots_reports_its_address_restarts_and_leaves_nothing() {
    let n = spawn_net_app_with(30, |c| c.storage.allow_private_imports = true).await;
    let g = &n.g;
    let web_dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(guest_dir().join("disk.qcow2"), web_dir.path().join("disk.qcow2")).expect("copy the test disk");
    let web = servers::http(web_dir.path()).await;
    within(Duration::from_secs(480), async {
        // The node's registry images are offered beside DataSources.
        let images = g.app.get("/bridge/v1/images").await.1;
        assert!(images["items"].as_array().expect("items").iter().any(|i| i["kind"] == "registry"), "{images}");

        // The test guest ignores ACPI: a short grace period makes stops quick.
        let request = json!({"name": "pipeline", "cpu": 1, "memory": "128Mi", "gracePeriodSeconds": 1,
            "disks": [{"name": "root", "size": "256Mi", "source": {"url": format!("http://127.0.0.1:{}/disk.qcow2", web.port)}}],
            "userData": "#cloud-config\nhostname: pipeline\n"});
        let (s, created) = g.app.post("/bridge/v1/hosts", &request).await;
        assert_eq!(s, 201, "{created}");
        let ready = wait_until(BOOT, || async {
            let v = view(g).await;
            v["ready"] == true && v["nics"][0]["ipAddress"].is_string()
        })
        .await;
        let v = view(g).await;
        assert!(ready, "{v}");
        assert!(g.wait_marker("pipeline", GUEST_MARKER, BOOT).await, "{}", g.serial_log("pipeline").await);
        assert_eq!(v["disks"][0]["phase"], "Succeeded");
        assert_eq!(v["printableStatus"], "Running");
        let ip = v["nics"][0]["ipAddress"].as_str().unwrap_or_default().to_string();
        assert_eq!(Some(ip.clone()), n.pod_ip("pipeline").await, "the address the node gave");
        let mac = v["nics"][0]["macAddress"].as_str().unwrap_or_default().to_string();
        assert_eq!(g.vm("pipeline").await["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"], mac.as_str());
        assert!(g.libvirt.xml(&g.domain("pipeline")).map(|x| x.contains(&mac)).unwrap_or(false), "the guest has the MAC");
        assert!(v["consoleUrl"].as_str().is_some_and(|u| u.starts_with("wss://") && u.ends_with("/console")), "{v}");

        // Restart: a new VMI, running again, the MAC kept.
        let before = g.vmi("pipeline").await["metadata"]["uid"].clone();
        let (s, body) = g.app.post(&format!("{HOST}/restart"), &json!({})).await;
        assert_eq!(s, 202, "{body}");
        let restarted = wait_until(BOOT, || async {
            let vmi = g.vmi("pipeline").await;
            vmi["metadata"]["uid"] != before && vmi["status"]["phase"] == "Running"
        })
        .await;
        assert!(restarted, "{}", g.vmi("pipeline").await);
        assert!(wait_until(SETTLE, || async { view(g).await["ready"] == true }).await, "{}", view(g).await);
        assert_eq!(view(g).await["nics"][0]["macAddress"], mac.as_str());

        // Delete: nothing is left but the record.
        let (s, body) = g.app.delete(HOST, None).await;
        assert_eq!(s, 202, "{body}");
        let deleted = wait_until(SETTLE, || async { view(g).await["state"] == "Deleted" }).await;
        assert!(deleted, "{}", view(g).await);
        for path in [
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/pipeline",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/pipeline",
            "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/pipeline-root",
            "/api/v1/namespaces/default/persistentvolumeclaims/pipeline-root",
            "/api/v1/namespaces/default/secrets/pipeline-cloudinit",
        ] {
            assert_eq!(g.app.get(path).await.0, 404, "{path} is gone");
        }
        assert!(g.domains().is_empty(), "no domain is left: {:?}", g.domains());
        let pvs = g.app.get("/api/v1/persistentvolumes").await.1;
        let claimed: Vec<&Value> = pvs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|pv| pv["spec"]["claimRef"]["name"] == "pipeline-root")
            .collect();
        let released = wait_until(SETTLE, || async {
            let pvs = g.app.get("/api/v1/persistentvolumes").await.1;
            !pvs["items"].as_array().into_iter().flatten().any(|pv| pv["spec"]["claimRef"]["name"] == "pipeline-root")
        })
        .await;
        assert!(released, "the volume went with its claim: {claimed:?}");
        let listed = g.app.get("/bridge/v1/hosts?state=Deleted").await.1;
        assert_eq!(listed["items"][0]["name"], "pipeline", "{listed}");
    })
    .await;
}
