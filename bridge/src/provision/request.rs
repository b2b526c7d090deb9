//! `POST /bridge/v1/hosts`: the request, its checks, and the plan of objects it makes. Pure:
//! JSON in, a `Plan` or the first field error out, tested without a store or a socket.

use super::cloudinit;
use super::error::{BridgeError, ErrorCode};
use converge_engine::meta;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A whole host: a VirtualMachine, a DataVolume per disk and a cloud-init Secret.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostRequest {
    /// The host's name: the VirtualMachine's, and the prefix of its DataVolumes and Secret.
    #[schema(example = "web-1")]
    pub name: String,
    #[serde(default = "default_namespace")]
    #[schema(default = "default")]
    pub namespace: String,
    /// Virtual CPU cores. Not with `flavor`; 1 when neither is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub cpu: Option<u32>,
    /// Guest memory, a Kubernetes quantity. Required unless `flavor` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "1Gi")]
    pub memory: Option<String>,
    /// A VirtualMachineClusterInstancetype (see `GET /bridge/v1/flavors`) instead of cpu and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// Disks in boot order.
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    /// Network interfaces. Absent: one on the pod network; `[]`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<NicRequest>>,
    /// cloud-init user data (`#cloud-config …` or a script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// SSH public keys for the guest's default user (cloud-init `ssh_authorized_keys`).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Start the host once it is made (runStrategy Always); false: Halted.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub start: bool,
    /// Seconds a stopping guest gets to shut down (ACPI) before it is powered off; KubeVirt's
    /// 180 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 3600)]
    pub grace_period_seconds: Option<u32>,
}

fn default_namespace() -> String {
    "default".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskRequest {
    /// Unique among the host's disks; `disk0`, `disk1`… by position when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The volume's size, a Kubernetes quantity.
    #[schema(example = "2Gi")]
    pub size: String,
    /// A StorageClass (see `GET /bridge/v1/storageclasses`); the default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    pub source: DiskSource,
}

/// Where a disk's content comes from: exactly one of these.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum DiskSource {
    /// An http(s) URL of a raw or qcow2 image, optionally gz/xz compressed.
    Url(String),
    /// A container disk image in a registry (`docker://host/repo:tag` or `host/repo:tag`).
    Registry(String),
    /// A DataSource (see `GET /bridge/v1/images`), cloned.
    DataSource(ObjectRef),
    /// A PersistentVolumeClaim, cloned.
    Pvc(ObjectRef),
    /// An empty disk.
    Blank(Blank),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub name: String,
    /// The host's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Blank {}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NicRequest {
    /// `pod`, or a NetworkAttachmentDefinition as `name` or `namespace/name` (see `GET /bridge/v1/networks`).
    #[serde(default = "pod")]
    #[schema(default = "pod")]
    pub network: String,
    /// Boot from this interface first (network boot).
    #[serde(default)]
    pub pxe: bool,
    /// A MAC address; one from the pool when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

fn pod() -> String {
    POD_NETWORK.into()
}

pub const POD_NETWORK: &str = "pod";
/// The label every object a host request makes carries: the provisioning record's id.
pub const HOST_ID_LABEL: &str = "bridge.converge.dev/host-id";
/// The host's name, on its objects and its VMI (through the template).
pub const HOST_LABEL: &str = "bridge.converge.dev/host";
pub const CLOUD_INIT_DISK: &str = "cloudinit";
const MAX_DISKS: usize = 16;
const MAX_NICS: usize = 8;
const MAX_USER_DATA: usize = 64 * 1024;

/// What a step checks in the store before it makes its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precheck {
    /// `None`: the default class must exist.
    StorageClass(Option<String>),
    DataSource {
        namespace: String,
        name: String,
    },
    Pvc {
        namespace: String,
        name: String,
    },
    /// NetworkAttachmentDefinitions as (namespace, name, request field).
    Networks(Vec<(String, String, String)>),
    Flavor(String),
}

/// One object to make, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// `secret`, `disk/<name>`, `vm`: stable, shown in records and errors.
    pub name: String,
    /// The object's kind (its `ResourceKind::kind`).
    pub kind: &'static str,
    pub object: Value,
    /// The request field errors of this step point at.
    pub field: String,
    pub prechecks: Vec<Precheck>,
}

impl PlannedStep {
    pub fn object_name(&self) -> &str {
        meta::name(&self.object)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<PlannedStep>,
}

/// Decodes a body; a shape error names the field it is at.
pub fn decode(body: &[u8]) -> Result<HostRequest, BridgeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_path_to_error says `.` for the top level and `?` where it could not tell.
        let field = (path != "." && path != "?" && !path.is_empty()).then_some(path);
        BridgeError {
            code: ErrorCode::InvalidRequest,
            message: format!("the request is not a host request: {inner}"),
            field,
            step: None,
        }
    })
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> BridgeError {
    BridgeError::field(ErrorCode::FieldInvalid, field, message)
}

fn check_label(field: &str, value: &str) -> Result<(), BridgeError> {
    match meta::dns1123_label_errors(value).first() {
        Some(e) => Err(invalid(field, format!("{value:?}: {e}"))),
        None => Ok(()),
    }
}

fn check_quantity(field: &str, value: &str, min_bytes: f64) -> Result<(), BridgeError> {
    let bytes = converge_engine::quantity::parse(value).map_err(|e| invalid(field, format!("{value:?}: {e}")))?;
    if bytes < min_bytes {
        return Err(invalid(field, format!("{value:?} is less than the least this takes ({min_bytes} bytes)")));
    }
    Ok(())
}

fn check_mac(field: &str, mac: &str) -> Result<(), BridgeError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(invalid(field, format!("{mac:?} is not a MAC address (six hex pairs, colon-separated)")));
    }
    Ok(())
}

/// The disk's name: given, or by position.
pub fn disk_name(index: usize, disk: &DiskRequest) -> String {
    disk.name.clone().unwrap_or_else(|| format!("disk{index}"))
}

/// The DataVolume a host's disk becomes.
pub fn volume_name(host: &str, disk: &str) -> String {
    format!("{host}-{disk}")
}

pub fn secret_name(host: &str) -> String {
    format!("{host}-cloudinit")
}

/// A NIC's network as (namespace, name) of its NetworkAttachmentDefinition; `None` for the pod.
pub fn nad_of(host_namespace: &str, network: &str) -> Option<(String, String)> {
    if network == POD_NETWORK {
        return None;
    }
    Some(match network.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (host_namespace.to_string(), network.to_string()),
    })
}

/// Every check a request must pass before anything is made; the first failure.
pub fn validate(r: &HostRequest) -> Result<(), BridgeError> {
    check_label("namespace", &r.namespace)?;
    check_label("name", &r.name)?;
    if r.name.len() > 40 {
        return Err(invalid("name", "at most 40 characters: the host's disks and Secret are named after it"));
    }
    match (&r.flavor, r.cpu, &r.memory) {
        (Some(f), None, None) => check_label("flavor", f)?,
        (Some(_), _, _) => return Err(invalid("flavor", "a flavor sets cpu and memory: give one or the other")),
        (None, cpu, memory) => {
            if cpu.is_some_and(|c| !(1..=64).contains(&c)) {
                return Err(invalid("cpu", "between 1 and 64 cores"));
            }
            match memory {
                Some(m) => check_quantity("memory", m, 16.0 * 1024.0 * 1024.0)?,
                None => {
                    return Err(BridgeError::field(
                        ErrorCode::FieldInvalid,
                        "memory",
                        "required unless a flavor is given",
                    ))
                }
            }
        }
    }
    if r.disks.len() > MAX_DISKS {
        return Err(invalid("disks", format!("at most {MAX_DISKS} disks")));
    }
    let mut names = vec![];
    for (i, d) in r.disks.iter().enumerate() {
        let field = |f: &str| format!("disks[{i}].{f}");
        let name = disk_name(i, d);
        check_label(&field("name"), &name)?;
        if name == CLOUD_INIT_DISK || names.contains(&name) {
            return Err(invalid(field("name"), format!("{name:?} is taken (by another disk or the cloud-init disk)")));
        }
        if name.len() > 20 {
            return Err(invalid(field("name"), "at most 20 characters"));
        }
        names.push(name);
        check_quantity(&field("size"), &d.size, 1024.0 * 1024.0)?;
        if let Some(sc) = &d.storage_class {
            if !meta::dns1123_subdomain_errors(sc).is_empty() {
                return Err(invalid(field("storageClass"), format!("{sc:?} is not a StorageClass name")));
            }
        }
        match &d.source {
            DiskSource::Url(u) => {
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.len() < 10
                    || u.contains(char::is_whitespace)
                {
                    return Err(invalid(field("source.url"), format!("{u:?} is not an http(s) URL")));
                }
            }
            DiskSource::Registry(image) => {
                let bare = image.strip_prefix("docker://").unwrap_or(image);
                if bare.is_empty() || bare.contains(char::is_whitespace) || bare.contains("://") {
                    return Err(invalid(field("source.registry"), format!("{image:?} is not an image reference")));
                }
            }
            DiskSource::DataSource(o) | DiskSource::Pvc(o) => {
                let which = if matches!(d.source, DiskSource::Pvc(_)) { "pvc" } else { "dataSource" };
                if !meta::dns1123_subdomain_errors(&o.name).is_empty() {
                    return Err(invalid(
                        field(&format!("source.{which}.name")),
                        format!("{:?} is not an object name", o.name),
                    ));
                }
                if let Some(ns) = &o.namespace {
                    check_label(&field(&format!("source.{which}.namespace")), ns)?;
                }
            }
            DiskSource::Blank(_) => {}
        }
    }
    let nics = r.nics.as_deref().unwrap_or_default();
    if nics.len() > MAX_NICS {
        return Err(invalid("nics", format!("at most {MAX_NICS} interfaces")));
    }
    if nics.iter().filter(|n| n.network == POD_NETWORK).count() > 1 {
        return Err(invalid("nics", "at most one interface on the pod network"));
    }
    for (i, n) in nics.iter().enumerate() {
        if let Some((ns, name)) = nad_of(&r.namespace, &n.network) {
            if !meta::dns1123_label_errors(&ns).is_empty() || !meta::dns1123_subdomain_errors(&name).is_empty() {
                return Err(invalid(
                    format!("nics[{i}].network"),
                    format!(
                        "{:?} is neither \"pod\" nor a NetworkAttachmentDefinition (name or namespace/name)",
                        n.network
                    ),
                ));
            }
        }
        if let Some(mac) = &n.mac_address {
            check_mac(&format!("nics[{i}].macAddress"), mac)?;
        }
    }
    if r.grace_period_seconds.is_some_and(|g| g > 3600) {
        return Err(invalid("gracePeriodSeconds", "between 0 and 3600 seconds"));
    }
    if r.user_data.as_ref().is_some_and(|u| u.len() > MAX_USER_DATA) {
        return Err(invalid("userData", format!("at most {MAX_USER_DATA} bytes")));
    }
    for (i, key) in r.ssh_keys.iter().enumerate() {
        if let Err(why) = cloudinit::check_ssh_key(key) {
            return Err(invalid(format!("sshKeys[{i}]"), why));
        }
    }
    Ok(())
}

fn labels(host_id: &str, r: &HostRequest) -> Value {
    json!({HOST_LABEL: r.name, HOST_ID_LABEL: host_id})
}

fn object_meta(name: &str, host_id: &str, r: &HostRequest) -> Value {
    json!({"name": name, "namespace": r.namespace, "labels": labels(host_id, r)})
}

fn disk_source(d: &DiskRequest, namespace: &str) -> (&'static str, Value, Option<Precheck>) {
    let in_ns = |o: &ObjectRef| o.namespace.clone().unwrap_or_else(|| namespace.to_string());
    match &d.source {
        DiskSource::Url(url) => ("source", json!({"http": {"url": url}}), None),
        DiskSource::Registry(image) => {
            let url = if image.starts_with("docker://") { image.clone() } else { format!("docker://{image}") };
            ("source", json!({"registry": {"url": url}}), None)
        }
        DiskSource::DataSource(o) => (
            "sourceRef",
            json!({"kind": "DataSource", "name": o.name, "namespace": in_ns(o)}),
            Some(Precheck::DataSource { namespace: in_ns(o), name: o.name.clone() }),
        ),
        DiskSource::Pvc(o) => (
            "source",
            json!({"pvc": {"name": o.name, "namespace": in_ns(o)}}),
            Some(Precheck::Pvc { namespace: in_ns(o), name: o.name.clone() }),
        ),
        DiskSource::Blank(_) => ("source", json!({"blank": {}}), None),
    }
}

/// The objects a valid request makes, in the order they are made: the Secret, the DataVolumes,
/// then the VM, so the VM never waits on a volume that is not there.
pub fn plan(host_id: &str, r: &HostRequest) -> Plan {
    let mut steps = vec![];
    let mut disks = vec![];
    let mut volumes = vec![];
    let nics = r.nics.clone().unwrap_or_else(|| vec![NicRequest { network: pod(), pxe: false, mac_address: None }]);
    let mut boot = nics.iter().filter(|n| n.pxe).count() as u64;
    if let Some(user_data) = cloudinit::user_data(r.user_data.as_deref(), &r.ssh_keys) {
        let name = secret_name(&r.name);
        steps.push(PlannedStep {
            name: "secret".into(),
            kind: "Secret",
            object: json!({"apiVersion": "v1", "kind": "Secret", "metadata": object_meta(&name, host_id, r),
                "type": "Opaque", "stringData": {"userdata": user_data}}),
            field: if r.user_data.is_some() { "userData".into() } else { "sshKeys".into() },
            prechecks: vec![],
        });
    }
    for (i, d) in r.disks.iter().enumerate() {
        let disk = disk_name(i, d);
        let name = volume_name(&r.name, &disk);
        let (key, source, precheck) = disk_source(d, &r.namespace);
        let mut storage = json!({"resources": {"requests": {"storage": d.size}}});
        if let Some(sc) = &d.storage_class {
            storage["storageClassName"] = json!(sc);
        }
        let mut dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": object_meta(&name, host_id, r), "spec": {"storage": storage}});
        dv["spec"][key] = source;
        // A clone's volume is made in the host's class as any other.
        let mut prechecks = vec![Precheck::StorageClass(d.storage_class.clone())];
        prechecks.extend(precheck);
        steps.push(PlannedStep {
            name: format!("disk/{disk}"),
            kind: "DataVolume",
            object: dv,
            field: format!("disks[{i}]"),
            prechecks,
        });
        boot += 1;
        disks.push(json!({"name": disk, "disk": {"bus": "virtio"}, "bootOrder": boot}));
        volumes.push(json!({"name": disk, "dataVolume": {"name": name}}));
    }
    if steps.first().is_some_and(|s| s.name == "secret") {
        disks.push(json!({"name": CLOUD_INIT_DISK, "disk": {"bus": "virtio"}}));
        volumes
            .push(json!({"name": CLOUD_INIT_DISK, "cloudInitNoCloud": {"secretRef": {"name": secret_name(&r.name)}}}));
    }
    let mut interfaces = vec![];
    let mut networks = vec![];
    let mut nads = vec![];
    let mut pxe_order = 0;
    for (i, n) in nics.iter().enumerate() {
        let name = format!("nic{i}");
        let mut iface = match nad_of(&r.namespace, &n.network) {
            None => {
                networks.push(json!({"name": name, "pod": {}}));
                json!({"name": name, "masquerade": {}})
            }
            Some((ns, nad)) => {
                networks.push(json!({"name": name, "multus": {"networkName": format!("{ns}/{nad}")}}));
                nads.push((ns, nad, format!("nics[{i}].network")));
                json!({"name": name, "bridge": {}})
            }
        };
        if n.pxe {
            pxe_order += 1;
            iface["bootOrder"] = json!(pxe_order);
        }
        if let Some(mac) = &n.mac_address {
            iface["macAddress"] = json!(mac.to_ascii_lowercase());
        }
        interfaces.push(iface);
    }
    let mut devices = json!({"disks": disks, "interfaces": interfaces});
    if nics.is_empty() {
        devices["autoattachPodInterface"] = json!(false);
    }
    let mut domain = json!({"devices": devices});
    let mut spec = json!({"runStrategy": if r.start { "Always" } else { "Halted" }});
    let mut prechecks = vec![];
    match &r.flavor {
        Some(flavor) => {
            spec["instancetype"] = json!({"kind": "VirtualMachineClusterInstancetype", "name": flavor});
            prechecks.push(Precheck::Flavor(flavor.clone()));
        }
        None => {
            domain["cpu"] = json!({"cores": r.cpu.unwrap_or(1)});
            domain["resources"] = json!({"requests": {"memory": r.memory}});
        }
    }
    if !nads.is_empty() {
        prechecks.push(Precheck::Networks(nads));
    }
    spec["template"] = json!({"metadata": {"labels": {HOST_LABEL: r.name}},
        "spec": {"domain": domain, "networks": networks, "volumes": volumes}});
    if let Some(grace) = r.grace_period_seconds {
        spec["template"]["spec"]["terminationGracePeriodSeconds"] = json!(grace);
    }
    steps.push(PlannedStep {
        name: "vm".into(),
        kind: "VirtualMachine",
        object: json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": object_meta(&r.name, host_id, r), "spec": spec}),
        field: String::new(),
        prechecks,
    });
    Plan { steps }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
