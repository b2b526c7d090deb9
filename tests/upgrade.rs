//! Upgrades: this converge opens every store a released converge made (the fixtures under
//! `tests/fixtures/store-schema-N`, written by `scripts/make-store-fixture.sh` with the converge
//! of that schema and never regenerated), on SQLite and PostgreSQL, migrating it and keeping
//! every object; and guests keep running, in the same QEMU processes, across the restart.

mod common;

use common::guests::{halt_vm, within};
use common::process::ServeProcess;
use common::*;
use converge_engine::store::{versions, Backend};
use sqlx::{Connection, Row};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every fixture, oldest first: (its schema version, its directory).
fn fixtures() -> Vec<(i64, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut found: Vec<(i64, PathBuf)> = std::fs::read_dir(&root)
        .expect("tests/fixtures")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let version = path.file_name()?.to_str()?.strip_prefix("store-schema-")?.parse().ok()?;
            Some((version, path))
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no store fixtures under {}", root.display());
    found
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("fixture")).read_to_end(&mut out).expect("gunzip");
    out
}

/// Every object's row, straight from the table: (kind, namespace, name) → (uid, rv, body).
type Objects = BTreeMap<(String, String, String), (String, i64, String)>;

async fn objects_in(url: &str) -> Objects {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let rows = sqlx::query("SELECT kind, namespace, name, uid, rv, body FROM objects").fetch_all(&mut conn).await;
    rows.expect("objects").iter().map(|r| ((r.get(0), r.get(1), r.get(2)), (r.get(3), r.get(4), r.get(5)))).collect()
}

async fn side_tables(url: &str) -> Vec<i64> {
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    let mut counts = Vec::new();
    for table in ["tokens", "mac_leases", "address_leases", "owner_refs", "watch_events"] {
        let n: i64 =
            sqlx::query(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&mut conn).await.expect(table).get(0);
        counts.push(n);
    }
    counts
}

/// Opens the store at `url` with a whole server and checks it: migrated to this binary's schema,
/// every object as the older converge left it, and served.
async fn opens_and_keeps_everything(dir: tempfile::TempDir, url: String, fixture_version: i64, backend: Backend) {
    let before = objects_in(&url).await;
    let sides = side_tables(&url).await;
    assert!(before.len() >= 15, "the fixture holds objects of many kinds: {}", before.len());
    let app = start_in(dir, url.clone(), |c| c.node = None).await;
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    let applied = versions::applied_versions(&mut conn).await.expect("versions");
    assert_eq!(applied.last().copied(), Some(versions::current(backend)), "migrated from {fixture_version}");
    // Objects are kept; controllers may have written some since (a newer status), never lost one.
    let after = objects_in(&url).await;
    for (key, (uid, rv, body)) in &before {
        let (uid_after, rv_after, body_after) = after.get(key).unwrap_or_else(|| panic!("{key:?} lost"));
        assert_eq!(uid, uid_after, "{key:?}");
        if rv == rv_after {
            assert_eq!(body, body_after, "{key:?}");
        }
    }
    let sides_after = side_tables(&url).await;
    // Leases kept; tokens kept (the new data dir's server issued itself an admin token beside them).
    let kept = sides_after[0] == sides[0] + 1 && sides_after[1..3] == sides[1..3];
    assert!(kept, "tokens, MAC and address leases: {sides:?} → {sides_after:?}");
    // Served as before: the VMs with their MACs, by kubectl.
    let vm = app.get("/apis/kubevirt.io/v1/namespaces/team-a/virtualmachines/halted").await;
    assert_eq!(vm.0, 200, "{}", vm.1);
    let stored: serde_json::Value =
        serde_json::from_str(&before[&("kubevirt.io/virtualmachines".into(), "team-a".into(), "halted".into())].2)
            .expect("body");
    assert_eq!(vm.1["spec"], stored["spec"]);
    let (ok, out, err) = app.kubectl(&["get", "vm,dv,svc,cm", "-n", "team-a"]).await;
    assert!(ok && out.contains("halted") && out.contains("always") && out.contains("blank"), "{out}{err}");
    // A new object goes on from the store's counters.
    let top = after.values().map(|(_, rv, _)| *rv).max().unwrap_or(0);
    let created = app.post(VMS, &vm_manifest("after-upgrade")).await;
    assert_eq!(created.0, 201, "{}", created.1);
    let rv: i64 = created.1["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).expect("rv");
    assert!(rv > top, "{rv} after {top}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_released_sqlite_store_opens_migrated_with_every_object() {
    for (version, fixture) in fixtures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("converge.db");
        std::fs::write(&db, gunzip(&fixture.join("converge.db.gz"))).expect("write");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        opens_and_keeps_everything(dir, url, version, Backend::Sqlite).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_released_postgres_store_opens_migrated_with_every_object() {
    let Some(base) = postgres_base() else { return };
    for (version, fixture) in fixtures() {
        let url = fresh_postgres(&base).await;
        let dump = gunzip(&fixture.join("postgres.sql.gz"));
        let mut psql = std::process::Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        std::io::Write::write_all(psql.stdin.as_mut().expect("stdin"), &dump).expect("load");
        drop(psql.stdin.take());
        assert!(psql.wait().expect("psql").success(), "loading the dump of schema {version}");
        opens_and_keeps_everything(tempfile::tempdir().expect("tempdir"), url, version, Backend::Postgres).await;
    }
}

async fn both_running(app: &TestApp) -> bool {
    let (_, list) = app.get(VMIS_DEFAULT).await;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items.len() == 2 && items.iter().all(|v| v["status"]["phase"] == "Running")
}

fn qemu_pid(domain: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/run/libvirt/qemu/{domain}.pid")).ok()?.trim().parse().ok()
}

/// The upgrade as an operator does it: a data dir with the oldest released store, a server on
/// it running guests, stopped by SIGTERM (systemd's stop) and started again. The guests are not
/// touched: the same VMIs in the same QEMU processes, and the new server drives them.
#[tokio::test(flavor = "multi_thread")]
async fn guests_run_on_in_the_same_qemu_across_a_server_restart() {
    within(Duration::from_secs(300), async {
        let (_, oldest) = fixtures().remove(0);
        let store = gunzip(&oldest.join("converge.db.gz"));
        let mut p = ServeProcess::start_prepared("", &[], |dir| {
            std::fs::write(dir.join("converge.db"), &store).expect("the older store");
        })
        .await;
        for name in ["a", "b"] {
            assert_eq!(p.app.post(VMS_DEFAULT, &halt_vm(name, "Always")).await.0, 201);
        }
        assert!(wait_until(Duration::from_secs(120), || both_running(&p.app)).await, "{}", p.logs());
        let guests = |p: &ServeProcess| {
            ["a", "b"].map(|n| qemu_pid(&p.domain("default", n)).unwrap_or_else(|| panic!("{n}'s QEMU pid")))
        };
        let vmis = |list: serde_json::Value| -> Vec<(String, String)> {
            let items = list["items"].as_array().cloned().unwrap_or_default();
            items.iter().map(|v| (v["metadata"]["uid"].to_string(), v["status"]["nodeName"].to_string())).collect()
        };
        let pids = guests(&p);
        let before = vmis(p.app.get(VMIS_DEFAULT).await.1);
        assert!(p.stop().await, "the server exits cleanly on SIGTERM:\n{}", p.logs());
        assert_eq!(guests(&p), pids, "guests run on while no server does");
        p.spawn("").await;
        assert!(wait_until(Duration::from_secs(60), || both_running(&p.app)).await, "{}", p.logs());
        assert_eq!(guests(&p), pids, "the new server adopted the same QEMU processes");
        assert_eq!(vmis(p.app.get(VMIS_DEFAULT).await.1), before, "the same VMIs on the same node");
        // It drives them: stopping one ends its QEMU; the other keeps its own.
        let halt = serde_json::json!({"spec": {"runStrategy": "Halted"}});
        let stopped = p.app.patch(&format!("{VMS_DEFAULT}/a"), "application/merge-patch+json", &halt).await;
        assert_eq!(stopped.0, 200);
        let gone = wait_until(Duration::from_secs(60), || async { qemu_pid(&p.domain("default", "a")).is_none() });
        assert!(gone.await, "a's QEMU ended");
        assert_eq!(qemu_pid(&p.domain("default", "b")), Some(pids[1]));
    })
    .await;
}

const VMS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMIS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";
