use super::*;
use crate::storage::volume::SystemVolumeTool;
use std::process::Command;

fn target(dir: &Path, capacity: u64) -> Target {
    let t = Target { dir: dir.join("vol"), capacity };
    std::fs::create_dir_all(&t.dir).unwrap();
    t
}

fn sh(cmd: &str) {
    assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success(), "{cmd}");
}

async fn import_file(
    path: &Path,
    checksum: Option<&str>,
    t: &Target,
    seen: Arc<std::sync::Mutex<Vec<f64>>>,
) -> Result<(), StorageError> {
    let file = tokio::fs::File::open(path).await.unwrap();
    let total = file.metadata().await.unwrap().len();
    let progress: ProgressFn = Arc::new(move |p| seen.lock().unwrap().push(p));
    import_stream(file, Some(total), checksum, ContentType::Kubevirt, t, Arc::new(SystemVolumeTool), progress).await
}

/// A raw image with a recognisable pattern, then the same image as gz, xz and qcow2: every one
/// lands as the same raw bytes, grown to the volume, with progress climbing to 1.
#[tokio::test]
async fn compressed_and_qcow2_images_land_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!("head -c 1048576 /dev/urandom > {d}/img.raw && truncate -s 4M {d}/img.raw"));
    sh(&format!("gzip -k -1 {d}/img.raw && xz -k -0 -T1 {d}/img.raw"));
    sh(&format!("qemu-img convert -q -f raw -O qcow2 -c {d}/img.raw {d}/img.qcow2"));
    let want = std::fs::read(dir.path().join("img.raw")).unwrap();
    for name in ["img.raw", "img.raw.gz", "img.raw.xz", "img.qcow2"] {
        let t = target(dir.path(), 8 << 20);
        let seen = Arc::new(std::sync::Mutex::new(vec![]));
        import_file(&dir.path().join(name), None, &t, Arc::clone(&seen)).await.unwrap();
        let got = std::fs::read(t.disk()).unwrap();
        assert_eq!(got.len(), 8 << 20, "{name}");
        assert_eq!(&got[..4 << 20], &want[..], "{name}");
        let seen = seen.lock().unwrap().clone();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]) && *seen.last().unwrap() == 1.0, "{name}: {seen:?}");
        assert!(!t.dir.join(".import.scratch").exists() && !t.dir.join(".import.raw").exists());
        // A consumed scratch is unlinked off the import's path, soon after.
        let discarded = t.dir.join(".import.discarded");
        let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while discarded.exists() && std::time::Instant::now() < gone_by {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!discarded.exists(), "{name}: the discarded scratch is still there");
    }
}

#[tokio::test]
async fn checksums_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.raw");
    std::fs::write(&img, vec![1u8; 4096]).unwrap();
    let sum = hex::encode(sha2::Sha256::digest(vec![1u8; 4096]));
    let t = target(dir.path(), 1 << 20);
    let none = Arc::new(std::sync::Mutex::new(vec![]));
    import_file(&img, Some(&format!("sha256:{sum}")), &t, Arc::clone(&none)).await.unwrap();
    let t = target(dir.path(), 1 << 20);
    let err = import_file(&img, Some("sha256:00"), &t, Arc::clone(&none)).await.unwrap_err();
    assert!(err.is_final() && err.to_string().contains("checksum mismatch"), "{err}");
    let err = import_file(&img, Some("md5:00"), &t, none).await.unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
}

/// CDI's safety list: each hostile image is refused with its reason, and the volume's disk is
/// left as it was.
#[tokio::test]
async fn hostile_images_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    sh(&format!("qemu-img create -q -f raw {d}/base.raw 1M"));
    sh(&format!("qemu-img create -q -f qcow2 -F raw -b {d}/base.raw {d}/backed.qcow2"));
    sh(&format!("qemu-img create -q -f qcow2 -o data_file={d}/data.raw {d}/datafile.qcow2 1M"));
    sh(&format!("qemu-img create -q -f qcow2 {d}/big.qcow2 100M"));
    sh(&format!(
        "head -c 1048576 /dev/urandom > {d}/r.raw && qemu-img convert -q -O qcow2 -f raw {d}/r.raw {d}/full.qcow2"
    ));
    sh(&format!("head -c 200000 {d}/full.qcow2 > {d}/truncated.qcow2"));
    sh(&format!("gzip -c {d}/r.raw | head -c 30000 > {d}/truncated.raw.gz"));
    sh(&format!("printf '<html>not found</html>' > {d}/page.html"));
    let cases = [
        ("backed.qcow2", "backing file"),
        ("datafile.qcow2", "external data file"),
        ("big.qcow2", "larger than the volume"),
        ("truncated.qcow2", "damaged or truncated"),
        ("truncated.raw.gz", "damaged or truncated"),
        ("page.html", "not a disk image"),
    ];
    for (name, want) in cases {
        let t = target(dir.path(), 8 << 20);
        std::fs::write(t.disk(), b"before").unwrap();
        let none = Arc::new(std::sync::Mutex::new(vec![]));
        let err = import_file(&dir.path().join(name), None, &t, none).await.unwrap_err();
        assert!(err.is_final(), "{name}: {err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
        assert_eq!(std::fs::read(t.disk()).unwrap(), b"before", "{name}");
    }
}

#[tokio::test]
async fn archives_unpack_inside_the_volume_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut good = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o644);
    header.set_cksum();
    good.append_data(&mut header, "etc/motd", &b"hello"[..]).unwrap();
    let good = good.into_inner().unwrap();
    let t = target(dir.path(), 1 << 20);
    let progress: ProgressFn = Arc::new(|_| {});
    let tool: Arc<dyn VolumeTool> = Arc::new(SystemVolumeTool);
    import_stream(
        std::io::Cursor::new(good.clone()),
        Some(good.len() as u64),
        None,
        ContentType::Archive,
        &t,
        Arc::clone(&tool),
        Arc::clone(&progress),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(t.files().join("etc/motd")).unwrap(), b"hello");

    // A hand-made header naming ../escape: the tar crate's builder refuses to write one.
    let mut evil = good.clone();
    evil[..100].fill(0);
    evil[..9].copy_from_slice(b"../escape");
    let mut h = tar::Header::from_byte_slice(&evil[..512]).clone();
    h.set_cksum();
    evil[..512].copy_from_slice(h.as_bytes());
    let err = import_stream(
        std::io::Cursor::new(evil.clone()),
        Some(evil.len() as u64),
        None,
        ContentType::Archive,
        &t,
        tool,
        progress,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("outside the volume"), "{err}");
    assert!(!dir.path().join("vol/escape").exists() && !dir.path().join("escape").exists());
}

#[test]
fn clones_and_blanks_fill_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, vec![9u8; 8192]).unwrap();
    let t = target(dir.path(), 1 << 20);
    clone_from(&src, &t, &SystemVolumeTool).unwrap();
    let got = std::fs::read(t.disk()).unwrap();
    assert_eq!((got.len(), &got[..8192]), (1 << 20, &[9u8; 8192][..]));
    let small = target(dir.path(), 4096);
    assert!(clone_from(&src, &small, &SystemVolumeTool).unwrap_err().to_string().contains("larger than the target"));
    blank(&t).unwrap();
    assert!(std::fs::read(t.disk()).unwrap().iter().all(|b| *b == 0));
}

/// A recording `VolumeTool`: what finalize asks of qemu-img, in order, without running it.
struct Recording {
    calls: std::sync::Mutex<Vec<&'static str>>,
    info: super::super::volume::ImageInfo,
}

impl VolumeTool for Recording {
    fn info(&self, _: &Path) -> Result<super::super::volume::ImageInfo, StorageError> {
        self.calls.lock().unwrap().push("info");
        Ok(self.info.clone())
    }
    fn check(&self, _: &Path, _: &str) -> Result<(), StorageError> {
        self.calls.lock().unwrap().push("check");
        Ok(())
    }
    fn convert_to_raw(&self, _: &Path, _: &str, dst: &Path, progress: &dyn Fn(f64)) -> Result<(), StorageError> {
        self.calls.lock().unwrap().push("convert");
        progress(1.0);
        std::fs::write(dst, vec![1u8; 4096])?;
        Ok(())
    }
    fn copy(&self, _: &Path, _: &Path) -> Result<(), StorageError> {
        self.calls.lock().unwrap().push("copy");
        Ok(())
    }
    fn attach_block(&self, _: &Path) -> Result<std::path::PathBuf, StorageError> {
        unreachable!("finalize attaches nothing")
    }
    fn detach_block(&self, _: &Path) -> Result<(), StorageError> {
        unreachable!("finalize detaches nothing")
    }
}

/// finalize's order with a recording tool: checks before the conversion, none after a refusal,
/// and the converted image grown to the volume.
#[test]
fn finalize_checks_before_it_converts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("scratch");
    let mut qcow2 = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow2.resize(4096, 0);
    std::fs::write(&src, &qcow2).unwrap();
    let info = |virtual_size| super::super::volume::ImageInfo {
        format: "qcow2".into(),
        virtual_size,
        backing_file: None,
        data_file: None,
        extents: vec![],
    };
    let t = target(dir.path(), 1 << 20);
    let too_big = Recording { calls: Default::default(), info: info(2 << 20) };
    assert!(finalize(&src, false, false, &t, &too_big, &|_| {})
        .unwrap_err()
        .to_string()
        .contains("larger than the volume"));
    assert_eq!(*too_big.calls.lock().unwrap(), vec!["info"]);
    assert!(!t.disk().exists());
    let fits = Recording { calls: Default::default(), info: info(1 << 20) };
    finalize(&src, true, false, &t, &fits, &|_| {}).unwrap();
    assert_eq!(*fits.calls.lock().unwrap(), vec!["info", "check", "convert"]);
    assert_eq!(std::fs::metadata(t.disk()).unwrap().len(), 1 << 20);
    assert!(!src.exists(), "an owned scratch file is removed");
}
