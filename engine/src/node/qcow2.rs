//! A qcow2 overlay over a container disk, written here instead of by `qemu-img create`.
//!
//! An overlay is four clusters of metadata — the header with the backing file's name and
//! format, a refcount table, one refcount block and an empty L1 table — and nothing else, so
//! writing it costs a few system calls where `qemu-img create` cost a process (two, under
//! `timeout`) and about 7 ms of CPU for every VMI started (measured in P1). The bytes are the
//! ones QEMU 7.2's `qemu-img create -f qcow2 -F FMT -b BASE` writes, checked byte for byte
//! by a test; images outside that simple shape (a very large disk, a very long path) are left
//! to `qemu-img`.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Guest bytes one L2 table maps: a cluster of 8-byte entries, each a cluster.
const L2_COVERS: u64 = CLUSTER * (CLUSTER / 8);
/// One cluster of L1 entries: 4 TiB of guest disk. Larger overlays go to `qemu-img`.
pub const MAX_VIRTUAL_SIZE: u64 = L2_COVERS * (CLUSTER / 8);
/// QEMU refuses longer backing file names.
pub const MAX_BACKING_NAME: usize = 1023;

const HEADER_LENGTH: u32 = 112;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_FEATURE_NAMES: u32 = 0x6803_F857;
/// The feature name table QEMU 7.2 writes: (type, bit, name). Type 0 incompatible, 1
/// compatible, 2 autoclear; none of them is set in a new overlay.
const FEATURE_NAMES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];
const REFCOUNT_TABLE: u64 = CLUSTER;
const REFCOUNT_BLOCK: u64 = 2 * CLUSTER;
const L1_TABLE: u64 = 3 * CLUSTER;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("an overlay of {0} bytes is larger than this writer handles")]
    TooLarge(u64),
    #[error("the backing file's name is {0} bytes; qcow2 allows {MAX_BACKING_NAME}")]
    NameTooLong(usize),
    #[error("an empty base needs no overlay of this shape")]
    Empty,
    #[error("the backing file's path is not UTF-8")]
    NameNotUtf8,
    #[error("backing format {0:?} is neither raw nor qcow2")]
    Format(String),
    #[error("writing the overlay: {0}")]
    Io(#[from] std::io::Error),
}

/// The first cluster's bytes (header, extensions, backing name) and the L1 table's entries,
/// for an overlay of `virtual_size` bytes over `backing` in `backing_format`.
fn header(backing: &str, backing_format: &str, virtual_size: u64) -> Result<(Vec<u8>, u64), OverlayError> {
    if !matches!(backing_format, "raw" | "qcow2") {
        return Err(OverlayError::Format(backing_format.to_string()));
    }
    if backing.len() > MAX_BACKING_NAME {
        return Err(OverlayError::NameTooLong(backing.len()));
    }
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(OverlayError::TooLarge(virtual_size));
    }
    if virtual_size == 0 {
        return Err(OverlayError::Empty);
    }
    // QEMU sizes an overlay by its base in whole 512-byte sectors.
    let size = virtual_size.div_ceil(512) * 512;
    let l1_entries = size.div_ceil(L2_COVERS);

    let mut extensions = Vec::new();
    let mut extension = |kind: u32, data: &[u8]| {
        extensions.extend_from_slice(&kind.to_be_bytes());
        extensions.extend_from_slice(&(data.len() as u32).to_be_bytes());
        extensions.extend_from_slice(data);
        extensions.resize(extensions.len().next_multiple_of(8), 0);
    };
    extension(EXT_BACKING_FORMAT, backing_format.as_bytes());
    let mut names = Vec::with_capacity(FEATURE_NAMES.len() * 48);
    for (kind, bit, name) in FEATURE_NAMES {
        let mut entry = [0u8; 48];
        entry[0] = kind;
        entry[1] = bit;
        entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
        names.extend_from_slice(&entry);
    }
    extension(EXT_FEATURE_NAMES, &names);
    extension(0, &[]);
    let backing_offset = u64::from(HEADER_LENGTH) + extensions.len() as u64;

    let mut h = Vec::with_capacity(backing_offset as usize + backing.len());
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&backing_offset.to_be_bytes());
    h.extend_from_slice(&(backing.len() as u32).to_be_bytes());
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_entries as u32).to_be_bytes());
    h.extend_from_slice(&L1_TABLE.to_be_bytes());
    h.extend_from_slice(&REFCOUNT_TABLE.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit refcounts
    h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
    h.resize(HEADER_LENGTH as usize, 0); // compression type zlib, padding
    h.extend_from_slice(&extensions);
    h.extend_from_slice(backing.as_bytes());
    Ok((h, l1_entries))
}

/// Writes the overlay at `path` (through a temporary name, so a crash never leaves half an
/// overlay where the next start would take it for whole).
pub fn write_overlay(path: &Path, backing: &Path, backing_format: &str, virtual_size: u64) -> Result<(), OverlayError> {
    let name = backing.to_str().ok_or(OverlayError::NameNotUtf8)?;
    let (first, l1_entries) = header(name, backing_format, virtual_size)?;
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial)?;
    let written = (|| -> std::io::Result<()> {
        (&file).write_all(&first)?;
        file.write_all_at(&REFCOUNT_BLOCK.to_be_bytes(), REFCOUNT_TABLE)?;
        // Header, refcount table, refcount block and L1 table are each used once.
        file.write_all_at(&[0, 1, 0, 1, 0, 1, 0, 1], REFCOUNT_BLOCK)?;
        // The L1 table is all zeros (nothing allocated): a hole reads as zeros.
        file.set_len(L1_TABLE + l1_entries * 8)
    })();
    drop(file);
    match written.and_then(|()| std::fs::rename(&partial, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(cmd: &str) -> String {
        let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has_qemu_img() -> bool {
        std::process::Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    #[test]
    fn the_bytes_are_qemu_imgs() {
        if !has_qemu_img() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // Sizes: one sector short of a MiB, odd (rounded up to a sector), several L2 tables.
        for (i, (bytes, format)) in
            [(1u64 << 20, "raw"), (1000, "raw"), (5u64 << 30, "raw"), (3u64 << 30, "qcow2")].into_iter().enumerate()
        {
            let base = dir.path().join(format!("base{i}.{format}"));
            if format == "raw" {
                std::fs::File::create(&base).unwrap().set_len(bytes).unwrap();
            } else {
                sh(&format!("qemu-img create -q -f qcow2 {} {bytes}", base.display()));
            }
            sh(&format!("qemu-img create -q -f qcow2 -F {format} -b {} {d}/theirs{i}.qcow2", base.display()));
            let ours = dir.path().join(format!("ours{i}.qcow2"));
            write_overlay(&ours, &base, format, bytes).unwrap();
            let theirs = std::fs::read(dir.path().join(format!("theirs{i}.qcow2"))).unwrap();
            assert_eq!(std::fs::read(&ours).unwrap(), theirs, "{bytes} bytes over {format}");
            sh(&format!("qemu-img check -q {}", ours.display()));
            assert!(!dir.path().join(format!("ours{i}.partial")).exists());
        }
    }

    #[test]
    fn qemu_writes_through_it_and_the_base_stays_as_it_was() {
        if !has_qemu_img() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        sh(&format!("head -c 3145728 /dev/urandom > {d}/base.raw"));
        let before = std::fs::read(dir.path().join("base.raw")).unwrap();
        let overlay = dir.path().join("o.qcow2");
        write_overlay(&overlay, &dir.path().join("base.raw"), "raw", before.len() as u64).unwrap();
        sh(&format!("qemu-img compare -q -f qcow2 -F raw {d}/o.qcow2 {d}/base.raw"));
        sh(&format!("qemu-io -f qcow2 -c 'write -P 0x5a 1M 64k' {d}/o.qcow2"));
        sh(&format!("qemu-img check -q {d}/o.qcow2"));
        sh(&format!("qemu-io -f qcow2 -c 'read -P 0x5a 1M 64k' {d}/o.qcow2"));
        assert_eq!(std::fs::read(dir.path().join("base.raw")).unwrap(), before);
        let info = sh(&format!("qemu-img info --output json {d}/o.qcow2"));
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["backing-filename-format"], "raw");
        assert_eq!(info["virtual-size"], 3145728);
    }

    /// Attack: a tenant's container disk whose qcow2 header claims an empty or a huge disk.
    /// Neither panics nor fails the start: the writer leaves them to qemu-img, whose overlays
    /// are whole.
    #[test]
    fn odd_sized_bases_go_to_qemu_img() {
        use crate::node::disks::{DiskTool, SystemDiskTool};
        if !has_qemu_img() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [0u64, 8 << 40].into_iter().enumerate() {
            let base = dir.path().join(format!("base{i}.qcow2"));
            sh(&format!("qemu-img create -q -f qcow2 {} {size}", base.display()));
            let overlay = dir.path().join(format!("o{i}.qcow2"));
            SystemDiskTool.create_overlay(&base, "qcow2", size, &overlay).unwrap();
            sh(&format!("qemu-img check -q {}", overlay.display()));
            let info = sh(&format!("qemu-img info --output json {}", overlay.display()));
            let info: serde_json::Value = serde_json::from_str(&info).unwrap();
            assert_eq!(info["virtual-size"], size);
        }
    }

    #[test]
    fn shapes_it_does_not_write_are_refused() {
        assert!(matches!(header("/b", "vmdk", 1 << 20), Err(OverlayError::Format(_))));
        assert!(matches!(header(&"x".repeat(1024), "raw", 1 << 20), Err(OverlayError::NameTooLong(1024))));
        assert!(matches!(header("/b", "raw", MAX_VIRTUAL_SIZE + 1), Err(OverlayError::TooLarge(_))));
        assert!(matches!(header("/b", "raw", u64::MAX), Err(OverlayError::TooLarge(_))));
        assert_eq!(header("/b", "raw", MAX_VIRTUAL_SIZE).unwrap().1, CLUSTER / 8);
        // qemu-img gives an empty base's overlay no L1 table at all: left to it.
        assert!(matches!(header("/b", "raw", 0), Err(OverlayError::Empty)));
    }
}
