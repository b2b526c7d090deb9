use super::*;
use std::process::Command;

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Streams `image` through the decoder in `chunk`-sized pieces as the importer does (each
/// piece written to the scratch first) and returns the raw bytes, or why it stood aside.
fn decode(image: &Path, chunk: usize, capacity: u64) -> Result<Vec<u8>, String> {
    decode_counting(image, chunk, capacity).map(|(raw, _)| raw)
}

/// `decode`, and how many tables or clusters were mapped behind the tables mapping them.
fn decode_counting(image: &Path, chunk: usize, capacity: u64) -> Result<(Vec<u8>, u64), String> {
    let dir = tempfile::tempdir().unwrap();
    let (scratch, staging) = (dir.path().join("scratch"), dir.path().join("raw"));
    let file = File::create(&scratch).unwrap();
    let mut decoder = Qcow2Stream::create(&staging, &scratch, capacity).unwrap();
    let original = std::fs::read(image).unwrap();
    let mut at = 0;
    for piece in original.chunks(chunk) {
        // As the importer does: what the decoder placed is left out of the scratch.
        let placed = decoder.feed(piece);
        write_unplaced(&file, at, piece, &placed).unwrap();
        at += piece.len() as u64;
    }
    file.set_len(at).unwrap();
    let behind = decoder.behind;
    match decoder.finish().unwrap() {
        Ok(raw) => {
            // qemu-img judges the scratch, holes and all.
            sh(&format!("qemu-img check -q -f qcow2 {}", scratch.display()));
            Ok((std::fs::read(raw).unwrap(), behind))
        }
        Err(why) => {
            assert!(std::fs::read(&scratch).unwrap() == original, "standing aside ({why}) left the scratch whole");
            Err(why)
        }
    }
}

/// What `qemu-img convert -O raw` makes of `image`.
fn converted(image: &Path) -> Vec<u8> {
    let out = image.with_extension("want");
    sh(&format!("qemu-img convert -q -f qcow2 -O raw {} {}", image.display(), out.display()));
    std::fs::read(out).unwrap()
}

/// Decodes `image` in pieces of several sizes, comparing each result with qemu-img's; returns
/// how many items were mapped behind their tables.
fn assert_same_as_qemu(image: &Path) -> u64 {
    let want = converted(image);
    assert!(want.iter().any(|b| *b != 0), "{}: a test image with data", image.display());
    let mut read_back = 0;
    for chunk in [1 << 20, 4096, 12345, 64 << 20] {
        let (got, back) =
            decode_counting(image, chunk, 1 << 40).unwrap_or_else(|why| panic!("{}: {why}", image.display()));
        assert_eq!(got.len(), want.len(), "{} in {chunk}-byte chunks", image.display());
        assert!(got == want, "{} in {chunk}-byte chunks: the bytes differ from qemu-img's", image.display());
        read_back = back;
    }
    read_back
}

/// A raw file of `mib` MiB with random data in some places and zeros in others.
fn patterned_raw(dir: &Path, mib: u64) -> PathBuf {
    let raw = dir.join("src.raw");
    let d = raw.display();
    sh(&format!("truncate -s {mib}M {d}"));
    for (at, len) in [(0, 3), (5, 1), (mib.saturating_sub(2), 1)] {
        sh(&format!("head -c {len}M /dev/urandom | dd of={d} bs=1M seek={at} conv=notrunc status=none"));
    }
    raw
}

#[test]
fn images_qemu_img_writes_decode_to_the_bytes_it_converts_to() {
    let dir = tempfile::tempdir().unwrap();
    let raw = patterned_raw(dir.path(), 12);
    let cases = [
        ("v3.qcow2", ""),
        ("v2.qcow2", "-o compat=0.10"),
        ("compressed.qcow2", "-c"),
        ("compressed-v2.qcow2", "-c -o compat=0.10"),
        ("big-clusters.qcow2", "-o cluster_size=2M"),
        ("compressed-big-clusters.qcow2", "-c -o cluster_size=2M"),
    ];
    for (name, flags) in cases {
        let image = dir.path().join(name);
        sh(&format!("qemu-img convert -q -f raw -O qcow2 {flags} {} {}", raw.display(), image.display()));
        assert_eq!(assert_same_as_qemu(&image), 0, "{name}: qemu-img writes tables before their data");
    }
    // A virtual size that ends inside a cluster.
    let odd = dir.path().join("odd.qcow2");
    sh(&format!(
        "truncate -s 5243392 {r} && qemu-img convert -q -f raw -O qcow2 -o cluster_size=2M {r} {o}",
        r = raw.display(),
        o = odd.display()
    ));
    assert_same_as_qemu(&odd);
}

/// Written out of order by a guest, with zeroed and discarded clusters, and with a snapshot
/// whose copy-on-write puts fresh L2 tables after the data they map: those are read back.
#[test]
fn images_written_in_place_and_snapshotted_decode_too() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("guest.qcow2");
    let i = image.display();
    sh(&format!("qemu-img create -q -f qcow2 {i} 64M"));
    let io = |cmds: &[&str]| {
        let args: Vec<String> = cmds.iter().map(|c| format!("-c '{c}'")).collect();
        sh(&format!("qemu-io -f qcow2 {} {i}", args.join(" ")));
    };
    io(&["write -P 0x11 60M 1M", "write -P 0x22 1M 3M", "write -P 0x33 30M 64k", "write -P 0x44 0 4k"]);
    io(&["write -z 2M 512k", "discard 3M 1M"]);
    sh(&format!("qemu-img snapshot -c first {i}"));
    io(&["write -P 0x55 1536k 64k", "write -P 0x66 61M 128k", "write -P 0x77 45M 1M"]);
    assert!(assert_same_as_qemu(&image) > 0, "the copied L2 table maps clusters behind it");
}

#[test]
fn shapes_it_does_not_handle_stand_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!("head -c 1M /dev/urandom > {d}/r.raw"));
    let cases = [
        (
            "small.qcow2",
            format!("qemu-img convert -q -f raw -O qcow2 -o cluster_size=512 {d}/r.raw {d}/small.qcow2"),
            "cluster bits",
        ),
        ("backed.qcow2", format!("qemu-img create -q -f qcow2 -F raw -b {d}/r.raw {d}/backed.qcow2"), "backing file"),
        (
            "zstd.qcow2",
            format!("qemu-img convert -q -f raw -O qcow2 -o compression_type=zstd {d}/r.raw {d}/zstd.qcow2"),
            "compression type 1",
        ),
        (
            "ext-l2.qcow2",
            format!("qemu-img convert -q -f raw -O qcow2 -o extended_l2=on {d}/r.raw {d}/ext-l2.qcow2"),
            "incompatible features 0x10",
        ),
        (
            "data.qcow2",
            format!("qemu-img create -q -f qcow2 -o data_file={d}/data.raw {d}/data.qcow2 1M"),
            "incompatible features 0x4",
        ),
        ("big.qcow2", format!("qemu-img create -q -f qcow2 {d}/big.qcow2 1G"), "more than the volume"),
    ];
    for (name, make, why) in cases {
        sh(&make);
        let err = decode(&dir.path().join(name), 1 << 20, 512 << 20).unwrap_err();
        assert!(err.contains(why), "{name}: {err}");
    }
    sh(&format!("qemu-img convert -q -f raw -O qcow2 {d}/r.raw {d}/whole.qcow2 && head -c 300000 {d}/whole.qcow2 > {d}/cut.qcow2"));
    let err = decode(&dir.path().join("cut.qcow2"), 1 << 20, 1 << 30).unwrap_err();
    assert!(err.contains("past the end"), "{err}");
    let err = decode(&dir.path().join("r.raw"), 1 << 20, 1 << 30).unwrap_err();
    assert!(err.contains("not a qcow2 header"), "{err}");
}

/// Byte offsets of an image's L1 table and of its first L2 table.
fn tables(image: &[u8]) -> (usize, usize) {
    let l1 = u64::from_be_bytes(image[40..48].try_into().unwrap()) as usize;
    let l2 = (u64::from_be_bytes(image[l1..l1 + 8].try_into().unwrap()) & OFFSET_MASK) as usize;
    (l1, l2)
}

/// A tenant's image can say anything: entries mapped far ahead, reserved bits, a compressed
/// cluster that inflates to more than a cluster. Each stands the decoder aside (qemu-img then
/// judges the image) without the decoder allocating or writing what the image claims.
#[test]
fn hostile_tables_stand_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!(
        "head -c 1M /dev/urandom > {d}/r.raw && qemu-img convert -q -f raw -O qcow2 {d}/r.raw {d}/plain.qcow2"
    ));
    let plain = std::fs::read(dir.path().join("plain.qcow2")).unwrap();
    let (l1, l2) = tables(&plain);
    let patched = |name: &str, at: usize, entry: u64| {
        let mut image = plain.clone();
        image[at..at + 8].copy_from_slice(&entry.to_be_bytes());
        let path = dir.path().join(name);
        std::fs::write(&path, image).unwrap();
        decode(&path, 1 << 20, 1 << 30).unwrap_err()
    };
    // A data cluster a TiB ahead of the image's end.
    assert!(patched("ahead.qcow2", l2, COPIED | (1 << 40)).contains("past the end"));
    assert!(patched("reserved-l2.qcow2", l2, COPIED | (3 << 57) | 0x50000).contains("reserved bits"));
    assert!(patched("reserved-l1.qcow2", l1, (1 << 5) | l2 as u64).contains("reserved bits"));
    assert!(patched("unaligned.qcow2", l2, COPIED | 0x50200).contains("unaligned"));
    // Compressed, pointing at random bytes: whatever they inflate to, it is not one cluster.
    assert!(patched("bad-deflate.qcow2", l2, COMPRESSED | (1 << 54) | 0x50000).contains("does not inflate"));
    // An L1 table of a million entries for a 1 MiB disk is fine (the spare ones are not read);
    // one larger than QEMU allows is not.
    let mut image = plain.clone();
    image[36..40].copy_from_slice(&(16u32 << 20).to_be_bytes());
    std::fs::write(dir.path().join("l1.qcow2"), image).unwrap();
    assert!(decode(&dir.path().join("l1.qcow2"), 1 << 20, 1 << 30).unwrap_err().contains("L1 table of"));
}

/// Every L2 entry of a large image pointing ahead, past what the decoder keeps waiting: it
/// stops waiting at its bound instead of growing with the image's claims.
#[test]
fn entries_waiting_for_their_bytes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 -o cluster_size=2M {} 4T", path.display()));
    let mut image = std::fs::read(&path).unwrap();
    let l1 = u64::from_be_bytes(image[40..48].try_into().unwrap()) as usize;
    // Every L1 entry names an L2 table, and every L2 table maps every cluster 1 TiB ahead.
    let (cluster, l1_entries) = (2u64 << 20, 5usize);
    let l2_at = image.len().next_multiple_of(cluster as usize);
    image.resize(l2_at + l1_entries * cluster as usize, 0);
    for i in 0..l1_entries {
        let table = l2_at + i * cluster as usize;
        image[l1 + 8 * i..l1 + 8 * i + 8].copy_from_slice(&(COPIED | table as u64).to_be_bytes());
        for j in 0..(cluster / 8) as usize {
            let host = (1u64 << 40) + ((i * 262_144 + j) as u64) * cluster;
            image[table + 8 * j..table + 8 * j + 8].copy_from_slice(&(COPIED | host).to_be_bytes());
        }
    }
    std::fs::write(&path, image).unwrap();
    let err = decode(&path, 1 << 20, 1 << 43).unwrap_err();
    assert!(err.contains("more than") && err.contains("mapped ahead"), "{err}");
}

/// The decoder stands aside late, after placing (and leaving out of the scratch) a first L2
/// table's clusters: the scratch is whole again for qemu-img, checked by `decode`.
#[test]
fn standing_aside_late_puts_the_scratch_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two-tables.qcow2");
    let p = path.display();
    sh(&format!("qemu-img create -q -f qcow2 {p} 1G"));
    sh(&format!("qemu-io -f qcow2 -c 'write -P 0x5a 0 4M' -c 'write -P 0xa5 600M 2M' {p}"));
    let mut image = std::fs::read(&path).unwrap();
    let l1 = u64::from_be_bytes(image[40..48].try_into().unwrap()) as usize;
    let second = (u64::from_be_bytes(image[l1 + 8..l1 + 16].try_into().unwrap()) & OFFSET_MASK) as usize;
    let first_data = u64::from_be_bytes(image[second..second + 8].try_into().unwrap());
    image[second..second + 8].copy_from_slice(&(first_data | (1 << 57)).to_be_bytes());
    std::fs::write(&path, &image).unwrap();
    for chunk in [1 << 20, 65536, 12345] {
        let err = decode(&path, chunk, 1 << 30).unwrap_err();
        assert!(err.contains("reserved bits"), "{err}");
    }
}
