//! instancetype.kubevirt.io: instancetypes (CPU and memory a VM gets) and preferences (defaults
//! for what a VM leaves open), applied to a VM's template as KubeVirt applies them, and frozen in
//! ControllerRevisions so a later edit of the instancetype does not change a VM already using it.

use serde_json::{json, Map, Value};

use crate::cluster::Cluster;
use crate::error::{ApiResult, Cause};
use crate::kinds::{self, ResourceKind};
use crate::meta;

/// The kind a matcher names; KubeVirt's default is the cluster-wide one.
pub fn instancetype_kind(matcher: &Value) -> &'static ResourceKind {
    match matcher.get("kind").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("virtualmachineinstancetype") => &kinds::INSTANCETYPE,
        _ => &kinds::CLUSTER_INSTANCETYPE,
    }
}

pub fn preference_kind(matcher: &Value) -> &'static ResourceKind {
    match matcher.get("kind").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
        Some("virtualmachinepreference") => &kinds::PREFERENCE,
        _ => &kinds::CLUSTER_PREFERENCE,
    }
}

/// An instancetype or preference a VM names.
pub struct Named<'a> {
    /// `instancetype` or `preference`: the spec field, and the word in messages.
    pub field: &'static str,
    /// `instancetypeRef` or `preferenceRef` in the VM's status.
    pub status_field: &'static str,
    pub matcher: &'a Value,
    pub name: String,
    pub kind: &'static ResourceKind,
}

/// The instancetype and preference `vm` names, in that order.
pub fn named(vm: &Value) -> Vec<Named<'_>> {
    [("instancetype", "instancetypeRef"), ("preference", "preferenceRef")]
        .into_iter()
        .filter_map(|(field, status_field)| {
            let matcher = vm.pointer(&format!("/spec/{field}")).filter(|m| m.is_object())?;
            let kind = if field == "instancetype" { instancetype_kind(matcher) } else { preference_kind(matcher) };
            let name = matcher.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            Some(Named { field, status_field, matcher, name, kind })
        })
        .collect()
}

/// The ControllerRevision the VM's status points at, if it still freezes the object named.
pub async fn frozen_revision(cluster: &dyn Cluster, vm: &Value, named: &Named<'_>) -> ApiResult<Option<Value>> {
    let pointer = format!("/status/{}/controllerRevisionRef/name", named.status_field);
    let Some(rev) = vm.pointer(&pointer).and_then(Value::as_str) else { return Ok(None) };
    Ok(cluster
        .get(&kinds::CONTROLLER_REVISION, meta::namespace(vm), rev)
        .await?
        .filter(|r| r.pointer("/data/metadata/name").and_then(Value::as_str) == Some(named.name.as_str())))
}

/// The instancetype or preference as it is now.
pub async fn current(cluster: &dyn Cluster, vm: &Value, named: &Named<'_>) -> ApiResult<Option<Value>> {
    let ns = if named.kind.namespaced { meta::namespace(vm) } else { "" };
    cluster.get(named.kind, ns, &named.name).await
}

/// `virtualmachineclusterinstancetypes.instancetype.kubevirt.io "x" not found`
pub fn not_found(named: &Named<'_>) -> String {
    format!("{}.{} \"{}\" not found", named.kind.plural, named.kind.group, named.name)
}

const CONFLICT: &str = "conflicts with selected instance type";

/// Fields of a VM's template that its instancetype provides: setting them too is refused.
pub fn conflicts(template_spec: &Value, instancetype_spec: &Value, prefix: &str) -> Vec<Cause> {
    let mut causes = vec![];
    let domain = template_spec.get("domain").unwrap_or(&Value::Null);
    let mut check = |path: &[&str], field: String| {
        if meta::at(domain, path).is_some_and(|v| !v.is_null()) {
            causes.push(Cause::invalid(field.clone(), format!("VM field {field} {CONFLICT}")));
        }
    };
    if instancetype_spec.get("cpu").is_some() {
        for f in ["sockets", "cores", "threads"] {
            check(&["cpu", f], format!("{prefix}.domain.cpu.{f}"));
        }
        for section in ["requests", "limits"] {
            check(&["resources", section, "cpu"], format!("{prefix}.domain.resources.{section}.cpu"));
        }
    }
    if instancetype_spec.get("memory").is_some() {
        check(&["memory", "guest"], format!("{prefix}.domain.memory.guest"));
        for section in ["requests", "limits"] {
            check(&["resources", section, "memory"], format!("{prefix}.domain.resources.{section}.memory"));
        }
    }
    causes
}

fn set_if_absent(target: &mut Value, path: &[&str], value: Value) {
    if meta::at(target, path).is_none_or(Value::is_null) {
        *meta::at_mut(target, path) = value;
    }
}

/// vCPUs laid out as the preference asks (KubeVirt's default: all of them as sockets).
fn topology(guest: u64, preference: Option<&Value>) -> (u64, u64, u64) {
    let preferred = preference
        .and_then(|p| p.pointer("/cpu/preferredCPUTopology"))
        .and_then(Value::as_str)
        .unwrap_or("sockets")
        .to_ascii_lowercase();
    match preferred.trim_start_matches("prefer") {
        "cores" => (1, guest, 1),
        "threads" => (1, 1, guest),
        _ => (guest, 1, 1),
    }
}

/// Applies an instancetype and a preference to a VMI spec (a VM's `spec.template.spec`).
pub fn apply(spec: &mut Value, instancetype: Option<&Value>, preference: Option<&Value>) {
    if let Some(it) = instancetype {
        if let Some(guest) = it.pointer("/cpu/guest").and_then(Value::as_u64) {
            let (sockets, cores, threads) = topology(guest, preference);
            let cpu = meta::at_mut(spec, &["domain", "cpu"]);
            cpu["sockets"] = json!(sockets);
            cpu["cores"] = json!(cores);
            cpu["threads"] = json!(threads);
            if let Some(model) = it.pointer("/cpu/model") {
                cpu["model"] = model.clone();
            }
        }
        if let Some(memory) = it.pointer("/memory/guest") {
            *meta::at_mut(spec, &["domain", "memory", "guest"]) = memory.clone();
        }
        if let Some(selector) = it.get("nodeSelector").and_then(Value::as_object) {
            let target = meta::at_mut(spec, &["nodeSelector"]);
            if let Some(map) = target.as_object_mut() {
                map.extend(selector.clone());
            }
        }
    }
    let Some(pref) = preference else { return };
    if let Some(machine) = pref.pointer("/machine/preferredMachineType") {
        set_if_absent(spec, &["domain", "machine", "type"], machine.clone());
    }
    if pref.pointer("/firmware/preferredUseEfi").and_then(Value::as_bool) == Some(true) {
        set_if_absent(spec, &["domain", "firmware", "bootloader"], json!({"efi": {}}));
    }
    let devices = pref.get("devices").cloned().unwrap_or(Value::Null);
    let disk_bus = devices.get("preferredDiskBus").cloned();
    let cdrom_bus = devices.get("preferredCdromBus").cloned();
    let lun_bus = devices.get("preferredLunBus").cloned();
    if let Some(disks) = meta::at_mut(spec, &["domain", "devices"]).get_mut("disks").and_then(Value::as_array_mut) {
        for disk in disks {
            for (device, bus) in [("disk", &disk_bus), ("cdrom", &cdrom_bus), ("lun", &lun_bus)] {
                if let (Some(target), Some(bus)) = (disk.get_mut(device), bus) {
                    set_if_absent(target, &["bus"], bus.clone());
                }
            }
        }
    }
    if let Some(model) = devices.get("preferredInterfaceModel") {
        if let Some(ifaces) =
            meta::at_mut(spec, &["domain", "devices"]).get_mut("interfaces").and_then(Value::as_array_mut)
        {
            for iface in ifaces {
                set_if_absent(iface, &["model"], model.clone());
            }
        }
    }
    for (pref_key, field) in [
        ("preferredAutoattachGraphicsDevice", "autoattachGraphicsDevice"),
        ("preferredAutoattachMemBalloon", "autoattachMemBalloon"),
        ("preferredAutoattachSerialConsole", "autoattachSerialConsole"),
        ("preferredAutoattachPodInterface", "autoattachPodInterface"),
    ] {
        if let Some(v) = devices.get(pref_key) {
            set_if_absent(spec, &["domain", "devices", field], v.clone());
        }
    }
}

/// The ControllerRevision that freezes `obj` (an instancetype or preference) for `vm`.
pub fn revision_for(vm: &Value, obj: &Value) -> Value {
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let name = format!(
        "{}-{}-{}-{generation}",
        meta::name(vm),
        meta::name(obj),
        &meta::uid(obj).chars().take(8).collect::<String>()
    );
    let mut data = Map::new();
    for key in ["apiVersion", "kind", "spec"] {
        if let Some(v) = obj.get(key) {
            data.insert(key.into(), v.clone());
        }
    }
    data.insert(
        "metadata".into(),
        json!({"name": meta::name(obj), "uid": meta::uid(obj), "generation": generation, "resourceVersion": obj.pointer("/metadata/resourceVersion")}),
    );
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": name,
            "namespace": meta::namespace(vm),
            "labels": {"instancetype.kubevirt.io/object-kind": obj.get("kind"), "instancetype.kubevirt.io/object-name": meta::name(obj)},
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": meta::name(vm),
                                 "uid": meta::uid(vm), "controller": true, "blockOwnerDeletion": true}],
        },
        "data": data,
        "revision": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instancetype_and_preference_shape_the_template() {
        let mut spec = json!({"domain": {"devices": {"disks": [{"name": "root", "disk": {}}], "interfaces": [{"name": "default"}]}}});
        let it = json!({"cpu": {"guest": 4}, "memory": {"guest": "2Gi"}});
        let pref = json!({"cpu": {"preferredCPUTopology": "cores"}, "devices": {"preferredDiskBus": "sata", "preferredInterfaceModel": "e1000e"}});
        apply(&mut spec, Some(&it), Some(&pref));
        assert_eq!(spec["domain"]["cpu"], json!({"sockets": 1, "cores": 4, "threads": 1}));
        assert_eq!(spec["domain"]["memory"]["guest"], "2Gi");
        assert_eq!(spec["domain"]["devices"]["disks"][0]["disk"]["bus"], "sata");
        assert_eq!(spec["domain"]["devices"]["interfaces"][0]["model"], "e1000e");
        let mut plain = json!({"domain": {}});
        apply(&mut plain, Some(&it), None);
        assert_eq!(plain["domain"]["cpu"]["sockets"], 4, "sockets by default");
    }

    #[test]
    fn fields_the_instancetype_owns_conflict() {
        let it = json!({"cpu": {"guest": 2}, "memory": {"guest": "1Gi"}});
        let spec = json!({"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "1Gi"}}}});
        let fields: Vec<String> = conflicts(&spec, &it, "spec.template.spec").into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec!["spec.template.spec.domain.cpu.cores", "spec.template.spec.domain.resources.requests.memory"]
        );
        assert!(conflicts(&json!({"domain": {}}), &it, "p").is_empty());
    }
}
