//! The part of a VMI the launcher reads, as typed data. Admission has already defaulted and
//! validated the object, so every field here is optional and unknown ones are ignored.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VmiSpec {
    pub domain: DomainSpec,
    pub volumes: Vec<Volume>,
    pub networks: Vec<Network>,
    pub termination_grace_period_seconds: Option<i64>,
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub tolerations: Vec<Value>,
    pub affinity: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DomainSpec {
    pub cpu: Option<CpuSpec>,
    pub memory: Option<MemorySpec>,
    pub resources: Resources,
    pub machine: Option<Machine>,
    pub firmware: Option<Firmware>,
    pub devices: DevicesSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CpuSpec {
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
    pub threads: Option<u32>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MemorySpec {
    pub guest: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Resources {
    pub requests: std::collections::BTreeMap<String, Value>,
    pub limits: std::collections::BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Machine {
    #[serde(rename = "type")]
    pub machine_type: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Firmware {
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub bootloader: Option<Bootloader>,
    pub kernel_boot: Option<KernelBoot>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Bootloader {
    pub bios: Option<BiosSpec>,
    pub efi: Option<EfiSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BiosSpec {
    pub use_serial: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EfiSpec {
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KernelBoot {
    pub kernel_args: Option<String>,
    pub container: Option<KernelBootContainer>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KernelBootContainer {
    pub image: String,
    pub kernel_path: Option<String>,
    pub initrd_path: Option<String>,
    pub image_pull_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DevicesSpec {
    pub disks: Vec<DiskSpec>,
    pub interfaces: Vec<InterfaceSpec>,
    pub autoattach_graphics_device: Option<bool>,
    pub autoattach_mem_balloon: Option<bool>,
    pub autoattach_serial_console: Option<bool>,
    pub rng: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiskSpec {
    pub name: String,
    pub disk: Option<DiskTargetSpec>,
    pub cdrom: Option<DiskTargetSpec>,
    pub lun: Option<DiskTargetSpec>,
    pub boot_order: Option<u32>,
    pub cache: Option<String>,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiskTargetSpec {
    pub bus: Option<String>,
    pub readonly: Option<bool>,
}

/// NIC models QEMU offers that KubeVirt accepts.
pub const NIC_MODELS: &[&str] = &["virtio", "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InterfaceSpec {
    pub name: String,
    pub model: Option<String>,
    pub mac_address: Option<String>,
    pub boot_order: Option<u32>,
    pub masquerade: Option<Value>,
    pub bridge: Option<Value>,
    pub sriov: Option<Value>,
    pub slirp: Option<Value>,
    pub ports: Vec<PortSpec>,
    pub pci_address: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortSpec {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Network {
    pub name: String,
    pub pod: Option<Value>,
    pub multus: Option<MultusNetwork>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MultusNetwork {
    /// `name` or `namespace/name` of a NetworkAttachmentDefinition.
    pub network_name: String,
    pub default: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Volume {
    pub name: String,
    pub container_disk: Option<ContainerDiskSource>,
    pub empty_disk: Option<EmptyDiskSource>,
    pub host_disk: Option<HostDiskSource>,
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    pub cloud_init_config_drive: Option<CloudInitSource>,
    pub persistent_volume_claim: Option<ClaimSource>,
    pub data_volume: Option<DataVolumeSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClaimSource {
    pub claim_name: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataVolumeSource {
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerDiskSource {
    pub image: String,
    pub path: Option<String>,
    pub image_pull_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EmptyDiskSource {
    pub capacity: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostDiskSource {
    pub path: String,
    #[serde(rename = "type")]
    pub disk_type: String,
    pub capacity: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudInitSource {
    pub user_data: Option<String>,
    pub user_data_base64: Option<String>,
    pub secret_ref: Option<LocalRef>,
    pub network_data: Option<String>,
    pub network_data_base64: Option<String>,
    pub network_data_secret_ref: Option<LocalRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LocalRef {
    pub name: String,
}

impl VmiSpec {
    pub fn from_vmi(vmi: &Value) -> Result<Self, String> {
        serde_json::from_value(vmi.get("spec").cloned().unwrap_or(Value::Null)).map_err(|e| e.to_string())
    }

    /// Guest memory in bytes: `memory.guest`, else the memory request, else the limit.
    pub fn guest_memory_bytes(&self) -> Option<u64> {
        let d = &self.domain;
        let q = d
            .memory
            .as_ref()
            .and_then(|m| m.guest.clone())
            .or_else(|| d.resources.requests.get("memory").cloned())
            .or_else(|| d.resources.limits.get("memory").cloned())?;
        crate::quantity::parse_value(&q).ok().map(|b| b as u64)
    }

    pub fn vcpus(&self) -> (u32, u32, u32) {
        let cpu = self.domain.cpu.clone().unwrap_or_default();
        (cpu.sockets.unwrap_or(1).max(1), cpu.cores.unwrap_or(1).max(1), cpu.threads.unwrap_or(1).max(1))
    }
}
