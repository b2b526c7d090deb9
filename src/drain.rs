//! `converge node drain NODE`: what `kubectl drain` does for pods, done for guests — the node is
//! cordoned, then each guest on it leaves as its `evictionStrategy` says (KubeVirt's): a
//! migration for `LiveMigrate` (and `LiveMigrateIfPossible` when the guest may move), a shutdown
//! otherwise (its VM starts it again elsewhere, as its run strategy says), until none is left.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::client::Client;

/// What happens to one guest of the node being drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    Migrate,
    ShutDown,
    /// It cannot leave as its strategy asks: why.
    Blocked(String),
}

fn condition<'a>(vmi: &'a Value, kind: &str) -> Option<&'a Value> {
    vmi.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == kind)
}

/// Pure: how `vmi` leaves its node.
pub fn eviction(vmi: &Value) -> Eviction {
    let strategy = vmi.pointer("/spec/evictionStrategy").and_then(Value::as_str).unwrap_or("None");
    let migratable = condition(vmi, "LiveMigratable").filter(|c| c["status"] == "True").is_some();
    let why_not = || {
        condition(vmi, "LiveMigratable")
            .and_then(|c| c.get("message").and_then(Value::as_str))
            .unwrap_or("the guest is not live-migratable")
            .to_string()
    };
    match strategy {
        "LiveMigrate" if migratable => Eviction::Migrate,
        "LiveMigrate" => Eviction::Blocked(format!("evictionStrategy LiveMigrate, but {}", why_not())),
        "LiveMigrateIfPossible" if migratable => Eviction::Migrate,
        "External" => Eviction::Blocked("evictionStrategy External: another controller evacuates it".into()),
        _ => Eviction::ShutDown,
    }
}

fn key(vmi: &Value) -> String {
    let m = |f: &str| vmi.pointer(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or("").to_string();
    format!("{}/{}", m("namespace"), m("name"))
}

/// The guests still on `node` (not finished).
fn guests_on(list: &Value, node: &str) -> Vec<Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.pointer("/status/nodeName").and_then(Value::as_str) == Some(node))
        .filter(|v| !matches!(v.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")))
        .cloned()
        .collect()
}

fn migrating(vmi: &Value) -> bool {
    vmi.pointer("/status/migrationState").is_some_and(|s| s["completed"] != json!(true) && s["failed"] != json!(true))
}

pub async fn drain(api: &Client, node: &str, timeout: Duration) -> Result<()> {
    api.merge_patch(&format!("/api/v1/nodes/{node}"), &json!({"spec": {"unschedulable": true}})).await?;
    println!("node/{node} cordoned");
    let deadline = Instant::now() + timeout;
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut migrations_asked: BTreeSet<String> = BTreeSet::new();
    loop {
        let list = api.get_json("/apis/kubevirt.io/v1/virtualmachineinstances").await?.unwrap_or_default();
        let guests = guests_on(&list, node);
        if guests.is_empty() {
            println!("node/{node} drained");
            return Ok(());
        }
        let mut blocked = vec![];
        for vmi in &guests {
            let (k, uid) = (key(vmi), vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or(""));
            let ns = vmi.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
            let name = vmi.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            // A migration is asked again when the last one ended without moving the guest.
            let round = format!("{uid}/{}", migration_round(vmi));
            match eviction(vmi) {
                Eviction::Migrate if !migrating(vmi) && !migrations_asked.contains(&round) => {
                    migrations_asked.insert(round);
                    let m = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                        "metadata": {"generateName": "kubevirt-evacuation-", "namespace": ns},
                        "spec": {"vmiName": name}});
                    api.post_json(
                        &format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstancemigrations"),
                        &m,
                    )
                    .await?;
                    println!("evicting virtualmachineinstance/{k}: migrating");
                }
                Eviction::ShutDown if asked.insert(uid.to_string()) => {
                    api.delete(&format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}")).await?;
                    println!("evicting virtualmachineinstance/{k}: shutting down");
                }
                Eviction::Blocked(why) => blocked.push(format!("virtualmachineinstance/{k}: {why}")),
                _ => {}
            }
        }
        if blocked.len() == guests.len() {
            bail!("node/{node} cannot be drained:\n  {}", blocked.join("\n  "));
        }
        if Instant::now() >= deadline {
            let left: Vec<String> = guests.iter().map(key).collect();
            bail!("node/{node} not drained after {}s; still there: {}", timeout.as_secs(), left.join(", "));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Which migration of the VMI ended last (its uid), so a failed one is followed by a new ask.
fn migration_round(vmi: &Value) -> String {
    vmi.pointer("/status/migrationState/migrationUid").and_then(Value::as_str).unwrap_or("none").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(strategy: Option<&str>, migratable: bool) -> Value {
        let mut v = json!({"metadata": {"name": "v", "namespace": "n"}, "spec": {},
            "status": {"nodeName": "a", "phase": "Running", "conditions": [
                {"type": "LiveMigratable", "status": if migratable { "True" } else { "False" },
                 "message": "cannot migrate VMI: PVC d is not shared"}]}});
        if let Some(s) = strategy {
            v["spec"]["evictionStrategy"] = json!(s);
        }
        v
    }

    #[test]
    fn each_guest_leaves_as_its_eviction_strategy_says() {
        assert_eq!(eviction(&vmi(Some("LiveMigrate"), true)), Eviction::Migrate);
        assert!(matches!(eviction(&vmi(Some("LiveMigrate"), false)), Eviction::Blocked(m) if m.contains("PVC d")));
        assert_eq!(eviction(&vmi(Some("LiveMigrateIfPossible"), true)), Eviction::Migrate);
        assert_eq!(eviction(&vmi(Some("LiveMigrateIfPossible"), false)), Eviction::ShutDown);
        assert_eq!(eviction(&vmi(None, true)), Eviction::ShutDown, "KubeVirt's default strategy is None");
        assert_eq!(eviction(&vmi(Some("None"), true)), Eviction::ShutDown);
        assert!(matches!(eviction(&vmi(Some("External"), true)), Eviction::Blocked(_)));
    }

    #[test]
    fn only_unfinished_guests_of_the_node_count() {
        let mut done = vmi(None, true);
        done["status"]["phase"] = json!("Succeeded");
        let mut elsewhere = vmi(None, true);
        elsewhere["status"]["nodeName"] = json!("b");
        let list = json!({"items": [vmi(None, true), done, elsewhere]});
        assert_eq!(guests_on(&list, "a").len(), 1);
    }
}
