//! The VM controller's instancetype work: freeze the instancetype and preference a VM names in
//! ControllerRevisions the first time it sees them (KubeVirt's `status.instancetypeRef` and
//! `status.preferenceRef`), and shape new VMIs from those frozen copies.

use serde_json::{json, Value};

use crate::error::ApiResult;
use crate::instancetype::{self, instancetype_kind, preference_kind};
use crate::kinds;
use crate::meta;
use crate::store::Store;

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
pub async fn freeze(store: &Store, vm: &Value) -> ApiResult<Frozen> {
    let mut frozen = Frozen::default();
    if meta::is_deleting(vm) {
        return Ok(frozen);
    }
    for (field, status_field) in [("instancetype", "instancetypeRef"), ("preference", "preferenceRef")] {
        let Some(matcher) = vm.pointer(&format!("/spec/{field}")).filter(|m| m.is_object()) else { continue };
        let name = matcher.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let kind = if field == "instancetype" { instancetype_kind(matcher) } else { preference_kind(matcher) };
        let existing_rev = vm
            .pointer(&format!("/status/{status_field}/controllerRevisionRef/name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut revision = None;
        if let Some(rev) = &existing_rev {
            revision = store
                .get(&kinds::CONTROLLER_REVISION, meta::namespace(vm), rev)
                .await?
                .filter(|r| r.pointer("/data/metadata/name").and_then(Value::as_str) == Some(name.as_str()));
        }
        if revision.is_none() {
            let ns = if kind.namespaced { meta::namespace(vm) } else { "" };
            match store.get(kind, ns, &name).await? {
                Some(obj) => {
                    let rev = instancetype::revision_for(vm, &obj);
                    let rev_name = meta::name(&rev).to_string();
                    match store.create(&kinds::CONTROLLER_REVISION, rev.clone(), false).await {
                        Ok(created) => revision = Some(created),
                        Err(e) if e.code == 409 => {
                            revision = store.get(&kinds::CONTROLLER_REVISION, meta::namespace(vm), &rev_name).await?
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let why = format!("{field} {}.{} \"{name}\" not found", kind.plural, kind.group);
                    frozen.refs.push((status_field, json!({"kind": kind.kind, "name": name}), Err(why)));
                    continue;
                }
            }
        }
        let Some(rev) = revision else { continue };
        let reference = json!({"kind": kind.kind, "name": name, "controllerRevisionRef": {"name": meta::name(&rev)}});
        let spec = rev.pointer("/data/spec").cloned().unwrap_or(json!({}));
        frozen.refs.push((status_field, reference, Ok(spec)));
    }
    Ok(frozen)
}
