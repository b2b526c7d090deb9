//! The node agent against the recording hypervisor: what it asks of libvirt for each VMI state
//! and what it writes back, without QEMU.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::disks::{DiskError, DiskTool};
use super::{start, NodeConfig};
use crate::hypervisor::fake::FakeHypervisor;
use crate::hypervisor::{DomainState, Hypervisor};
use crate::kinds;
use crate::launcher::build::Accel;
use crate::store::{Store, StoreConfig, UpdateMode};

#[derive(Default)]
struct NoDisks;

impl DiskTool for NoDisks {
    fn create_overlay(&self, _: &Path, _: &str, overlay: &Path) -> Result<(), DiskError> {
        std::fs::write(overlay, b"QFI\xfb").map_err(DiskError::Io)
    }
    fn create_image(&self, path: &Path, _: &str, _: u64) -> Result<(), DiskError> {
        std::fs::write(path, b"").map_err(DiskError::Io)
    }
    fn create_iso(&self, path: &Path, _: &str, _: &BTreeMap<String, Vec<u8>>) -> Result<(), DiskError> {
        std::fs::write(path, b"").map_err(DiskError::Io)
    }
}

async fn until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn phase(store: &Store, name: &str) -> String {
    store
        .get(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", name)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.pointer("/status/phase").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

async fn wait_phase(store: &Store, name: &str, want: &str) -> bool {
    for _ in 0..200 {
        if phase(store, name).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A VMI already scheduled to `node-1`, as the scheduler leaves it.
async fn scheduled_vmi(store: &Store, name: &str, grace: i64) {
    let vmi = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default", "finalizers": [crate::controllers::VMI_FINALIZER]},
        "spec": {"terminationGracePeriodSeconds": grace, "domain": {"resources": {"requests": {"memory": "64Mi"}}, "devices": {}}},
    });
    let created = store.create(&kinds::VIRTUAL_MACHINE_INSTANCE, vmi, false).await.unwrap();
    let mut with_status = created.clone();
    with_status["status"] = json!({"phase": "Scheduled", "nodeName": "node-1"});
    store.update(&kinds::VIRTUAL_MACHINE_INSTANCE, with_status, UpdateMode::Status, false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_follows_guests_through_their_lives() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::open(&StoreConfig::new(url)).await.unwrap();
    let hv = Arc::new(FakeHypervisor::default());
    let mut config = NodeConfig::new(dir.path().join("node"));
    config.name = "node-1".into();
    config.accel_override = Some(Accel::Tcg);
    config.resync = Duration::from_millis(300);
    let dyn_hv: Arc<dyn Hypervisor> = Arc::clone(&hv) as Arc<dyn Hypervisor>;
    let _agent = start(Arc::clone(&store), config, dyn_hv, Arc::new(NoDisks), "9.0.0").await.unwrap();

    let node = store.get(&kinds::NODE, "", "node-1").await.unwrap().expect("node registered");
    assert_eq!(node["metadata"]["labels"]["converge.dev/software-emulation"], "true");
    assert_eq!(node["status"]["allocatable"]["devices.kubevirt.io/kvm"], "0");
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");

    // Scheduled → started → Running, with the emulation condition.
    scheduled_vmi(&store, "a", 30).await;
    assert!(wait_phase(&store, "a", "Running").await);
    assert!(hv.calls().contains(&"start default_a".to_string()));
    let vmi = store.get(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "a").await.unwrap().unwrap();
    let conditions = vmi["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().any(|c| c["type"] == "SoftwareEmulation" && c["status"] == "True"));
    assert!(hv.xml("default_a").unwrap().contains(r#"<domain type="qemu">"#));

    // Paused by someone → Paused condition; the guest powers off → Succeeded, domain cleaned up.
    hv.set_state("default_a", DomainState::Paused);
    let store2 = Arc::clone(&store);
    assert!(
        until_async(|| {
            let s = Arc::clone(&store2);
            async move {
                let v =
                    s.get(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "a").await.ok().flatten().unwrap_or_default();
                crate::controllers::status::condition_true(&v, "Paused")
            }
        })
        .await
    );
    hv.set_state("default_a", DomainState::ShutOffByGuest);
    assert!(wait_phase(&store, "a", "Succeeded").await);
    assert!(until(|| hv.state("default_a").ok().flatten().is_none()).await, "undefined after it finished");

    // QEMU dies → Failed.
    scheduled_vmi(&store, "b", 30).await;
    assert!(wait_phase(&store, "b", "Running").await);
    hv.set_state("default_b", DomainState::Crashed);
    assert!(wait_phase(&store, "b", "Failed").await);

    // Deleted while running: ACPI first, destroy after the grace period, then the object goes.
    scheduled_vmi(&store, "c", 1).await;
    assert!(wait_phase(&store, "c", "Running").await);
    let opts = crate::store::DeleteOptions::default();
    store.delete(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "c", &opts).await.unwrap();
    let gone = until_async(|| {
        let s = Arc::clone(&store);
        async move { s.get(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "c").await.ok().flatten().is_none() }
    })
    .await;
    assert!(gone, "finalizer released once the domain is gone");
    let calls = hv.calls();
    assert!(calls.contains(&"shutdown default_c".to_string()), "{calls:?}");
    assert!(hv.state("default_c").unwrap().is_none());

    // A domain this node made whose VMI no longer exists is an orphan: removed.
    let node_uid = node["metadata"]["uid"].as_str().unwrap();
    let orphan = format!(
        r#"<domain><name>default_ghost</name><metadata><converge:vmi xmlns:converge="x" namespace="default" name="ghost" uid="dead" node="{node_uid}"/></metadata></domain>"#
    );
    hv.define_and_start(&orphan, false).unwrap();
    assert!(until(|| hv.state("default_ghost").ok().flatten().is_none()).await, "orphan removed");
    // …but a domain another node made is not touched.
    let foreign = r#"<domain><name>default_other</name><metadata><converge:vmi xmlns:converge="x" namespace="default" name="other" uid="u" node="someone-else"/></metadata></domain>"#;
    hv.define_and_start(foreign, false).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hv.state("default_other").unwrap(), Some(DomainState::Running));
}

async fn until_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
