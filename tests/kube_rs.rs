//! kube-rs, the client `converge node` and `converge controllers` run on, against the server:
//! discovery, dynamic CRUD on VirtualMachines, the runtime watcher, a typed core kind, and the
//! engine's own seam over it (`KubeCluster`).

mod common;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use std::time::Duration;

async fn client(app: &TestApp) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(&app.kubeconfig).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    kube::Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_discovers_crud_and_watches() {
    let app = spawn_app().await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = client(&app).await;

    let discovery = kube::discovery::Discovery::new(client.clone()).run().await.expect("discovery");
    let gvk = GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine");
    let (resource, caps) = discovery.resolve_gvk(&gvk).expect("VirtualMachine is discovered");
    assert_eq!(resource.plural, "virtualmachines");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let vms: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ApiResource::from_gvk(&gvk));

    // The runtime watcher: list, then watch with bookmarks, as a controller runs it.
    let seen = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let watching = {
        let (vms, seen) = (vms.clone(), seen.clone());
        tokio::spawn(async move {
            let mut stream = watcher(vms, watcher::Config::default()).applied_objects().boxed();
            while let Some(Ok(obj)) = stream.next().await {
                seen.lock().await.push(obj.metadata.name.unwrap_or_default());
            }
        })
    };

    let vm: DynamicObject = serde_json::from_value(vm_manifest("kube-1")).expect("vm");
    let created = vms.create(&PostParams::default(), &vm).await.expect("create");
    assert!(created.data["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"].is_string());
    let got = vms.get("kube-1").await.expect("get");
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let listed = vms.list(&ListParams::default().labels("app=web")).await.expect("list");
    assert_eq!(listed.items.len(), 1);
    let patched = vms
        .patch("kube-1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"runStrategy": "Always"}})))
        .await
        .expect("patch");
    assert_eq!(patched.data["spec"]["runStrategy"], "Always");
    let conflict = vms.replace("kube-1", &PostParams::default(), &created).await;
    assert!(matches!(conflict, Err(kube::Error::Api(ref s)) if s.code == 409), "{conflict:?}");
    let refused = vms.create(&PostParams::default(), &serde_json::from_value(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "bad"}, "spec": {"runStrategy": "Nope", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}})).expect("obj")).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 422), "{refused:?}");
    vms.create(&PostParams::default(), &serde_json::from_value(vm_manifest("kube-2")).expect("vm"))
        .await
        .expect("create");

    let both = wait_until(Duration::from_secs(15), || {
        let seen = seen.clone();
        async move {
            let s = seen.lock().await;
            s.contains(&"kube-1".to_string()) && s.contains(&"kube-2".to_string())
        }
    })
    .await;
    assert!(both, "the watcher saw both VMs: {:?}", seen.lock().await);
    vms.delete("kube-1", &DeleteParams::default()).await.expect("delete");
    assert!(matches!(vms.get("kube-1").await, Err(kube::Error::Api(ref s)) if s.code == 404));
    watching.abort();

    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "typed"}, "data": {"a": "1"}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("typed create");
    let strategic = cms
        .patch("typed", &PatchParams::default(), &Patch::Strategic(json!({"data": {"b": "2"}})))
        .await
        .expect("strategic merge patch on a core kind");
    assert_eq!(strategic.data.map(|d| d.len()), Some(2));
}

/// The engine's seam over kube-rs (`KubeCluster`, what `converge node` and `converge controllers`
/// run on) against the server: a list waits for the watch's first list and then reads the cache,
/// a write is read back at once, changes arrive as events, and the server's refusals come back
/// with their code and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_seam_over_kube_rs() {
    use converge_engine::cluster::kube::KubeCluster;
    use converge_engine::cluster::Cluster;
    use converge_engine::kinds;
    use converge_engine::store::{DeleteOptions, UpdateMode, WatchEventType};
    let app = spawn_api_only().await;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = KubeCluster::from_kubeconfig(&app.kubeconfig).await.expect("connects");
    let c: &dyn Cluster = cluster.as_ref();
    let mut rx = c.watch(&[&kinds::CONFIG_MAP]);
    let names = |items: Vec<serde_json::Value>| -> Vec<String> {
        items.iter().map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string()).collect()
    };
    assert!(!names(c.list(&kinds::CONFIG_MAP, Some("default")).await.expect("list")).contains(&"a".to_string()));

    let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"},
                     "data": {"k": "1"}});
    let created = c.create(&kinds::CONFIG_MAP, map).await.expect("create");
    assert!(
        names(c.list(&kinds::CONFIG_MAP, Some("default")).await.expect("list")).contains(&"a".to_string()),
        "read at once"
    );
    assert!(names(c.list(&kinds::CONFIG_MAP, Some("other")).await.expect("list")).is_empty(), "by namespace");
    let added = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.name == "a" => return ev.event_type,
                Ok(_) => continue,
                Err(e) => panic!("watch: {e}"),
            }
        }
    })
    .await
    .expect("the ADDED event arrives");
    assert!(matches!(added, WatchEventType::Added | WatchEventType::Modified));

    let mut changed = created.clone();
    changed["data"]["k"] = json!("2");
    let updated = c.update(&kinds::CONFIG_MAP, changed.clone(), UpdateMode::Main).await.expect("update");
    assert_eq!(updated["data"]["k"], "2");
    let listed = c.list(&kinds::CONFIG_MAP, Some("default")).await.expect("list");
    assert_eq!(listed.iter().find(|o| o["metadata"]["name"] == "a").map(|o| o["data"]["k"].clone()), Some(json!("2")));
    let stale = c.update(&kinds::CONFIG_MAP, changed, UpdateMode::Main).await.expect_err("a stale resourceVersion");
    assert_eq!((stale.code, stale.reason), (409, "Conflict"), "{}", stale.message);
    assert!(c.get(&kinds::CONFIG_MAP, "default", "nothing").await.expect("get").is_none(), "404 is None");
    let bad =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_Name", "namespace": "default"}});
    let refused = c.create(&kinds::CONFIG_MAP, bad).await.expect_err("an invalid name");
    assert_eq!((refused.code, refused.reason), (422, "Invalid"), "{}", refused.message);

    c.delete(&kinds::CONFIG_MAP, "default", "a", DeleteOptions::default()).await.expect("delete");
    assert!(!names(c.list(&kinds::CONFIG_MAP, Some("default")).await.expect("list")).contains(&"a".to_string()));
    let gone = c.delete(&kinds::CONFIG_MAP, "default", "a", DeleteOptions::default()).await.expect_err("gone");
    assert_eq!(gone.code, 404);
}
