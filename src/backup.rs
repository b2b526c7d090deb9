//! `converge backup FILE` and `converge restore FILE`: the store's snapshot and the data dir's
//! identity (CA, signing key, admin token) in one gzipped tar.
//!
//! The identity travels with the store because the store's tokens are signed with that key and
//! every kubeconfig trusts that CA: a store restored without them would hold tokens no server
//! accepts. Guests' disks, volumes and images (`DATA_DIR/node`, a shared pool) are not in it;
//! they are the guests' data, backed up as disks are.

use anyhow::{bail, Context, Result};
use converge_engine::store::backup::{self, Summary};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The files of the data dir that belong in a backup; `ca.key` and `signing.key` are secrets.
const IDENTITY: &[&str] = &["ca.crt", "ca.key", "signing.key", "admin.token"];
const MANIFEST: &str = "converge-backup.json";
const STORE: &str = "converge.db";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    format: u32,
    converge_version: String,
    created: String,
    /// `sqlite` or `postgres`: where the snapshot was taken.
    source: String,
    schema: i64,
    resource_version: i64,
    objects: i64,
}

/// Where a store is: its data dir and, for PostgreSQL, its URL.
pub struct Location {
    pub data_dir: PathBuf,
    pub database: Option<String>,
}

impl Location {
    fn url(&self, create: bool) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => {
                format!("sqlite://{}?mode={}", self.data_dir.join(STORE).display(), if create { "rwc" } else { "ro" })
            }
        }
    }
}

/// Writes `file`: a consistent snapshot of the running (or stopped) store, and the identity.
pub async fn backup(from: &Location, file: &Path) -> Result<Summary> {
    if from.database.is_none() && !from.data_dir.join(STORE).exists() {
        bail!("no store at {}: give the data dir (or --database) `converge serve` uses", from.data_dir.display());
    }
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let snapshot = tempfile::Builder::new().prefix(".converge-backup").tempdir_in(dir).context("a scratch dir")?;
    let db = snapshot.path().join(STORE);
    let url = from.url(false);
    let summary = backup::snapshot(&url, &db).await.context("taking the snapshot")?;
    let manifest = Manifest {
        format: FORMAT,
        converge_version: env!("CARGO_PKG_VERSION").into(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source: if url.starts_with("postgres") { "postgres" } else { "sqlite" }.into(),
        schema: summary.schema,
        resource_version: summary.resource_version,
        objects: summary.objects,
    };
    let partial = snapshot.path().join("backup.tar.gz");
    write_archive(&partial, &manifest, &db, &from.data_dir)?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(summary)
}

fn write_archive(path: &Path, manifest: &Manifest, db: &Path, data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(out, flate2::Compression::fast()));
    append_bytes(&mut tar, MANIFEST, &serde_json::to_vec_pretty(manifest)?)?;
    tar.append_path_with_name(db, STORE).context("adding the snapshot")?;
    for name in IDENTITY {
        match std::fs::read(data_dir.join(name)) {
            Ok(bytes) => append_bytes(&mut tar, name, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", data_dir.join(name).display())),
        }
    }
    let gz = tar.into_inner()?;
    gz.finish()?.sync_all()?;
    Ok(())
}

fn append_bytes<W: std::io::Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes).with_context(|| format!("adding {name}"))
}

/// Loads `file` into a fresh data dir (and, with a URL, an empty PostgreSQL database).
pub async fn restore(file: &Path, to: &Location) -> Result<Summary> {
    for name in [STORE, "ca.key", "signing.key"] {
        if to.data_dir.join(name).exists() {
            bail!(
                "{} already holds a Converge data dir ({name}): restore into a fresh one, or move it away first",
                to.data_dir.display()
            );
        }
    }
    std::fs::create_dir_all(&to.data_dir).with_context(|| format!("making {}", to.data_dir.display()))?;
    let scratch = tempfile::Builder::new().prefix(".converge-restore").tempdir_in(&to.data_dir)?;
    let manifest = unpack(file, scratch.path())?;
    if manifest.format != FORMAT {
        bail!("{}: backup format {} (this converge reads {FORMAT})", file.display(), manifest.format);
    }
    let loaded = backup::restore(&scratch.path().join(STORE), &to.url(true)).await;
    if loaded.is_err() && to.database.is_none() {
        // Nothing was loaded: the empty file the attempt made must not make the next one refuse.
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(to.data_dir.join(format!("{STORE}{suffix}")));
        }
    }
    let summary = loaded.context("loading the store")?;
    for name in IDENTITY {
        let from = scratch.path().join(name);
        if from.exists() {
            std::fs::rename(&from, to.data_dir.join(name))?;
        }
    }
    Ok(summary)
}

/// Extracts the archive's known members into `dir` (nothing else: no paths from the archive).
fn unpack(file: &Path, dir: &Path) -> Result<Manifest> {
    use std::os::unix::fs::OpenOptionsExt;
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let mut manifest = None;
    let mut has_store = false;
    let not_a_backup = || format!("{} is not a converge backup", file.display());
    for entry in archive.entries().with_context(not_a_backup)? {
        let mut entry = entry.with_context(not_a_backup)?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name == MANIFEST {
            let mut text = Vec::new();
            entry.by_ref().take(1 << 20).read_to_end(&mut text)?;
            manifest = Some(serde_json::from_slice::<Manifest>(&text).context("reading the backup's manifest")?);
        } else if name == STORE || IDENTITY.contains(&name.as_str()) {
            let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(&name))?;
            std::io::copy(&mut entry, &mut out)?;
            has_store |= name == STORE;
        }
    }
    match (manifest, has_store) {
        (Some(m), true) => Ok(m),
        _ => bail!("{} is not a converge backup (no {MANIFEST} or {STORE})", file.display()),
    }
}
