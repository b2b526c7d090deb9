//! VirtualMachineInstanceReplicaSet: keep `spec.replicas` live VMIs matching the selector,
//! replacing finished ones, and report replicas / readyReplicas.

use rand::Rng;
use serde_json::{json, Value};

use super::status::{condition_true, is_final, phase};
use super::Key;
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds;
use crate::meta;
use crate::selector::LabelSelector;
use crate::worker::Action;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RsPlan {
    /// How many VMIs to create from the template.
    pub create: usize,
    /// (name, uid) of VMIs to delete.
    pub delete: Vec<(String, String)>,
    pub status: Value,
}

fn owned_by(vmi: &Value, rs: &Value) -> bool {
    meta::owner_uids(vmi).iter().any(|u| u == meta::uid(rs))
}

/// Pure: `vmis` are the VMIs of the replica set's namespace.
pub fn reconcile(rs: &Value, vmis: &[Value]) -> RsPlan {
    let mut plan = RsPlan::default();
    let selector = rs.pointer("/spec/selector").and_then(|s| LabelSelector::from_object(s).ok());
    let wanted = rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    let paused = rs.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    let mine: Vec<&Value> = vmis
        .iter()
        .filter(|v| owned_by(v, rs))
        .filter(|v| selector.as_ref().is_some_and(|s| s.matches(&meta::labels(v))))
        .collect();
    let (finished, live): (Vec<&Value>, Vec<&Value>) = mine.into_iter().partition(|v| is_final(phase(v)));
    let live: Vec<&Value> = live.into_iter().filter(|v| !meta::is_deleting(v)).collect();
    if !meta::is_deleting(rs) && !paused {
        for v in finished.iter().filter(|v| !meta::is_deleting(v)) {
            plan.delete.push((meta::name(v).to_string(), meta::uid(v).to_string()));
        }
        if live.len() < wanted {
            plan.create = wanted - live.len();
        } else if live.len() > wanted {
            // Not-ready ones go first, then the newest, as the ReplicaSet controller prefers.
            let mut victims = live.clone();
            victims.sort_by_key(|v| {
                let created = meta::meta_str(v, "creationTimestamp").unwrap_or("").to_string();
                (condition_true(v, "Ready"), std::cmp::Reverse(created))
            });
            for v in victims.into_iter().take(live.len() - wanted) {
                plan.delete.push((meta::name(v).to_string(), meta::uid(v).to_string()));
            }
        }
    }
    let ready = live.iter().filter(|v| condition_true(v, "Ready")).count();
    let mut status = rs.get("status").cloned().filter(Value::is_object).unwrap_or(json!({}));
    status["replicas"] = json!(live.len());
    status["readyReplicas"] = json!(ready);
    if let Some(sel) = rs.pointer("/spec/selector/matchLabels").and_then(Value::as_object) {
        let text: Vec<String> = sel.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        status["labelSelector"] = json!(text.join(","));
    }
    plan.status = status;
    plan
}

/// A VMI for `rs`, named after it with a random suffix as generateName would.
pub fn vmi_for(rs: &Value) -> Value {
    let suffix: String = {
        let mut rng = rand::rng();
        (0..5).map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)])).collect()
    };
    super::owned_vmi_from_template(rs, "VirtualMachineInstanceReplicaSet", &format!("{}{}", meta::name(rs), suffix))
}

pub(super) async fn sync(cluster: &dyn Cluster, (ns, name): Key) -> ApiResult<Action> {
    let Some(rs) = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, &ns, &name).await? else {
        return Ok(Action::AwaitChange);
    };
    let vmis = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, Some(&ns)).await?;
    let plan = reconcile(&rs, &vmis);
    for (vmi_name, uid) in &plan.delete {
        crate::cluster::delete_uid(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, &ns, vmi_name, uid).await?;
    }
    for _ in 0..plan.create {
        match cluster.create(&kinds::VIRTUAL_MACHINE_INSTANCE, vmi_for(&rs)).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {} // a name collision: the next pass makes it up
            Err(e) => return Err(e),
        }
    }
    crate::cluster::write_status(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, &rs, plan.status).await?;
    Ok(Action::AwaitChange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"name": "r", "namespace": "d", "uid": "rs1"},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "x"}},
                        "template": {"metadata": {"labels": {"app": "x"}}, "spec": {}}}})
    }

    fn vmi(name: &str, ready: bool, phase: &str, created: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "d", "uid": format!("u-{name}"), "labels": {"app": "x"},
                            "creationTimestamp": created, "ownerReferences": [{"uid": "rs1", "kind": "VirtualMachineInstanceReplicaSet", "name": "r"}]},
               "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn scales_up_replaces_finished_and_scales_down_newest_unready_first() {
        let plan = reconcile(&rs(3), &[vmi("a", true, "Running", "t1")]);
        assert_eq!(plan.create, 2);
        assert_eq!(plan.status["replicas"], 1);
        assert_eq!(plan.status["readyReplicas"], 1);
        assert_eq!(plan.status["labelSelector"], "app=x");

        let plan = reconcile(
            &rs(1),
            &[vmi("a", true, "Running", "t1"), vmi("b", true, "Running", "t2"), vmi("c", false, "Scheduled", "t0")],
        );
        assert_eq!(plan.delete, vec![("c".to_string(), "u-c".to_string()), ("b".to_string(), "u-b".to_string())]);

        let plan = reconcile(&rs(1), &[vmi("a", false, "Failed", "t1")]);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.create, 1);
    }

    #[test]
    fn generated_names_follow_the_replica_set() {
        let v = vmi_for(&rs(1));
        let name = v["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with('r') && name.len() == 6);
        assert_eq!(v["metadata"]["labels"]["app"], "x");
    }
}
