//! `converge backup` of a running server, under writes, and `converge restore` into a fresh data
//! dir (SQLite) and an empty PostgreSQL database: every object comes back as it was at the
//! snapshot, and the old kubeconfig's token and CA work against the restored server.

mod common;

use common::*;
use serde_json::{json, Value};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// (kind, namespace, name) → (resourceVersion, body), read straight from a store's table.
type Rows = BTreeMap<(String, String, String), (i64, String)>;

async fn rows(url: &str) -> Rows {
    let store = open_store(url).await;
    let found = sqlx::query("SELECT kind, namespace, name, rv, body FROM objects").fetch_all(store.pool()).await;
    let out = found.expect("objects").iter().map(|r| ((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4)))).collect();
    store.close().await;
    out
}

async fn meta_rv(url: &str) -> (i64, i64) {
    let store = open_store(url).await;
    let rv: i64 =
        sqlx::query("SELECT value FROM meta WHERE key = 'rv'").fetch_one(store.pool()).await.expect("rv").get(0);
    let last: i64 =
        sqlx::query("SELECT COALESCE(MAX(rv), 0) FROM watch_events").fetch_one(store.pool()).await.expect("log").get(0);
    store.close().await;
    (rv, last)
}

async fn converge(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge")).args(args).output().await.expect("converge");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Objects of several kinds, with the leases and records beside them (MACs, cluster IPs, tokens).
async fn populate(app: &TestApp) {
    assert_eq!(app.post("/api/v1/namespaces", &json!({"metadata": {"name": "team-a"}})).await.0, 201);
    for i in 0..5 {
        assert_eq!(app.post(VMS, &vm_manifest(&format!("vm-{i}"))).await.0, 201);
    }
    let secret = json!({"metadata": {"name": "s"}, "stringData": {"password": "p"}});
    assert_eq!(app.post("/api/v1/namespaces/team-a/secrets", &secret).await.0, 201);
    let svc = json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    assert_eq!(app.post("/api/v1/namespaces/default/services", &svc).await.0, 201);
    let token = json!({"role": "view", "namespaces": ["team-a"], "ttlSeconds": 3600});
    assert_eq!(app.post("/converge/v1/tokens", &token).await.0, 201);
}

/// Creates ConfigMaps w-0, w-1, … one after another until told to stop; returns how many.
fn writer(app: Arc<TestApp>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let cm = json!({"metadata": {"name": format!("w-{n}")}, "data": {"n": n.to_string()}});
            assert_eq!(app.post("/api/v1/namespaces/default/configmaps", &cm).await.0, 201);
            n += 1;
        }
        n
    })
}

/// The restored store is the source as it was at the snapshot's resourceVersion `at`.
fn assert_restored_as_of(source: &Rows, restored: &Rows, at: i64) {
    for (key, (rv, body)) in restored {
        assert!(*rv <= at, "{key:?} at {rv} is newer than the snapshot ({at})");
        if let Some((source_rv, source_body)) = source.get(key) {
            if source_rv == rv {
                assert_eq!(body, source_body, "{key:?} differs");
            } else {
                assert!(*source_rv > at, "{key:?}: restored at {rv}, the source had {source_rv} by the snapshot");
            }
        }
    }
    for (key, (rv, _)) in source {
        if *rv <= at {
            assert!(restored.contains_key(key), "{key:?} (rv {rv}) is missing from the restore");
        }
    }
    // The writer's ConfigMaps came one after another: the restore holds a prefix of them.
    let written: Vec<&String> = restored.keys().filter(|(_, _, n)| n.starts_with("w-")).map(|(_, _, n)| n).collect();
    for i in 0..written.len() {
        assert!(
            restored.contains_key(&("core/configmaps".into(), "default".into(), format!("w-{i}"))),
            "w-{i} missing"
        );
    }
}

async fn backup_and_restore(source_url: Option<String>) {
    let app = Arc::new(spawn_app_with(source_url.clone(), |c| c.node = None).await);
    populate(&app).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(Arc::clone(&app), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("backup.tgz");
    let data_dir = app.dir.path().to_string_lossy().into_owned();
    let mut args = vec!["backup", file.to_str().expect("path"), "--data-dir", &data_dir];
    if let Some(url) = &source_url {
        args.extend(["--database", url]);
    }
    let (ok, out) = converge(&args).await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.expect("writer");
    assert!(ok, "backup: {out}");
    assert!(written > 0, "the backup ran under writes");
    let source = rows(&app.database_url).await;

    // Into a fresh data dir (SQLite), and into an empty PostgreSQL database when there is one.
    let mut targets = vec![(tempfile::tempdir().expect("tempdir"), None)];
    if let Some(base) = postgres_base() {
        targets.push((tempfile::tempdir().expect("tempdir"), Some(fresh_postgres(&base).await)));
    }
    for (dir, database) in targets {
        let dir_text = dir.path().to_string_lossy().into_owned();
        let mut args = vec!["restore", file.to_str().expect("path"), "--data-dir", &dir_text];
        if let Some(url) = &database {
            args.extend(["--database", url]);
        }
        let (ok, out) = converge(&args).await;
        assert!(ok, "restore: {out}");
        let url = database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.path().join("converge.db").display()));
        let restored = rows(&url).await;
        let (at, last_logged) = meta_rv(&url).await;
        assert_eq!(at, last_logged, "the snapshot's counter and its change log agree");
        assert!(out.contains(&format!("resourceVersion {at}")), "{out}");
        assert_restored_as_of(&source, &restored, at);
        assert!(restored.len() >= 10, "{} objects", restored.len());

        // The restored data dir serves, and the source's admin token and CA still work there.
        let again = start_in(dir, url.clone(), |c| c.node = None).await;
        let client = http_client(&std::fs::read_to_string(app.dir.path().join("ca.crt")).expect("ca"));
        let vm = client.get(again.url(&format!("{VMS}/vm-3"))).bearer_auth(&app.token).send().await.expect("get");
        assert_eq!(vm.status(), 200, "the old admin token against the restored server");
        let vm: Value = vm.json().await.expect("vm");
        let key = ("kubevirt.io/virtualmachines".to_string(), "default".to_string(), "vm-3".to_string());
        let stored: Value = serde_json::from_str(&restored[&key].1).expect("body");
        assert_eq!(vm["metadata"]["uid"], stored["metadata"]["uid"]);
        let mac = vm.pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress").cloned();
        assert!(mac.as_ref().and_then(Value::as_str).is_some_and(|m| !m.is_empty()), "{vm}");
        // Its MAC is still leased: a sixth VM gets another.
        assert_eq!(again.post(VMS, &vm_manifest("vm-5")).await.0, 201);
        let fresh = again.get(&format!("{VMS}/vm-5")).await.1;
        assert_ne!(fresh.pointer("/spec/template/spec/domain/devices/interfaces/0/macAddress").cloned(), mac);
        // A restore over an existing data dir is refused and changes nothing.
        let (ok, out) = converge(&["restore", file.to_str().expect("path"), "--data-dir", &dir_text]).await;
        assert!(!ok && out.contains("already holds a Converge data dir"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_online_sqlite_backup_restores_every_object_as_of_the_snapshot() {
    backup_and_restore(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_online_postgres_backup_restores_every_object_as_of_the_snapshot() {
    let Some(base) = postgres_base() else { return };
    backup_and_restore(Some(fresh_postgres(&base).await)).await;
}

#[tokio::test]
async fn a_file_that_is_not_a_backup_is_refused() {
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("junk.tgz");
    std::fs::write(&file, b"not a tar").expect("write");
    let dir = work.path().join("d");
    let (ok, out) =
        converge(&["restore", file.to_str().expect("path"), "--data-dir", dir.to_str().expect("dir")]).await;
    assert!(!ok && out.contains("not a converge backup"), "{out}");
    assert!(!dir.join("converge.db").exists());
    let (ok, out) =
        converge(&["backup", work.path().join("b").to_str().expect("p"), "--data-dir", dir.to_str().expect("d")]).await;
    assert!(!ok && out.contains("no store at"), "{out}");
}
