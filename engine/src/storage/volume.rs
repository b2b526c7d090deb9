//! The OS side of volumes, behind `VolumeTool`: `qemu-img` (info, check, convert), copies that
//! reflink where the filesystem can, and loop devices for block-mode claims.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::StorageError;

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: String,
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    pub data_file: Option<String>,
    /// Extent files other than the image itself (vmdk descriptors can name any file).
    pub extents: Vec<String>,
}

impl ImageInfo {
    /// From `qemu-img info --output json` of the image at `path`.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self, StorageError> {
        let format = v.get("format").and_then(Value::as_str).unwrap_or_default().to_string();
        let virtual_size = v
            .get("virtual-size")
            .and_then(Value::as_u64)
            .ok_or_else(|| StorageError::refused("qemu-img could not tell the image's virtual size"))?;
        Ok(ImageInfo {
            format,
            virtual_size,
            backing_file: v.get("backing-filename").and_then(Value::as_str).map(str::to_string),
            data_file: v.pointer("/format-specific/data/data-file").and_then(Value::as_str).map(str::to_string),
            extents: v
                .pointer("/format-specific/data/extents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("filename").and_then(Value::as_str))
                .filter(|f| Path::new(f) != path)
                .map(str::to_string)
                .collect(),
        })
    }
}

pub trait VolumeTool: Send + Sync {
    fn info(&self, path: &Path) -> Result<ImageInfo, StorageError>;
    /// Consistency check of a qcow2 image (catches truncation).
    fn check(&self, path: &Path, format: &str) -> Result<(), StorageError>;
    /// Writes `src` (in `format`) to `dst` as sparse raw, telling `progress` the fraction done.
    fn convert_to_raw(&self, src: &Path, format: &str, dst: &Path, progress: &dyn Fn(f64)) -> Result<(), StorageError>;
    /// A copy of `src` at `dst`: a reflink where the filesystem offers it, else sparse.
    fn copy(&self, src: &Path, dst: &Path) -> Result<(), StorageError>;
    /// A loop device over `file` (the one already attached, if any).
    fn attach_block(&self, file: &Path) -> Result<PathBuf, StorageError>;
    /// Detaches every loop device over `file`.
    fn detach_block(&self, file: &Path) -> Result<(), StorageError>;
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<String, StorageError> {
    let out = cmd.output().map_err(|e| StorageError::Tool { tool, message: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // coreutils' `timeout` exits 124 (137 once it had to kill); prlimit's CPU cap is SIGXCPU.
        if matches!(out.status.code(), Some(124 | 137)) || out.status.code().is_none() {
            message = format!("stopped at its time or resource limit {message}").trim().to_string();
        }
        Err(StorageError::Tool { tool, message })
    }
}

/// The last `(12.34/100%)` in qemu-img's `-p` output, as a fraction.
pub fn parse_qemu_progress(text: &str) -> Option<f64> {
    let start = text.rfind('(')?;
    let rest = &text[start + 1..];
    let (done, _) = rest.split_once("/100%")?;
    done.trim().parse::<f64>().ok().map(|p| (p / 100.0).clamp(0.0, 1.0))
}

/// Runs qemu-img with `-p`, passing its progress on as it comes.
fn run_with_progress(cmd: &mut Command, progress: &dyn Fn(f64)) -> Result<(), StorageError> {
    use std::io::Read;
    let tool = "qemu-img";
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| StorageError::Tool { tool, message: e.to_string() })?;
    let mut stderr = child.stderr.take();
    // stderr is drained on a thread so a chatty failure can't block the progress reads.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(p) = parse_qemu_progress(&String::from_utf8_lossy(&buf[..n])) {
                progress(p);
            }
        }
    }
    let status = child.wait().map_err(|e| StorageError::Tool { tool, message: e.to_string() })?;
    let message = errors.join().unwrap_or_default().trim().to_string();
    if status.success() {
        Ok(())
    } else {
        Err(StorageError::Tool { tool, message })
    }
}

/// `qemu-img` on an image a tenant supplied, bounded: coreutils' `timeout` for the wall clock and,
/// for `info`, util-linux's `prlimit` for address space and CPU time (1 GiB, 30 s: what Nova
/// and CDI up to 1.65 use), so a crafted header can neither hang an import nor eat the host.
fn qemu_img_limited(wall_seconds: u64, rlimits: bool) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &wall_seconds.to_string()]);
    if rlimits {
        cmd.args([
            "prlimit",
            &format!("--as={QEMU_IMG_INFO_ADDRESS_SPACE}"),
            &format!("--cpu={QEMU_IMG_INFO_CPU_SECONDS}"),
        ]);
    }
    cmd.arg("qemu-img");
    cmd
}

pub const QEMU_IMG_INFO_ADDRESS_SPACE: u64 = 1 << 30;
pub const QEMU_IMG_INFO_CPU_SECONDS: u64 = 30;
/// `qemu-img check` reads the metadata of the whole image.
const QEMU_IMG_CHECK_SECONDS: u64 = 600;
/// A conversion writes the whole volume; the longest a tenant's image may keep a core busy.
const QEMU_IMG_CONVERT_SECONDS: u64 = 4 * 3600;

/// Debian's `qemu-img`, coreutils `cp` and util-linux `losetup`.
pub struct SystemVolumeTool;

impl VolumeTool for SystemVolumeTool {
    fn info(&self, path: &Path) -> Result<ImageInfo, StorageError> {
        let out = run("qemu-img", qemu_img_limited(60, true).args(["info", "--output", "json"]).arg(path))
            .map_err(|e| StorageError::refused(format!("not a readable disk image: {e}")))?;
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| StorageError::refused(format!("qemu-img info gave unreadable output: {e}")))?;
        ImageInfo::from_json(&v, path)
    }
    fn check(&self, path: &Path, format: &str) -> Result<(), StorageError> {
        if format != "qcow2" {
            return Ok(());
        }
        run("qemu-img", qemu_img_limited(QEMU_IMG_CHECK_SECONDS, false).args(["check", "-q", "-f", format]).arg(path))
            .map(|_| ())
            .map_err(|e| StorageError::refused(format!("the qcow2 image is damaged or truncated: {e}")))
    }
    fn convert_to_raw(&self, src: &Path, format: &str, dst: &Path, progress: &dyn Fn(f64)) -> Result<(), StorageError> {
        // `-t none` (O_DIRECT), as CDI's importer: the image is on disk when qemu-img exits, and
        // it is faster here than buffered writes plus an fsync. Pools on filesystems that refuse
        // O_DIRECT (tmpfs) get buffered writes; the caller fsyncs.
        let convert = |cache: Option<&str>| {
            let mut cmd = qemu_img_limited(QEMU_IMG_CONVERT_SECONDS, false);
            cmd.args(["convert", "-p"]);
            if let Some(c) = cache {
                cmd.args(["-t", c]);
            }
            cmd.args(["-f", format, "-O", "raw"]).arg(src).arg(dst);
            run_with_progress(&mut cmd, progress)
        };
        match convert(Some("none")) {
            Err(StorageError::Tool { message, .. })
                if message.contains("Invalid argument") || message.contains("O_DIRECT") =>
            {
                let _ = std::fs::remove_file(dst);
                convert(None)
            }
            other => other,
        }
    }
    fn copy(&self, src: &Path, dst: &Path) -> Result<(), StorageError> {
        run("cp", Command::new("cp").args(["--reflink=auto", "--sparse=always"]).arg(src).arg(dst)).map(|_| ())
    }
    fn attach_block(&self, file: &Path) -> Result<PathBuf, StorageError> {
        let existing = run("losetup", Command::new("losetup").arg("-j").arg(file))?;
        if let Some(dev) = existing.lines().next().and_then(|l| l.split(':').next()).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dev));
        }
        let dev = run("losetup", Command::new("losetup").args(["-f", "--show"]).arg(file))?;
        Ok(PathBuf::from(dev.trim()))
    }
    fn detach_block(&self, file: &Path) -> Result<(), StorageError> {
        let existing = run("losetup", Command::new("losetup").arg("-j").arg(file))?;
        for dev in existing.lines().filter_map(|l| l.split(':').next()).filter(|d| !d.is_empty()) {
            run("losetup", Command::new("losetup").arg("-d").arg(dev))?;
        }
        Ok(())
    }
}

/// The image formats an import may bring, by their first bytes; `None` for raw data.
pub fn sniff_image_format(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"QFI\xfb") {
        Some("qcow2")
    } else if head.starts_with(b"KDMV") {
        Some("vmdk")
    } else if head.starts_with(b"vhdxfile") {
        Some("vhdx")
    } else if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        Some("vdi")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_progress_lines_parse() {
        assert_eq!(parse_qemu_progress("    (0.00/100%)\r    (42.50/100%)\r"), Some(0.425));
        assert_eq!(parse_qemu_progress("    (100.00/100%)\n"), Some(1.0));
        assert_eq!(parse_qemu_progress("nothing"), None);
    }

    #[test]
    fn formats_are_told_by_their_magic() {
        assert_eq!(sniff_image_format(b"QFI\xfb\0\0\0\x03"), Some("qcow2"));
        assert_eq!(sniff_image_format(b"KDMV\x01"), Some("vmdk"));
        assert_eq!(sniff_image_format(b"vhdxfile...."), Some("vhdx"));
        let mut vdi = vec![0u8; 0x48];
        vdi[0x40..0x44].copy_from_slice(&[0x7f, 0x10, 0xda, 0xbe]);
        assert_eq!(sniff_image_format(&vdi), Some("vdi"));
        assert_eq!(sniff_image_format(&[0u8; 512]), None);
    }

    /// The real qemu-img on real files: every format it can write converts back to raw.
    #[test]
    fn the_real_tools_convert_and_describe_images() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("src.raw");
        std::fs::write(&raw, [7u8; 65536]).unwrap();
        let tool = SystemVolumeTool;
        for format in ["qcow2", "vmdk", "vdi", "vhdx"] {
            let img = dir.path().join(format!("img.{format}"));
            let status = Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", format])
                .arg(&raw)
                .arg(&img)
                .status()
                .unwrap();
            assert!(status.success());
            let head = std::fs::read(&img).unwrap();
            assert_eq!(sniff_image_format(&head[..512]), Some(format));
            let info = tool.info(&img).unwrap();
            assert_eq!(info.format, format);
            assert!(info.virtual_size >= 65536);
            assert!(info.extents.is_empty(), "{format}: {:?}", info.extents);
            tool.check(&img, format).unwrap();
            let out = dir.path().join(format!("{format}.raw"));
            let seen = std::sync::Mutex::new(vec![]);
            tool.convert_to_raw(&img, format, &out, &|p| seen.lock().unwrap().push(p)).unwrap();
            assert_eq!(seen.lock().unwrap().last(), Some(&1.0), "{format}");
            assert_eq!(&std::fs::read(&out).unwrap()[..65536], &[7u8; 65536][..]);
        }
    }
}
