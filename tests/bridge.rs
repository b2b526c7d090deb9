//! `/bridge/v1` against a real server (controllers and storage on, no node): a whole host in one
//! call, idempotency, rollback of a failed step, deletion with nothing left, listings, and the
//! one error shape. On SQLite and, when it is set up, PostgreSQL.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const HOSTS: &str = "/bridge/v1/hosts";
const SETTLE: Duration = Duration::from_secs(30);
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 me@laptop";

async fn post_keyed(app: &TestApp, body: &Value, key: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = app.http.post(app.url(HOSTS)).bearer_auth(&app.token).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
}

fn host(name: &str) -> Value {
    json!({"name": name, "memory": "128Mi", "start": false,
        "disks": [{"name": "root", "size": "16Mi", "source": {"blank": {}}}],
        "userData": "#cloud-config\nhostname: test\n", "sshKeys": [KEY]})
}

/// Every object a host named `name` could have left.
async fn leftovers(app: &TestApp, name: &str, disks: &[&str]) -> Vec<String> {
    let mut paths = vec![
        format!("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/{name}"),
        format!("/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/{name}"),
        format!("/api/v1/namespaces/default/secrets/{name}-cloudinit"),
    ];
    for d in disks {
        paths.push(format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/{name}-{d}"));
        paths.push(format!("/api/v1/namespaces/default/persistentvolumeclaims/{name}-{d}"));
    }
    let mut left = vec![];
    for p in paths {
        if app.get(&p).await.0 != 404 {
            left.push(p);
        }
    }
    left
}

async fn wait_state(app: &TestApp, name: &str, state: &str) -> Value {
    let path = format!("{HOSTS}/default/{name}");
    let ok = wait_until(SETTLE, || async { app.get(&path).await.1["state"] == state }).await;
    let view = app.get(&path).await.1;
    assert!(ok, "{name} never {state}: {view}");
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_made_in_one_call_and_deleted_with_nothing_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (backend, url) in database_urls(dir.path()).await {
        let app = spawn_app_with(Some(url), |_| {}).await;
        let (s, view, headers) = post_keyed(&app, &host("web"), Some("first")).await;
        assert_eq!(s, 201, "{backend}: {view}");
        assert_eq!(headers.get("location").and_then(|v| v.to_str().ok()), Some("/bridge/v1/hosts/default/web"));
        assert_eq!(view["state"], "Created");
        let steps: Vec<(&str, &str)> = view["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| (s["name"].as_str().unwrap_or(""), s["state"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(steps, [("secret", "Done"), ("disk/root", "Done"), ("vm", "Done")], "{backend}");
        assert!(view["steps"][0]["startedAt"].is_string() && view["steps"][0]["finishedAt"].is_string());
        // A MAC from the pool at create, as Foreman needs it.
        let mac = view["nics"][0]["macAddress"].as_str().unwrap_or_default().to_string();
        assert_eq!(mac.len(), 17, "{backend}: {view}");
        let id = view["id"].as_str().expect("id").to_string();
        let (s, e, _) = post_keyed(&app, &host("web"), None).await;
        assert_eq!((s, e["error"]["code"].as_str()), (409, Some("HostExists")), "{backend}: {e}");
        let (s, replayed, _) = post_keyed(&app, &host("web"), Some("first")).await;
        assert_eq!((s, &replayed["id"]), (201, &view["id"]), "{backend}");

        // The objects, each labelled with the record; the VM boots from the disk, cloud-init beside it.
        let vm = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web").await.1;
        assert_eq!(vm["metadata"]["labels"]["bridge.converge.dev/host-id"], id.as_str());
        assert_eq!(vm["spec"]["runStrategy"], "Halted");
        assert_eq!(vm["spec"]["template"]["spec"]["volumes"][0]["dataVolume"]["name"], "web-root");
        let secret = app.get("/api/v1/namespaces/default/secrets/web-cloudinit").await.1;
        use base64::Engine;
        let userdata = base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["userdata"].as_str().unwrap_or_default())
            .expect("base64");
        let userdata = String::from_utf8_lossy(&userdata);
        assert!(userdata.contains("hostname: test") && userdata.contains(KEY), "{userdata}");

        // Progress: the blank volume is made; the view follows it.
        let path = "/bridge/v1/hosts/default/web";
        let done = wait_until(SETTLE, || async { app.get(path).await.1["disks"][0]["phase"] == "Succeeded" }).await;
        let view = app.get(path).await.1;
        assert!(done, "{backend}: {view}");
        assert_eq!(view["printableStatus"], "Stopped");
        assert_eq!(view["ready"], false);

        // Power: start makes it Always (no node here to run it), stop halts it again.
        let (s, body) = app.post(&format!("{path}/start"), &json!({})).await;
        assert_eq!(s, 202, "{body}");
        let vm = app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/web").await.1;
        assert_eq!(vm["spec"]["runStrategy"], "Always");
        let vmi = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/web";
        // The VMI first exists: a stop before the VM controller made it let the wait for its
        // absence below pass at once, and the VMI made late answered the second stop (202).
        assert!(wait_until(SETTLE, || async { app.get(vmi).await.0 == 200 }).await, "{backend}");
        assert_eq!(app.post(&format!("{path}/stop"), &json!({})).await.0, 202);
        assert!(wait_until(SETTLE, || async { app.get(vmi).await.0 == 404 }).await, "{backend}");
        let (s, body) = app.post(&format!("{path}/stop"), &json!({})).await;
        assert_eq!((s, body["error"]["code"].as_str()), (409, Some("Conflict")), "{body}");

        // Delete: everything goes, the record stays, marked Deleted.
        let (s, body) = app.delete(path, None).await;
        assert_eq!(s, 202, "{body}");
        assert_eq!(body["state"], "Deleting");
        let view = wait_state(&app, "web", "Deleted").await;
        assert!(view["deletedAt"].is_string());
        assert_eq!(leftovers(&app, "web", &["root"]).await, Vec::<String>::new(), "{backend}");
        let (s, body) = app.delete(path, None).await;
        assert_eq!((s, body["error"]["code"].as_str()), (404, Some("NotFound")));
        // The name is free again.
        assert_eq!(post_keyed(&app, &host("web"), None).await.0, 201, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_makes_one_host() {
    let app = spawn_app().await;
    let body = host("keyed");
    let (s1, first, _) = post_keyed(&app, &body, Some("build-42")).await;
    assert_eq!(s1, 201, "{first}");
    let (s2, second, headers) = post_keyed(&app, &body, Some("build-42")).await;
    assert_eq!((s2, &second), (201, &first), "the same answer");
    assert_eq!(headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    // The same key with another body is refused; without a key, the name is taken.
    let (s, e, _) = post_keyed(&app, &host("other"), Some("build-42")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str(), e["error"]["field"].as_str()),
        (422, Some("IdempotencyKeyReused"), Some("Idempotency-Key"))
    );
    let (s, e, _) = post_keyed(&app, &body, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("HostExists")), "{e}");

    // Eight at once with one key: one host; each answer is it, or "in progress".
    let racing = host("raced");
    let answers = futures::future::join_all((0..8).map(|_| post_keyed(&app, &racing, Some("race-1")))).await;
    let created: Vec<&Value> = answers.iter().filter(|(s, _, _)| *s == 201).map(|(_, b, _)| b).collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|b| b["id"] == created[0]["id"]));
    for (s, b, _) in &answers {
        assert!(*s == 201 || (*s == 409 && b["error"]["code"] == "RequestInProgress"), "{s} {b}");
    }
    let list = app.get("/bridge/v1/hosts?namePrefix=raced").await.1;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let vms = app
        .get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines?labelSelector=bridge.converge.dev/host=raced")
        .await
        .1;
    assert_eq!(vms["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_rolls_back_what_the_request_made_and_names_the_step() {
    let app = spawn_app().await;
    // The second disk names a class that is not there: the Secret and the first disk are made,
    // then removed.
    let mut body = host("half");
    body["disks"] = json!([{"name": "root", "size": "16Mi", "source": {"blank": {}}},
        {"name": "data", "size": "16Mi", "storageClass": "no-such-class", "source": {"blank": {}}}]);
    let (s, e, _) = post_keyed(&app, &body, Some("half-1")).await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["error"]["code"], "StorageClassNotFound");
    assert_eq!(e["error"]["step"], "disk/data");
    assert_eq!(e["error"]["field"], "disks[1].storageClass");
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("no-such-class"));
    let view = app.get("/bridge/v1/hosts/default/half").await.1;
    assert_eq!(view["state"], "Failed");
    let states: Vec<&str> =
        view["steps"].as_array().expect("steps").iter().map(|s| s["state"].as_str().unwrap_or("")).collect();
    assert_eq!(states, ["RolledBack", "RolledBack", "Failed", "Skipped"]);
    assert_eq!(view["error"]["step"], "disk/data");
    let left = wait_until(SETTLE, || async { leftovers(&app, "half", &["root", "data"]).await.is_empty() }).await;
    assert!(left, "{:?}", leftovers(&app, "half", &["root", "data"]).await);
    // The same key gives the same failure; a fixed request under a new key makes the host.
    let (s, again, _) = post_keyed(&app, &body, Some("half-1")).await;
    assert_eq!((s, &again), (422, &e));
    body["disks"][1]["storageClass"] = json!("local");
    assert_eq!(post_keyed(&app, &body, Some("half-2")).await.0, 201);

    // A missing network fails the last step: everything before it goes.
    let mut body = host("nonet");
    body["nics"] = json!([{"network": "pod"}, {"network": "lab/missing"}]);
    let (s, e, _) = post_keyed(&app, &body, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str(), e["error"]["step"].as_str()),
        (422, Some("NetworkNotFound"), Some("vm"))
    );
    assert_eq!(e["error"]["field"], "nics[1].network");
    assert!(wait_until(SETTLE, || async { leftovers(&app, "nonet", &["root"]).await.is_empty() }).await);

    // An object of the name that is not the host's is never touched.
    let mine = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "taken-cloudinit"}, "stringData": {"k": "v"}});
    assert_eq!(app.post("/api/v1/namespaces/default/secrets", &mine).await.0, 201);
    let (s, e, _) = post_keyed(&app, &host("taken"), None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str(), e["error"]["step"].as_str()),
        (409, Some("ObjectExists"), Some("secret"))
    );
    assert_eq!(e["error"]["field"], "name", "another host name is the way out");
    assert_eq!(app.get("/api/v1/namespaces/default/secrets/taken-cloudinit").await.0, 200);
    assert_eq!(app.get("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/taken-root").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_shape_with_a_code_a_message_and_the_field() {
    let app = spawn_app().await;
    let shape = |status: u16, body: &Value, code: &str, field: Option<&str>| {
        assert_eq!(body["error"]["code"], code, "{status} {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert_eq!(body["error"]["field"].as_str(), field, "{body}");
    };
    let anonymous = app.http.get(app.url(HOSTS)).send().await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    shape(401, &anonymous.json().await.expect("json"), "Unauthorized", None);
    let (s, b) = app.get("/bridge/v1/hosts/default/nope").await;
    assert_eq!(s, 404);
    shape(s, &b, "NotFound", None);
    let (s, b) = app.get("/bridge/v1/nothing-here").await;
    assert_eq!(s, 404);
    shape(s, &b, "NotFound", None);
    let (s, b) = app.put(HOSTS, &json!({})).await;
    assert_eq!(s, 405);
    shape(s, &b, "MethodNotAllowed", None);
    let (s, b, _) = app.request(reqwest::Method::POST, HOSTS, "application/json", Some("{".into())).await;
    assert_eq!(s, 400);
    shape(s, &b, "InvalidRequest", None);
    let (s, b) = app
        .post(
            HOSTS,
            &json!({"name": "x", "memory": "1Gi", "disks": [{"size": "1Gi", "source": {"blank": {}}, "sise": 1}]}),
        )
        .await;
    assert_eq!(s, 400);
    shape(s, &b, "InvalidRequest", Some("disks[0].sise"));
    let (s, b) = app.post(HOSTS, &json!({"name": "x", "memory": "1Gi", "cpu": 100})).await;
    assert_eq!(s, 422);
    shape(s, &b, "FieldInvalid", Some("cpu"));
    let (s, b) = app.post(HOSTS, &json!({"name": "x", "namespace": "nowhere", "memory": "1Gi"})).await;
    assert_eq!(s, 422);
    shape(s, &b, "FieldInvalid", Some("namespace"));
    let (s, b) = app.post(HOSTS, &json!({"name": "x", "flavor": "huge"})).await;
    assert_eq!(s, 422);
    shape(s, &b, "FlavorNotFound", Some("flavor"));
    let (s, b) = app.get("/bridge/v1/hosts?limit=0").await;
    assert_eq!(s, 400);
    shape(s, &b, "InvalidRequest", Some("limit"));

    // Another namespace's token: refused, in the same shape.
    let (_, issued) =
        app.post("/converge/v1/tokens", &json!({"role": "edit", "namespaces": ["team-a"], "ttlSeconds": 600})).await;
    let token = issued["token"].as_str().expect("token");
    let refused = app.http.post(app.url(HOSTS)).bearer_auth(token).json(&host("theirs")).send().await.expect("request");
    assert_eq!(refused.status().as_u16(), 403);
    shape(403, &refused.json().await.expect("json"), "Forbidden", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_list_with_filters_and_pages_and_the_listings_name_what_there_is() {
    // The NAD below names br-lab: the admin allows it.
    let app = spawn_app_with(None, |c| c.host_access.nad_bridges = vec!["br-lab".into()]).await;
    for name in ["a-1", "a-2", "a-3", "b-1"] {
        let (s, b) = app.post(HOSTS, &json!({"name": name, "memory": "64Mi", "start": false, "nics": []})).await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, _) = app.post(HOSTS, &json!({"name": "c-1", "memory": "64Mi", "nics": [{"network": "nowhere"}]})).await;
    assert_eq!(s, 422);
    let mut names = vec![];
    let mut next = String::new();
    loop {
        let (s, page) = app.get(&format!("{HOSTS}?limit=2&namePrefix=a-&continue={next}")).await;
        assert_eq!(s, 200, "{page}");
        names.extend(
            page["items"].as_array().expect("items").iter().map(|h| h["name"].as_str().unwrap_or("").to_string()),
        );
        match page["continue"].as_str() {
            Some(c) => next = c.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["a-1", "a-2", "a-3"]);
    let failed = app.get(&format!("{HOSTS}?state=Failed")).await.1;
    assert_eq!(failed["items"][0]["name"], "c-1");
    assert_eq!(failed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(app.get(&format!("{HOSTS}?namespace=other")).await.1["items"], json!([]));

    let flavor = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": "small"}, "spec": {"cpu": {"guest": 1}, "memory": {"guest": "64Mi"}}});
    assert_eq!(
        app.post("/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes", &flavor).await.0,
        201
    );
    let nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": {"name": "lab"},
        "spec": {"config": "{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\", \"bridge\": \"br-lab\"}"}});
    assert_eq!(
        app.post("/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", &nad).await.0,
        201
    );
    let ds = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource", "metadata": {"name": "debian"},
        "spec": {"source": {"pvc": {"name": "golden", "namespace": "default"}}}});
    assert_eq!(app.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datasources", &ds).await.0, 201);
    assert_eq!(app.get("/bridge/v1/flavors").await.1["items"], json!([{"name": "small", "cpu": 1, "memory": "64Mi"}]));
    let networks = app.get("/bridge/v1/networks").await.1;
    assert_eq!(networks["items"], json!([{"name": "pod", "type": "pod"}, {"name": "default/lab", "type": "bridge"}]));
    let images = app.get("/bridge/v1/images").await.1;
    assert_eq!(images["items"][0]["name"], "debian");
    assert_eq!(images["items"][0]["source"], "default/golden");
    let classes = app.get("/bridge/v1/storageclasses").await.1;
    assert!(
        classes["items"].as_array().expect("items").iter().any(|c| c["name"] == "local" && c["default"] == true),
        "{classes}"
    );

    // What the listings name, a request takes: the flavor, the network.
    let (s, b) = app
        .post(HOSTS, &json!({"name": "flavored", "flavor": "small", "start": false, "nics": [{"network": "lab"}]}))
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["nics"][0]["network"], "default/lab");
}

/// A crash can cut a request off between any two writes; wherever the record was left, the
/// next server's recovery makes it whole or rolls it back. Here: a step marked Failed, the
/// record still Creating (the write after was lost), and a step that made its object but was
/// never marked Done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_finishes_records_left_between_any_two_writes() {
    use converge_bridge::provision::{executor, executor::Provisioner, record, request, HostState, StepState};
    let app = spawn_app().await;
    let store = app.store();
    let pool = store.pool();
    let left_behind = Provisioner::new(store.clone(), &app.base_url);
    // Alive while the cut records are staged: on a slow host the serving process's recovery
    // otherwise took a record over between two of the writes below and finished it.
    record::heartbeat(pool, &left_behind.owner).await.expect("heartbeat");
    let write = |name: &'static str, key: &'static str| {
        let p = left_behind.clone();
        async move {
            let r = request::decode(host(name).to_string().as_bytes()).expect("request");
            let id = uuid::Uuid::new_v4().to_string();
            let plan = request::plan(&id, &r);
            let new = record::NewHost {
                id: &id,
                request: &r,
                idempotency_key: key,
                request_hash: &record::request_hash(&r),
                created_by: "test",
                owner: &p.owner,
                steps: &plan.steps,
            };
            assert!(record::insert(p.store.pool(), &new).await.expect("insert").is_ok());
            (id, plan)
        }
    };
    // 1: the Secret made, its step Running; the disk step Failed; the record still Creating.
    let (failed_id, plan) = write("cut-fail", "k1").await;
    converge_engine::admission::create_admitted(
        &store,
        &converge_engine::kinds::SECRET,
        plan.steps[0].object.clone(),
        false,
    )
    .await
    .expect("secret");
    record::step(pool, &failed_id, 0, StepState::Pending, StepState::Running, "").await.expect("step");
    record::step(pool, &failed_id, 1, StepState::Pending, StepState::Running, "").await.expect("step");
    record::step(pool, &failed_id, 1, StepState::Running, StepState::Failed, "no space").await.expect("step");
    // 2: the Secret and the disk made, the disk's step never marked Done.
    let (resumed_id, plan) = write("cut-made", "k2").await;
    for (i, kind) in [(0, &converge_engine::kinds::SECRET), (1, &converge_engine::kinds::DATA_VOLUME)] {
        converge_engine::admission::create_admitted(&store, kind, plan.steps[i].object.clone(), false)
            .await
            .expect("object");
        record::step(pool, &resumed_id, i, StepState::Pending, StepState::Running, "").await.expect("step");
    }
    record::step(pool, &resumed_id, 0, StepState::Running, StepState::Done, "").await.expect("step");

    // 3: a request of another server that is alive: left alone until that server goes quiet.
    let other = Provisioner::new(store.clone(), &app.base_url);
    let (busy_id, _) = {
        let r = request::decode(host("cut-busy").to_string().as_bytes()).expect("request");
        let id = uuid::Uuid::new_v4().to_string();
        let plan = request::plan(&id, &r);
        let new = record::NewHost {
            id: &id,
            request: &r,
            idempotency_key: "k3",
            request_hash: &record::request_hash(&r),
            created_by: "test",
            owner: &other.owner,
            steps: &plan.steps,
        };
        assert!(record::insert(pool, &new).await.expect("insert").is_ok());
        (id, plan)
    };
    record::heartbeat(pool, &other.owner).await.expect("heartbeat");
    let age = |owner: String| async move {
        let stale = record::now_ms() - executor::OWNER_LEASE.as_millis() as i64 - 1000;
        sqlx::query("UPDATE bridge_servers SET heartbeat_at = $1 WHERE owner = $2")
            .bind(stale)
            .bind(owner)
            .execute(pool)
            .await
            .expect("age the heartbeat");
    };
    age(left_behind.owner.clone()).await;

    // The serving process's own recovery loop takes the first two over (their owner fell silent).
    let settled = wait_until(SETTLE, || async {
        let a = record::by_id(pool, &failed_id).await.expect("read").expect("record");
        let b = record::by_id(pool, &resumed_id).await.expect("read").expect("record");
        a.state == HostState::Failed && b.state == HostState::Created
    })
    .await;
    assert!(settled, "{:?}", record::by_id(pool, &failed_id).await);
    let failed = app.get("/bridge/v1/hosts/default/cut-fail").await.1;
    assert_eq!(failed["error"]["step"], "disk/root", "{failed}");
    assert!(wait_until(SETTLE, || async { leftovers(&app, "cut-fail", &["root"]).await.is_empty() }).await);
    let resumed = app.get("/bridge/v1/hosts/default/cut-made").await.1;
    let states: Vec<&str> =
        resumed["steps"].as_array().expect("steps").iter().map(|s| s["state"].as_str().unwrap_or("")).collect();
    assert_eq!(states, ["Done", "Done", "Done"], "{resumed}");
    assert_eq!(app.get("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/cut-made").await.0, 200);
    let busy = record::by_id(pool, &busy_id).await.expect("read").expect("record");
    assert_eq!(busy.state, HostState::Creating, "a live server's request is its own");
    // Its server falls silent (its last beat is older than the lease): the request is taken over.
    age(other.owner.clone()).await;
    let taken = wait_until(SETTLE, || async {
        record::by_id(pool, &busy_id).await.ok().flatten().is_some_and(|r| r.state == HostState::Created)
    })
    .await;
    assert!(taken, "{:?}", record::by_id(pool, &busy_id).await);
}
