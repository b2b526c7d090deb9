//! Admission, as virt-api and the apiserver do it: defaults first, then validation. Pure
//! functions over the object; whatever they need from the store (presets) is passed in.

mod core;
mod spec;
mod vm;

use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds::{self, ResourceKind};
use crate::meta;
use serde_json::Value;

pub use spec::apply_presets;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

/// What admission may look at besides the object.
#[derive(Debug, Default)]
pub struct Context<'a> {
    /// The stored object, on update.
    pub old: Option<&'a Value>,
    /// VirtualMachineInstancePresets of the object's namespace (VMI create only).
    pub presets: &'a [Value],
}

/// Default and validate `obj` for `op`. On failure, a 422 with one cause per problem.
pub fn admit(kind: &ResourceKind, op: Operation, obj: &mut Value, ctx: &Context) -> ApiResult<()> {
    let mut causes = vec![];
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        vm::mutate_vm(op, obj, ctx.old);
        vm::validate_vm(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        if op == Operation::Create {
            let spec = meta::at_mut(obj, &["spec"]);
            spec::mutate_vmi_spec(spec);
            if let Err(mut c) = apply_presets(obj, ctx.presets) {
                causes.append(&mut c);
            }
        }
        spec::validate_vmi_spec(meta::at(obj, &["spec"]).unwrap_or(&Value::Null), "spec", &mut causes);
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET) {
        vm::validate_replica_set(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::SECRET) {
        core::mutate_secret(obj);
        core::validate_secret(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::CONFIG_MAP) {
        core::validate_config_map(obj, &mut causes);
    }
    validate_metadata(kind, obj, op, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind.group, kind.kind, meta::name(obj), causes))
    }
}

fn validate_metadata(kind: &ResourceKind, obj: &Value, op: Operation, causes: &mut Vec<Cause>) {
    let name = meta::name(obj);
    let generate = meta::meta_str(obj, "generateName").unwrap_or("");
    if name.is_empty() && !(op == Operation::Create && !generate.is_empty()) {
        causes.push(Cause::required("metadata.name", "name or generateName is required"));
    } else if !name.is_empty() {
        let errs = if std::ptr::eq(kind, &kinds::NAMESPACE) {
            meta::dns1123_label_errors(name)
        } else {
            meta::dns1123_subdomain_errors(name)
        };
        for e in errs {
            causes.push(Cause::invalid("metadata.name", format!("Invalid value: \"{name}\": {e}")));
        }
    }
    for (k, v) in meta::labels(obj) {
        for e in meta::label_key_errors(&k) {
            causes.push(Cause::invalid("metadata.labels", format!("Invalid value: \"{k}\": {e}")));
        }
        match v.as_str() {
            Some(s) => {
                for e in meta::label_value_errors(s) {
                    causes.push(Cause::invalid(format!("metadata.labels.{k}"), format!("Invalid value: \"{s}\": {e}")));
                }
            }
            None => causes.push(Cause::invalid(format!("metadata.labels.{k}"), "label values must be strings")),
        }
    }
    let annotations = meta::string_map(obj, "annotations");
    let mut total = 0;
    for (k, v) in &annotations {
        for e in meta::label_key_errors(k) {
            causes.push(Cause::invalid("metadata.annotations", format!("Invalid value: \"{k}\": {e}")));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > 256 * 1024 {
        causes.push(Cause::invalid("metadata.annotations", "Too long: must have at most 262144 bytes"));
    }
}

#[cfg(test)]
mod tests;
