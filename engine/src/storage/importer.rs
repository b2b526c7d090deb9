//! The importer: bytes from a source (HTTP, S3, an upload) become the raw `disk.img` of a volume.
//!
//! The stream is hashed and counted as it arrives (checksum and progress), decompressed when it is
//! gzip or xz, and written sparse to a scratch file in the volume's own directory, so a full pool
//! fails the import rather than some other disk. Then the scratch is checked (format, backing or
//! data files, virtual size, damage) and becomes `disk.img`: renamed when it is raw, converted by
//! `qemu-img` otherwise, and grown to the volume's size. `disk.img` is replaced only at the end,
//! so an import cut short by a crash leaves nothing that looks finished.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, ReadBuf};

use super::qcow2_stream::{write_unplaced, Qcow2Stream};
use super::safety;
use super::volume::{sniff_image_format, VolumeTool};
use super::StorageError;

/// A volume being filled.
#[derive(Debug, Clone)]
pub struct Target {
    /// The volume's directory in its pool.
    pub dir: PathBuf,
    pub capacity: u64,
}

impl Target {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    fn scratch(&self) -> PathBuf {
        self.dir.join(".import.scratch")
    }
    fn staging(&self) -> PathBuf {
        self.dir.join(".import.raw")
    }
    /// Where a consumed scratch waits to be unlinked: whatever is found there is garbage.
    fn discarded(&self) -> PathBuf {
        self.dir.join(".import.discarded")
    }
    /// Where `contentType: archive` lands.
    pub fn files(&self) -> PathBuf {
        self.dir.join("fs")
    }
    /// Removes what an interrupted import left.
    pub fn clean(&self) {
        let _ = std::fs::remove_file(self.scratch());
        let _ = std::fs::remove_file(self.staging());
        let _ = std::fs::remove_file(self.discarded());
    }
    /// Unlinks a consumed scratch off the import's path: dropping a large file's pages takes
    /// about 0.1 s per GiB, which the volume need not wait for. A rename first, so the name
    /// is free at once and a crash leaves only a file `clean` removes.
    fn discard(&self, scratch: &Path) {
        let discarded = self.discarded();
        if std::fs::rename(scratch, &discarded).is_ok() {
            std::thread::spawn(move || {
                let _ = std::fs::remove_file(discarded);
            });
        } else {
            let _ = std::fs::remove_file(scratch);
        }
    }
}

/// `kubevirt` (a disk image) or `archive` (a tar of files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Kubevirt,
    Archive,
}

/// Called with the fraction done, 0.0–1.0.
pub type ProgressFn = Arc<dyn Fn(f64) + Send + Sync>;

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// `sha256:HEX` or `sha512:HEX`, as CDI's `http.checksum`.
pub struct Checksum {
    hasher: Hasher,
    want: String,
    spec: String,
}

impl Checksum {
    pub fn parse(spec: &str) -> Result<Self, StorageError> {
        let (algo, hex) = spec
            .split_once(':')
            .ok_or_else(|| StorageError::refused(format!("checksum {spec:?} is not ALGORITHM:HEX")))?;
        let hasher = match algo {
            "sha256" => Hasher::Sha256(sha2::Sha256::new()),
            "sha512" => Hasher::Sha512(sha2::Sha512::new()),
            other => {
                return Err(StorageError::refused(format!(
                    "checksum algorithm {other:?} is not supported (sha256, sha512)"
                )))
            }
        };
        Ok(Checksum { hasher, want: hex.to_ascii_lowercase(), spec: spec.to_string() })
    }
    fn update(&mut self, data: &[u8]) {
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    fn verify(self) -> Result<(), StorageError> {
        let got = match self.hasher {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        if got == self.want {
            Ok(())
        } else {
            Err(StorageError::refused(format!("checksum mismatch: wanted {}, the data has {got}", self.spec)))
        }
    }
}

#[derive(Default)]
struct Meter {
    read: u64,
    checksum: Option<Checksum>,
    last_reported: f64,
    /// The part of the whole progress the transfer stands for, once the data's format is known
    /// (less than all of it when a conversion follows); nothing is reported before.
    share: Option<f64>,
}

/// Of an import that ends with a conversion, the transfer is reported as this part of the whole.
const TRANSFER_SHARE_WHEN_CONVERTING: f64 = 0.8;

/// Counts and hashes what passes through, reporting progress against `total`. The meter is
/// shared because the reader ends up under a decoder that owns it.
struct Metered<R> {
    inner: R,
    total: Option<u64>,
    meter: Arc<std::sync::Mutex<Meter>>,
    progress: ProgressFn,
}

impl<R: AsyncRead + Unpin> AsyncRead for Metered<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let fresh = &buf.filled()[before..];
            let mut meter = self.meter.lock().unwrap_or_else(|p| p.into_inner());
            meter.read += fresh.len() as u64;
            if let Some(c) = meter.checksum.as_mut() {
                c.update(fresh);
            }
            if let (Some(total), Some(share)) = (self.total.filter(|t| *t > 0), meter.share) {
                let done = (meter.read as f64 / total as f64).min(1.0);
                if done - meter.last_reported >= 0.001 {
                    meter.last_reported = done;
                    drop(meter);
                    (self.progress)(done * share);
                }
            }
        }
        res
    }
}

const CHUNK: usize = 1 << 20;

/// Removes an import's scratch and staging files unless the import finished: on an error, and
/// when the import is cancelled (its future dropped). The fault suite's finding: the scratch
/// file of a failed import held the pool's last free space.
struct CleanUnlessDone<'a> {
    target: &'a Target,
    done: bool,
}

impl Drop for CleanUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.target.clean();
        }
    }
}

/// Imports `body` (of `total` bytes, when known) into `target`; a failed import leaves nothing
/// of itself behind.
pub async fn import_stream<R: AsyncRead + Unpin + Send + 'static>(
    body: R,
    total: Option<u64>,
    checksum: Option<&str>,
    content_type: ContentType,
    target: &Target,
    tool: Arc<dyn VolumeTool>,
    progress: ProgressFn,
) -> Result<(), StorageError> {
    let checksum = checksum.filter(|c| !c.is_empty()).map(Checksum::parse).transpose()?;
    target.clean();
    let mut guard = CleanUnlessDone { target, done: false };
    let started = std::time::Instant::now();
    let meter = Arc::new(std::sync::Mutex::new(Meter { checksum, ..Meter::default() }));
    let metered = Metered { inner: body, total, meter: Arc::clone(&meter), progress: Arc::clone(&progress) };
    let mut buffered = BufReader::with_capacity(256 << 10, metered);
    let head = buffered.fill_buf().await?.to_vec();
    let decoder: Pin<Box<dyn AsyncRead + Send>> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::pin(async_compression::tokio::bufread::GzipDecoder::new(buffered))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::pin(async_compression::tokio::bufread::XzDecoder::new(buffered))
    } else {
        Box::pin(buffered)
    };
    // The decoded data's first bytes tell whether a conversion will follow the transfer.
    let mut decoded = BufReader::with_capacity(CHUNK, decoder);
    let decoded_head = decoded.fill_buf().await.map_err(read_error)?;
    let sniffed = sniff_image_format(decoded_head);
    let converting = content_type == ContentType::Kubevirt && sniffed.is_some();
    let share = if converting { TRANSFER_SHARE_WHEN_CONVERTING } else { 1.0 };
    meter.lock().unwrap_or_else(|p| p.into_inner()).share = Some(share);
    let decoded: Pin<Box<dyn AsyncRead + Send>> = Box::pin(decoded);
    // A decompression bomb stops here: no image may be much larger than the volume it fills.
    let limit = target.capacity + target.capacity / 8 + (64 << 20);
    // A qcow2 image is decoded as it arrives; what the decoder can't place, qemu-img converts.
    let decode_into = (converting && sniffed == Some("qcow2")).then(|| (target.staging(), target.capacity));
    let mut streamed = false;
    match content_type {
        ContentType::Kubevirt => streamed = write_sparse(decoded, &target.scratch(), limit, decode_into).await?,
        ContentType::Archive => {
            let files = target.files();
            let reader = tokio_util::io::SyncIoBridge::new(decoded);
            tokio::task::spawn_blocking(move || extract_archive(reader, &files, limit))
                .await
                .map_err(|e| StorageError::Transient(e.to_string()))??;
        }
    }
    let meter = std::mem::take(&mut *meter.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(total) = total {
        if meter.read != total {
            return Err(StorageError::Transient(format!("the transfer ended after {} of {total} bytes", meter.read)));
        }
    }
    if let Some(c) = meter.checksum {
        c.verify()?;
    }
    progress(share);
    if content_type == ContentType::Archive {
        guard.done = true;
        return Ok(());
    }
    let received = started.elapsed();
    let (target_c, scratch, converted) = (target.clone(), target.scratch(), Arc::clone(&progress));
    let result = tokio::task::spawn_blocking(move || {
        finalize(&scratch, true, streamed, &target_c, tool.as_ref(), &|p| converted(share + (1.0 - share) * p))
    })
    .await
    .map_err(|e| StorageError::Transient(e.to_string()))?;
    if result.is_ok() {
        guard.done = true;
        progress(1.0);
    }
    tracing::info!(
        bytes = meter.read,
        receive_secs = received.as_secs_f64(),
        finalize_secs = (started.elapsed() - received).as_secs_f64(),
        "import finished"
    );
    result
}

/// Writes the decoded stream to `path`, leaving all-zero chunks as holes so the file stays
/// sparse, and, given `decode_into` (a raw file and the volume's capacity), decodes it as qcow2
/// into that file as it passes (the clusters it places are left out of `path`, and put back if
/// it stands aside); true when that decoding placed the whole image.
/// The writing happens on a blocking thread with plain `std::fs` calls, so every write error
/// (a full disk above all) is seen where it happens, while the next chunk is being read. The
/// chunk buffers go back and forth between the two: allocating and zeroing a fresh MiB per
/// chunk cost more CPU than the copies (P4's profile).
async fn write_sparse(
    mut reader: Pin<Box<dyn AsyncRead + Send>>,
    path: &Path,
    limit: u64,
    decode_into: Option<(PathBuf, u64)>,
) -> Result<bool, StorageError> {
    const IN_FLIGHT: usize = 4;
    let file = std::fs::File::create(path)?;
    let decoder = match decode_into {
        Some((raw, capacity)) => match Qcow2Stream::create(&raw, path, capacity) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(error = %e, "qcow2 decoded after the transfer instead of during it");
                None
            }
        },
        None => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<u8>, usize)>(IN_FLIGHT);
    let (give_back, mut returned) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_FLIGHT + 2);
    let writer = tokio::task::spawn_blocking(move || -> Result<bool, StorageError> {
        let (file, mut decoder) = (file, decoder);
        let mut written: u64 = 0;
        // Time spent writing and decoding rather than waiting for data, for the debug log.
        let mut busy = std::time::Duration::ZERO;
        while let Some((chunk, filled)) = rx.blocking_recv() {
            let began = std::time::Instant::now();
            let data = &chunk[..filled];
            // What the decoder placed needs no copy in the scratch (it is restored there if
            // the decoder stands aside later).
            let placed = decoder.as_mut().map(|d| d.feed(data)).unwrap_or_default();
            if !data.iter().all(|b| *b == 0) {
                write_unplaced(&file, written, data, &placed)?;
            }
            written += filled as u64;
            busy += began.elapsed();
            // The reader may have finished; a buffer it won't take back is simply dropped.
            let _ = give_back.try_send(chunk);
        }
        // No fsync: the scratch is thrown away after the conversion, and a crash redoes it.
        file.set_len(written)?;
        tracing::debug!(written, busy_secs = busy.as_secs_f64(), "scratch written");
        Ok(match decoder.map(Qcow2Stream::finish).transpose()? {
            Some(Ok(_)) => true,
            Some(Err(why)) => {
                tracing::debug!(why = %why, "qcow2 decoded after the transfer instead of during it");
                false
            }
            None => false,
        })
    });
    let mut total: u64 = 0;
    let read_result: Result<(), StorageError> = async {
        loop {
            let mut buf = returned.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            let mut filled = 0;
            while filled < CHUNK {
                let n = reader.read(&mut buf[filled..]).await.map_err(read_error)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            total += filled as u64;
            if total > limit {
                return Err(StorageError::refused(format!(
                    "the data is larger than the volume can hold (more than {limit} bytes after decompression)"
                )));
            }
            let last = filled < CHUNK;
            if tx.send((buf, filled)).await.is_err() {
                // The writer stopped: its error is the one to report.
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
    }
    .await;
    drop(tx);
    let write_result = writer.await.map_err(|e| StorageError::Transient(e.to_string()))?;
    let decoded = write_result?;
    read_result.map(|()| decoded)
}

/// Decompression errors mean the data is not what it claims to be; a dropped connection may
/// heal on a retry.
fn read_error(e: std::io::Error) -> StorageError {
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidInput => {
            StorageError::refused(format!("the data is damaged or truncated: {e}"))
        }
        _ => StorageError::Transient(format!("reading the source: {e}")),
    }
}

fn extract_archive(reader: impl std::io::Read, dir: &Path, limit: u64) -> Result<(), StorageError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(reader);
    let mut total = 0u64;
    for entry in archive.entries().map_err(|e| StorageError::refused(format!("not a tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| StorageError::refused(format!("damaged tar archive: {e}")))?;
        let path = entry.path().map_err(|e| StorageError::refused(format!("bad path in archive: {e}")))?.into_owned();
        if safety::contained(&path).is_none() {
            return Err(StorageError::refused(format!("archive entry {path:?} would land outside the volume")));
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(StorageError::refused(format!(
                "archive entry {path:?} is a link or special file; only files and directories are imported"
            )));
        }
        total += entry.size();
        if total > limit {
            return Err(StorageError::refused("the archive is larger than the volume"));
        }
        entry.unpack_in(dir).map_err(StorageError::Io)?;
    }
    Ok(())
}

/// Turns an image file into the volume's `disk.img`. `owned`: `src` is ours to consume (a
/// scratch file), so a raw image is renamed instead of copied. `streamed`: a qcow2 `src` was
/// already decoded into the staging file while it arrived; it is still checked as a whole.
pub fn finalize(
    src: &Path,
    owned: bool,
    streamed: bool,
    target: &Target,
    tool: &dyn VolumeTool,
    progress: &dyn Fn(f64),
) -> Result<(), StorageError> {
    // The first cluster: enough for the format's magic and a qcow2 header with its backing name.
    let mut head = Vec::with_capacity(64 << 10);
    std::io::Read::read_to_end(&mut std::io::Read::take(std::fs::File::open(src)?, 64 << 10), &mut head)?;
    let staging = target.staging();
    match sniff_image_format(&head) {
        None => {
            let size = std::fs::metadata(src)?.len();
            if size == 0 || !size.is_multiple_of(512) {
                return Err(StorageError::refused(format!(
                    "not a disk image: {size} bytes of raw data is not a whole number of 512-byte sectors"
                )));
            }
            if size > target.capacity {
                return Err(StorageError::refused(format!(
                    "the image's virtual size ({size} bytes) is larger than the volume ({} bytes)",
                    target.capacity
                )));
            }
            if owned {
                std::fs::rename(src, &staging)?;
            } else {
                tool.copy(src, &staging)?;
            }
        }
        Some(sniffed) => {
            if let Some(why) = safety::qcow2_header_refusal(&head) {
                return Err(StorageError::refused(why));
            }
            let began = std::time::Instant::now();
            let info = tool.info(src)?;
            if info.format != sniffed {
                return Err(StorageError::refused(format!(
                    "the data looks like {sniffed} but qemu-img reads it as {}",
                    info.format
                )));
            }
            safety::check_image(&info, target.capacity)?;
            let inspected = began.elapsed();
            tool.check(src, &info.format)?;
            let checked = began.elapsed();
            let decoded = streamed
                && info.format == "qcow2"
                && std::fs::metadata(&staging).is_ok_and(|m| m.len() == info.virtual_size);
            if !decoded {
                let _ = std::fs::remove_file(&staging);
                tool.convert_to_raw(src, &info.format, &staging, progress)?;
            }
            let converted = began.elapsed();
            if owned {
                target.discard(src);
            }
            let installed = grow_and_install(&staging, target);
            tracing::debug!(
                info_secs = inspected.as_secs_f64(),
                check_secs = (checked - inspected).as_secs_f64(),
                convert_secs = (converted - checked).as_secs_f64(),
                decoded_during_transfer = decoded,
                install_secs = (began.elapsed() - converted).as_secs_f64(),
                "image converted"
            );
            return installed;
        }
    }
    grow_and_install(&staging, target)
}

/// Grows `staging` to the volume's size and makes it the volume's `disk.img`.
pub fn grow_and_install(staging: &Path, target: &Target) -> Result<(), StorageError> {
    let file = std::fs::OpenOptions::new().write(true).open(staging)?;
    if file.metadata()?.len() < target.capacity {
        file.set_len(target.capacity)?;
    }
    file.sync_all()?;
    // A tenant's data: root's alone, until libvirt hands it to QEMU's user for a guest.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(staging, target.disk())?;
    Ok(())
}

/// Clones `src` (another volume's disk) into `target`.
pub fn clone_from(src: &Path, target: &Target, tool: &dyn VolumeTool) -> Result<(), StorageError> {
    target.clean();
    let size = std::fs::metadata(src)?.len();
    if size > target.capacity {
        return Err(StorageError::refused(format!(
            "the source volume ({size} bytes) is larger than the target ({} bytes)",
            target.capacity
        )));
    }
    tool.copy(src, &target.staging())?;
    grow_and_install(&target.staging(), target)
}

/// An empty volume.
pub fn blank(target: &Target) -> Result<(), StorageError> {
    target.clean();
    std::fs::File::create(target.staging())?;
    grow_and_install(&target.staging(), target)
}

#[cfg(test)]
#[path = "importer_tests.rs"]
mod tests;
