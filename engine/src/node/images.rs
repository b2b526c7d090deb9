//! The node's local image store: container images (OCI image layout) unpacked by manifest digest,
//! and a table from image reference to digest. `converge image import DIR|TAR` fills it; the
//! storage issue's registry pull will fill the same store. containerDisk and kernelBoot volumes
//! read their files from here.
//!
//! Layout under the store's root:
//!   refs.json                      {"reference": "sha256:…"}
//!   sha256-<hex>/rootfs/…          the image's layers, applied in order

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0:?} is not in this node's image store (import it with `converge image import`)")]
    NotFound(String),
    #[error("{0} is not an OCI image layout: {1}")]
    NotOci(String, String),
    #[error("image {image:?} has no file {path:?}")]
    NoSuchFile { image: String, path: String },
    #[error("image {0:?} holds no disk under /disk (a regular file, not a link)")]
    NoDisk(String),
    #[error("image {image:?}: {path:?} is a link that leads out of the image or to no regular file")]
    Outside { image: String, path: String },
    #[error("image store I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub struct ImageStore {
    root: PathBuf,
}

fn read_json(path: &Path) -> Result<Value, ImageError> {
    let text = fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| ImageError::NotOci(path.display().to_string(), e.to_string()))
}

/// `docker.io/library/x:latest`, `x` and `x:latest` name the same image, as container runtimes read them.
pub fn normalize_reference(reference: &str) -> String {
    let (name, tag) = match reference.rsplit_once('@') {
        Some((n, digest)) => (n.to_string(), format!("@{digest}")),
        None => match reference.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((n, t)) => (n.to_string(), format!(":{t}")),
            None => (reference.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or("");
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = match (has_registry, name.contains('/')) {
        (true, _) => name,
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    format!("{name}{tag}")
}

/// One layer into `rootfs`: device nodes and fifos are left out, and setuid, setgid and sticky
/// bits dropped (`preserve_permissions` off keeps `mode & 0o777`); entries whose path leaves
/// the root are refused by `unpack_in`. Symlinks are kept as written, and never followed when
/// a file is looked up (`resolved_inside`).
fn unpack_layer(reader: impl Read, rootfs: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            continue;
        }
        entry.set_preserve_permissions(false);
        entry.unpack_in(rootfs)?;
    }
    Ok(())
}

/// `full`, if following its symlinks lands on a regular file still inside `root`: an image's
/// `/disk/disk.img -> /var/lib/converge/converge.db` must not hand the host's files to a guest.
fn resolved_inside(root: &Path, full: &Path) -> Option<PathBuf> {
    let root = root.canonicalize().ok()?;
    let real = full.canonicalize().ok()?;
    (real.starts_with(&root) && real.is_file()).then_some(real)
}

/// A path inside an image, refused if it climbs out of the root.
fn inside(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, Component::ParentDir | Component::Prefix(_))) {
        return None;
    }
    Some(root.join(rel))
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(ImageStore { root })
    }

    fn refs(&self) -> BTreeMap<String, String> {
        fs::read_to_string(self.root.join("refs.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn save_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let tmp = self.root.join("refs.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(refs).unwrap_or_default())?;
        fs::rename(tmp, self.root.join("refs.json"))?;
        Ok(())
    }

    /// (reference, digest) of every stored image.
    pub fn list(&self) -> Vec<(String, String)> {
        self.refs().into_iter().collect()
    }

    /// The unpacked root filesystem of `reference`.
    pub fn rootfs(&self, reference: &str) -> Result<PathBuf, ImageError> {
        let digest = self.refs().get(&normalize_reference(reference)).cloned();
        let digest = digest.ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let dir = self.root.join(digest.replace(':', "-")).join("rootfs");
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(ImageError::NotFound(reference.to_string()))
        }
    }

    /// The manifest digest `reference` names here, if the image is in the store.
    pub fn digest(&self, reference: &str) -> Option<String> {
        self.refs().get(&normalize_reference(reference)).cloned().filter(|_| self.rootfs(reference).is_ok())
    }

    /// A file inside an image.
    pub fn file(&self, reference: &str, path: &str) -> Result<PathBuf, ImageError> {
        let root = self.rootfs(reference)?;
        let no_file = || ImageError::NoSuchFile { image: reference.to_string(), path: path.to_string() };
        let full = inside(&root, path).ok_or_else(no_file)?;
        match resolved_inside(&root, &full) {
            Some(real) => Ok(real),
            // Something is there, but it leads out of the image or to no regular file.
            None if full.symlink_metadata().is_ok() => {
                Err(ImageError::Outside { image: reference.to_string(), path: path.to_string() })
            }
            None => Err(no_file()),
        }
    }

    /// A containerDisk's disk: `path` if given, else the one file under `/disk`, as KubeVirt finds it.
    pub fn disk(&self, reference: &str, path: Option<&str>) -> Result<PathBuf, ImageError> {
        if let Some(p) = path.filter(|p| !p.is_empty()) {
            return self.file(reference, p);
        }
        let root = self.rootfs(reference)?;
        let dir = root.join("disk");
        if dir.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ImageError::Outside { image: reference.to_string(), path: "/disk".into() });
        }
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|_| ImageError::NoDisk(reference.to_string()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
            .collect();
        files.sort();
        files.into_iter().next().ok_or_else(|| ImageError::NoDisk(reference.to_string()))
    }

    /// Imports every image of an OCI image layout directory or tar archive; returns the references.
    pub fn import(&self, source: &Path, reference: Option<&str>) -> Result<Vec<String>, ImageError> {
        if source.is_file() {
            let unpacked = tempfile::tempdir_in(&self.root)?;
            tar::Archive::new(fs::File::open(source)?).unpack(unpacked.path())?;
            return self.import(unpacked.path(), reference);
        }
        let src = source.display().to_string();
        let index = read_json(&source.join("index.json"))?;
        let manifests = index.get("manifests").and_then(Value::as_array).cloned().unwrap_or_default();
        if manifests.is_empty() {
            return Err(ImageError::NotOci(src, "index.json lists no manifests".into()));
        }
        let mut refs = self.refs();
        let mut imported = vec![];
        for entry in &manifests {
            let digest = entry.get("digest").and_then(Value::as_str).unwrap_or("").to_string();
            let name = reference
                .map(str::to_string)
                .or_else(|| {
                    entry
                        .pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .ok_or_else(|| ImageError::NotOci(src.clone(), "a manifest has no reference name; pass one".into()))?;
            self.unpack(source, &digest)?;
            let normalized = normalize_reference(&name);
            refs.insert(normalized.clone(), digest);
            imported.push(normalized);
        }
        self.save_refs(&refs)?;
        Ok(imported)
    }

    fn blob(source: &Path, digest: &str) -> Result<PathBuf, ImageError> {
        let (algo, hex) = digest
            .split_once(':')
            .filter(|(_, h)| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| ImageError::NotOci(source.display().to_string(), format!("bad digest {digest:?}")))?;
        Ok(source.join("blobs").join(algo).join(hex))
    }

    fn unpack(&self, source: &Path, digest: &str) -> Result<(), ImageError> {
        let target = self.root.join(digest.replace(':', "-"));
        if target.join("rootfs").is_dir() {
            return Ok(());
        }
        let manifest = read_json(&Self::blob(source, digest)?)?;
        let staging = tempfile::tempdir_in(&self.root)?;
        let rootfs = staging.path().join("rootfs");
        fs::create_dir_all(&rootfs)?;
        for layer in manifest.get("layers").and_then(Value::as_array).into_iter().flatten() {
            let layer_digest = layer.get("digest").and_then(Value::as_str).unwrap_or("");
            let mut file = fs::File::open(Self::blob(source, layer_digest)?)?;
            let mut magic = [0u8; 2];
            let n = file.read(&mut magic)?;
            let file = fs::File::open(Self::blob(source, layer_digest)?)?;
            let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
                Box::new(flate2::read::GzDecoder::new(file))
            } else {
                Box::new(file)
            };
            unpack_layer(reader, &rootfs)?;
        }
        // QEMU runs as another user and reads disks and kernels from here.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))?;
        let _ = fs::remove_dir_all(&target);
        fs::rename(staging.keep(), &target)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_container_runtimes() {
        assert_eq!(normalize_reference("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            normalize_reference("kubevirt/cirros-container-disk-demo"),
            "docker.io/kubevirt/cirros-container-disk-demo:latest"
        );
        assert_eq!(normalize_reference("quay.io/k/x:v1"), "quay.io/k/x:v1");
        assert_eq!(normalize_reference("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(normalize_reference("r.io/x@sha256:ab"), "r.io/x@sha256:ab");
    }

    /// An image whose layer holds a setuid file, a device node, a link to the host and a
    /// disk that is a link: unpacked without the bits and the node, the links never followed.
    #[test]
    fn hostile_layers_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("host-secret");
        fs::write(&secret, b"signing key").expect("secret");
        let mut layer = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, mode: u32, link: Option<&Path>, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
            }
            h.set_cksum();
            layer.append_data(&mut h, path, data).expect("append");
        };
        add("bin/su", tar::EntryType::Regular, 0o4755, None, b"#!/bin/sh\n");
        add("dev/sda", tar::EntryType::Block, 0o660, None, b"");
        add("disk/disk.img", tar::EntryType::Symlink, 0o777, Some(&secret), b"");
        add("boot/vmlinuz", tar::EntryType::Symlink, 0o777, Some(&secret), b"");
        let bytes = layer.into_inner().expect("tar");
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(&rootfs).expect("rootfs");
        unpack_layer(&bytes[..], &rootfs).expect("unpacks");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(rootfs.join("bin/su")).expect("su").permissions().mode();
        assert_eq!(mode & 0o7000, 0, "no setuid bit: {mode:o}");
        assert!(rootfs.join("dev/sda").symlink_metadata().is_err(), "no device node");
        assert!(resolved_inside(&rootfs, &rootfs.join("boot/vmlinuz")).is_none());
        assert!(resolved_inside(&rootfs, &rootfs.join("bin/su")).is_some());
    }

    #[test]
    fn paths_cannot_climb_out() {
        assert!(inside(Path::new("/r"), "../etc/passwd").is_none());
        assert_eq!(inside(Path::new("/r"), "/boot/vmlinuz"), Some(PathBuf::from("/r/boot/vmlinuz")));
    }
}
