//! VMI phases as an explicit transition table, and the condition and phase helpers every
//! controller uses to write KubeVirt-shaped status.

use serde_json::{json, Map, Value};

pub const PENDING: &str = "Pending";
pub const SCHEDULING: &str = "Scheduling";
pub const SCHEDULED: &str = "Scheduled";
pub const RUNNING: &str = "Running";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const UNKNOWN: &str = "Unknown";

pub const PHASES: &[&str] = &["", PENDING, SCHEDULING, SCHEDULED, RUNNING, SUCCEEDED, FAILED, UNKNOWN];

/// The VMI phase machine: forward only, and final phases are final.
pub fn transition_allowed(from: &str, to: &str) -> bool {
    if from == to {
        return true;
    }
    match from {
        "" => true,
        PENDING => matches!(to, SCHEDULING | SCHEDULED | FAILED | SUCCEEDED | UNKNOWN),
        SCHEDULING => matches!(to, SCHEDULED | FAILED | SUCCEEDED | UNKNOWN),
        SCHEDULED => matches!(to, RUNNING | FAILED | SUCCEEDED | UNKNOWN),
        RUNNING => matches!(to, SUCCEEDED | FAILED | UNKNOWN),
        UNKNOWN => matches!(to, RUNNING | SUCCEEDED | FAILED),
        _ => false,
    }
}

pub fn is_final(phase: &str) -> bool {
    phase == SUCCEEDED || phase == FAILED
}

pub fn phase(obj: &Value) -> &str {
    obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

pub fn node_name(obj: &Value) -> Option<&str> {
    obj.pointer("/status/nodeName").and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The object's status as a mutable map (created when absent).
pub fn status_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let status = crate::meta::at_mut(obj, &["status"]);
    if !status.is_object() {
        *status = json!({});
    }
    match status {
        Value::Object(map) => map,
        _ => unreachable!("replaced by an object just above"),
    }
}

/// Moves to `to` if the table allows it, recording the transition time once per phase.
pub fn set_phase(obj: &mut Value, to: &str, now: &str) -> bool {
    let from = phase(obj).to_string();
    if !transition_allowed(&from, to) {
        return false;
    }
    if from == to {
        return true;
    }
    let status = status_mut(obj);
    status.insert("phase".into(), json!(to));
    let stamps = status.entry("phaseTransitionTimestamps").or_insert_with(|| json!([]));
    if let Some(list) = stamps.as_array_mut() {
        list.push(json!({"phase": to, "phaseTransitionTimestamp": now}));
    }
    true
}

/// Scheduling, not yet placed: PodScheduled false with the scheduler's words, not Ready.
pub fn mark_unscheduled(obj: &mut Value, reason: &str, message: &str, now: &str) {
    set_phase(obj, SCHEDULING, now);
    set_condition(obj, "PodScheduled", false, reason, message, now);
    set_condition(obj, "Ready", false, "PodNotExists", "virt-launcher pod has not yet been scheduled", now);
}

/// Placed on `node`: Scheduled, PodScheduled true.
pub fn mark_scheduled(obj: &mut Value, node: &str, now: &str) {
    status_mut(obj).insert("nodeName".into(), json!(node));
    set_phase(obj, SCHEDULED, now);
    set_condition(obj, "PodScheduled", true, "", "", now);
}

pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

pub fn condition_true(obj: &Value, kind: &str) -> bool {
    condition(obj, kind).and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
}

/// Sets a condition; its lastTransitionTime changes only when its status does.
pub fn set_condition(obj: &mut Value, kind: &str, status: bool, reason: &str, message: &str, now: &str) {
    let state = if status { "True" } else { "False" };
    let s = status_mut(obj);
    let list = s.entry("conditions").or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let Some(list) = list.as_array_mut() else { return };
    let existing = list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(kind));
    let transition = match &existing {
        Some(c) if c.get("status").and_then(Value::as_str) == Some(state) => {
            c.get("lastTransitionTime").cloned().unwrap_or(json!(now))
        }
        _ => json!(now),
    };
    let mut cond = json!({"type": kind, "status": state, "lastProbeTime": null, "lastTransitionTime": transition});
    if !reason.is_empty() {
        cond["reason"] = json!(reason);
    }
    if !message.is_empty() {
        cond["message"] = json!(message);
    }
    match existing {
        Some(c) => *c = cond,
        None => list.push(cond),
    }
}

pub fn remove_condition(obj: &mut Value, kind: &str) {
    if let Some(list) = status_mut(obj).get_mut("conditions").and_then(Value::as_array_mut) {
        list.retain(|c| c.get("type").and_then(Value::as_str) != Some(kind));
    }
}

/// When the VMI entered `phase`, from its phaseTransitionTimestamps.
pub fn phase_since(obj: &Value, wanted: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    obj.pointer("/status/phaseTransitionTimestamps")?
        .as_array()?
        .iter()
        .rev()
        .find(|t| t.get("phase").and_then(Value::as_str) == Some(wanted))
        .and_then(|t| t.get("phaseTransitionTimestamp")?.as_str())
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_pair_follows_the_table() {
        // The whole table, spelled out: (from, allowed targets other than itself).
        let table: &[(&str, &[&str])] = &[
            ("", &[PENDING, SCHEDULING, SCHEDULED, RUNNING, SUCCEEDED, FAILED, UNKNOWN]),
            (PENDING, &[SCHEDULING, SCHEDULED, SUCCEEDED, FAILED, UNKNOWN]),
            (SCHEDULING, &[SCHEDULED, SUCCEEDED, FAILED, UNKNOWN]),
            (SCHEDULED, &[RUNNING, SUCCEEDED, FAILED, UNKNOWN]),
            (RUNNING, &[SUCCEEDED, FAILED, UNKNOWN]),
            (SUCCEEDED, &[]),
            (FAILED, &[]),
            (UNKNOWN, &[RUNNING, SUCCEEDED, FAILED]),
        ];
        for from in PHASES {
            let allowed = table.iter().find(|(f, _)| f == from).map(|(_, a)| *a).unwrap_or(&[]);
            for to in PHASES {
                let expected = from == to || allowed.contains(to);
                assert_eq!(transition_allowed(from, to), expected, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn conditions_keep_transition_time_while_status_holds() {
        let mut vmi = json!({});
        set_condition(&mut vmi, "Ready", true, "", "", "t1");
        set_condition(&mut vmi, "Ready", true, "", "", "t2");
        assert_eq!(condition(&vmi, "Ready").unwrap()["lastTransitionTime"], "t1");
        set_condition(&mut vmi, "Ready", false, "Down", "guest stopped", "t3");
        assert_eq!(condition(&vmi, "Ready").unwrap()["lastTransitionTime"], "t3");
        assert!(!condition_true(&vmi, "Ready"));
    }

    #[test]
    fn phases_are_stamped_once_and_final_is_final() {
        let mut vmi = json!({});
        assert!(set_phase(&mut vmi, PENDING, "t0"));
        assert!(set_phase(&mut vmi, SCHEDULED, "t1"));
        assert!(set_phase(&mut vmi, SCHEDULED, "t2"));
        assert!(set_phase(&mut vmi, FAILED, "t3"));
        assert!(!set_phase(&mut vmi, RUNNING, "t4"));
        assert_eq!(vmi["status"]["phaseTransitionTimestamps"].as_array().unwrap().len(), 3);
    }
}
