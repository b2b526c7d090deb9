//! The VM controller's instancetype work: freeze the instancetype and preference a VM names in
//! ControllerRevisions the first time it sees them (KubeVirt's `status.instancetypeRef` and
//! `status.preferenceRef`), and shape new VMIs from those frozen copies.

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::instancetype;
use crate::kinds;
use crate::meta;

#[derive(Debug, Default)]
pub struct Frozen {
    /// (status field, the ref to record, the frozen object's spec, or why it is missing)
    refs: Vec<(&'static str, Value, Result<Value, String>)>,
}

impl Frozen {
    pub fn write_refs(&self, status: &mut Value) {
        for (field, reference, _) in &self.refs {
            status[*field] = reference.clone();
        }
    }

    /// Whether every named instancetype and preference was found.
    pub fn shape_ready(&self) -> Result<(), String> {
        match self.refs.iter().find_map(|(_, _, r)| r.as_ref().err()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Applies the frozen instancetype and preference to a new VMI's spec.
    pub fn shape(&self, spec: &mut Value) {
        let get = |field: &str| self.refs.iter().find(|(f, _, _)| *f == field).and_then(|(_, _, r)| r.as_ref().ok());
        instancetype::apply(spec, get("instancetypeRef"), get("preferenceRef"));
    }
}

/// Finds (or makes) the revisions of what `vm` names.
pub async fn freeze(cluster: &dyn Cluster, vm: &Value) -> ApiResult<Frozen> {
    let mut frozen = Frozen::default();
    if meta::is_deleting(vm) {
        return Ok(frozen);
    }
    for named in instancetype::named(vm) {
        let mut revision = instancetype::frozen_revision(cluster, vm, &named).await?;
        if revision.is_none() {
            let Some(obj) = instancetype::current(cluster, vm, &named).await? else {
                let why = format!("{} {}", named.field, instancetype::not_found(&named));
                frozen.refs.push((named.status_field, json!({"kind": named.kind.kind, "name": named.name}), Err(why)));
                continue;
            };
            let rev = instancetype::revision_for(vm, &obj);
            let rev_name = meta::name(&rev).to_string();
            revision = match cluster.create(&kinds::CONTROLLER_REVISION, rev).await {
                Ok(created) => Some(created),
                Err(e) if e.code == 409 => {
                    cluster.get(&kinds::CONTROLLER_REVISION, meta::namespace(vm), &rev_name).await?
                }
                Err(e) => return Err(e),
            };
        }
        let Some(rev) = revision else { continue };
        let reference =
            json!({"kind": named.kind.kind, "name": named.name, "controllerRevisionRef": {"name": meta::name(&rev)}});
        let spec = rev.pointer("/data/spec").cloned().unwrap_or(json!({}));
        frozen.refs.push((named.status_field, reference, Ok(spec)));
    }
    Ok(frozen)
}
