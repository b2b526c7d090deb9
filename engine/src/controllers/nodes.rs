//! Node lifecycle, as the node-lifecycle controller does it: a node whose agent stopped posting
//! its Ready heartbeat turns Ready=Unknown, and the VMIs it was running fail with
//! `NodeUnresponsive`, so their VMs can start them again. Pure decisions; `run` applies them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::status::{self as st, is_final, node_name, phase};
use crate::cluster::Cluster;
use crate::kinds;
use crate::meta;

/// How long a heartbeat may be missing before the node is unknown (the node agent beats every
/// 20 s by default).
pub const GRACE: Duration = Duration::from_secs(60);
const CHECK_EVERY: Duration = Duration::from_secs(10);

fn heartbeat(node: &Value) -> Option<DateTime<Utc>> {
    st::condition(node, "Ready")
        .and_then(|c| c.get("lastHeartbeatTime"))
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The node's new status if its heartbeat is overdue while it still reads Ready.
pub fn overdue(node: &Value, now: DateTime<Utc>, grace: Duration) -> Option<Value> {
    let beat = heartbeat(node)?;
    let late = (now - beat).to_std().unwrap_or_default() > grace;
    if !late || !st::condition_true(node, "Ready") {
        return None;
    }
    let mut next = node.clone();
    if let Some(cond) = next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
        .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
    {
        cond["status"] = json!("Unknown");
        cond["reason"] = json!("NodeStatusUnknown");
        cond["message"] = json!("Kubelet stopped posting node status.");
        cond["lastTransitionTime"] = json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    next.get("status").cloned()
}

/// A VMI on an unresponsive node, failed.
pub fn fail_on_lost_node(vmi: &Value, node: &str, now: &str) -> Option<Value> {
    if node_name(vmi) != Some(node) || is_final(phase(vmi)) {
        return None;
    }
    let mut next = vmi.clone();
    let message = format!("node {node} is unresponsive");
    st::set_condition(&mut next, "Ready", false, "NodeUnresponsive", &message, now);
    st::set_phase(&mut next, st::FAILED, now).then(|| next["status"].take())
}

pub(super) async fn run(cluster: Arc<dyn Cluster>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = check(cluster.as_ref(), Utc::now()).await {
            if e.code != 409 {
                tracing::warn!(error = %e.message, "node lifecycle check failed");
            }
        }
    }
}

async fn check(cluster: &dyn Cluster, now: DateTime<Utc>) -> crate::ApiResult<()> {
    let stamp = meta::now_rfc3339();
    for node in cluster.list(&kinds::NODE, None).await? {
        if let Some(status) = overdue(&node, now, GRACE) {
            tracing::warn!(node = meta::name(&node), "node stopped posting its status; its VMIs fail");
            crate::cluster::write_status(cluster, &kinds::NODE, &node, status).await?;
        }
        let unknown = st::condition(&node, "Ready").is_some_and(|c| c["status"] == "Unknown")
            || overdue(&node, now, GRACE).is_some();
        if !unknown {
            continue;
        }
        for vmi in cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await? {
            if let Some(status) = fail_on_lost_node(&vmi, meta::name(&node), &stamp) {
                crate::cluster::write_status(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, &vmi, status).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(beat: &str, status: &str) -> Value {
        json!({"metadata": {"name": "n1"}, "status": {"conditions": [
            {"type": "Ready", "status": status, "lastHeartbeatTime": beat, "lastTransitionTime": beat}]}})
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_silent_node_turns_unknown_after_the_grace() {
        let n = node("2026-01-01T00:00:00Z", "True");
        assert!(overdue(&n, at("2026-01-01T00:00:59Z"), GRACE).is_none());
        let status = overdue(&n, at("2026-01-01T00:01:01Z"), GRACE).unwrap();
        assert_eq!(status["conditions"][0]["status"], "Unknown");
        assert_eq!(status["conditions"][0]["reason"], "NodeStatusUnknown");
        assert!(overdue(&node("2026-01-01T00:00:00Z", "Unknown"), at("2026-01-01T01:00:00Z"), GRACE).is_none());
    }

    #[test]
    fn its_vmis_fail_and_others_are_untouched() {
        let running = json!({"status": {"phase": "Running", "nodeName": "n1"}});
        let status = fail_on_lost_node(&running, "n1", "t").unwrap();
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["conditions"][0]["reason"], "NodeUnresponsive");
        assert!(fail_on_lost_node(&running, "n2", "t").is_none());
        assert!(fail_on_lost_node(&json!({"status": {"phase": "Succeeded", "nodeName": "n1"}}), "n1", "t").is_none());
    }
}
