//! Guests' serial console logs, kept as KubeVirt's `guest-console-log` (virt-tail) keeps them:
//! QEMU appends the serial port's output to `serial0.log` in the VMI's directory; the node
//! rotates it at `LOG_LIMIT` into `serial0.log.1` (one generation), so a chatty guest holds at
//! most twice that on the node's disk. Rotation is copy-then-truncate: QEMU's file is opened
//! for appending, so its next write lands at the start of the emptied file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where a log rotates.
pub const LOG_LIMIT: u64 = 1 << 20;
/// What one read returns at most (both generations).
pub const READ_LIMIT: u64 = 2 * LOG_LIMIT;

fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `log` when it has reached `limit` bytes; true when it did.
pub fn rotate_if_full(log: &Path, limit: u64) -> std::io::Result<bool> {
    let size = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size < limit {
        return Ok(false);
    }
    let older = rotated(log);
    let partial = older.with_extension("1.partial");
    std::fs::copy(log, &partial)?;
    std::fs::rename(&partial, &older)?;
    // The bytes QEMU wrote between the copy and this point are lost; at a console's pace, a
    // few bytes at most, against holding the whole file's lock on QEMU's writes.
    OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

/// Rotates every VMI's log under the node's `vmis` directory that is full.
pub fn rotate_all(vmis_dir: &Path, limit: u64) {
    let Ok(entries) = std::fs::read_dir(vmis_dir) else { return };
    for entry in entries.flatten() {
        let log = crate::launcher::build::serial_log(&entry.path());
        if let Err(e) = rotate_if_full(&log, limit) {
            tracing::warn!(log = %log.display(), error = %e, "rotating a console log");
        }
    }
}

/// How much of the log to return, as `kubectl logs` asks (`tailLines`, `limitBytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
}

fn tail_of(file: &Path, keep: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    let skip = size.saturating_sub(keep);
    f.seek(SeekFrom::Start(skip))?;
    let mut out = Vec::new();
    f.take(keep).read_to_end(&mut out)?;
    Ok(out)
}

/// The log so far, older generation first, cut to `window` (and to `READ_LIMIT`).
pub fn read(log: &Path, window: Window) -> std::io::Result<Vec<u8>> {
    let keep = window.limit_bytes.unwrap_or(READ_LIMIT).min(READ_LIMIT);
    let newer = tail_of(log, keep)?;
    let mut text = tail_of(&rotated(log), keep - newer.len() as u64)?;
    text.extend_from_slice(&newer);
    if let Some(lines) = window.tail_lines {
        text.drain(..line_cut(&text, lines));
    }
    Ok(text)
}

/// Where the last `lines` lines of `text` begin (a final newline ends a line, it starts none).
fn line_cut(text: &[u8], lines: u64) -> usize {
    if lines == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_full_log_rotates_and_the_writer_carries_on_at_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("serial0.log");
        // QEMU's side: one descriptor opened for appending, kept across the rotation.
        let mut qemu = OpenOptions::new().create(true).append(true).open(&log).expect("open");
        qemu.write_all(&vec![b'a'; 1500]).expect("write");
        qemu.write_all(b"\nlast before\n").expect("write");
        assert!(!rotate_if_full(&log, 4096).expect("rotate"), "under the limit it stays");
        assert!(rotate_if_full(&log, 1000).expect("rotate"));
        qemu.write_all(b"first after\n").expect("write");
        assert_eq!(std::fs::read(&log).expect("read"), b"first after\n", "no hole before the new bytes");
        let all = read(&log, Window::default()).expect("read");
        assert!(all.ends_with(b"last before\nfirst after\n"));
        assert_eq!(all.len(), 1500 + 13 + 12);
        // A second rotation keeps one older generation only.
        assert!(rotate_if_full(&log, 5).expect("rotate"));
        assert_eq!(read(&log, Window::default()).expect("read"), b"first after\n");
    }

    #[test]
    fn a_window_takes_the_last_lines_or_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("serial0.log");
        std::fs::write(rotated(&log), b"one\ntwo\n").expect("write");
        std::fs::write(&log, b"three\nfour\n").expect("write");
        let lines = |n| read(&log, Window { tail_lines: Some(n), limit_bytes: None }).expect("read");
        assert_eq!(lines(1), b"four\n");
        assert_eq!(lines(3), b"two\nthree\nfour\n");
        assert_eq!(lines(10), b"one\ntwo\nthree\nfour\n");
        assert_eq!(lines(0), b"");
        let bytes = read(&log, Window { tail_lines: None, limit_bytes: Some(7) }).expect("read");
        assert_eq!(bytes, b"e\nfour\n");
        let huge = read(&log, Window { tail_lines: None, limit_bytes: Some(u64::MAX) }).expect("read");
        assert_eq!(huge, b"one\ntwo\nthree\nfour\n");
        assert!(read(&dir.path().join("none.log"), Window::default()).expect("missing").is_empty());
    }
}
