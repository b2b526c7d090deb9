//! The VMI spec (a VMI's `spec`, a VM's `spec.template.spec`): virt-api's defaults, its
//! validation, and VirtualMachineInstancePresets.

use crate::error::Cause;
use crate::meta;
use crate::quantity;
use crate::selector::LabelSelector;
use serde_json::{json, Map, Value};
use std::collections::HashSet;

const DISK_DEVICES: &[(&str, &str)] = &[("disk", "virtio"), ("cdrom", "sata"), ("lun", "scsi")];
const DISK_BUSES: &[&str] = &["virtio", "sata", "scsi", "usb"];
const BINDINGS: &[&str] = &["bridge", "masquerade", "sriov", "slirp", "passt", "macvtap", "binding"];
const NETWORK_SOURCES: &[&str] = &["pod", "multus"];
const VOLUME_SOURCES: &[&str] = &[
    "containerDisk",
    "cloudInitNoCloud",
    "cloudInitConfigDrive",
    "persistentVolumeClaim",
    "dataVolume",
    "emptyDisk",
    "ephemeral",
    "hostDisk",
    "configMap",
    "secret",
    "serviceAccount",
    "sysprep",
    "downwardAPI",
    "downwardMetrics",
    "memoryDump",
];

/// A disk for each volume that has none (KubeVirt's `SetDefaultVolumeDisk`), disk buses where
/// unset, the guest's memory from the request where unset, and the pod network when a VMI names
/// no networks at all.
pub fn mutate_vmi_spec(spec: &mut Value) {
    let requested = meta::at(spec, &["domain", "resources", "requests", "memory"]).cloned();
    if let (Some(memory), None) = (requested, meta::at(spec, &["domain", "memory", "guest"])) {
        *meta::at_mut(spec, &["domain", "memory", "guest"]) = memory;
    }
    let volumes: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let devices = meta::at_mut(spec, &["domain", "devices"]);
    let used: HashSet<String> = ["disks", "filesystems"]
        .iter()
        .flat_map(|list| devices.get(*list).and_then(Value::as_array).into_iter().flatten())
        .filter_map(|d| d.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let missing: Vec<Value> = volumes.iter().filter(|v| !used.contains(*v)).map(|v| json!({"name": v})).collect();
    if !missing.is_empty() {
        match devices.get_mut("disks").and_then(Value::as_array_mut) {
            Some(disks) => disks.extend(missing),
            None => devices["disks"] = Value::Array(missing),
        }
    }
    if let Some(disks) = devices.get_mut("disks").and_then(Value::as_array_mut) {
        for disk in disks {
            let Some(d) = disk.as_object_mut() else {
                continue;
            };
            let present = DISK_DEVICES.iter().find(|(dev, _)| d.contains_key(*dev));
            let (dev, bus) = match present {
                Some(p) => *p,
                None if d.keys().any(|k| k == "filesystem") => continue,
                None => {
                    d.insert("disk".into(), json!({}));
                    DISK_DEVICES[0]
                }
            };
            if let Some(device) = d.get_mut(dev).and_then(Value::as_object_mut) {
                if device.get("bus").and_then(Value::as_str).is_none_or(str::is_empty) {
                    device.insert("bus".into(), json!(bus));
                }
            }
        }
    }
    let autoattach = devices.get("autoattachPodInterface").and_then(Value::as_bool) != Some(false);
    let has_interfaces = devices.get("interfaces").is_some_and(|v| !v.is_null());
    let has_networks = spec.get("networks").is_some_and(|v| !v.is_null());
    if autoattach && !has_interfaces && !has_networks {
        *meta::at_mut(spec, &["domain", "devices", "interfaces"]) = json!([{"name": "default", "bridge": {}}]);
        spec["networks"] = json!([{"name": "default", "pod": {}}]);
    }
}

fn names<'a>(list: Option<&'a Vec<Value>>, field: &str, causes: &mut Vec<Cause>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (i, item) in list.into_iter().flatten().enumerate() {
        let name = item.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::required(format!("{field}[{i}].name"), "Required value"));
        } else if !seen.insert(name) {
            causes.push(Cause::duplicate(format!("{field}[{i}].name"), format!("Duplicate value: \"{name}\"")));
        }
        out.push(name);
    }
    out
}

fn exactly_one(item: &Value, allowed: &[&str], field: &str, what: &str, causes: &mut Vec<Cause>) -> Option<String> {
    let present: Vec<&str> = allowed.iter().copied().filter(|k| item.get(*k).is_some_and(|v| !v.is_null())).collect();
    match present.as_slice() {
        [one] => Some(one.to_string()),
        [] => {
            causes.push(Cause::required(field, format!("Required value: one of {} must be set", what)));
            None
        }
        many => {
            causes.push(Cause::invalid(
                field,
                format!("Invalid value: only one {what} may be set, found {}", many.join(", ")),
            ));
            None
        }
    }
}

fn check_quantity(v: &Value, field: &str, causes: &mut Vec<Cause>) -> Option<f64> {
    match quantity::parse_value(v) {
        Ok(q) if q < 0.0 => {
            causes.push(Cause::invalid(field, format!("Invalid value: {v}: must be greater than or equal to 0")));
            None
        }
        Ok(q) => Some(q),
        Err(e) => {
            causes.push(Cause::invalid(field, format!("Invalid value: {v}: {e}")));
            None
        }
    }
}

/// Validate a VMI spec at `prefix` (`spec` or `spec.template.spec`).
pub fn validate_vmi_spec(spec: &Value, prefix: &str, causes: &mut Vec<Cause>) {
    // The node names the libvirt domain by it: a UUID, or nothing.
    if let Some(uuid) = meta::at(spec, &["domain", "firmware", "uuid"]).and_then(Value::as_str) {
        if !uuid.is_empty() && uuid::Uuid::parse_str(uuid).is_err() {
            causes.push(Cause::invalid(
                format!("{prefix}.domain.firmware.uuid"),
                format!("Invalid value: \"{uuid}\": must be a UUID"),
            ));
        }
    }
    let devices = meta::at(spec, &["domain", "devices"]).unwrap_or(&Value::Null);
    let disks = devices.get("disks").and_then(Value::as_array);
    let volumes = spec.get("volumes").and_then(Value::as_array);
    let dfield = format!("{prefix}.domain.devices.disks");
    let vfield = format!("{prefix}.volumes");
    let disk_names = names(disks, &dfield, causes);
    let volume_names = names(volumes, &vfield, causes);
    let mut boot_orders = HashSet::new();
    for (i, disk) in disks.into_iter().flatten().enumerate() {
        let name = disk_names[i];
        if !name.is_empty() && !volume_names.contains(&name) {
            causes.push(Cause::invalid(
                format!("{dfield}[{i}].name"),
                format!("Invalid value: \"{name}\": disk {name} does not have a matching volume"),
            ));
        }
        let devs: Vec<&str> = DISK_DEVICES.iter().map(|(d, _)| *d).filter(|d| disk.get(*d).is_some()).collect();
        if devs.len() > 1 {
            causes.push(Cause::invalid(
                format!("{dfield}[{i}]"),
                format!("Invalid value: only one of disk, cdrom or lun may be set, found {}", devs.join(", ")),
            ));
        }
        for dev in devs {
            if let Some(bus) = meta::at(disk, &[dev, "bus"]).and_then(Value::as_str) {
                if !DISK_BUSES.contains(&bus) {
                    causes.push(Cause::not_supported(
                        format!("{dfield}[{i}].{dev}.bus"),
                        format!("Unsupported value: \"{bus}\": supported values: \"{}\"", DISK_BUSES.join("\", \"")),
                    ));
                }
            }
        }
        if let Some(order) = disk.get("bootOrder").and_then(Value::as_i64) {
            if order < 1 {
                causes.push(Cause::invalid(
                    format!("{dfield}[{i}].bootOrder"),
                    format!("Invalid value: {order}: must be greater than 0"),
                ));
            } else if !boot_orders.insert(order) {
                causes.push(Cause::duplicate(
                    format!("{dfield}[{i}].bootOrder"),
                    format!("Duplicate value: {order}: boot order must be unique"),
                ));
            }
        }
    }
    // A volume without a disk is accepted: the VMI gets a default disk for it, as in KubeVirt.
    for (i, volume) in volumes.into_iter().flatten().enumerate() {
        exactly_one(volume, VOLUME_SOURCES, &format!("{vfield}[{i}]"), "volume source", causes);
    }
    validate_networks(spec, devices, prefix, causes);
    validate_resources(spec, prefix, causes);
}

/// hostDisk volumes only under the directories the admin allowed; integers the node does
/// arithmetic with, bounded: a grace period it can count down (an i64::MAX overflowed the
/// deadline) and a vCPU count whose product fits.
pub fn validate_host_and_bounds(
    spec: &Value,
    prefix: &str,
    host: Option<&crate::host_access::HostAccess>,
    causes: &mut Vec<Cause>,
) {
    let host = host.unwrap_or(&crate::host_access::NONE);
    for (i, volume) in spec.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let Some(disk) = volume.get("hostDisk") else { continue };
        let field = format!("{prefix}.volumes[{i}].hostDisk.path");
        let path = disk.get("path").and_then(Value::as_str).unwrap_or_default();
        if let Err(why) = host.host_disk_allowed(path) {
            causes.push(Cause::forbidden(field, format!("Forbidden: \"{path}\": {why}")));
        }
    }
    let cpu = meta::at(spec, &["domain", "cpu"]);
    let mut vcpus: u64 = 1;
    for part in ["sockets", "cores", "threads"] {
        match cpu.and_then(|c| c.get(part)).filter(|v| !v.is_null()) {
            None => {}
            Some(v) => match v.as_u64().filter(|n| (1..=u64::from(MAX_VCPUS)).contains(n)) {
                Some(n) => vcpus = vcpus.saturating_mul(n),
                None => causes.push(Cause::invalid(
                    format!("{prefix}.domain.cpu.{part}"),
                    format!("Invalid value: {v}: must be between 1 and {MAX_VCPUS}"),
                )),
            },
        }
    }
    if vcpus > u64::from(MAX_VCPUS) {
        causes.push(Cause::invalid(
            format!("{prefix}.domain.cpu"),
            format!("Invalid value: sockets × cores × threads is {vcpus}: at most {MAX_VCPUS}"),
        ));
    }
    if let Some(grace) = spec.get("terminationGracePeriodSeconds").filter(|g| !g.is_null()) {
        if !grace.as_i64().is_some_and(|g| (0..=MAX_GRACE_PERIOD_SECONDS).contains(&g)) {
            causes.push(Cause::invalid(
                format!("{prefix}.terminationGracePeriodSeconds"),
                format!("Invalid value: {grace}: must be between 0 and {MAX_GRACE_PERIOD_SECONDS}"),
            ));
        }
    }
}

/// The most vCPUs a guest may have (QEMU's q35 limit, 288, rounded down to a power of two).
pub const MAX_VCPUS: u32 = 256;

/// The longest a guest is given to shut down: a day (KubeVirt's default is 180 s).
pub const MAX_GRACE_PERIOD_SECONDS: i64 = 24 * 3600;

fn validate_networks(spec: &Value, devices: &Value, prefix: &str, causes: &mut Vec<Cause>) {
    let interfaces = devices.get("interfaces").and_then(Value::as_array);
    let networks = spec.get("networks").and_then(Value::as_array);
    let ifield = format!("{prefix}.domain.devices.interfaces");
    let nfield = format!("{prefix}.networks");
    let iface_names = names(interfaces, &ifield, causes);
    let net_names = names(networks, &nfield, causes);
    let mut net_kinds = Map::new();
    let mut pods = 0;
    for (i, net) in networks.into_iter().flatten().enumerate() {
        if let Some(source) =
            exactly_one(net, NETWORK_SOURCES, &format!("{nfield}[{i}]"), "network source (pod, multus)", causes)
        {
            let default_multus =
                source == "multus" && meta::at(net, &["multus", "default"]).and_then(Value::as_bool) == Some(true);
            if source == "pod" || default_multus {
                pods += 1;
            }
            net_kinds.insert(net_names[i].to_string(), json!(source));
        }
        if !net_names[i].is_empty() && !iface_names.contains(&net_names[i]) {
            causes.push(Cause::invalid(
                format!("{nfield}[{i}].name"),
                format!("Invalid value: \"{}\": network has no interface with the same name", net_names[i]),
            ));
        }
    }
    if pods > 1 {
        causes.push(Cause::invalid(
            nfield.clone(),
            "Invalid value: more than one interface is connected to a pod network",
        ));
    }
    for (i, iface) in interfaces.into_iter().flatten().enumerate() {
        let name = iface_names[i];
        if !name.is_empty() && !net_names.contains(&name) {
            causes.push(Cause::invalid(
                format!("{ifield}[{i}].name"),
                format!("Invalid value: \"{name}\": interface has no network with the same name"),
            ));
        }
        let binding = exactly_one(iface, BINDINGS, &format!("{ifield}[{i}]"), "interface binding method", causes);
        if binding.as_deref() == Some("masquerade") && net_kinds.get(name).and_then(Value::as_str) == Some("multus") {
            causes.push(Cause::invalid(
                format!("{ifield}[{i}].masquerade"),
                "Invalid value: masquerade binding is only allowed on the pod network",
            ));
        }
        if binding.as_deref() == Some("sriov") && net_kinds.get(name).and_then(Value::as_str) == Some("pod") {
            causes.push(Cause::invalid(
                format!("{ifield}[{i}].sriov"),
                "Invalid value: SR-IOV interfaces must be connected to a multus network",
            ));
        }
        validate_interface_options(iface, &format!("{ifield}[{i}]"), causes);
        if let Some(mac) = iface.get("macAddress").and_then(Value::as_str).filter(|m| !m.is_empty()) {
            if let Err(e) = crate::macpool::parse_mac(mac) {
                causes.push(Cause::invalid(
                    format!("{ifield}[{i}].macAddress"),
                    format!("Invalid value: \"{mac}\": {e}"),
                ));
            }
        }
    }
}

fn validate_interface_options(iface: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(model) = iface.get("model").and_then(Value::as_str) {
        if !crate::launcher::spec::NIC_MODELS.contains(&model) {
            let list =
                crate::launcher::spec::NIC_MODELS.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ");
            causes.push(Cause::not_supported(
                format!("{field}.model"),
                format!("Unsupported value: \"{model}\": supported values: {list}"),
            ));
        }
    }
    if let Some(pci) = iface.get("pciAddress").and_then(Value::as_str) {
        let ok = crate::network::pci::PciAddress::parse(pci).is_ok();
        if !ok {
            causes.push(Cause::invalid(
                format!("{field}.pciAddress"),
                format!("Invalid value: \"{pci}\": must be a PCI address (DDDD:BB:SS.F)"),
            ));
        }
    }
    for (j, port) in iface.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let pfield = format!("{field}.ports[{j}]");
        if !port.get("port").and_then(Value::as_u64).is_some_and(|p| (1..=65535).contains(&p)) {
            causes.push(Cause::invalid(format!("{pfield}.port"), "Invalid value: must be between 1 and 65535"));
        }
        if let Some(proto) = port.get("protocol").and_then(Value::as_str) {
            if !["TCP", "UDP"].contains(&proto.to_uppercase().as_str()) {
                causes.push(Cause::not_supported(
                    format!("{pfield}.protocol"),
                    format!("Unsupported value: \"{proto}\": supported values: \"TCP\", \"UDP\""),
                ));
            }
        }
    }
}

fn validate_resources(spec: &Value, prefix: &str, causes: &mut Vec<Cause>) {
    let domain = spec.get("domain").unwrap_or(&Value::Null);
    let mut memory = None;
    for section in ["requests", "limits"] {
        for (k, v) in meta::at(domain, &["resources", section]).and_then(Value::as_object).into_iter().flatten() {
            let q = check_quantity(v, &format!("{prefix}.domain.resources.{section}.{k}"), causes);
            if k == "memory" && section == "requests" {
                memory = memory.or(q);
            }
        }
    }
    if let Some(v) = meta::at(domain, &["memory", "guest"]) {
        memory = check_quantity(v, &format!("{prefix}.domain.memory.guest"), causes).or(memory);
    }
    let hugepages = meta::at(domain, &["memory", "hugepages", "pageSize"]);
    if let Some(v) = hugepages {
        check_quantity(v, &format!("{prefix}.domain.memory.hugepages.pageSize"), causes);
    }
    let has_memory_request = meta::at(domain, &["resources", "requests", "memory"]).is_some()
        || meta::at(domain, &["memory", "guest"]).is_some()
        || hugepages.is_some();
    if !has_memory_request && meta::at(domain, &["resources", "limits", "memory"]).is_none() {
        causes.push(Cause::required(format!("{prefix}.domain.resources.requests.memory"), "Required value: no memory requested, at least one of 'spec.domain.memory.guest', 'spec.domain.memory.hugepages.size' or 'spec.domain.resources.requests.memory' must be set"));
    } else if let Some(m) = memory {
        if m < 1024.0 * 1024.0 {
            causes.push(Cause::invalid(
                format!("{prefix}.domain.resources.requests.memory"),
                "Invalid value: must be greater than or equal to 1Mi",
            ));
        }
    }
    for field in ["cores", "sockets", "threads"] {
        if let Some(n) = meta::at(domain, &["cpu", field]).and_then(Value::as_i64) {
            if n < 1 {
                causes.push(Cause::invalid(
                    format!("{prefix}.domain.cpu.{field}"),
                    format!("Invalid value: {n}: must be greater than 0"),
                ));
            }
        }
    }
}

/// Fill a VMI's domain from the presets whose selector matches it. A preset that sets a field
/// the VMI (or an earlier preset) sets to something else is a conflict, and the VMI is refused.
pub fn apply_presets(vmi: &mut Value, presets: &[Value]) -> Result<Vec<String>, Vec<Cause>> {
    const EXCLUDE: &str = "virtualmachineinstancepresets.admission.kubevirt.io/exclude";
    if meta::string_map(vmi, "annotations").get(EXCLUDE).and_then(Value::as_str) == Some("true") {
        return Ok(vec![]);
    }
    let labels = meta::labels(vmi);
    let mut applied = vec![];
    let mut causes = vec![];
    for preset in presets {
        let matches = meta::at(preset, &["spec", "selector"])
            .map(LabelSelector::from_object)
            .is_some_and(|s| s.is_ok_and(|s| !s.is_empty() && s.matches(&labels)));
        if !matches {
            continue;
        }
        let name = meta::name(preset).to_string();
        if let Some(domain) = meta::at(preset, &["spec", "domain"]) {
            let target = meta::at_mut(vmi, &["spec", "domain"]);
            fill(target, domain, "spec.domain", &name, &mut causes);
        }
        applied.push(name);
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    if !applied.is_empty() {
        let annotations = meta::metadata_mut(vmi).entry("annotations").or_insert_with(|| json!({}));
        for name in &applied {
            annotations[format!("virtualmachinepreset.kubevirt.io/{name}")] = json!("kubevirt.io/v1");
        }
    }
    Ok(applied)
}

fn fill(target: &mut Value, source: &Value, path: &str, preset: &str, causes: &mut Vec<Cause>) {
    if target.is_object() && source.is_object() {
        if let (Some(t), Some(s)) = (target.as_object_mut(), source.as_object()) {
            for (k, v) in s {
                match t.get_mut(k) {
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                    Some(existing) => fill(existing, v, &format!("{path}.{k}"), preset, causes),
                }
            }
        }
    } else if target != source {
        causes.push(Cause::invalid(
            path,
            format!("Invalid value: VirtualMachineInstancePreset {preset} conflicts with the VMI at {path}"),
        ));
    }
}
