//! Storage: the embedded provisioner (StorageClass → PersistentVolume for a claim), CDI's
//! DataVolumes (import, upload, clone, blank) and what the node needs to attach a claim.
//!
//! A pool is a directory. Every volume is a sparse raw `disk.img` in a directory of its own named
//! after the claim's uid; block-mode volumes are the same file, attached through a loop device
//! when a guest starts (see `volume::VolumeTool::attach_block`).

pub mod claims;
pub mod datavolume;
pub mod importer;
pub mod placement;
pub mod provisioner;
mod qcow2_stream;
pub mod safety;
pub mod sources;
pub mod volume;

mod runtime;

pub use runtime::{spawn, spawn_with, StorageControllers, UploadError, UploadSession};

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Disk images are whole MiB, as CDI aligns them: QEMU opens them with O_DIRECT, which needs
/// sizes in whole blocks of the host filesystem (a claim of "20G" is not even 4 KiB-aligned).
pub const DISK_ALIGNMENT: u64 = 1 << 20;

/// `bytes` rounded up to whole `DISK_ALIGNMENT` units.
pub fn aligned_up(bytes: u64) -> u64 {
    bytes.div_ceil(DISK_ALIGNMENT) * DISK_ALIGNMENT
}

/// `bytes` rounded down to whole `DISK_ALIGNMENT` units: a disk that must fit in a volume.
pub fn aligned_down(bytes: u64) -> u64 {
    bytes / DISK_ALIGNMENT * DISK_ALIGNMENT
}

/// The provisioner name our StorageClasses carry.
pub const PROVISIONER: &str = "converge.dev/local-pool";
/// The StorageClass made at first start when none exists.
pub const DEFAULT_CLASS: &str = "local";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// CDI's PVC annotations: what fills the claim and how far it got. They live on the claim so a
/// restart of `converge serve` knows a finished import from one that was cut short.
pub const ANN_POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
pub const ANN_RESTARTS: &str = "cdi.kubevirt.io/storage.pod.restarts";
pub const ANN_UPLOAD_REQUEST: &str = "cdi.kubevirt.io/storage.upload.target";
pub const ANN_POPULATED_FOR: &str = "cdi.kubevirt.io/storage.populatedFor";
/// A namespace annotation listing namespaces (comma-separated, or `*`) that may clone its claims.
pub const ANN_CLONE_TO: &str = "converge.dev/clone-to";

/// What the storage controllers and the importer are allowed to do.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Pools of StorageClasses without a `path` parameter live under here, one directory each.
    pub pools_dir: PathBuf,
    /// Let imports fetch from loopback, link-local and cloud metadata addresses.
    pub allow_private_imports: bool,
    /// The largest volume a claim may ask for, if any.
    pub max_volume_bytes: Option<u64>,
    /// Registries spoken to over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// A failed job waits this × 2^restarts (at most 5 min) before it runs again.
    pub retry_base: std::time::Duration,
    /// The server's part or a node's (see `placement`).
    pub role: placement::StorageRole,
    /// The node whose volumes this process keeps: the server's own node, if it runs one; a
    /// joined node's name.
    pub node: Option<String>,
}

impl StorageConfig {
    pub fn new(data_dir: &Path) -> Self {
        StorageConfig {
            pools_dir: data_dir.join("storage"),
            allow_private_imports: false,
            max_volume_bytes: None,
            insecure_registries: vec![],
            retry_base: std::time::Duration::from_secs(1),
            role: placement::StorageRole::Server,
            node: None,
        }
    }

    /// The storage of `converge controllers` on a Kubernetes cluster: no pool of its own.
    pub fn cluster() -> Self {
        StorageConfig { role: placement::StorageRole::Cluster, ..StorageConfig::new(Path::new("")) }
    }

    /// Whether this process keeps the volumes that live on `node` (`None`: no node, the
    /// server's pool).
    pub fn keeps(&self, node: Option<&str>) -> bool {
        match (self.role, node) {
            (placement::StorageRole::Server, None) => true,
            (_, Some(n)) => self.node.as_deref() == Some(n),
            (placement::StorageRole::Node | placement::StorageRole::Cluster, None) => false,
        }
    }

    /// Whether this process keeps `pv`.
    pub fn keeps_volume(&self, pv: &Value) -> bool {
        match placement::pv_node(pv) {
            Some(node) => self.keeps(Some(node)),
            // Pinned in a way no process here names: nobody's. Unpinned: the server's.
            None => !placement::has_affinity(pv) && self.keeps(None),
        }
    }

    /// The directory of `class`'s pool: its `path` parameter, else one under `pools_dir`.
    pub fn pool_dir(&self, class: &Value) -> PathBuf {
        match class.pointer("/parameters/path").and_then(Value::as_str).filter(|p| !p.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => self.pools_dir.join(crate::meta::name(class)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The input can never work: the DataVolume fails with this reason.
    #[error("{0}")]
    Refused(String),
    /// Worth another try (network, a source not ready).
    #[error("{0}")]
    Transient(String),
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Out of space is final: retrying fills the disk again and never ends well.
    pub fn is_final(&self) -> bool {
        match self {
            StorageError::Refused(_) => true,
            StorageError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            StorageError::Tool { message, .. } => message.contains("No space left"),
            StorageError::Transient(_) => false,
        }
    }
    pub fn refused(message: impl Into<String>) -> Self {
        StorageError::Refused(message.into())
    }
}

/// The bytes a claim asks for (`spec.resources.requests.storage`).
pub fn requested_bytes(pvc: &Value) -> Option<u64> {
    let q = pvc.pointer("/spec/resources/requests/storage")?;
    let v = crate::quantity::parse_value(q).ok()?;
    (v.is_finite() && v > 0.0).then_some(v.ceil() as u64)
}

/// `Block` or `Filesystem` (the default).
pub fn volume_mode(obj: &Value) -> &str {
    obj.pointer("/spec/volumeMode").and_then(Value::as_str).unwrap_or("Filesystem")
}

/// A CDI condition (`lastHeartbeatTime`, `lastTransitionTime`), replaced in place; the transition
/// time moves only when the status does.
pub fn set_cdi_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) {
    let status_s = if status { "True" } else { "False" };
    let transition = conditions
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status_s)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now.to_string()));
    conditions.retain(|c| c["type"] != kind);
    conditions.push(serde_json::json!({
        "type": kind,
        "status": status_s,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }));
}

/// Same conditions apart from heartbeat times: used to avoid a write per resync.
pub fn same_ignoring_heartbeats(a: &Value, b: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conds {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastHeartbeatTime");
                }
            }
        }
        v
    }
    strip(a) == strip(b)
}
