//! The pure step: a VMI plus what the node prepared for it → a libvirt domain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::domain::*;
use super::spec::{DiskSpec, InterfaceSpec, VmiSpec, NIC_MODELS};
use crate::meta;
use crate::network::plan::{Attachment, Nic};

/// Whether guests run under KVM or QEMU's software emulation (TCG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn domain_type(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "qemu",
        }
    }
}

/// What the node knows that the VMI doesn't.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub accel: Accel,
    /// This VMI's own directory: sockets, console log, ephemeral disks.
    pub vmi_dir: PathBuf,
    /// Translation-block cache per guest under TCG.
    pub tb_cache_mib: u64,
    /// OVMF firmware for EFI guests, when the node has it.
    pub ovmf: Option<Ovmf>,
    /// The Node object's uid, written into the domain's metadata.
    pub node_uid: String,
    /// Prepended to `{namespace}_{name}`; empty in production.
    pub domain_prefix: String,
    /// The node's plan for each interface (taps); `None` when the node has no pod network and
    /// pod interfaces are QEMU's user-mode network.
    pub nics: Option<Vec<crate::network::plan::Nic>>,
}

/// OVMF's firmware code and variable templates: plain, and with Secure Boot (Microsoft keys).
#[derive(Debug, Clone, PartialEq)]
pub struct Ovmf {
    pub code: PathBuf,
    pub vars: PathBuf,
    pub secure_code: PathBuf,
    pub secure_vars: PathBuf,
}

impl Ovmf {
    /// Debian's `ovmf` package, if installed.
    pub fn debian() -> Option<Ovmf> {
        let dir = Path::new("/usr/share/OVMF");
        let o = Ovmf {
            code: dir.join("OVMF_CODE_4M.fd"),
            vars: dir.join("OVMF_VARS_4M.fd"),
            secure_code: dir.join("OVMF_CODE_4M.secboot.fd"),
            secure_vars: dir.join("OVMF_VARS_4M.ms.fd"),
        };
        [&o.code, &o.vars, &o.secure_code, &o.secure_vars].iter().all(|p| p.is_file()).then_some(o)
    }
}

/// A volume made ready on disk by the node (see `crate::node::disks`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedVolume {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    pub block_device: bool,
    /// Generated media (cloud-init seeds) are read-only to the guest.
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prepared {
    pub volumes: BTreeMap<String, PreparedVolume>,
    /// Kernel and initrd extracted for `firmware.kernelBoot`.
    pub kernel: Option<(PathBuf, Option<PathBuf>)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("the VMI has no guest memory (spec.domain.memory.guest or resources.requests.memory)")]
    NoMemory,
    #[error("disk {0:?} has no prepared volume")]
    VolumeNotPrepared(String),
    #[error("interface {0:?}: {1}")]
    Interface(String, String),
    #[error("EFI boot needs OVMF (Debian package `ovmf`), which this node lacks")]
    NoOvmf,
    #[error("the VMI spec cannot be read: {0}")]
    Spec(String),
}

/// `{namespace}_{name}`, as KubeVirt names its domains (after the node's prefix, if any).
pub fn domain_name(prefix: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{namespace}_{name}")
}

fn interface(iface: &InterfaceSpec, spec: &VmiSpec, nics: Option<&[Nic]>) -> Result<Interface, BuildError> {
    let fail = |m: &str| BuildError::Interface(iface.name.clone(), m.to_string());
    let model = iface.model.clone().unwrap_or_else(|| "virtio".into());
    if !NIC_MODELS.contains(&model.as_str()) {
        return Err(fail(&format!("model {model:?} is not one of {}", NIC_MODELS.join(", "))));
    }
    let address = iface.pci_address.as_deref().map(parse_pci_address).transpose().map_err(|m| fail(&m))?;
    let mut out = Interface {
        interface_type: "user".into(),
        managed: None,
        mac: iface.mac_address.clone().map(|address| Mac { address }),
        source: None,
        vlan: None,
        target: None,
        model: Some(Model { model_type: model }),
        boot: iface.boot_order.map(|order| Boot { order }),
        alias: Alias { name: format!("ua-{}", iface.name) },
        address,
    };
    match nics {
        Some(nics) => {
            let nic = nics.iter().find(|n| n.name == iface.name).ok_or_else(|| fail("the node made no NIC for it"))?;
            match &nic.attachment {
                Attachment::User => {}
                // The guest drives the virtual function itself: no model, no tap.
                Attachment::Sriov(vf) => {
                    out.interface_type = "hostdev".into();
                    out.managed = Some("yes".into());
                    out.model = None;
                    out.source =
                        Some(HostdevSource { address: parse_pci_address(&vf.device_id).map_err(|m| fail(&m))? });
                    out.vlan = vf.vlan.map(|id| Vlan { tag: VlanTag { id } });
                }
                // The node made the tap; QEMU only opens it.
                _ => {
                    out.interface_type = "ethernet".into();
                    out.target = Some(InterfaceTarget { dev: nic.tap.clone(), managed: "no".into() });
                }
            }
        }
        None => {
            if iface.sriov.is_some()
                || spec.networks.iter().find(|n| n.name == iface.name).is_some_and(|n| n.pod.is_none())
            {
                return Err(fail("secondary networks need the node's pod network, which is off on this node"));
            }
            // Without the node's pod network, QEMU's user-mode network stands in for it.
        }
    }
    Ok(out)
}

/// `0000:81:01.0` (domain:bus:slot.function) as libvirt's PCI address.
fn parse_pci_address(text: &str) -> Result<PciAddress, String> {
    let a = crate::network::pci::PciAddress::parse(text).map_err(|m| format!("pciAddress {m}"))?;
    Ok(PciAddress {
        address_type: "pci".into(),
        domain: format!("0x{:04x}", a.domain),
        bus: format!("0x{:02x}", a.bus),
        slot: format!("0x{:02x}", a.slot),
        function: format!("0x{:x}", a.function),
    })
}

pub fn serial_socket(vmi_dir: &Path) -> PathBuf {
    vmi_dir.join("serial0.sock")
}
pub fn serial_log(vmi_dir: &Path) -> PathBuf {
    vmi_dir.join("serial0.log")
}
pub fn vnc_socket(vmi_dir: &Path) -> PathBuf {
    vmi_dir.join("vnc.sock")
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn build_domain(vmi: &Value, ctx: &NodeContext, prepared: &Prepared) -> Result<Domain, BuildError> {
    let spec = VmiSpec::from_vmi(vmi).map_err(BuildError::Spec)?;
    let memory_kib = spec.guest_memory_bytes().ok_or(BuildError::NoMemory)? / 1024;
    let (sockets, cores, threads) = spec.vcpus();
    // Admission bounds each; a stored object that predates it must not overflow here.
    let vcpus = sockets
        .checked_mul(cores)
        .and_then(|n| n.checked_mul(threads))
        .filter(|n| *n <= crate::admission::MAX_VCPUS)
        .ok_or_else(|| BuildError::Spec(format!("{sockets}×{cores}×{threads} vCPUs is more than a guest may have")))?;
    let firmware = spec.domain.firmware.clone().unwrap_or_default();
    // Parsed, not passed through: admission checks it, and an object stored before that did must
    // not put another string into the domain XML (or collide with a domain by a spelling variant).
    let uuid = match firmware.uuid.as_deref().filter(|u| !u.is_empty()) {
        Some(text) => uuid::Uuid::parse_str(text)
            .map_err(|e| BuildError::Spec(format!("spec.domain.firmware.uuid {text:?} is not a UUID: {e}")))?
            .hyphenated()
            .to_string(),
        None => meta::uid(vmi).to_string(),
    };
    let machine = spec.domain.machine.as_ref().and_then(|m| m.machine_type.clone()).unwrap_or_else(|| "q35".into());

    let efi = firmware.bootloader.as_ref().and_then(|b| b.efi.clone());
    // KubeVirt turns Secure Boot on unless the VMI says otherwise.
    let secure = efi.as_ref().is_some_and(|e| e.secure_boot != Some(false));
    let (loader, nvram) = match (&efi, &ctx.ovmf) {
        (None, _) => (None, None),
        (Some(_), None) => return Err(BuildError::NoOvmf),
        (Some(_), Some(ovmf)) => {
            let (code, vars) = if secure { (&ovmf.secure_code, &ovmf.secure_vars) } else { (&ovmf.code, &ovmf.vars) };
            (
                Some(Loader {
                    readonly: "yes".into(),
                    secure: if secure { "yes" } else { "no" }.into(),
                    loader_type: "pflash".into(),
                    path: path_text(code),
                }),
                Some(Nvram { template: path_text(vars), path: path_text(&ctx.vmi_dir.join("nvram.fd")) }),
            )
        }
    };
    let (kernel, initrd) = match &prepared.kernel {
        Some((k, i)) => (Some(Text::new(path_text(k))), i.as_ref().map(|i| Text::new(path_text(i)))),
        None => (None, None),
    };
    let cmdline = firmware.kernel_boot.as_ref().and_then(|k| k.kernel_args.clone()).map(Text::new);
    let os = Os {
        os_type: OsType { arch: "x86_64".into(), machine, value: "hvm".into() },
        loader,
        nvram,
        kernel,
        initrd,
        cmdline,
        bios: efi.is_none().then(|| Bios { useserial: "yes".into() }),
        smbios: None,
    };

    let cpu = match spec.domain.cpu.as_ref().and_then(|c| c.model.clone()).as_deref() {
        // Under TCG there is no host CPU to pass through: QEMU's own model is what runs.
        _ if ctx.accel == Accel::Tcg => Cpu {
            mode: "custom".into(),
            model: Some(CpuModel { fallback: "allow".into(), name: "qemu64".into() }),
            topology: Topology { sockets, cores, threads },
        },
        None | Some("host-model") => {
            Cpu { mode: "host-model".into(), model: None, topology: Topology { sockets, cores, threads } }
        }
        Some("host-passthrough") => {
            Cpu { mode: "host-passthrough".into(), model: None, topology: Topology { sockets, cores, threads } }
        }
        Some(name) => Cpu {
            mode: "custom".into(),
            model: Some(CpuModel { fallback: "forbid".into(), name: name.into() }),
            topology: Topology { sockets, cores, threads },
        },
    };

    let devices = build_devices(&spec, ctx, prepared)?;
    Ok(Domain {
        domain_type: ctx.accel.domain_type().into(),
        name: domain_name(&ctx.domain_prefix, meta::namespace(vmi), meta::name(vmi)),
        uuid,
        metadata: Metadata {
            vmi: VmiRef {
                xmlns: METADATA_NS.into(),
                namespace: meta::namespace(vmi).into(),
                name: meta::name(vmi).into(),
                uid: meta::uid(vmi).into(),
                node: ctx.node_uid.clone(),
            },
        },
        memory: Sized::kib(memory_kib),
        current_memory: Sized::kib(memory_kib),
        vcpu: Text::new(vcpus),
        os,
        features: Features {
            acpi: Some(Empty {}),
            apic: Some(Empty {}),
            smm: secure.then(|| Smm { state: "on".into() }),
            tcg: (ctx.accel == Accel::Tcg).then(|| Tcg { tb_cache: Sized::mib(ctx.tb_cache_mib) }),
        },
        cpu,
        clock: Clock { offset: "utc".into() },
        on_poweroff: "destroy".into(),
        on_reboot: "restart".into(),
        on_crash: "destroy".into(),
        devices,
    })
}

fn disk_target(disk: &DiskSpec) -> (&'static str, String, bool) {
    let (device, target) = if let Some(t) = &disk.cdrom {
        ("cdrom", t)
    } else if let Some(t) = &disk.lun {
        ("lun", t)
    } else if let Some(t) = &disk.disk {
        ("disk", t)
    } else {
        return ("disk", "virtio".into(), false);
    };
    let bus = target.bus.clone().unwrap_or_else(|| if device == "disk" { "virtio".into() } else { "sata".into() });
    // cdroms are read-only unless the VMI says otherwise, as in KubeVirt.
    let readonly = target.readonly.unwrap_or(device == "cdrom");
    (device, bus, readonly)
}

/// `vda`, `vdb`, … `vdz`, `vdaa`: libvirt's device names per bus prefix.
pub(crate) fn device_name(prefix: &str, index: usize) -> String {
    let mut n = index;
    let mut suffix = Vec::new();
    loop {
        suffix.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    suffix.reverse();
    format!("{prefix}{}", String::from_utf8_lossy(&suffix))
}

fn build_devices(spec: &VmiSpec, ctx: &NodeContext, prepared: &Prepared) -> Result<Devices, BuildError> {
    let mut devices = Devices::default();
    let mut per_prefix: BTreeMap<&str, usize> = BTreeMap::new();
    let mut needs_scsi = false;
    for disk in &spec.domain.devices.disks {
        let volume =
            prepared.volumes.get(&disk.name).ok_or_else(|| BuildError::VolumeNotPrepared(disk.name.clone()))?;
        let (device, bus, readonly) = disk_target(disk);
        let prefix = if bus == "virtio" { "vd" } else { "sd" };
        needs_scsi |= bus == "scsi";
        let index = per_prefix.entry(prefix).or_default();
        let dev = device_name(prefix, *index);
        *index += 1;
        let readonly = readonly || volume.readonly;
        devices.disks.push(Disk {
            disk_type: if volume.block_device { "block" } else { "file" }.into(),
            device: device.into(),
            driver: DiskDriver {
                name: "qemu".into(),
                format: volume.format.clone(),
                cache: disk.cache.clone().or_else(|| Some("none".into()).filter(|_| !readonly && device != "cdrom")),
            },
            source: DiskSource {
                file: (!volume.block_device).then(|| path_text(&volume.path)),
                dev: volume.block_device.then(|| path_text(&volume.path)),
            },
            target: DiskTarget { dev, bus },
            boot: disk.boot_order.map(|order| Boot { order }),
            readonly: readonly.then_some(Empty {}),
            serial: disk.serial.clone().map(Text::new),
            alias: Alias { name: format!("ua-{}", disk.name) },
        });
    }
    if needs_scsi {
        devices.controllers.push(Controller {
            controller_type: "scsi".into(),
            index: 0,
            model: Some("virtio-scsi".into()),
        });
    }

    for iface in &spec.domain.devices.interfaces {
        devices.interfaces.push(interface(iface, spec, ctx.nics.as_deref())?);
    }

    if spec.domain.devices.autoattach_serial_console != Some(false) {
        let socket = SocketSource { mode: "bind".into(), path: path_text(&serial_socket(&ctx.vmi_dir)) };
        devices.serials.push(Serial {
            serial_type: "unix".into(),
            source: socket.clone(),
            log: Log { file: path_text(&serial_log(&ctx.vmi_dir)), append: "on".into() },
            target: SerialTarget { port: 0 },
            alias: Alias { name: "serial0".into() },
        });
        devices.consoles.push(Console {
            console_type: "unix".into(),
            source: socket,
            target: ConsoleTarget { target_type: "serial".into(), port: 0 },
        });
    }
    if spec.domain.devices.autoattach_graphics_device != Some(false) {
        devices.graphics.push(Graphics { graphics_type: "vnc".into(), socket: path_text(&vnc_socket(&ctx.vmi_dir)) });
        devices.video = Some(Video { model: VideoModel { model_type: "vga".into(), heads: 1 } });
    }
    devices.memballoon = Some(Memballoon {
        model: if spec.domain.devices.autoattach_mem_balloon == Some(false) { "none" } else { "virtio" }.into(),
    });
    if spec.domain.devices.rng.is_some() {
        devices.rngs.push(Rng {
            model: "virtio".into(),
            backend: RngBackend { model: "random".into(), device: "/dev/urandom".into() },
        });
    }
    Ok(devices)
}
