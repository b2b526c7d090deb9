//! VirtualMachine and VirtualMachineInstanceReplicaSet admission.

use super::spec::validate_vmi_spec;
use super::Operation;
use crate::error::Cause;
use crate::meta;
use crate::selector::LabelSelector;
use serde_json::{json, Value};

/// What virt-api's VM mutator sets: the machine type, and a firmware UUID that stays with the VM.
pub fn mutate_vm(op: Operation, vm: &mut Value, old: Option<&Value>) {
    let domain = meta::at_mut(vm, &["spec", "template", "spec", "domain"]);
    if meta::at(domain, &["machine", "type"]).and_then(Value::as_str).is_none_or(str::is_empty) {
        *meta::at_mut(domain, &["machine"]) = json!({"type": "q35"});
    }
    let has_uuid = meta::at(domain, &["firmware", "uuid"]).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    if !has_uuid {
        let kept = old.and_then(|o| meta::at(o, &["spec", "template", "spec", "domain", "firmware", "uuid"])).cloned();
        let uuid = match (op, kept) {
            (Operation::Update, Some(u)) => u,
            _ => Value::String(uuid::Uuid::new_v4().to_string()),
        };
        *meta::at_mut(domain, &["firmware", "uuid"]) = uuid;
    }
}

const RUN_STRATEGIES: &[&str] = &["Always", "RerunOnFailure", "Manual", "Halted", "Once", "WaitAsReceiver"];

pub fn validate_vm(vm: &Value, ctx: &super::Context, causes: &mut Vec<Cause>) {
    let spec = meta::at(vm, &["spec"]).unwrap_or(&Value::Null);
    let running = spec.get("running").filter(|v| !v.is_null());
    let strategy = spec.get("runStrategy").filter(|v| !v.is_null());
    if running.is_some() && strategy.is_some() {
        causes.push(Cause::invalid("spec.running", "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead"));
    }
    if let Some(s) = strategy.and_then(Value::as_str) {
        if !RUN_STRATEGIES.contains(&s) {
            causes.push(Cause::not_supported(
                "spec.runStrategy",
                format!("Unsupported value: \"{s}\": supported values: \"{}\"", RUN_STRATEGIES.join("\", \"")),
            ));
        }
    }
    let mut lookup = |found: &Option<Result<Value, String>>, field: &str| match found {
        Some(Ok(obj)) => obj.get("spec").cloned(),
        Some(Err(message)) => {
            causes.push(Cause::invalid(format!("spec.{field}.name"), message.clone()));
            None
        }
        None => None,
    };
    let instancetype = lookup(&ctx.instancetype, "instancetype");
    let preference = lookup(&ctx.preference, "preference");
    match meta::at(vm, &["spec", "template", "spec"]) {
        Some(t) => {
            if let Some(it) = &instancetype {
                causes.extend(crate::instancetype::conflicts(t, it, "spec.template.spec"));
            }
            // The template is checked as the VMI it will become: with what the instancetype gives.
            let mut shaped = t.clone();
            crate::instancetype::apply(&mut shaped, instancetype.as_ref(), preference.as_ref());
            validate_vmi_spec(&shaped, "spec.template.spec", causes)
        }
        None => {
            causes.push(Cause::required("spec.template.spec", "Required value: missing virtual machine template spec"))
        }
    }
}

pub fn validate_replica_set(rs: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = meta::at(rs, &["spec", "replicas"]).and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid(
                "spec.replicas",
                format!("Invalid value: {r}: must be greater than or equal to 0"),
            ));
        }
    }
    let labels = meta::at(rs, &["spec", "template", "metadata", "labels"])
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    match meta::at(rs, &["spec", "selector"]).map(LabelSelector::from_object) {
        None => causes.push(Cause::required("spec.selector", "Required value")),
        Some(Err(e)) => causes.push(Cause::invalid("spec.selector", e.to_string())),
        Some(Ok(sel)) if sel.is_empty() => {
            causes.push(Cause::invalid("spec.selector", "Invalid value: empty selector is invalid for deployment"))
        }
        Some(Ok(sel)) if !sel.matches(&labels) => {
            causes.push(Cause::invalid("spec.selector", "selector does not match labels in template"))
        }
        Some(Ok(_)) => {}
    }
    match meta::at(rs, &["spec", "template", "spec"]) {
        Some(t) => validate_vmi_spec(t, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec", "Required value")),
    }
}
