//! What nodes may write of a migrating VMI: the controller owns who migrates where (the
//! migration's identity in `status.migrationState`); the target only adds that it is ready;
//! the source hands the VMI over only to its migration's target, and only as completed.

use converge_engine::migration as mig;
use serde_json::Value;

/// The migrationState fields only the controller sets.
const CONTROLLER_OWNED: [&str; 7] = [
    "migrationUid",
    "sourceNode",
    "targetNode",
    "targetNodeAddress",
    "abortRequested",
    "migrationPolicyName",
    "migrationConfiguration",
];
/// What the target's agent adds.
const TARGET_OWNED: [&str; 2] = ["targetNodeDomainReadyTimestamp", "targetNodeDomainDetected"];
/// What the target's agent may add before the migration started: that it cannot take the guest.
const TARGET_REFUSAL: [&str; 3] = ["failed", "failureReason", "endTimestamp"];

fn node_of(vmi: &Value) -> Option<&str> {
    vmi.pointer("/status/nodeName").and_then(Value::as_str)
}

fn state(vmi: &Value) -> Option<&Value> {
    vmi.pointer("/status/migrationState")
}

fn field<'a>(vmi: &'a Value, f: &str) -> Option<&'a Value> {
    state(vmi).and_then(|s| s.get(f))
}

/// A node's write of a VMI's status: `Err` says why it is refused.
pub fn admit_status(node: &str, old: &Value, new: &Value) -> Result<(), &'static str> {
    if CONTROLLER_OWNED.iter().any(|f| field(old, f) != field(new, f)) {
        return Err("a migration's source, target and abort are the controller's to set");
    }
    let in_flight = mig::in_flight(old);
    if node_of(old) == Some(node) {
        if node_of(new) == Some(node) {
            return Ok(());
        }
        let handed_to_target = in_flight.is_some_and(|s| {
            mig::source_node(s) == Some(node) && mig::is_started(s) && mig::target_node(s) == node_of(new)
        }) && field(new, "completed").and_then(Value::as_bool) == Some(true);
        return match handed_to_target {
            true => Ok(()),
            false => Err("a node hands a VMI only to its migration's target, once the migration completed"),
        };
    }
    if in_flight.and_then(mig::target_node) != Some(node) {
        return Err("the VMI is not placed on this node");
    }
    let may_refuse = in_flight.is_some_and(|s| !mig::is_started(s));
    let without_target_fields = |vmi: &Value| {
        let mut v = vmi.get("status").cloned().unwrap_or_default();
        if let Some(s) = v.get_mut("migrationState").and_then(Value::as_object_mut) {
            for f in TARGET_OWNED {
                s.remove(f);
            }
            for f in TARGET_REFUSAL.iter().filter(|_| may_refuse) {
                s.remove(*f);
            }
        }
        v
    };
    match without_target_fields(old) == without_target_fields(new) {
        true => Ok(()),
        false => Err("a migration's target writes only its readiness"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(node: &str, state: Value) -> Value {
        json!({"status": {"nodeName": node, "phase": "Running", "migrationState": state}})
    }

    fn state(extra: Value) -> Value {
        let mut s =
            json!({"migrationUid": "m", "sourceNode": "a", "targetNode": "b", "targetNodeAddress": "127.0.0.1"});
        s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        s
    }

    #[test]
    fn the_target_only_says_it_is_ready() {
        let old = vmi("a", state(json!({})));
        let ready = vmi("a", state(json!({"targetNodeDomainReadyTimestamp": "t"})));
        assert_eq!(admit_status("b", &old, &ready), Ok(()));
        let mut grabbed = ready.clone();
        grabbed["status"]["nodeName"] = json!("b");
        assert!(admit_status("b", &old, &grabbed).is_err(), "the target takes nothing");
        let mut phase = ready.clone();
        phase["status"]["phase"] = json!("Failed");
        assert!(admit_status("b", &old, &phase).is_err());
        assert!(admit_status("c", &old, &ready).is_err(), "a bystander writes nothing");
        let refused = vmi("a", state(json!({"failed": true, "failureReason": "no image"})));
        assert_eq!(admit_status("b", &old, &refused), Ok(()), "a target may refuse before the start");
        let started = vmi("a", state(json!({"startTimestamp": "t"})));
        let failed = vmi("a", state(json!({"startTimestamp": "t", "failed": true})));
        assert!(admit_status("b", &started, &failed).is_err(), "but not fail a running migration");
        let done = vmi("a", state(json!({"completed": true})));
        assert!(admit_status("b", &done, &done).is_err(), "a finished migration's target is no one");
    }

    #[test]
    fn the_source_hands_over_only_to_its_target_once_completed() {
        let started = vmi("a", state(json!({"startTimestamp": "t"})));
        let handed = vmi("b", state(json!({"startTimestamp": "t", "completed": true})));
        assert_eq!(admit_status("a", &started, &handed), Ok(()));
        let elsewhere = vmi("c", state(json!({"startTimestamp": "t", "completed": true})));
        assert!(admit_status("a", &started, &elsewhere).is_err());
        let not_done = vmi("b", state(json!({"startTimestamp": "t"})));
        assert!(admit_status("a", &started, &not_done).is_err());
        let unstarted = vmi("a", state(json!({})));
        assert!(admit_status("a", &unstarted, &handed).is_err());
        let mut retargeted = started.clone();
        retargeted["status"]["migrationState"]["targetNode"] = json!("c");
        assert!(admit_status("a", &started, &retargeted).is_err(), "the target is the controller's");
        let mut unaborted = vmi("a", state(json!({"abortRequested": true})));
        let before = unaborted.clone();
        unaborted["status"]["migrationState"]["abortRequested"] = json!(false);
        assert!(admit_status("a", &before, &unaborted).is_err());
        let plain = json!({"status": {"nodeName": "a"}});
        assert_eq!(admit_status("a", &plain, &plain), Ok(()));
        assert!(admit_status("a", &plain, &json!({"status": {"nodeName": "b"}})).is_err());
    }
}
