//! The object store's guarantees, on every configured database (SQLite always; PostgreSQL when
//! CONVERGE_TEST_POSTGRES is set, as CI does).

mod common;

use common::*;
use converge_engine::kinds;
use converge_engine::store::{
    DeleteOptions, DeleteOutcome, ListOptions, Propagation, Store, StoreConfig, UpdateMode, WatchFilter, WatchItem,
};
use converge_engine::{gc, meta};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn cm(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"n": "0"}})
}

async fn next_item(rx: &mut tokio::sync::mpsc::Receiver<WatchItem>) -> Option<WatchItem> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.ok().flatten()
}

fn rv_of(item: &WatchItem) -> i64 {
    match item {
        WatchItem::Event(_, obj, _) => meta::resource_version(obj).unwrap_or(-1),
        WatchItem::Bookmark(rv) => *rv,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_updates_conflict_and_no_ops_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let store = open_store(&url).await;
        let created = store.create(&kinds::CONFIG_MAP, cm("a"), false).await.expect("create");
        let mut changed = created.clone();
        changed["data"]["n"] = json!("1");
        let updated = store.update(&kinds::CONFIG_MAP, changed.clone(), UpdateMode::Main, false).await.expect("update");
        assert!(meta::resource_version(&updated) > meta::resource_version(&created), "{backend}");
        let stale = store.update(&kinds::CONFIG_MAP, changed, UpdateMode::Main, false).await;
        assert_eq!(stale.map_err(|e| e.code).err(), Some(409), "{backend}: stale resourceVersion");
        let mut rx = store.subscribe();
        let before = store.current_rv().await.expect("rv");
        let same = store.update(&kinds::CONFIG_MAP, updated.clone(), UpdateMode::Main, false).await.expect("no-op");
        assert_eq!(same, updated, "{backend}");
        assert_eq!(store.current_rv().await.expect("rv"), before, "{backend}: a no-op bumps nothing");
        let late = tokio::time::timeout(Duration::from_millis(700), async {
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.rv > before => return Some(ev.rv),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        })
        .await;
        assert!(late.is_err() || late == Ok(None), "{backend}: and emits no event ({late:?})");
        let dry = store.create(&kinds::CONFIG_MAP, cm("dry"), true).await.expect("dry run");
        assert_eq!(meta::name(&dry), "dry");
        assert!(
            store.get(&kinds::CONFIG_MAP, "default", "dry").await.expect("get").is_none(),
            "{backend}: dry runs store nothing"
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_watches_miss_and_repeat_nothing_under_concurrent_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        // Two stores on one database: two pools and two writer locks, as two processes would be.
        let a = open_store(&url).await;
        let b = open_store(&url).await;
        let start = a.current_rv().await.expect("rv");
        let mut writers = vec![];
        for (w, store) in [(0, &a), (1, &b), (2, &a), (3, &b)] {
            let store: Arc<Store> = Arc::clone(store);
            writers.push(tokio::spawn(async move {
                for i in 0..40 {
                    let name = format!("w{w}-{i}");
                    let obj = store.create(&kinds::CONFIG_MAP, cm(&name), false).await.expect("create");
                    let mut obj = obj;
                    obj["data"]["n"] = json!("1");
                    store.update(&kinds::CONFIG_MAP, obj, UpdateMode::Main, false).await.expect("update");
                }
            }));
        }
        // Watch from the start, stop part-way, resume from the last resourceVersion seen.
        let mut seen: Vec<i64> = vec![];
        let mut rx = a.watch(&kinds::CONFIG_MAP, WatchFilter::default(), Some(start), None).await.expect("watch");
        while seen.len() < 60 {
            seen.push(rv_of(&next_item(&mut rx).await.expect("event")));
        }
        drop(rx);
        for w in writers {
            w.await.expect("writer");
        }
        let resume_from = *seen.last().expect("some");
        let mut rx =
            b.watch(&kinds::CONFIG_MAP, WatchFilter::default(), Some(resume_from), None).await.expect("resume");
        while seen.len() < 320 {
            seen.push(rv_of(
                &next_item(&mut rx).await.unwrap_or_else(|| panic!("{backend}: only {} events", seen.len())),
            ));
        }
        let end = a.current_rv().await.expect("rv");
        assert_eq!(
            seen,
            ((start + 1)..=end).collect::<Vec<_>>(),
            "{backend}: every change once, in resourceVersion order"
        );
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(), "{backend}: nothing more");
        a.close().await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_resource_versions_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let store = open_store(&url).await;
        let created = store.create(&kinds::CONFIG_MAP, cm("kept"), false).await.expect("create");
        let rv = store.current_rv().await.expect("rv");
        store.close().await;
        let store = open_store(&url).await;
        assert_eq!(
            store.get(&kinds::CONFIG_MAP, "default", "kept").await.expect("get"),
            Some(created.clone()),
            "{backend}"
        );
        assert_eq!(store.current_rv().await.expect("rv"), rv, "{backend}");
        let next = store.create(&kinds::CONFIG_MAP, cm("after"), false).await.expect("create");
        assert_eq!(meta::resource_version(&next), Some(rv + 1), "{backend}: the counter goes on");
        let mut rx = store
            .watch(&kinds::CONFIG_MAP, WatchFilter::default(), meta::resource_version(&created), None)
            .await
            .expect("watch");
        let item = next_item(&mut rx).await.expect("event");
        assert_eq!(rv_of(&item), rv + 1, "{backend}: a watch resumes across the restart");
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion_until_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let store = open_store(&url).await;
        let mut obj = cm("held");
        obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
        store.create(&kinds::CONFIG_MAP, obj, false).await.expect("create");
        let outcome =
            store.delete(&kinds::CONFIG_MAP, "default", "held", &DeleteOptions::default()).await.expect("delete");
        let DeleteOutcome::Pending(pending) = outcome else { panic!("{backend}: finalizer ignored") };
        assert!(meta::is_deleting(&pending));
        let mut adding = pending.clone();
        adding["metadata"]["finalizers"] = json!(["example.com/hold", "example.com/more"]);
        let refused = store.update(&kinds::CONFIG_MAP, adding, UpdateMode::Main, false).await;
        assert_eq!(refused.map_err(|e| e.code).err(), Some(422), "{backend}: no new finalizers while deleting");
        let mut released = pending;
        released["metadata"]["finalizers"] = json!([]);
        store.update(&kinds::CONFIG_MAP, released, UpdateMode::Main, false).await.expect("release");
        assert!(
            store.get(&kinds::CONFIG_MAP, "default", "held").await.expect("get").is_none(),
            "{backend}: gone once released"
        );
        store.close().await;
    }
}

async fn collect_until_quiet(store: &Store) {
    for _ in 0..20 {
        if gc::collect(store).await.expect("gc") == 0 {
            return;
        }
    }
}

fn owned_by(name: &str, owner: &Value) -> Value {
    let mut obj = cm(name);
    obj["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": meta::name(owner), "uid": meta::uid(owner), "blockOwnerDeletion": true}]);
    obj
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_collects_its_dependents_by_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let store = open_store(&url).await;
        let exists = |name: &'static str| {
            let store = Arc::clone(&store);
            async move { store.get(&kinds::CONFIG_MAP, "default", name).await.expect("get").is_some() }
        };
        // Background: the owner goes at once, the collector takes the dependent.
        let owner = store.create(&kinds::CONFIG_MAP, cm("bg-owner"), false).await.expect("owner");
        store.create(&kinds::CONFIG_MAP, owned_by("bg-dep", &owner), false).await.expect("dep");
        let bg = DeleteOptions { propagation: Some(Propagation::Background), ..Default::default() };
        assert!(matches!(
            store.delete(&kinds::CONFIG_MAP, "default", "bg-owner", &bg).await,
            Ok(DeleteOutcome::Deleted(_))
        ));
        collect_until_quiet(&store).await;
        assert!(!exists("bg-dep").await, "{backend}: background");

        // Foreground: the owner waits for its dependents.
        let owner = store.create(&kinds::CONFIG_MAP, cm("fg-owner"), false).await.expect("owner");
        store.create(&kinds::CONFIG_MAP, owned_by("fg-dep", &owner), false).await.expect("dep");
        let fg = DeleteOptions { propagation: Some(Propagation::Foreground), ..Default::default() };
        let outcome = store.delete(&kinds::CONFIG_MAP, "default", "fg-owner", &fg).await.expect("delete");
        assert!(
            matches!(outcome, DeleteOutcome::Pending(ref o) if meta::finalizers(o) == vec!["foregroundDeletion".to_string()]),
            "{backend}"
        );
        collect_until_quiet(&store).await;
        assert!(!exists("fg-dep").await && !exists("fg-owner").await, "{backend}: foreground");

        // Orphan: the dependent stays, without the reference.
        let owner = store.create(&kinds::CONFIG_MAP, cm("or-owner"), false).await.expect("owner");
        store.create(&kinds::CONFIG_MAP, owned_by("or-dep", &owner), false).await.expect("dep");
        let orphan = DeleteOptions { propagation: Some(Propagation::Orphan), ..Default::default() };
        store.delete(&kinds::CONFIG_MAP, "default", "or-owner", &orphan).await.expect("delete");
        collect_until_quiet(&store).await;
        assert!(!exists("or-owner").await, "{backend}: orphaning owner gone");
        let dep = store.get(&kinds::CONFIG_MAP, "default", "or-dep").await.expect("get").expect("orphan kept");
        assert!(dep["metadata"].get("ownerReferences").is_none(), "{backend}: {dep}");
        store.close().await;
    }
}

fn vm_with_interfaces(name: &str, count: usize) -> Value {
    let mut vm = vm_manifest(name);
    let ifaces: Vec<Value> = (0..count).map(|i| json!({"name": format!("n{i}"), "bridge": {}})).collect();
    let nets: Vec<Value> =
        (0..count).map(|i| json!({"name": format!("n{i}"), "multus": {"networkName": "lan"}})).collect();
    vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = json!(ifaces);
    vm["spec"]["template"]["spec"]["networks"] = json!(nets);
    vm
}

fn macs(vm: &Value) -> Vec<String> {
    vm.pointer("/spec/template/spec/domain/devices/interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i["macAddress"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_interfaces_get_a_thousand_distinct_stable_macs() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let store = open_store(&url).await;
        let mut all = vec![];
        for i in 0..100 {
            let vm = store
                .create(&kinds::VIRTUAL_MACHINE, vm_with_interfaces(&format!("vm{i}"), 10), false)
                .await
                .expect("create");
            all.extend(macs(&vm));
        }
        assert_eq!(all.len(), 1000, "{backend}");
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), 1000, "{backend}: distinct");
        store.close().await;
        let store = open_store(&url).await;
        let mut again = vec![];
        for i in 0..100 {
            again.extend(macs(
                &store.get(&kinds::VIRTUAL_MACHINE, "default", &format!("vm{i}")).await.expect("get").expect("vm"),
            ));
        }
        assert_eq!(again, all, "{backend}: stable across a restart");
        let fresh = store.create(&kinds::VIRTUAL_MACHINE, vm_with_interfaces("after", 2), false).await.expect("create");
        assert!(macs(&fresh).iter().all(|m| !all.contains(m)), "{backend}: never handed out twice");
        // A MAC in use by another VM is refused; a deleted VM's MACs are free again.
        let mut taken = vm_with_interfaces("taken", 1);
        taken["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] = json!(all[0]);
        let refused = store.create(&kinds::VIRTUAL_MACHINE, taken.clone(), false).await;
        assert_eq!(refused.map_err(|e| e.code).err(), Some(422), "{backend}");
        store.delete(&kinds::VIRTUAL_MACHINE, "default", "vm0", &DeleteOptions::default()).await.expect("delete");
        store.create(&kinds::VIRTUAL_MACHINE, taken, false).await.expect("released MAC can be taken");
        assert_eq!(store.mac_leases().await.expect("leases").len(), 1000 - 10 + 2 + 1, "{backend}");
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_resource_versions_expire_watches_and_continue_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let mut config = StoreConfig::new(&url);
        config.watch_log_retention = 10;
        let store = Store::open(&config).await.expect("open");
        let first = store
            .list(&kinds::CONFIG_MAP, Some("default"), &ListOptions { limit: Some(1), ..Default::default() })
            .await
            .expect("list");
        for i in 0..1001 {
            store.create(&kinds::CONFIG_MAP, cm(&format!("c{i:04}")), false).await.expect("create");
        }
        let old = store.watch(&kinds::CONFIG_MAP, WatchFilter::default(), Some(2), None).await;
        assert_eq!(old.map(drop).map_err(|e| e.code).err(), Some(410), "{backend}: too old");
        let page = store
            .list(&kinds::CONFIG_MAP, Some("default"), &ListOptions { limit: Some(1), ..Default::default() })
            .await
            .expect("list");
        assert!(page.continue_token.is_some() && first.continue_token.is_none(), "{backend}");
        let stale = ListOptions {
            limit: Some(1),
            continue_token: Some(stale_token(first.resource_version)),
            ..Default::default()
        };
        let expired = store.list(&kinds::CONFIG_MAP, Some("default"), &stale).await;
        assert_eq!(expired.map(drop).map_err(|e| e.code).err(), Some(410), "{backend}: expired continue token");
        store.close().await;
    }
}

fn stale_token(rv: i64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": "default", "start": "c0000"}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_two_processes_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let a = open_store(&url).await;
        let b = open_store(&url).await;
        a.create(&kinds::CONFIG_MAP, cm("shared"), false).await.expect("create");
        let mut tasks = vec![];
        for (t, store) in [(0, &a), (1, &b), (2, &a), (3, &b)] {
            let store: Arc<Store> = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                for i in 0..15 {
                    loop {
                        let mut obj =
                            store.get(&kinds::CONFIG_MAP, "default", "shared").await.expect("get").expect("exists");
                        obj["data"][format!("t{t}-{i}")] = json!("x");
                        match store.update(&kinds::CONFIG_MAP, obj, UpdateMode::Main, false).await {
                            Ok(_) => break,
                            Err(e) if e.code == 409 => continue,
                            Err(e) => panic!("update: {e}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let obj = a.get(&kinds::CONFIG_MAP, "default", "shared").await.expect("get").expect("exists");
        assert_eq!(obj["data"].as_object().map(|m| m.len()), Some(61), "{backend}: every read-modify-write survived");

        let racers: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|s| {
                let s: Arc<Store> = Arc::clone(s);
                tokio::spawn(async move { s.create(&kinds::CONFIG_MAP, cm("once"), false).await.map_err(|e| e.reason) })
            })
            .collect();
        let mut outcomes = vec![];
        for r in racers {
            outcomes.push(r.await.expect("join").err());
        }
        assert_eq!(outcomes.iter().filter(|o| o.is_none()).count(), 1, "{backend}: one create wins: {outcomes:?}");
        assert!(outcomes.iter().flatten().all(|r| *r == "AlreadyExists"), "{backend}: {outcomes:?}");
        a.close().await;
        b.close().await;
    }
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_node_ports_and_pod_addresses_are_leased_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let store = open_store(&url).await;
        let node_port = json!({"type": "NodePort", "ports": [{"name": "ssh", "port": 22}]});
        let a = store.create(&kinds::SERVICE, service("a", node_port.clone()), false).await.expect("create a");
        let ip = a["spec"]["clusterIP"].as_str().expect("a cluster IP").to_string();
        let port = a["spec"]["ports"][0]["nodePort"].as_u64().expect("a node port");
        assert!(ip.starts_with("10.96."), "{backend}: {ip}");
        assert!((30000..=32767).contains(&port), "{backend}: {port}");

        // Taken address or port: refused with the field named; nothing stored.
        let clash = json!({"clusterIP": ip, "ports": [{"port": 80}]});
        let e = store.create(&kinds::SERVICE, service("b", clash), false).await.expect_err("address taken");
        assert_eq!((e.code, e.causes()[0].field.as_str()), (422, "spec.clusterIP"), "{backend}");
        let clash = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]});
        let e = store.create(&kinds::SERVICE, service("b", clash), false).await.expect_err("port taken");
        assert_eq!((e.code, e.causes()[0].field.as_str()), (422, "spec.ports[0].nodePort"), "{backend}");
        assert!(store.get(&kinds::SERVICE, "default", "b").await.expect("get").is_none());

        // An update that omits them keeps them; one that changes the address is refused.
        let mut again = a.clone();
        again["spec"] = node_port.clone();
        let kept = store.update(&kinds::SERVICE, again, UpdateMode::Main, false).await.expect("update");
        assert_eq!(
            (kept["spec"]["clusterIP"].as_str(), kept["spec"]["ports"][0]["nodePort"].as_u64()),
            (Some(ip.as_str()), Some(port))
        );
        let mut moved = kept.clone();
        moved["spec"]["clusterIP"] = json!("10.96.0.77");
        let e = store.update(&kinds::SERVICE, moved, UpdateMode::Main, false).await.expect_err("immutable");
        assert_eq!(e.code, 422, "{backend}");

        // Deleting gives both back.
        store.delete(&kinds::SERVICE, "default", "a", &DeleteOptions::default()).await.expect("delete");
        let reuse = json!({"clusterIP": ip, "type": "NodePort", "ports": [{"port": 80, "nodePort": port}]});
        store.create(&kinds::SERVICE, service("b", reuse), false).await.expect("free again");

        // Pod addresses: one per VMI, the same one when asked again, free once the VMI is gone.
        let cidr = converge_engine::network::Cidr::parse("10.244.0.0/16").expect("cidr");
        let gateway = [cidr.nth(1)];
        let mut addresses = vec![];
        for name in ["p1", "p2"] {
            let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                             "metadata": {"name": name, "namespace": "default"}, "spec": {}});
            let vmi = store.create(&kinds::VIRTUAL_MACHINE_INSTANCE, vmi, false).await.expect("vmi");
            let first = store.lease_pod_address(&cidr, &gateway, &vmi).await.expect("lease");
            assert_eq!(store.lease_pod_address(&cidr, &gateway, &vmi).await.expect("again"), first, "{backend}");
            addresses.push(first.to_string());
        }
        assert_eq!(addresses, ["10.244.0.2", "10.244.0.3"], "{backend}");
        store
            .delete(&kinds::VIRTUAL_MACHINE_INSTANCE, "default", "p1", &DeleteOptions::default())
            .await
            .expect("delete");
        let held: Vec<String> = store.address_leases("pods").await.expect("leases").into_iter().map(|l| l.0).collect();
        assert_eq!(held, ["10.244.0.3"], "{backend}");
        store.close().await;
    }
}
