//! virt-api's webhook for VirtualMachineInstanceMigrations: a migration names a VMI of its
//! namespace (a valid name); its spec never changes; and at create the VMI must be running,
//! migratable and not migrating already (read from the store: `validate_create`).

use serde_json::Value;

use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds;
use crate::meta;
use crate::migration as mig;

pub fn validate(op: super::Operation, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match obj.pointer("/spec/vmiName").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.vmiName", "Required value")),
        Some(name) => {
            for e in meta::dns1123_subdomain_errors(name) {
                causes.push(Cause::invalid("spec.vmiName", e));
            }
        }
    }
    if obj.pointer("/spec/sendTo").is_some() || obj.pointer("/spec/receive").is_some() {
        causes.push(Cause::forbidden("spec", "cross-cluster migration (sendTo, receive) is not supported"));
    }
    if let (super::Operation::Update, Some(old)) = (op, old) {
        if old.get("spec") != obj.get("spec") {
            causes.push(Cause::forbidden("spec", "update of Migration object's spec is restricted"));
        }
    }
}

/// The VMI's side of a new migration, as virt-api checks it.
pub async fn validate_create(cluster: &dyn crate::cluster::Cluster, obj: &Value) -> ApiResult<()> {
    let Some(name) = obj.pointer("/spec/vmiName").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let refuse = |message: String| {
        let kind = &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION;
        ApiError::invalid(kind.group, kind.kind, meta::name(obj), vec![Cause::invalid("spec.vmiName", message)])
    };
    let Some(vmi) = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, meta::namespace(obj), name).await? else {
        return Err(refuse(format!("the VMI \"{}/{name}\" does not exist", meta::namespace(obj))));
    };
    let phase = crate::controllers::status::phase(&vmi);
    if phase != crate::controllers::status::RUNNING || meta::is_deleting(&vmi) {
        return Err(refuse(format!("Cannot migrate VMI in phase {phase}")));
    }
    if mig::in_flight(&vmi).is_some() {
        return Err(refuse(format!(
            "in-flight migration detected. Active migration job is currently migrating VMI {name}"
        )));
    }
    if let Some(c) = crate::controllers::status::condition(&vmi, "LiveMigratable").filter(|c| c["status"] != "True") {
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("NotMigratable");
        let message = c.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(refuse(format!("Cannot migrate VMI, Reason: {reason}, Message: {message}")));
    }
    Ok(())
}
