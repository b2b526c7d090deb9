//! libvirt's domain XML as plain data. Serialized with quick-xml's serde support: fields named
//! `@x` are attributes, `$text` is element text. Only what the builder emits is modelled.

use serde::Serialize;

/// The XML namespace of Converge's `<metadata>` entry, which ties a domain to its VMI.
pub const METADATA_NS: &str = "https://converge.dev/xmlns/domain/1";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename = "domain")]
pub struct Domain {
    #[serde(rename = "@type")]
    pub domain_type: String,
    pub name: String,
    pub uuid: String,
    pub metadata: Metadata,
    pub memory: Sized,
    #[serde(rename = "currentMemory")]
    pub current_memory: Sized,
    pub vcpu: Text,
    pub os: Os,
    pub features: Features,
    pub cpu: Cpu,
    pub clock: Clock,
    pub on_poweroff: String,
    pub on_reboot: String,
    pub on_crash: String,
    pub devices: Devices,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    #[serde(rename = "converge:vmi")]
    pub vmi: VmiRef,
}

/// Who the domain belongs to: read back after a restart to re-adopt or remove it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmiRef {
    #[serde(rename = "@xmlns:converge")]
    pub xmlns: String,
    #[serde(rename = "@namespace")]
    pub namespace: String,
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@uid")]
    pub uid: String,
    /// The uid of the Node object whose agent made the domain: agents sharing a libvirtd
    /// (tests, or two stores on one host) only ever touch their own domains.
    #[serde(rename = "@node")]
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sized {
    #[serde(rename = "@unit")]
    pub unit: String,
    #[serde(rename = "$text")]
    pub value: u64,
}

impl Sized {
    pub fn kib(value: u64) -> Self {
        Sized { unit: "KiB".into(), value }
    }
    pub fn mib(value: u64) -> Self {
        Sized { unit: "MiB".into(), value }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Text {
    #[serde(rename = "$text")]
    pub value: String,
}

impl Text {
    pub fn new(value: impl ToString) -> Self {
        Text { value: value.to_string() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Os {
    #[serde(rename = "type")]
    pub os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader: Option<Loader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvram: Option<Nvram>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bios: Option<Bios>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smbios: Option<Smbios>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OsType {
    #[serde(rename = "@arch")]
    pub arch: String,
    #[serde(rename = "@machine")]
    pub machine: String,
    #[serde(rename = "$text")]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Loader {
    #[serde(rename = "@readonly")]
    pub readonly: String,
    #[serde(rename = "@secure")]
    pub secure: String,
    #[serde(rename = "@type")]
    pub loader_type: String,
    #[serde(rename = "$text")]
    pub path: String,
}

/// The VMI's own EFI variable store, created by libvirt from the template on first start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nvram {
    #[serde(rename = "@template")]
    pub template: String,
    #[serde(rename = "$text")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Smm {
    #[serde(rename = "@state")]
    pub state: String,
}

/// SeaBIOS prints to the serial console too, so a boot failure shows in the console log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bios {
    #[serde(rename = "@useserial")]
    pub useserial: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Smbios {
    #[serde(rename = "@mode")]
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Features {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acpi: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apic: Option<Empty>,
    /// Secure boot needs SMM so the firmware can protect its variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smm: Option<Smm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcg: Option<Tcg>,
}

/// QEMU's translation-block cache: by default large enough to cost more than a small guest's RAM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tcg {
    #[serde(rename = "tb-cache")]
    pub tb_cache: Sized,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    #[serde(rename = "@mode")]
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<CpuModel>,
    pub topology: Topology,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuModel {
    #[serde(rename = "@fallback")]
    pub fallback: String,
    #[serde(rename = "$text")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    #[serde(rename = "@sockets")]
    pub sockets: u32,
    #[serde(rename = "@cores")]
    pub cores: u32,
    #[serde(rename = "@threads")]
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Clock {
    #[serde(rename = "@offset")]
    pub offset: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Devices {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emulator: Option<Text>,
    #[serde(rename = "disk", default)]
    pub disks: Vec<Disk>,
    #[serde(rename = "controller", default)]
    pub controllers: Vec<Controller>,
    #[serde(rename = "interface", default)]
    pub interfaces: Vec<Interface>,
    #[serde(rename = "serial", default)]
    pub serials: Vec<Serial>,
    #[serde(rename = "console", default)]
    pub consoles: Vec<Console>,
    #[serde(rename = "graphics", default)]
    pub graphics: Vec<Graphics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<Video>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memballoon: Option<Memballoon>,
    #[serde(rename = "rng", default)]
    pub rngs: Vec<Rng>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    #[serde(rename = "@type")]
    pub disk_type: String,
    #[serde(rename = "@device")]
    pub device: String,
    pub driver: DiskDriver,
    pub source: DiskSource,
    pub target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<Text>,
    pub alias: Alias,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskDriver {
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@type")]
    pub format: String,
    #[serde(rename = "@cache", skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSource {
    #[serde(rename = "@file", skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(rename = "@dev", skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@bus")]
    pub bus: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Boot {
    #[serde(rename = "@order")]
    pub order: u32,
}

/// User aliases (`ua-` prefix) let the agent find a device by the VMI's own name for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alias {
    #[serde(rename = "@name")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Controller {
    #[serde(rename = "@type")]
    pub controller_type: String,
    #[serde(rename = "@index")]
    pub index: u32,
    #[serde(rename = "@model", skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interface {
    #[serde(rename = "@type")]
    pub interface_type: String,
    /// `yes` on a hostdev interface: libvirt binds the device to vfio-pci and back.
    #[serde(rename = "@managed", skip_serializing_if = "Option::is_none")]
    pub managed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The host PCI device of a hostdev interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<HostdevSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<Vlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<InterfaceTarget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Model>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    pub alias: Alias,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<PciAddress>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostdevSource {
    pub address: PciAddress,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vlan {
    pub tag: VlanTag,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VlanTag {
    #[serde(rename = "@id")]
    pub id: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterfaceTarget {
    #[serde(rename = "@dev")]
    pub dev: String,
    #[serde(rename = "@managed")]
    pub managed: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PciAddress {
    #[serde(rename = "@type")]
    pub address_type: String,
    #[serde(rename = "@domain")]
    pub domain: String,
    #[serde(rename = "@bus")]
    pub bus: String,
    #[serde(rename = "@slot")]
    pub slot: String,
    #[serde(rename = "@function")]
    pub function: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mac {
    #[serde(rename = "@address")]
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    #[serde(rename = "@type")]
    pub model_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Serial {
    #[serde(rename = "@type")]
    pub serial_type: String,
    pub source: SocketSource,
    pub log: Log,
    pub target: SerialTarget,
    pub alias: Alias,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketSource {
    #[serde(rename = "@mode")]
    pub mode: String,
    #[serde(rename = "@path")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Log {
    #[serde(rename = "@file")]
    pub file: String,
    #[serde(rename = "@append")]
    pub append: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SerialTarget {
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Console {
    #[serde(rename = "@type")]
    pub console_type: String,
    pub source: SocketSource,
    pub target: ConsoleTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub target_type: String,
    #[serde(rename = "@port")]
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graphics {
    #[serde(rename = "@type")]
    pub graphics_type: String,
    #[serde(rename = "@socket")]
    pub socket: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Video {
    pub model: VideoModel,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoModel {
    #[serde(rename = "@type")]
    pub model_type: String,
    #[serde(rename = "@heads")]
    pub heads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memballoon {
    #[serde(rename = "@model")]
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rng {
    #[serde(rename = "@model")]
    pub model: String,
    pub backend: RngBackend,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RngBackend {
    #[serde(rename = "@model")]
    pub model: String,
    #[serde(rename = "$text")]
    pub device: String,
}

impl Domain {
    pub fn to_xml(&self) -> Result<String, quick_xml::SeError> {
        let mut out = String::new();
        let mut ser = quick_xml::se::Serializer::new(&mut out);
        ser.indent(' ', 2);
        self.serialize(ser)?;
        Ok(out)
    }
}
