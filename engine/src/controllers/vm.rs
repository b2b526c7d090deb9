//! The VirtualMachine reconciler: runStrategy and state-change requests decide whether a VMI
//! should exist; the VMI's state decides the VM's printableStatus. Pure: the runtime hands in the
//! VM, its VMI and the time, and applies the plan it gets back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::status::{self as st, condition_true, is_final, phase};
use crate::meta;

pub const RUN_ALWAYS: &str = "Always";
pub const RUN_HALTED: &str = "Halted";
pub const RUN_MANUAL: &str = "Manual";
pub const RUN_RERUN_ON_FAILURE: &str = "RerunOnFailure";
pub const RUN_ONCE: &str = "Once";

/// A VMI that ran at least this long before failing resets the crash-loop count.
const STABLE_RUN: Duration = Duration::from_secs(60);
const BACKOFF_BASE_SECS: i64 = 5;
const BACKOFF_MAX_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmPlan {
    pub create_vmi: Option<Value>,
    /// Delete the VMI with this uid.
    pub delete_vmi: Option<String>,
    /// The VM's whole new status.
    pub status: Value,
    pub requeue_after: Option<Duration>,
    /// Set the VM's run strategy to Always (or `running: true`) and do nothing else this pass:
    /// a paused start of a Halted VM, whose request is acted on once the strategy holds it up.
    pub run_always: bool,
}

pub fn run_strategy(vm: &Value) -> &str {
    if let Some(s) = vm.pointer("/spec/runStrategy").and_then(Value::as_str) {
        return s;
    }
    match vm.pointer("/spec/running").and_then(Value::as_bool) {
        Some(true) => RUN_ALWAYS,
        _ => RUN_HALTED,
    }
}

fn backoff_secs(failures: i64) -> i64 {
    let exp = (failures - 1).clamp(0, 16) as u32;
    (BACKOFF_BASE_SECS.saturating_mul(1 << exp)).min(BACKOFF_MAX_SECS)
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The VMI a VM's template describes, owned by the VM.
pub fn vmi_from_template(vm: &Value) -> Value {
    super::owned_vmi_from_template(vm, "VirtualMachine", meta::name(vm))
}

fn owned_by(vmi: &Value, vm: &Value) -> bool {
    meta::owner_uids(vmi).iter().any(|u| u == meta::uid(vm))
}

/// Decides what to do about `vm` given its VMI (same name) and the time.
pub fn reconcile(vm: &Value, vmi: Option<&Value>, now: DateTime<Utc>) -> VmPlan {
    let mut plan = VmPlan::default();
    let mut status = vm.get("status").cloned().filter(Value::is_object).unwrap_or(json!({}));
    // A VMI of the same name that this VM doesn't own is someone else's: leave it alone.
    let vmi = vmi.filter(|v| owned_by(v, vm));
    let strategy = run_strategy(vm).to_string();
    let vmi_gone_or_going = |v: Option<&Value>| v.is_none_or(meta::is_deleting);

    let mut requests: Vec<Value> =
        status.get("stateChangeRequests").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut create_now = false;
    let mut start_paused = false;
    let mut waiting_backoff = false;

    if meta::is_deleting(vm) {
        if let Some(v) = vmi.filter(|v| !meta::is_deleting(v)) {
            plan.delete_vmi = Some(meta::uid(v).to_string());
        }
        requests.clear();
    } else if strategy == RUN_HALTED && is_start(requests.first()) && vmi.is_none() {
        // virt-api's paused start of a Halted VM: the strategy turns first, so that the VMI made
        // for the request is never one that Halted says to delete.
        plan.run_always = true;
    } else if !requests.is_empty() {
        // Requests run in order; one that is done is dropped and the next one looked at.
        while let Some(request) = requests.first().cloned() {
            match request.get("action").and_then(Value::as_str) {
                Some("Stop") => {
                    let uid = request.get("uid").and_then(Value::as_str);
                    match vmi {
                        Some(v) if uid.is_none_or(|u| u == meta::uid(v)) => {
                            if !meta::is_deleting(v) {
                                plan.delete_vmi = Some(meta::uid(v).to_string());
                            }
                            break;
                        }
                        _ => {
                            requests.remove(0);
                        }
                    }
                }
                Some("Start") => {
                    match vmi {
                        None => {
                            requests.remove(0);
                            create_now = true;
                            start_paused = request.pointer("/data/startPaused").and_then(Value::as_str) == Some("true");
                        }
                        Some(v) if is_final(phase(v)) && !meta::is_deleting(v) => {
                            plan.delete_vmi = Some(meta::uid(v).to_string());
                        }
                        Some(v) if meta::is_deleting(v) => {}
                        Some(_) => {
                            requests.remove(0);
                        }
                    }
                    break;
                }
                _ => {
                    requests.remove(0);
                }
            }
        }
    } else {
        match strategy.as_str() {
            RUN_HALTED => {
                if let Some(v) = vmi.filter(|v| !meta::is_deleting(v)) {
                    plan.delete_vmi = Some(meta::uid(v).to_string());
                }
            }
            RUN_ALWAYS | RUN_RERUN_ON_FAILURE => {
                let restart_on = |p: &str| p == st::FAILED || (strategy == RUN_ALWAYS && p == st::SUCCEEDED);
                match vmi {
                    Some(v) if restart_on(phase(v)) && !meta::is_deleting(v) => {
                        if phase(v) == st::FAILED {
                            record_failure(&mut status, v, now);
                        }
                        plan.delete_vmi = Some(meta::uid(v).to_string());
                    }
                    None => create_now = true,
                    Some(_) => {}
                }
            }
            // Once: the first VMI only; a VM that has shown any status has had its chance.
            RUN_ONCE if vmi.is_none() && status.get("printableStatus").is_none() => create_now = true,
            _ => {} // Manual: only requests start and stop it.
        }
        if create_now {
            if let Some(retry) = parse_time(status.pointer("/startFailure/retryAfterTimestamp")) {
                if now < retry {
                    create_now = false;
                    waiting_backoff = true;
                    let wait = (retry - now).to_std().unwrap_or_default();
                    plan.requeue_after = Some(wait + Duration::from_millis(100));
                }
            }
        }
    }
    if create_now && vmi_gone_or_going(vmi) && vmi.is_none() {
        let mut new = vmi_from_template(vm);
        if start_paused {
            new["spec"]["startStrategy"] = json!("Paused");
        }
        plan.create_vmi = Some(new);
    }

    // A VMI that has run long enough clears the crash-loop record.
    if let Some(v) = vmi.filter(|v| phase(v) == st::RUNNING) {
        match st::phase_since(v, st::RUNNING) {
            Some(since) if (now - since).to_std().unwrap_or_default() >= STABLE_RUN => {
                if let Some(map) = status.as_object_mut() {
                    map.remove("startFailure");
                }
            }
            Some(since) if status.get("startFailure").is_some() => {
                let left = STABLE_RUN.saturating_sub((now - since).to_std().unwrap_or_default());
                plan.requeue_after = Some(plan.requeue_after.map_or(left, |r| r.min(left)));
            }
            _ => {}
        }
    }

    if requests.is_empty() {
        if let Some(map) = status.as_object_mut() {
            map.remove("stateChangeRequests");
        }
    } else {
        status["stateChangeRequests"] = json!(requests);
    }
    let effective_vmi = if plan.delete_vmi.is_some() { None } else { vmi };
    let wants_run = plan.create_vmi.is_some() || (!requests.is_empty() && plan.delete_vmi.is_none());
    let printable = printable_status(vm, vmi, plan.delete_vmi.is_some(), wants_run, waiting_backoff);
    status["printableStatus"] = json!(printable);
    status["runStrategy"] = json!(strategy);
    let created = effective_vmi.is_some() || plan.create_vmi.is_some();
    let ready = effective_vmi.is_some_and(|v| condition_true(v, "Ready"));
    status["created"] = json!(created);
    status["ready"] = json!(ready);
    if let Some(map) = status.as_object_mut() {
        if !created {
            map.remove("created");
        }
        if !ready {
            map.remove("ready");
        }
    }
    if let Some(generation) = vm.pointer("/metadata/generation") {
        status["desiredGeneration"] = generation.clone();
        status["observedGeneration"] = generation.clone();
    }
    let mut holder = json!({"status": status});
    let now_s = rfc3339(now);
    match effective_vmi {
        Some(_) if ready => st::set_condition(&mut holder, "Ready", true, "", "", &now_s),
        Some(v) => {
            let reason = st::condition(v, "Ready")
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                .unwrap_or("VMINotReady");
            st::set_condition(&mut holder, "Ready", false, reason, "", &now_s)
        }
        None => st::set_condition(&mut holder, "Ready", false, "VMINotExists", "VMI does not exist", &now_s),
    }
    match effective_vmi.and_then(|v| st::condition(v, "Paused")).filter(|c| c["status"] == "True") {
        Some(_) => st::set_condition(&mut holder, "Paused", true, "PausedByUser", "VMI was paused by user", &now_s),
        None => st::remove_condition(&mut holder, "Paused"),
    }
    match effective_vmi.and_then(|v| st::condition(v, "PodScheduled")).filter(|c| c["status"] == "False") {
        Some(c) => {
            let message = c.get("message").and_then(Value::as_str).unwrap_or("");
            st::set_condition(&mut holder, "Failure", true, "FailedCreate", message, &now_s)
        }
        None => st::remove_condition(&mut holder, "Failure"),
    }
    plan.status = holder["status"].take();
    plan
}

fn is_start(request: Option<&Value>) -> bool {
    request.and_then(|r| r.get("action")).and_then(Value::as_str) == Some("Start")
}

fn record_failure(status: &mut Value, vmi: &Value, now: DateTime<Utc>) {
    let uid = meta::uid(vmi);
    if status.pointer("/startFailure/lastFailedVMIUID").and_then(Value::as_str) == Some(uid) {
        return;
    }
    let ran_long = match (st::phase_since(vmi, st::RUNNING), st::phase_since(vmi, st::FAILED)) {
        (Some(up), Some(down)) => (down - up).to_std().unwrap_or_default() >= STABLE_RUN,
        _ => false,
    };
    let count = if ran_long {
        1
    } else {
        status.pointer("/startFailure/consecutiveFailCount").and_then(Value::as_i64).unwrap_or(0) + 1
    };
    let retry = now + chrono::Duration::seconds(backoff_secs(count));
    status["startFailure"] = json!({
        "consecutiveFailCount": count,
        "lastFailedVMIUID": uid,
        "retryAfterTimestamp": rfc3339(retry),
    });
}

/// KubeVirt's printableStatus values, from the VM and what its VMI is doing.
fn printable_status(
    vm: &Value,
    vmi: Option<&Value>,
    deleting_vmi: bool,
    wants_run: bool,
    backoff: bool,
) -> &'static str {
    if meta::is_deleting(vm) {
        return "Terminating";
    }
    if backoff {
        return "CrashLoopBackOff";
    }
    let Some(v) = vmi else {
        return if wants_run { "Starting" } else { "Stopped" };
    };
    if meta::is_deleting(v) || deleting_vmi {
        return if is_final(phase(v)) && !wants_run { "Stopped" } else { "Stopping" };
    }
    match phase(v) {
        "" | st::PENDING | st::SCHEDULING => {
            let unschedulable = st::condition(v, "PodScheduled")
                .is_some_and(|c| c["status"] == "False" && c["reason"] == "Unschedulable");
            if unschedulable {
                "ErrorUnschedulable"
            } else {
                "Starting"
            }
        }
        st::SCHEDULED => {
            // The node holds a scheduled guest back for its images and volumes; say which.
            let waiting = st::condition(v, "Synchronized").filter(|c| c["status"] == "False");
            match waiting.and_then(|c| c.get("reason")).and_then(Value::as_str) {
                Some("ErrImagePull") => "ErrImagePull",
                Some("ImagePullBackOff") => "ImagePullBackOff",
                Some("ErrImageNeverPull") => "ErrImageNeverPull",
                Some("PVCNotBound") | Some("PVCNotFound") => "WaitingForVolumeBinding",
                Some("DataVolumeNotReady") => "Provisioning",
                _ => "Starting",
            }
        }
        st::RUNNING if condition_true(v, "Paused") => "Paused",
        st::RUNNING => "Running",
        st::SUCCEEDED | st::FAILED => "Stopped",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(extra: Value, status: Value) -> Value {
        let mut spec = json!({"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"domain": {}}}});
        if let (Some(m), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            m.extend(extra.clone());
        }
        json!({"metadata": {"name": "v", "namespace": "d", "uid": "vm1", "generation": 2}, "spec": spec, "status": status})
    }

    fn vmi(phase: &str, uid: &str) -> Value {
        json!({"metadata": {"name": "v", "uid": uid, "ownerReferences": [{"uid": "vm1", "kind": "VirtualMachine"}]},
               "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if phase == "Running" {"True"} else {"False"}}]}})
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn run_strategies_decide_whether_a_vmi_exists() {
        // (strategy, VMI phase or none) → (create, delete, printableStatus)
        let table: &[(&str, Option<&str>, bool, bool, &str)] = &[
            ("Always", None, true, false, "Starting"),
            ("Always", Some("Running"), false, false, "Running"),
            ("Always", Some("Succeeded"), false, true, "Stopped"),
            ("Always", Some("Failed"), false, true, "Stopped"),
            ("Halted", None, false, false, "Stopped"),
            ("Halted", Some("Running"), false, true, "Stopping"),
            ("Manual", None, false, false, "Stopped"),
            ("Manual", Some("Running"), false, false, "Running"),
            ("Manual", Some("Succeeded"), false, false, "Stopped"),
            ("RerunOnFailure", None, true, false, "Starting"),
            ("RerunOnFailure", Some("Succeeded"), false, false, "Stopped"),
            ("RerunOnFailure", Some("Failed"), false, true, "Stopped"),
            ("Once", None, true, false, "Starting"),
            ("Once", Some("Failed"), false, false, "Stopped"),
            ("Always", Some("Scheduled"), false, false, "Starting"),
        ];
        for (strategy, phase, create, delete, printable) in table {
            let v = vm(json!({"runStrategy": strategy}), json!({}));
            let instance = phase.map(|p| vmi(p, "i1"));
            let plan = reconcile(&v, instance.as_ref(), now());
            assert_eq!(plan.create_vmi.is_some(), *create, "{strategy} {phase:?} create");
            assert_eq!(plan.delete_vmi.is_some(), *delete, "{strategy} {phase:?} delete");
            assert_eq!(plan.status["printableStatus"], *printable, "{strategy} {phase:?}");
        }
        assert_eq!(run_strategy(&json!({"spec": {"running": true}})), "Always");
        assert_eq!(run_strategy(&json!({"spec": {"running": false}})), "Halted");
    }

    #[test]
    fn the_new_vmi_comes_from_the_template_and_is_owned() {
        let plan = reconcile(&vm(json!({"runStrategy": "Always"}), json!({})), None, now());
        let new = plan.create_vmi.unwrap();
        assert_eq!(new["metadata"]["name"], "v");
        assert_eq!(new["metadata"]["labels"]["a"], "b");
        assert_eq!(new["metadata"]["ownerReferences"][0]["uid"], "vm1");
        assert_eq!(new["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(plan.status["observedGeneration"], 2);
    }

    #[test]
    fn state_change_requests_stop_then_start() {
        let requests = json!({"stateChangeRequests": [{"action": "Stop", "uid": "i1"}, {"action": "Start"}]});
        let v = vm(json!({"runStrategy": "Manual"}), requests);
        let plan = reconcile(&v, Some(&vmi("Running", "i1")), now());
        assert_eq!(plan.delete_vmi.as_deref(), Some("i1"));
        assert_eq!(plan.status["stateChangeRequests"].as_array().unwrap().len(), 2, "kept until the VMI is gone");
        let v = vm(json!({"runStrategy": "Manual"}), plan.status.clone());
        let plan = reconcile(&v, None, now());
        assert!(plan.create_vmi.is_some(), "Stop done (VMI gone), Start creates");
        assert!(plan.status.get("stateChangeRequests").is_none());
    }

    #[test]
    fn a_start_request_may_ask_for_a_paused_guest() {
        let requests = json!({"stateChangeRequests": [{"action": "Start", "data": {"startPaused": "true"}}]});
        let plan = reconcile(&vm(json!({"runStrategy": "Always"}), requests), None, now());
        assert_eq!(plan.create_vmi.unwrap()["spec"]["startStrategy"], "Paused");
    }

    #[test]
    fn a_paused_start_of_a_halted_vm_turns_the_strategy_first() {
        let requests = json!({"stateChangeRequests": [{"action": "Start", "data": {"startPaused": "true"}}]});
        let plan = reconcile(&vm(json!({"runStrategy": "Halted"}), requests.clone()), None, now());
        assert!(plan.run_always);
        assert!(plan.create_vmi.is_none(), "not before the strategy is Always");
        assert_eq!(plan.status["stateChangeRequests"], requests["stateChangeRequests"]);
        assert_eq!(plan.status["printableStatus"], "Starting");
        let plan = reconcile(&vm(json!({"runStrategy": "Always"}), requests), None, now());
        assert!(!plan.run_always);
        assert_eq!(plan.create_vmi.unwrap()["spec"]["startStrategy"], "Paused");
        // Once the request is done, Always keeps the VMI the request made.
        let done = reconcile(&vm(json!({"runStrategy": "Always"}), json!({})), Some(&vmi("Running", "i1")), now());
        assert!(done.delete_vmi.is_none() && !done.run_always);
    }

    #[test]
    fn failures_back_off_and_show_crash_loop() {
        let v = vm(json!({"runStrategy": "Always"}), json!({}));
        let plan = reconcile(&v, Some(&vmi("Failed", "i1")), now());
        assert_eq!(plan.status["startFailure"]["consecutiveFailCount"], 1);
        let v = vm(json!({"runStrategy": "Always"}), plan.status.clone());
        let plan = reconcile(&v, None, now());
        assert!(plan.create_vmi.is_none(), "waits out the backoff");
        assert_eq!(plan.status["printableStatus"], "CrashLoopBackOff");
        assert!(plan.requeue_after.is_some());
        let later = now() + chrono::Duration::seconds(6);
        let plan = reconcile(&v, None, later);
        assert!(plan.create_vmi.is_some(), "then tries again");
        assert_eq!(backoff_secs(1), 5);
        assert_eq!(backoff_secs(3), 20);
        assert_eq!(backoff_secs(20), 300);
    }

    #[test]
    fn a_vmi_someone_else_owns_is_left_alone_and_deleting_vms_terminate() {
        let v = vm(json!({"runStrategy": "Halted"}), json!({}));
        let mut foreign = vmi("Running", "x");
        foreign["metadata"]["ownerReferences"] = json!([]);
        assert!(reconcile(&v, Some(&foreign), now()).delete_vmi.is_none());
        let mut deleting = vm(json!({"runStrategy": "Always"}), json!({}));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let plan = reconcile(&deleting, Some(&vmi("Running", "i1")), now());
        assert_eq!(plan.delete_vmi.as_deref(), Some("i1"));
        assert_eq!(plan.status["printableStatus"], "Terminating");
    }
}
