//! HTTP behaviour a Kubernetes client relies on, beyond what kubectl exercises.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

async fn watch_lines(app: &TestApp, path: &str, max: usize, within: Duration) -> Vec<Value> {
    watch_until(app, path, within, |lines| lines.len() >= max).await
}

/// Read watch events until `done` says so or `within` passes.
async fn watch_until(app: &TestApp, path: &str, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let resp = app.http.get(app.url(path)).bearer_auth(&app.token).send().await.expect("watch");
    assert_eq!(resp.status().as_u16(), 200);
    let mut out = vec![];
    let mut buf = String::new();
    let mut resp = resp;
    let deadline = tokio::time::Instant::now() + within;
    while !done(&out) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await;
        let Ok(Ok(Some(bytes))) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            out.push(serde_json::from_str(line.trim()).expect("watch line is JSON"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_ignores_status_and_status_ignores_the_rest() {
    let app = spawn_api_only().await;
    let (_, vm) = app.post(VMS, &vm_manifest("s")).await;
    let mut with_status = vm.clone();
    with_status["status"] = json!({"printableStatus": "Running"});
    with_status["spec"]["runStrategy"] = json!("Always");
    let (s, main) = app.put(&format!("{VMS}/s"), &with_status).await;
    assert_eq!(s, 200, "{main}");
    assert!(main.get("status").is_none(), "PUT on the object keeps the stored status: {main}");
    assert_eq!(main["spec"]["runStrategy"], "Always");
    let mut status_update = main.clone();
    status_update["status"] = json!({"printableStatus": "Stopped"});
    status_update["spec"]["runStrategy"] = json!("Halted");
    let (s, status) = app.put(&format!("{VMS}/s/status"), &status_update).await;
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["status"]["printableStatus"], "Stopped");
    assert_eq!(status["spec"]["runStrategy"], "Always", "/status ignores the spec");
    assert_eq!(
        status["metadata"]["generation"], main["metadata"]["generation"],
        "status writes do not bump generation"
    );
    // Foreman's way: PUT back the whole object as read, status included, to start it.
    let (_, read) = app.get(&format!("{VMS}/s")).await;
    let mut foreman = read.clone();
    foreman["spec"]["runStrategy"] = json!("Halted");
    let (s, put) = app.put(&format!("{VMS}/s"), &foreman).await;
    assert_eq!(s, 200, "{put}");
    assert_eq!(put["status"]["printableStatus"], "Stopped");
    let (s, stale) = app.put(&format!("{VMS}/s"), &foreman).await;
    assert_eq!((s, stale["reason"].as_str()), (409, Some("Conflict")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_validation_modes_and_bad_bodies() {
    let app = spawn_api_only().await;
    let mut vm = vm_manifest("fv");
    vm["spec"]["surprise"] = json!(true);
    let body = vm.to_string();
    let (s, _, headers) = app
        .request(
            Method::POST,
            &format!("{VMS}?fieldValidation=Warn&dryRun=All"),
            "application/json",
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 201);
    let warning = headers.get("warning").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(warning, r#"299 - "unknown field \"spec.surprise\"""#);
    let (s, _, headers) = app
        .request(
            Method::POST,
            &format!("{VMS}?fieldValidation=Ignore&dryRun=All"),
            "application/json",
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 201);
    assert!(headers.get("warning").is_none());
    let (s, status, _) =
        app.request(Method::POST, &format!("{VMS}?fieldValidation=Strict"), "application/json", Some(body)).await;
    assert_eq!((s, status["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(app.get(&format!("{VMS}/fv")).await.0, 404, "dry runs and refusals store nothing");

    let mut wrong_type = vm_manifest("wt");
    wrong_type["spec"]["running"] = json!("yes");
    wrong_type["spec"].as_object_mut().map(|m| m.remove("runStrategy"));
    let (s, status) = app.post(VMS, &wrong_type).await;
    assert_eq!(s, 422);
    assert_eq!(status["details"]["causes"][0]["field"], "spec.running");
    let (s, _, _) = app.request(Method::POST, VMS, "application/json", Some("{not json".into())).await;
    assert_eq!(s, 400);
    let mut other_version = vm_manifest("ov");
    other_version["apiVersion"] = json!("kubevirt.io/v2");
    assert_eq!(app.post(VMS, &other_version).await.0, 400);
    let mut other_ns = vm_manifest("on");
    other_ns["metadata"]["namespace"] = json!("elsewhere");
    assert_eq!(app.post(VMS, &other_ns).await.0, 400);
    assert_eq!(
        app.post("/apis/kubevirt.io/v1/namespaces/missing/virtualmachines", &vm_manifest("x")).await.0,
        400,
        "namespace in body differs"
    );
    let mut in_missing = vm_manifest("x");
    in_missing["metadata"]["namespace"] = json!("missing");
    assert_eq!(app.post("/apis/kubevirt.io/v1/namespaces/missing/virtualmachines", &in_missing).await.0, 404);
    let (s, _, _) = app
        .request(Method::PATCH, &format!("{VMS}/x"), "application/strategic-merge-patch+json", Some("{}".into()))
        .await;
    assert_eq!(s, 415, "custom resources take no strategic merge patch");
    let (s, _, _) = app.request(Method::POST, VMS, "application/vnd.kubernetes.protobuf", Some("k8s\0".into())).await;
    assert_eq!(s, 415);
    let mut huge = vm_manifest("huge");
    huge["metadata"]["annotations"] = json!({"x": "y".repeat(4 * 1024 * 1024)});
    let (s, status) = app.post(VMS, &huge).await;
    assert_eq!((s, status["reason"].as_str()), (413, Some("RequestEntityTooLarge")));
    let (s, status) = app.get("/apis/kubevirt.io/v1/nothing-here").await;
    assert_eq!((s, status["kind"].as_str()), (404, Some("Status")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_expire_bookmark_and_follow_selectors() {
    let app = spawn_app_with(None, |c| {
        c.bookmark_interval = Duration::from_millis(200);
        c.controllers = false;
    })
    .await;
    let (_, first) = app.post(VMS, &vm_manifest("w1")).await;
    let rv: i64 = first["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("rv");
    // From a resourceVersion: only later changes; with bookmarks allowed, bookmarks too.
    let watcher = {
        let path = format!("{VMS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&labelSelector=app%3Dweb");
        let app = &app;
        let events = |lines: &[Value]| lines.iter().filter(|l| l["type"] != "BOOKMARK").count() >= 2;
        async move { watch_until(app, &path, Duration::from_secs(20), events).await }
    };
    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.post(VMS, &vm_manifest("w2")).await;
        app.patch(
            &format!("{VMS}/w1"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"app": "db"}}}),
        )
        .await;
    };
    let (lines, _) = tokio::join!(watcher, writer);
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).filter(|t| *t != "BOOKMARK").collect();
    assert_eq!(types, vec!["ADDED", "DELETED"], "w2 added; w1 left the selector: {lines:?}");
    assert!(
        lines.iter().any(|l| l["type"] == "BOOKMARK" && l["object"]["metadata"]["resourceVersion"].is_string()),
        "{lines:?}"
    );
    let plain = watch_lines(
        &app,
        &format!("{VMS}?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        10,
        Duration::from_secs(3),
    )
    .await;
    assert!(plain.iter().all(|l| l["type"] != "BOOKMARK"), "no bookmarks unless asked");
    assert!(plain.len() >= 2, "the stream ends at timeoutSeconds: {plain:?}");

    // A resourceVersion older than the log answers with an ERROR event carrying 410 Expired.
    let app2 = spawn_api_only().await;
    let store = app2.store();
    let compacted = converge_engine::store::StoreConfig {
        watch_log_retention: 5,
        ..converge_engine::store::StoreConfig::new(&app2.database_url)
    };
    drop(store);
    let small = converge_engine::store::Store::open(&compacted).await.expect("store");
    for i in 0..1000 {
        small
            .create(
                &converge_engine::kinds::CONFIG_MAP,
                json!({"metadata": {"name": format!("c{i}"), "namespace": "default"}}),
                false,
            )
            .await
            .expect("create");
    }
    let lines = watch_lines(
        &app2,
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=3",
        1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(lines[0]["type"], "ERROR");
    assert_eq!(lines[0]["object"]["code"], 410);
    assert_eq!(lines[0]["object"]["reason"], "Expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_sets_scale_and_vmis_get_admission() {
    let app = spawn_api_only().await;
    let template = vm_manifest("t")["spec"]["template"].clone();
    let mut template = template;
    template["metadata"] = json!({"labels": {"rs": "a"}});
    let rs = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet", "metadata": {"name": "rs"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"rs": "a"}}, "template": template}});
    let base = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancereplicasets";
    let (s, body) = app.post(base, &rs).await;
    assert_eq!(s, 201, "{body}");
    let (s, scale) = app.get(&format!("{base}/rs/scale")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (scale["kind"].as_str(), scale["spec"]["replicas"].as_i64(), scale["status"]["selector"].as_str()),
        (Some("Scale"), Some(2), Some("rs=a"))
    );
    let (s, _) = app.put(&format!("{base}/rs/scale"), &json!({"spec": {"replicas": 5}})).await;
    assert_eq!(s, 200);
    let (s, _) =
        app.patch(&format!("{base}/rs/scale"), "application/merge-patch+json", &json!({"spec": {"replicas": 3}})).await;
    assert_eq!(s, 200);
    assert_eq!(app.get(&format!("{base}/rs")).await.1["spec"]["replicas"], 3);
    assert_eq!(app.put(&format!("{base}/rs/scale"), &json!({"spec": {"replicas": -1}})).await.0, 422);

    let preset = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstancePreset", "metadata": {"name": "small"},
        "spec": {"selector": {"matchLabels": {"size": "small"}}, "domain": {"cpu": {"cores": 2}}}});
    assert_eq!(app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancepresets", &preset).await.0, 201);
    let mut vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "vmi", "labels": {"size": "small"}}});
    vmi["spec"] = vm_manifest("x")["spec"]["template"]["spec"].clone();
    vmi["spec"].as_object_mut().map(|m| m.remove("networks"));
    vmi["spec"]["domain"]["devices"].as_object_mut().map(|m| m.remove("interfaces"));
    let (s, created) = app.post("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &vmi).await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["spec"]["domain"]["cpu"]["cores"], 2, "preset applied");
    assert_eq!(created["spec"]["networks"], json!([{"name": "default", "pod": {}}]));
    assert_eq!(created["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"], "virtio");
    assert!(
        created["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"].as_str().is_some(),
        "MAC in the create response"
    );
    let (s, table, _) = {
        let resp = app
            .http
            .get(app.url("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"))
            .bearer_auth(&app.token)
            .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
            .send()
            .await
            .expect("get");
        let s = resp.status().as_u16();
        (s, resp.json::<Value>().await.expect("json"), ())
    };
    assert_eq!(s, 200);
    let columns: Vec<&str> =
        table["columnDefinitions"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(columns, vec!["Name", "Age", "Phase", "IP", "NodeName", "Ready", "Live-Migratable", "Paused"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_honour_preconditions_and_restarts_keep_everything() {
    let app = spawn_api_only().await;
    let (_, vm) = app.post(VMS, &vm_manifest("keep")).await;
    let (s, body) = app.delete(&format!("{VMS}/keep"), Some(&json!({"preconditions": {"uid": "not-it"}}))).await;
    assert_eq!((s, body["reason"].as_str()), (409, Some("Conflict")));
    let (s, _) = app.delete(&format!("{VMS}/keep?dryRun=All"), None).await;
    assert_eq!(s, 200);
    let app = app.restart().await;
    let (s, after) = app.get(&format!("{VMS}/keep")).await;
    assert_eq!(s, 200);
    assert_eq!(after, vm, "same object, same resourceVersion, after a restart");
    let (s, gone) =
        app.delete(&format!("{VMS}/keep"), Some(&json!({"preconditions": {"uid": vm["metadata"]["uid"]}}))).await;
    assert_eq!(s, 200);
    // A custom resource deleted at once answers with a Success Status, as KubeVirt's apiserver does.
    assert_eq!((gone["kind"].as_str(), gone["details"]["name"].as_str()), (Some("Status"), Some("keep")), "{gone}");
    assert_eq!(gone["details"]["uid"], vm["metadata"]["uid"]);
    assert_eq!(app.get(&format!("{VMS}/keep")).await.0, 404);
    assert_eq!(app.get("/docs").await.0, 200);
    let (_, index) = app.get("/openapi/v3").await;
    assert!(index["paths"]["apis/kubevirt.io/v1"]["serverRelativeURL"].is_string());
}

/// `kubevirt.io/v1alpha3` is the same objects as v1 under another name (Foreman's plugin pins it):
/// discovery lists both with v1 preferred; reads, lists, watches (legacy `/watch/` path
/// included), writes and patches answer in the version asked; a PUT of the whole object as read
/// (status included) changes the spec and leaves the status alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubevirt_v1alpha3_serves_the_same_objects_as_v1() {
    let app = spawn_api_only().await;
    const OLD: &str = "/apis/kubevirt.io/v1alpha3/namespaces/default/virtualmachines";
    let (_, group) = app.get("/apis/kubevirt.io").await;
    assert_eq!(group["preferredVersion"]["groupVersion"], "kubevirt.io/v1");
    assert_eq!(group["versions"][1]["groupVersion"], "kubevirt.io/v1alpha3");
    let mut vm = vm_manifest("old");
    vm["apiVersion"] = json!("kubevirt.io/v1alpha3");
    let (s, created) = app.post(OLD, &vm).await;
    assert_eq!((s, created["apiVersion"].as_str()), (201, Some("kubevirt.io/v1alpha3")), "{created}");
    let (_, as_v1) = app.get(&format!("{VMS}/old")).await;
    assert_eq!(as_v1["apiVersion"], "kubevirt.io/v1");
    assert_eq!(as_v1["metadata"]["uid"], created["metadata"]["uid"]);
    // The body names the version of the path it is sent to.
    let (s, _) = app
        .post(VMS, &json!({"apiVersion": "kubevirt.io/v1alpha3", "kind": "VirtualMachine", "metadata": {"name": "x"}}))
        .await;
    assert_eq!(s, 400);

    let (_, list) = app.get(OLD).await;
    assert_eq!(
        (list["apiVersion"].as_str(), list["items"][0]["apiVersion"].as_str()),
        (Some("kubevirt.io/v1alpha3"), Some("kubevirt.io/v1alpha3"))
    );
    let watch =
        "/apis/kubevirt.io/v1alpha3/watch/namespaces/default/virtualmachines?timeoutSeconds=1&resourceVersion=0";
    let resp = app.http.get(app.url(watch)).bearer_auth(&app.token).send().await.expect("watch");
    let text = resp.text().await.unwrap_or_default();
    let event: Value = serde_json::from_str(text.lines().next().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        (event["type"].as_str(), event["object"]["apiVersion"].as_str()),
        (Some("ADDED"), Some("kubevirt.io/v1alpha3")),
        "{text}"
    );

    // Foreman's start: the object as read, status included, with spec.running changed.
    let (_, mut read) = app.get(&format!("{OLD}/old")).await;
    read["spec"]["runStrategy"] = json!("Always");
    read["status"] = json!({"printableStatus": "Running", "created": true, "ready": true});
    let (s, put) = app.put(&format!("{OLD}/old"), &read).await;
    assert_eq!(
        (s, put["apiVersion"].as_str(), put["spec"]["runStrategy"].as_str()),
        (200, Some("kubevirt.io/v1alpha3"), Some("Always")),
        "{put}"
    );
    assert!(put["status"].get("created").is_none(), "status is the status subresource's: {put}");
    let (s, patched) = app.patch(&format!("{OLD}/old"), "application/json-patch+json", &json!([{"op": "test", "path": "/apiVersion", "value": "kubevirt.io/v1alpha3"}, {"op": "replace", "path": "/spec/runStrategy", "value": "Halted"}])).await;
    assert_eq!((s, patched["spec"]["runStrategy"].as_str()), (200, Some("Halted")), "{patched}");
    let (s, gone) = app.delete(&format!("{OLD}/old"), None).await;
    assert_eq!((s, gone["kind"].as_str()), (200, Some("Status")), "{gone}");
}
