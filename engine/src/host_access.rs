//! What of the host the admin lets guests reach: hostDisk directories, the host bridges NADs
//! may name, and the SR-IOV functions they may take. Empty by default, so a tenant's VM reaches
//! nothing of the host until the admin says so (KubeVirt's HostDisk feature gate, off by
//! default, and Multus' admin-written NADs play this part on a cluster).

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    /// Directories under which `hostDisk` volumes may lie (`--host-disk-dir`).
    pub host_disk_dirs: Vec<PathBuf>,
    /// Host bridges NADs may name (`--nad-bridge`); an entry ending in `*` is a prefix.
    pub nad_bridges: Vec<String>,
    /// PCI addresses of the SR-IOV functions NADs may name (`--sriov-device`), canonical
    /// (`PciAddress`'s lower-case form, as `nad::network_of` gives them).
    pub sriov_devices: Vec<String>,
}

/// What a server allows when nobody said: nothing.
pub static NONE: HostAccess =
    HostAccess { host_disk_dirs: Vec::new(), nad_bridges: Vec::new(), sriov_devices: Vec::new() };

/// What a NAD of another namespace must carry to be used from `namespace`: a comma-separated
/// list of namespaces, or `*` (Multus' namespaceIsolation lets only `default` through).
pub const NAD_SHARED_WITH: &str = "converge.dev/shared-with-namespaces";

/// An absolute path with no `..`: compared component by component (`.` and repeated separators
/// are dropped by `components`, and mean nothing).
fn plain_absolute(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') {
        return None;
    }
    p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))).then(|| p.to_path_buf())
}

impl HostAccess {
    /// Whether `path` may be a hostDisk, by its text alone (admission). The node checks again
    /// on the real file system: see `host_disk_on_host`.
    pub fn host_disk_allowed(&self, path: &str) -> Result<PathBuf, String> {
        if self.host_disk_dirs.is_empty() {
            return Err("hostDisk is disabled on this server: an admin allows directories with --host-disk-dir".into());
        }
        let p = plain_absolute(path).ok_or_else(|| "must be an absolute path without '..'".to_string())?;
        if self.host_disk_dirs.iter().any(|d| p.starts_with(d) && p != *d) {
            Ok(p)
        } else {
            let dirs: Vec<String> = self.host_disk_dirs.iter().map(|d| d.display().to_string()).collect();
            Err(format!("must lie under one of the directories the admin allowed ({})", dirs.join(", ")))
        }
    }

    /// `host_disk_allowed`, then the same on the real file system: the directory it lands in,
    /// symlinks resolved, is still under an allowed directory (resolved too), and the file
    /// itself, if it exists, is a regular file and no symlink.
    pub fn host_disk_on_host(&self, path: &str) -> Result<PathBuf, String> {
        let p = self.host_disk_allowed(path)?;
        let parent = p.parent().ok_or_else(|| "has no parent directory".to_string())?;
        // The deepest directory that exists; anything made below it is made by the node.
        let mut existing = parent.to_path_buf();
        while !existing.exists() {
            existing = existing.parent().map(Path::to_path_buf).ok_or_else(|| "has no existing parent".to_string())?;
        }
        let real = existing.canonicalize().map_err(|e| format!("{}: {e}", existing.display()))?;
        let inside = self.host_disk_dirs.iter().any(|d| d.canonicalize().is_ok_and(|d| real.starts_with(d)));
        if !inside {
            return Err(format!("resolves to {}, outside the directories the admin allowed", real.display()));
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => Err("is a symbolic link".into()),
            Ok(m) if !m.is_file() => Err("is not a regular file".into()),
            _ => Ok(p),
        }
    }

    pub fn bridge_allowed(&self, bridge: &str) -> bool {
        self.nad_bridges.iter().any(|b| match b.strip_suffix('*') {
            Some(prefix) => bridge.starts_with(prefix),
            None => b == bridge,
        })
    }

    pub fn sriov_allowed(&self, pci: &str) -> bool {
        self.sriov_devices.iter().any(|d| d == pci)
    }
}

/// Whether a VMI of `vmi_namespace` may use `nad` (of `nad_namespace`): its own namespace's,
/// `default`'s, or one whose NAD opts in with `NAD_SHARED_WITH`.
pub fn nad_usable_from(nad: &serde_json::Value, nad_namespace: &str, vmi_namespace: &str) -> bool {
    if nad_namespace == vmi_namespace || nad_namespace == "default" {
        return true;
    }
    crate::meta::annotation(nad, NAD_SHARED_WITH)
        .is_some_and(|list| list.split(',').map(str::trim).any(|n| n == "*" || n == vmi_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_disks_only_under_allowed_directories() {
        let none = HostAccess::default();
        assert!(none.host_disk_allowed("/srv/vm/a.img").unwrap_err().contains("--host-disk-dir"));
        let some = HostAccess { host_disk_dirs: vec!["/srv/vm".into()], ..Default::default() };
        assert!(some.host_disk_allowed("/srv/vm/a.img").is_ok());
        assert!(some.host_disk_allowed("/srv/vm/sub/a.img").is_ok());
        for bad in ["/srv/vm", "/srv/vm/.", "/srv/vmx/a.img", "/srv/vm/../etc/shadow", "relative/a.img", "/etc/x"] {
            assert!(some.host_disk_allowed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_disks_resolve_inside_on_the_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let allowed = dir.path().join("vm");
        std::fs::create_dir_all(&allowed).expect("dir");
        let outside = dir.path().join("secret");
        std::fs::write(&outside, b"key").expect("file");
        std::os::unix::fs::symlink(&outside, allowed.join("link.img")).expect("symlink");
        std::os::unix::fs::symlink(dir.path(), allowed.join("up")).expect("symlink");
        let access = HostAccess { host_disk_dirs: vec![allowed.clone()], ..Default::default() };
        let at = |p: &Path| access.host_disk_on_host(&p.display().to_string());
        assert!(at(&allowed.join("new/disk.img")).is_ok());
        assert!(at(&allowed.join("link.img")).unwrap_err().contains("symbolic link"));
        assert!(at(&allowed.join("up/secret")).unwrap_err().contains("outside"));
    }

    #[test]
    fn bridges_devices_and_shared_nads() {
        let access = HostAccess {
            nad_bridges: vec!["br-prov".into(), "lab*".into()],
            sriov_devices: vec!["0000:03:02.1".into()],
            ..Default::default()
        };
        assert!(access.bridge_allowed("br-prov") && access.bridge_allowed("lab7"));
        assert!(!access.bridge_allowed("br-pro") && !access.bridge_allowed("eth0"));
        assert!(access.sriov_allowed("0000:03:02.1") && !access.sriov_allowed("0000:03:02.2"));
        let nad = json!({"metadata": {"annotations": {NAD_SHARED_WITH: "team-b, team-c"}}});
        assert!(nad_usable_from(&nad, "team-a", "team-b"));
        assert!(!nad_usable_from(&nad, "team-a", "team-d"));
        assert!(nad_usable_from(&json!({}), "default", "team-d"));
        assert!(!nad_usable_from(&json!({}), "team-a", "team-d"));
    }
}
