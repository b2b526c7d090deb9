//! Admission, as virt-api and the apiserver do it: defaults first, then validation. Pure
//! functions over the object; whatever they need from the store (presets) is passed in.

mod core;
mod migration;
mod spec;
mod storage;
mod vm;

use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds::{self, ResourceKind};
use crate::meta;
use serde_json::Value;

pub use spec::{apply_presets, MAX_GRACE_PERIOD_SECONDS, MAX_VCPUS};

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
    /// A VM's instancetype and preference, as `lookup_instancetypes` found them (an Err is
    /// the message for a missing one); `None` when the VM names none.
    pub instancetype: Option<Result<Value, String>>,
    pub preference: Option<Result<Value, String>>,
    /// What of the host the admin allows; `None` allows nothing (hostDisk refused).
    pub host: Option<&'a crate::host_access::HostAccess>,
}

/// The custom kinds admission has rules of its own for (beyond names and labels, which every
/// apiserver checks): what a cluster's admission webhooks are registered for.
pub fn admits(kind: &ResourceKind) -> bool {
    [
        &kinds::VIRTUAL_MACHINE,
        &kinds::VIRTUAL_MACHINE_INSTANCE,
        &kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET,
        &kinds::DATA_VOLUME,
        &kinds::DATA_SOURCE,
        &kinds::NETWORK_ATTACHMENT_DEFINITION,
        &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION,
    ]
    .iter()
    .any(|k| std::ptr::eq(*k, kind))
}

/// Default and validate `obj` for `op`. On failure, a 422 with one cause per problem.
pub fn admit(kind: &ResourceKind, op: Operation, obj: &mut Value, ctx: &Context) -> ApiResult<()> {
    let mut causes = vec![];
    if op == Operation::Update {
        if let Some(old) = ctx.old {
            keep_assigned_macs(kind, obj, old);
        }
    }
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        vm::mutate_vm(op, obj, ctx.old);
        vm::validate_vm(obj, ctx, &mut causes);
        let template = meta::at(obj, &["spec", "template", "spec"]).unwrap_or(&Value::Null);
        spec::validate_host_and_bounds(template, "spec.template.spec", ctx.host, &mut causes);
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        if op == Operation::Create {
            let spec = meta::at_mut(obj, &["spec"]);
            spec::mutate_vmi_spec(spec);
            if let Err(mut c) = apply_presets(obj, ctx.presets) {
                causes.append(&mut c);
            }
            // Held until the node agent has removed its domain (or no node ever took it).
            let mut finalizers = meta::finalizers(obj);
            if !finalizers.iter().any(|f| f == crate::controllers::VMI_FINALIZER) {
                finalizers.push(crate::controllers::VMI_FINALIZER.to_string());
                meta::set_finalizers(obj, &finalizers);
            }
        }
        let spec = meta::at(obj, &["spec"]).unwrap_or(&Value::Null);
        spec::validate_vmi_spec(spec, "spec", &mut causes);
        spec::validate_host_and_bounds(spec, "spec", ctx.host, &mut causes);
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET) {
        vm::validate_replica_set(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::SECRET) {
        core::mutate_secret(obj);
        core::validate_secret(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::CONFIG_MAP) {
        core::validate_config_map(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME_CLAIM) {
        storage::admit_pvc(op, obj, ctx.old, &mut causes);
    } else if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME) {
        storage::admit_pv(op, obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::DATA_VOLUME) {
        storage::admit_datavolume(op, obj, ctx.old, &mut causes);
    } else if std::ptr::eq(kind, &kinds::STORAGE_CLASS) {
        storage::default_storage_class(obj);
        storage::admit_storage_class(op, obj, ctx.old, &mut causes);
    } else if std::ptr::eq(kind, &kinds::SERVICE) {
        core::admit_service(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::DATA_SOURCE) {
        storage::admit_data_source(obj, &mut causes);
    } else if std::ptr::eq(kind, &kinds::NETWORK_ATTACHMENT_DEFINITION) {
        validate_nad_host_access(obj, ctx.host, &mut causes);
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION) {
        migration::validate(op, obj, ctx.old, &mut causes);
    }
    validate_metadata(kind, obj, op, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(kind.group, kind.kind, meta::name(obj), causes))
    }
}

/// What is accepted but worth telling the client (sent back as `Warning` headers).
/// A NAD whose configuration the node understands must name only what the admin allows; one it
/// cannot read is stored with a warning, as Multus' CRD stores it.
fn validate_nad_host_access(obj: &Value, host: Option<&crate::host_access::HostAccess>, causes: &mut Vec<Cause>) {
    if let Ok(network) = crate::network::nad::network_of(obj) {
        if let Err(why) = crate::network::nad::allowed_by(&network, host.unwrap_or(&crate::host_access::NONE)) {
            causes.push(Cause::forbidden("spec.config", format!("Forbidden: {why}")));
        }
    }
}

pub fn warnings(kind: &ResourceKind, obj: &Value) -> Vec<String> {
    if std::ptr::eq(kind, &kinds::NETWORK_ATTACHMENT_DEFINITION) {
        return core::network_attachment_warnings(obj);
    }
    vec![]
}

/// What admission's defaulting makes of an update of `kind`, as far as it needs no store: nulls
/// read as unset, the MACs the pool assigned, a VM's machine type and firmware UUID. Server-side
/// apply compares configurations after it, so what the server puts back is no change and takes
/// nothing from anyone.
pub fn default_update(kind: &ResourceKind, obj: &mut Value, old: &Value) {
    drop_nulls(obj);
    keep_assigned_macs(kind, obj, old);
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        vm::mutate_vm(Operation::Update, obj, Some(old));
    }
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, c| !c.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// An update that omits a MAC the pool assigned (kubectl's merge patches replace whole lists)
/// keeps the MAC its interface had, matched by name, as KubeMacPool does.
fn keep_assigned_macs(kind: &ResourceKind, obj: &mut Value, old: &Value) {
    let path: &[&str] = if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        &["spec", "template", "spec", "domain", "devices", "interfaces"]
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        &["spec", "domain", "devices", "interfaces"]
    } else {
        return;
    };
    let Some(old_ifaces) = meta::at(old, path).and_then(Value::as_array) else {
        return;
    };
    let mac_of = |name: &str| {
        old_ifaces
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|i| i.get("macAddress"))
            .filter(|m| m.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
    };
    if meta::at(obj, path).and_then(Value::as_array).is_none() {
        return;
    }
    if let Some(ifaces) = meta::at_mut(obj, path).as_array_mut() {
        for iface in ifaces {
            let missing = iface.get("macAddress").and_then(Value::as_str).is_none_or(str::is_empty);
            let name = iface.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            if let (true, Some(mac)) = (missing, mac_of(&name)) {
                iface["macAddress"] = mac;
            }
        }
    }
}

fn validate_metadata(kind: &ResourceKind, obj: &Value, op: Operation, causes: &mut Vec<Cause>) {
    let name = meta::name(obj);
    let generate = meta::meta_str(obj, "generateName").unwrap_or("");
    if name.is_empty() && (op != Operation::Create || generate.is_empty()) {
        causes.push(Cause::required("metadata.name", "name or generateName is required"));
    } else if name.is_empty() {
        // The store appends five characters of [a-z0-9]: the name it will make must be valid.
        let sample = format!("{generate}x2x2x");
        let errs = if std::ptr::eq(kind, &kinds::NAMESPACE) {
            meta::dns1123_label_errors(&sample)
        } else {
            meta::dns1123_subdomain_errors(&sample)
        };
        for e in errs {
            causes.push(Cause::invalid("metadata.generateName", format!("Invalid value: \"{generate}\": {e}")));
        }
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

/// What admission reads from the store on a create, before the pure rules: the DefaultStorageClass
/// admission plugin's default (a claim without `storageClassName` gets the default class; an
/// explicit empty string means "no class" and stays), and a migration's VMI (`migration`).
pub async fn defaults_from_store(store: &crate::store::Store, kind: &ResourceKind, obj: &mut Value) -> ApiResult<()> {
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION) {
        migration::validate_create(store, obj).await?;
    }
    if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME_CLAIM) && obj.pointer("/spec/storageClassName").is_none() {
        let classes = store.list_values(&kinds::STORAGE_CLASS, None).await?;
        if let Some(class) = crate::storage::provisioner::class_for(None, &classes) {
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("storageClassName".into(), Value::String(meta::name(class).to_string()));
            }
        }
    }
    Ok(())
}

/// Creates `obj` the way the API does after decoding: presets of its namespace, admission, then
/// the store. Controllers create their children through this, never around admission.
pub async fn create_admitted(
    store: &crate::store::Store,
    kind: &ResourceKind,
    mut obj: Value,
    dry_run: bool,
) -> ApiResult<Value> {
    let presets = presets_for(store, kind, meta::namespace(&obj)).await?;
    defaults_from_store(store, kind, &mut obj).await?;
    let (instancetype, preference) = lookup_instancetypes(store, kind, &obj).await?;
    let ctx = Context { old: None, presets: &presets, instancetype, preference, host: Some(store.host_access()) };
    admit(kind, Operation::Create, &mut obj, &ctx)?;
    store.create(kind, obj, dry_run).await
}

type Lookup = Option<Result<Value, String>>;

/// A VM's instancetype and preference: the revision it froze, else the current object.
pub async fn lookup_instancetypes(
    cluster: &dyn crate::cluster::Cluster,
    kind: &ResourceKind,
    vm: &Value,
) -> ApiResult<(Lookup, Lookup)> {
    if !std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        return Ok((None, None));
    }
    let mut out = [None, None];
    for named in crate::instancetype::named(vm) {
        let slot = usize::from(named.field == "preference");
        out[slot] = Some(match crate::instancetype::frozen_revision(cluster, vm, &named).await? {
            Some(revision) => Ok(revision["data"].clone()),
            None => match crate::instancetype::current(cluster, vm, &named).await? {
                Some(obj) => Ok(obj),
                None => Err(format!("Failure to find {}: {}", named.field, crate::instancetype::not_found(&named))),
            },
        });
    }
    let [instancetype, preference] = out;
    Ok((instancetype, preference))
}

/// The VirtualMachineInstancePresets a new VMI in `namespace` is matched against.
pub async fn presets_for(
    cluster: &dyn crate::cluster::Cluster,
    kind: &ResourceKind,
    namespace: &str,
) -> ApiResult<Vec<Value>> {
    if !std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        return Ok(vec![]);
    }
    cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE_PRESET, Some(namespace)).await
}
