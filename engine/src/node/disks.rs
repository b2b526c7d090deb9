//! Makes a VMI's volumes real before its domain starts: copy-on-write overlays over container
//! disks (the image itself is never written), empty disks, host disks, cloud-init seed images,
//! and the kernel and initrd of `kernelBoot`. Tools that touch files are behind `DiskTool`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

use super::images::{ImageError, ImageStore};
use crate::launcher::build::{Prepared, PreparedVolume};
use crate::launcher::spec::{CloudInitSource, VmiSpec};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("volume {volume:?}: {message}")]
    Volume { volume: String, message: String },
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn volume_error(volume: &str, message: impl Into<String>) -> DiskError {
    DiskError::Volume { volume: volume.to_string(), message: message.into() }
}

/// The file-making side of disk preparation: `qemu-img` and an ISO 9660 writer.
pub trait DiskTool: Send + Sync {
    /// A qcow2 overlay at `overlay` over `base` (`base_format`, `virtual_size` bytes).
    fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        virtual_size: u64,
        overlay: &Path,
    ) -> Result<(), DiskError>;
    fn create_image(&self, path: &Path, format: &str, size_bytes: u64) -> Result<(), DiskError>;
    /// An ISO 9660 image with volume label `label` holding `files` (relative path → content).
    fn create_iso(&self, path: &Path, label: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<(), DiskError>;
}

fn run(tool: &str, cmd: &mut Command) -> Result<(), DiskError> {
    let out = cmd.output().map_err(|e| DiskError::Tool { tool: tool.into(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool { tool: tool.into(), message: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// The real tools: Debian's `qemu-img` and `genisoimage`.
pub struct SystemDiskTool;

impl DiskTool for SystemDiskTool {
    fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        virtual_size: u64,
        overlay: &Path,
    ) -> Result<(), DiskError> {
        match super::qcow2::write_overlay(overlay, base, base_format, virtual_size) {
            Ok(()) => return Ok(()),
            Err(super::qcow2::OverlayError::Io(e)) => return Err(DiskError::Io(e)),
            // A shape the writer leaves alone: qemu-img makes it.
            Err(_) => {}
        }
        // qemu-img opens the base (a pulled image, a tenant's) to size the overlay: bounded.
        run(
            "qemu-img",
            Command::new("timeout")
                .args(["--kill-after=5", "60", "qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
                .arg(base)
                .arg(overlay),
        )
    }
    fn create_image(&self, path: &Path, format: &str, size_bytes: u64) -> Result<(), DiskError> {
        run(
            "qemu-img",
            Command::new("qemu-img").args(["create", "-q", "-f", format]).arg(path).arg(size_bytes.to_string()),
        )
    }
    fn create_iso(&self, path: &Path, label: &str, files: &BTreeMap<String, Vec<u8>>) -> Result<(), DiskError> {
        let staging = tempfile::tempdir()?;
        for (name, content) in files {
            let file = staging.path().join(name);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(file, content)?;
        }
        run(
            "genisoimage",
            Command::new("genisoimage")
                .args(["-quiet", "-output"])
                .arg(path)
                .args(["-volid", label, "-joliet", "-rock"])
                .arg(staging.path()),
        )
    }
}

/// `qcow2` or `raw`, from the file's first bytes.
pub fn detect_format(path: &Path) -> Result<String, DiskError> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    Ok(if n == 4 && magic == *b"QFI\xfb" { "qcow2" } else { "raw" }.to_string())
}

/// The container disk's format and virtual size: it must be qcow2 or raw, and self-contained.
fn container_disk_format(volume: &str, path: &Path) -> Result<(String, u64), DiskError> {
    let mut head = vec![0u8; 512];
    let mut file = std::fs::File::open(path)?;
    let n = file.read(&mut head)?;
    head.truncate(n);
    match crate::storage::volume::sniff_image_format(&head) {
        None => Ok(("raw".into(), file.metadata()?.len())),
        Some("qcow2") => {
            let info = crate::storage::volume::VolumeTool::info(&crate::storage::volume::SystemVolumeTool, path)
                .map_err(|e| volume_error(volume, e.to_string()))?;
            if let Some(b) = info.backing_file {
                return Err(volume_error(
                    volume,
                    format!("the container disk has a backing file ({b:?}); it must be self-contained"),
                ));
            }
            Ok(("qcow2".into(), info.virtual_size))
        }
        Some(other) => Err(volume_error(
            volume,
            format!(
                "the container disk {} is {other}; a containerDisk must hold a qcow2 or raw image under /disk",
                path.display()
            ),
        )),
    }
}

/// Secret data a VMI's cloud-init may reference: secret name → key → bytes.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// Secret data as stored (`data` is base64), for `SecretData`.
pub fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    secret
        .get("data")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), b64.decode(v.as_str()?).ok()?))).collect())
        .unwrap_or_default()
}

fn host_path_ok(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && !p.components().any(|c| matches!(c, Component::ParentDir))
        && !path.starts_with("/proc")
        && !path.starts_with("/sys")
}

fn pick(data: &BTreeMap<String, Vec<u8>>, keys: &[&str]) -> Option<Vec<u8>> {
    keys.iter().find_map(|k| data.get(*k).cloned())
}

fn cloud_init_payload(
    volume: &str,
    src: &CloudInitSource,
    secrets: &SecretData,
) -> Result<(Vec<u8>, Option<Vec<u8>>), DiskError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let secret = |name: &str| {
        secrets
            .get(name)
            .ok_or_else(|| volume_error(volume, format!("secret {name:?} not found in the VMI's namespace")))
    };
    let user = if let Some(text) = &src.user_data {
        text.clone().into_bytes()
    } else if let Some(encoded) = &src.user_data_base64 {
        b64.decode(encoded).map_err(|e| volume_error(volume, format!("userDataBase64: {e}")))?
    } else if let Some(r) = &src.secret_ref {
        pick(secret(&r.name)?, &["userdata", "userData"])
            .ok_or_else(|| volume_error(volume, format!("secret {:?} has no userdata key", r.name)))?
    } else {
        Vec::new()
    };
    let network = if let Some(text) = &src.network_data {
        Some(text.clone().into_bytes())
    } else if let Some(encoded) = &src.network_data_base64 {
        Some(b64.decode(encoded).map_err(|e| volume_error(volume, format!("networkDataBase64: {e}")))?)
    } else if let Some(r) = &src.network_data_secret_ref {
        pick(secret(&r.name)?, &["networkdata", "networkData"])
    } else if let Some(r) = &src.secret_ref {
        pick(secret(&r.name)?, &["networkdata", "networkData"])
    } else {
        None
    };
    Ok((user, network))
}

/// Claims a VMI's volumes use, resolved by the agent: claim name → file or block device.
pub type ClaimPaths = BTreeMap<String, crate::storage::claims::ClaimVolume>;

/// Prepares every volume of `vmi` under `vmi_dir`. Idempotent: a file already made is kept.
pub fn prepare(
    vmi: &Value,
    vmi_dir: &Path,
    images: &ImageStore,
    tool: &dyn DiskTool,
    secrets: &SecretData,
    claims: &ClaimPaths,
    host_access: &crate::host_access::HostAccess,
) -> Result<Prepared, DiskError> {
    let spec = VmiSpec::from_vmi(vmi).map_err(|e| volume_error("spec", e))?;
    let uid = crate::meta::uid(vmi);
    let name = crate::meta::name(vmi);
    let mut prepared = Prepared::default();
    let disks_dir = vmi_dir.join("disks");
    std::fs::create_dir_all(&disks_dir)?;
    for vol in &spec.volumes {
        let file = |ext: &str| disks_dir.join(format!("{}.{ext}", vol.name));
        let ready = |path: PathBuf, format: &str, readonly: bool| PreparedVolume {
            path,
            format: format.to_string(),
            block_device: false,
            readonly,
        };
        let claim = vol
            .persistent_volume_claim
            .as_ref()
            .map(|c| (c.claim_name.as_str(), c.read_only))
            .or_else(|| vol.data_volume.as_ref().map(|d| (d.name.as_str(), false)));
        let volume = if let Some((claim, readonly)) = claim {
            let attached = claims
                .get(claim)
                .ok_or_else(|| volume_error(&vol.name, format!("claim {claim:?} is not attached on this node")))?;
            PreparedVolume { path: attached.file.clone(), format: "raw".into(), block_device: attached.block, readonly }
        } else if let Some(cd) = &vol.container_disk {
            let base = images.disk(&cd.image, cd.path.as_deref())?;
            let (base_format, virtual_size) = container_disk_format(&vol.name, &base)?;
            let overlay = file("qcow2");
            if !overlay.exists() {
                tool.create_overlay(&base, &base_format, virtual_size, &overlay)?;
            }
            ready(overlay, "qcow2", false)
        } else if let Some(empty) = &vol.empty_disk {
            let size = empty
                .capacity
                .as_ref()
                .and_then(|q| crate::quantity::parse_value(q).ok())
                .ok_or_else(|| volume_error(&vol.name, "emptyDisk needs a capacity"))? as u64;
            let path = file("qcow2");
            if !path.exists() {
                tool.create_image(&path, "qcow2", size)?;
            }
            ready(path, "qcow2", false)
        } else if let Some(host) = &vol.host_disk {
            if !host_path_ok(&host.path) {
                return Err(volume_error(
                    &vol.name,
                    format!("hostDisk path {:?} must be absolute, without '..', outside /proc and /sys", host.path),
                ));
            }
            // Admission checked the text; here the real file system, symlinks resolved.
            let path = host_access
                .host_disk_on_host(&host.path)
                .map_err(|why| volume_error(&vol.name, format!("hostDisk path {:?} {why}", host.path)))?;
            match host.disk_type.as_str() {
                "Disk" if !path.is_file() => {
                    return Err(volume_error(&vol.name, format!("hostDisk {:?} does not exist (type Disk)", host.path)))
                }
                "Disk" => {}
                "DiskOrCreate" if !path.exists() => {
                    let size = host
                        .capacity
                        .as_ref()
                        .and_then(|q| crate::quantity::parse_value(q).ok())
                        .ok_or_else(|| volume_error(&vol.name, "hostDisk DiskOrCreate needs a capacity"))?
                        as u64;
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    tool.create_image(&path, "raw", size)?;
                }
                "DiskOrCreate" => {}
                other => {
                    return Err(volume_error(&vol.name, format!("hostDisk type {other:?} is not Disk or DiskOrCreate")))
                }
            }
            ready(path.clone(), &detect_format(&path)?, false)
        } else if let Some(src) = &vol.cloud_init_no_cloud {
            let (user, network) = cloud_init_payload(&vol.name, src, secrets)?;
            let mut files = BTreeMap::from([
                ("user-data".to_string(), user),
                ("meta-data".to_string(), format!("instance-id: {uid}\nlocal-hostname: {name}\n").into_bytes()),
            ]);
            if let Some(n) = network {
                files.insert("network-config".into(), n);
            }
            let path = file("iso");
            tool.create_iso(&path, "cidata", &files)?;
            ready(path, "raw", true)
        } else if let Some(src) = &vol.cloud_init_config_drive {
            let (user, network) = cloud_init_payload(&vol.name, src, secrets)?;
            let meta = serde_json::json!({"uuid": uid, "instance_id": uid, "hostname": name, "name": name});
            let mut files = BTreeMap::from([
                ("openstack/latest/user_data".to_string(), user),
                ("openstack/latest/meta_data.json".to_string(), meta.to_string().into_bytes()),
            ]);
            if let Some(n) = network {
                files.insert("openstack/latest/network_data.json".into(), n);
            }
            let path = file("iso");
            tool.create_iso(&path, "config-2", &files)?;
            ready(path, "raw", true)
        } else {
            return Err(volume_error(&vol.name, "this volume type is not supported on this node yet"));
        };
        prepared.volumes.insert(vol.name.clone(), volume);
    }
    if let Some(kb) = spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) {
        if let Some(c) = kb.container.as_ref() {
            let kernel = c.kernel_path.as_deref().map(|p| images.file(&c.image, p)).transpose()?;
            let initrd = c.initrd_path.as_deref().map(|p| images.file(&c.image, p)).transpose()?;
            match kernel {
                Some(k) => prepared.kernel = Some((k, initrd)),
                None => return Err(volume_error("kernelBoot", "kernelBoot.container needs a kernelPath")),
            }
        }
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(volumes: Value) -> Value {
        json!({"metadata": {"name": "g", "namespace": "d", "uid": "u-1"}, "spec": {"domain": {}, "volumes": volumes}})
    }

    /// The real tools against real files: an overlay over an imported container disk, an empty
    /// disk, a created host disk, and NoCloud / ConfigDrive seeds.
    #[test]
    fn volumes_become_files_with_the_real_tools() {
        let root = tempfile::tempdir().unwrap();
        let images = ImageStore::open(root.path().join("images")).unwrap();
        // A one-file OCI layout holding disk/base.raw.
        let layout = root.path().join("layout");
        let rootfs = root.path().join("content");
        std::fs::create_dir_all(rootfs.join("disk")).unwrap();
        std::fs::write(rootfs.join("disk/base.raw"), vec![0u8; 1 << 20]).unwrap();
        let status = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/guest/oci_layout.py"))
            .arg(&layout)
            .arg("example.org/base:1")
            .arg(format!("{}:disk/base.raw", rootfs.join("disk/base.raw").display()))
            .status()
            .unwrap();
        assert!(status.success());
        images.import(&layout, None).unwrap();

        let secret = BTreeMap::from([("userdata".to_string(), b"#cloud-config\nfrom: secret\n".to_vec())]);
        let secrets = SecretData::from([("seed".to_string(), secret)]);
        let host = root.path().join("host/data.img");
        let v = vmi(json!([
            {"name": "root", "containerDisk": {"image": "example.org/base:1"}},
            {"name": "scratch", "emptyDisk": {"capacity": "10Mi"}},
            {"name": "data", "hostDisk": {"path": host.display().to_string(), "type": "DiskOrCreate", "capacity": "4Mi"}},
            {"name": "nocloud", "cloudInitNoCloud": {"userData": "#cloud-config\nhostname: g\n", "networkData": "version: 2\n"}},
            {"name": "drive", "cloudInitConfigDrive": {"secretRef": {"name": "seed"}}},
        ]));
        let dir = root.path().join("vmi");
        let prepared =
            prepare(&v, &dir, &images, &SystemDiskTool, &secrets, &ClaimPaths::new(), &allow(&root)).unwrap();
        let root_disk = &prepared.volumes["root"];
        assert_eq!(root_disk.format, "qcow2");
        let info = Command::new("qemu-img").arg("info").arg(&root_disk.path).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("backing file:") && info.contains("base.raw"), "{info}");
        assert_eq!(prepared.volumes["scratch"].format, "qcow2");
        assert_eq!(std::fs::metadata(&host).unwrap().len(), 4 << 20);
        assert!(prepared.volumes["nocloud"].readonly);
        let iso = std::fs::read(&prepared.volumes["nocloud"].path).unwrap();
        let text = String::from_utf8_lossy(&iso);
        assert!(text.contains("cidata") && text.contains("hostname: g") && text.contains("instance-id: u-1"));
        let drive = String::from_utf8_lossy(&std::fs::read(&prepared.volumes["drive"].path).unwrap()).into_owned();
        assert!(drive.contains("config-2") && drive.contains("from: secret"));

        // Again: nothing is remade, the overlay keeps what the guest wrote.
        std::fs::write(dir.join("disks/scratch.qcow2"), b"QFI\xfbguest-data").unwrap();
        prepare(&v, &dir, &images, &SystemDiskTool, &secrets, &ClaimPaths::new(), &allow(&root)).unwrap();
        assert_eq!(std::fs::read(dir.join("disks/scratch.qcow2")).unwrap(), b"QFI\xfbguest-data");
    }

    /// A container disk that is neither qcow2 nor raw is refused, naming what it is.
    #[test]
    fn container_disks_must_be_qcow2_or_raw() {
        let root = tempfile::tempdir().unwrap();
        let images = ImageStore::open(root.path().join("images")).unwrap();
        let raw = root.path().join("d.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let vmdk = root.path().join("disk.vmdk");
        let ok = Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "vmdk"])
            .arg(&raw)
            .arg(&vmdk)
            .status()
            .unwrap();
        assert!(ok.success());
        let layout = root.path().join("layout");
        let status = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/guest/oci_layout.py"))
            .arg(&layout)
            .arg("example.org/vmdk:1")
            .arg(format!("{}:disk/disk.vmdk", vmdk.display()))
            .status()
            .unwrap();
        assert!(status.success());
        images.import(&layout, None).unwrap();
        let v = vmi(json!([{"name": "root", "containerDisk": {"image": "example.org/vmdk:1"}}]));
        let err = prepare(
            &v,
            &root.path().join("v"),
            &images,
            &SystemDiskTool,
            &SecretData::new(),
            &ClaimPaths::new(),
            &allow(&root),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is vmdk; a containerDisk must hold a qcow2 or raw image"), "{err}");
    }

    fn allow(root: &tempfile::TempDir) -> crate::host_access::HostAccess {
        crate::host_access::HostAccess { host_disk_dirs: vec![root.path().to_path_buf()], ..Default::default() }
    }

    #[test]
    fn bad_volumes_are_named() {
        let root = tempfile::tempdir().unwrap();
        let images = ImageStore::open(root.path().join("images")).unwrap();
        let none = SecretData::new();
        let missing = root.path().join("x.img").display().to_string();
        let cases = [
            (json!([{"name": "r", "containerDisk": {"image": "missing:1"}}]), "not in this node's image store"),
            (json!([{"name": "h", "hostDisk": {"path": "relative/x.img", "type": "Disk"}}]), "must be absolute"),
            (json!([{"name": "h", "hostDisk": {"path": missing, "type": "Disk"}}]), "does not exist"),
            (
                json!([{"name": "h", "hostDisk": {"path": "/tmp/../etc/x", "type": "DiskOrCreate", "capacity": "1Mi"}}]),
                "must be absolute, without '..'",
            ),
            (json!([{"name": "c", "cloudInitNoCloud": {"secretRef": {"name": "nope"}}}]), "secret \"nope\" not found"),
            (json!([{"name": "e", "emptyDisk": {}}]), "needs a capacity"),
            (
                json!([{"name": "h", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}]),
                "must lie under one of the directories the admin allowed",
            ),
        ];
        for (volumes, want) in cases {
            let err = prepare(
                &vmi(volumes.clone()),
                &root.path().join("v"),
                &images,
                &SystemDiskTool,
                &none,
                &ClaimPaths::new(),
                &allow(&root),
            )
            .unwrap_err();
            assert!(err.to_string().contains(want), "{volumes}: {err}");
        }
    }
}
