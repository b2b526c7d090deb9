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
    fn create_overlay(&self, _: &Path, _: &str, _: u64, overlay: &Path) -> Result<(), DiskError> {
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

/// A store in `dir` and a node config for `node-1` under TCG with a fast resync.
async fn store_and_config(dir: &Path) -> (Arc<Store>, NodeConfig) {
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    let store = Store::open(&StoreConfig::new(url)).await.unwrap();
    let mut config = NodeConfig::new(dir.join("node"));
    config.name = "node-1".into();
    config.accel_override = Some(Accel::Tcg);
    config.resync = Duration::from_millis(300);
    (store, config)
}

/// The agent for `node-1` on the recording hypervisor, its store in `dir`.
async fn agent_on_fake(dir: &Path) -> (Arc<Store>, Arc<FakeHypervisor>, super::NodeAgent) {
    let (store, config) = store_and_config(dir).await;
    let hv = Arc::new(FakeHypervisor::default());
    let dyn_hv: Arc<dyn Hypervisor> = Arc::clone(&hv) as Arc<dyn Hypervisor>;
    let agent = start(store.clone(), config, dyn_hv, Arc::new(NoDisks), "9.0.0").await.unwrap();
    (store, hv, agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_follows_guests_through_their_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hv, _agent) = agent_on_fake(dir.path()).await;

    let node = store.get(&kinds::NODE, "", "node-1").await.unwrap().expect("node registered");
    assert_eq!(node["metadata"]["labels"]["converge.dev/software-emulation"], "true");
    assert_eq!(node["status"]["allocatable"]["devices.kubevirt.io/kvm"], "0");
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");

    // Scheduled → started → Running, with the emulation condition.
    scheduled_vmi(&store, "a", 30).await;
    assert!(wait_phase(&store, "a", "Running").await);
    assert!(hv.calls().contains(&"start default_a".to_string()));
    // Started transient, made persistent right after (off the way to Running).
    assert!(until(|| hv.calls().contains(&"persist default_a".to_string())).await, "{:?}", hv.calls());
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
    hv.start(&orphan, false).unwrap();
    assert!(until(|| hv.state("default_ghost").ok().flatten().is_none()).await, "orphan removed");
    // …but a domain another node made is not touched.
    let foreign = r#"<domain><name>default_other</name><metadata><converge:vmi xmlns:converge="x" namespace="default" name="other" uid="u" node="someone-else"/></metadata></domain>"#;
    hv.start(foreign, false).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hv.state("default_other").unwrap(), Some(DomainState::Running));
}

/// A started domain is found again by its UUID, without its XML; a domain of the same name
/// put there by someone else (another UUID, another node) is not taken for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_domain_replaced_under_its_name_is_not_mistaken_for_ours() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hv, _agent) = agent_on_fake(dir.path()).await;
    scheduled_vmi(&store, "r", 0).await;
    assert!(wait_phase(&store, "r", "Running").await);

    let foreign = r#"<domain><name>default_r</name><uuid>00000000-0000-0000-0000-000000000001</uuid><metadata><converge:vmi xmlns:converge="x" namespace="default" name="r" uid="u" node="someone-else"/></metadata></domain>"#;
    hv.start(foreign, false).unwrap();
    assert!(wait_phase(&store, "r", "Failed").await, "our domain is gone: the VMI fails");
    assert_eq!(hv.state("default_r").unwrap(), Some(DomainState::Running), "the other domain is left alone");
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

/// The agent's networking against the recording network host and hypervisor: the pod is made
/// before the domain starts, the tap moves in after, status carries the leased address, and a
/// deleted VMI takes its namespace, taps and address with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_wires_pods_and_takes_them_down() {
    use crate::network::host::RecordingNetworkHost;
    let dir = tempfile::tempdir().unwrap();
    let (store, mut config) = store_and_config(dir.path()).await;
    let hv = Arc::new(FakeHypervisor::default());
    config.network = Some(crate::network::NetworkConfig::default());
    let net = Arc::new(RecordingNetworkHost::default());
    let dyn_hv: Arc<dyn Hypervisor> = Arc::clone(&hv) as Arc<dyn Hypervisor>;
    let net_host: Arc<dyn crate::network::host::NetworkHost> = Arc::clone(&net) as _;
    // The node waits for its pod range, which the server's allocator gives (not running here).
    let give_range = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            loop {
                if let Ok(Some(mut node)) = store.get(&kinds::NODE, "", "node-1").await {
                    node["spec"]["podCIDR"] = json!("10.244.0.0/24");
                    if store.update(&kinds::NODE, node, UpdateMode::Main, false).await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let agent = super::start_with(store.clone(), config, dyn_hv, Arc::new(NoDisks), "9.0.0", net_host).await.unwrap();
    give_range.await.unwrap();
    assert!(
        net.lines().iter().any(|l| l == "ip netns exec converge ip addr add 10.244.0.1/24 dev cvbr0"),
        "the bridge takes the node's range: {:#?}",
        net.lines()
    );
    assert!(net.lines().iter().any(|l| l == "ip netns add converge"), "{:#?}", net.lines());

    let vmi = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "p", "namespace": "default", "finalizers": [crate::controllers::VMI_FINALIZER]},
        "spec": {"terminationGracePeriodSeconds": 0,
                 "domain": {"resources": {"requests": {"memory": "64Mi"}},
                            "devices": {"interfaces": [{"name": "default", "bridge": {}, "macAddress": "02:00:00:00:00:0a"}]}},
                 "networks": [{"name": "default", "pod": {}}]},
    });
    let created = store.create(&kinds::VIRTUAL_MACHINE_INSTANCE, vmi, false).await.unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
    let mut with_status = created.clone();
    with_status["status"] = json!({"phase": "Scheduled", "nodeName": "node-1"});
    store.update(&kinds::VIRTUAL_MACHINE_INSTANCE, with_status, UpdateMode::Status, false).await.unwrap();
    assert!(wait_phase(&store, "p", "Running").await);

    let pod_ns = crate::network::names::pod_namespace("converge", &uid);
    let tap = crate::network::names::tap("converge", &uid, 0);
    let lines = net.lines();
    let at = |needle: &str| lines.iter().position(|l| l == needle).unwrap_or_else(|| panic!("{needle}: {lines:#?}"));
    assert!(at(&format!("ip tuntap add dev {tap} mode tap")) < at(&format!("ip link set {tap} netns {pod_ns}")));
    assert!(
        at(&format!("ip netns exec {pod_ns} dhcp-responder k6t-eth0"))
            > at(&format!("ip link set {tap} netns {pod_ns}"))
    );
    let xml = hv.xml("default_p").unwrap();
    assert!(xml.contains(&format!(r#"<target dev="{tap}" managed="no"/>"#)), "{xml}");
    let vmi = store.get(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "p").await.unwrap().unwrap();
    assert_eq!(vmi["status"]["interfaces"][0]["ipAddress"], "10.244.0.2", "{vmi}");
    assert_eq!(vmi["status"]["interfaces"][0]["mac"], "02:00:00:00:00:0a");
    assert_eq!(agent.dhcp_responders(), 1);
    assert_eq!(agent.pod_addresses(), vec![("10.244.0.2".parse().unwrap(), "default/p".to_string())]);

    store
        .delete(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "p", &crate::store::DeleteOptions::default())
        .await
        .unwrap();
    let gone = until_async(|| {
        let s = Arc::clone(&store);
        async move { s.get(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "p").await.ok().flatten().is_none() }
    })
    .await;
    assert!(gone);
    assert!(
        net.lines().iter().filter(|l| **l == format!("ip netns del {pod_ns}")).count() >= 2,
        "removed at the end too"
    );
    assert!(agent.pod_addresses().is_empty());
    assert_eq!(agent.dhcp_responders(), 0);
}

/// A started domain is defined only once no start is in flight; a transient domain whose guest
/// powers off meanwhile is gone from libvirt, yet its VMI ends Succeeded (the stop event's
/// reason), and it is not defined again.
#[tokio::test(flavor = "multi_thread")]
async fn domains_are_defined_when_no_start_is_in_flight_and_a_transient_stop_reads_right() {
    let dir = tempfile::tempdir().unwrap();
    let (store, hv, agent) = agent_on_fake(dir.path()).await;
    // A start in flight, as far as the defines can tell.
    let in_flight = agent.shared.start_slots.acquire().await.unwrap();

    scheduled_vmi(&store, "q", 0).await;
    scheduled_vmi(&store, "off", 0).await;
    assert!(wait_phase(&store, "q", "Running").await);
    assert!(wait_phase(&store, "off", "Running").await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!hv.calls().iter().any(|c| c.starts_with("persist")), "{:?}", hv.calls());
    assert_eq!(agent.shared.pending_persist.len(), 2, "a resync adds nothing twice");

    hv.shutdown("default_off").unwrap();
    assert_eq!(hv.state("default_off").unwrap(), None, "a transient domain is gone once off");
    assert!(wait_phase(&store, "off", "Succeeded").await, "the guest's own power-off, not a vanished domain");

    drop(in_flight);
    assert!(until(|| hv.calls().contains(&"persist default_q".to_string())).await, "{:?}", hv.calls());
    assert!(until(|| agent.shared.pending_persist.len() == 0).await);
    assert!(!hv.calls().contains(&"persist default_off".to_string()), "{:?}", hv.calls());
    assert!(hv.list().unwrap().iter().all(|d| d.persistent));
}
