//! Live migration, the parts every side shares: the migration's phases as a transition table,
//! the VMI's `status.migrationState`, whether a VMI may migrate at all, and the target's domain
//! XML. The controller (`controllers::migration`) and the two node agents (`node::migration`)
//! act on them.

pub mod endpoint;
pub mod policy;
pub mod xml;

use serde_json::{json, Map, Value};

pub use endpoint::{Endpoint, EndpointError};

/// KubeVirt's finalizer on a migration: its controller lets it go once the migration ended
/// (deleting a running one aborts it first).
pub const FINALIZER: &str = "kubevirt.io/migrationJobFinalize";
/// Lets a VMI whose pod-network interface uses the bridge binding migrate anyway (KubeVirt's).
pub const ALLOW_POD_BRIDGE_ANNOTATION: &str = "kubevirt.io/allow-pod-bridge-network-live-migration";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Pending,
    Scheduling,
    Scheduled,
    PreparingTarget,
    TargetReady,
    Running,
    Succeeded,
    Failed,
}

pub const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Scheduling,
    Phase::Scheduled,
    Phase::PreparingTarget,
    Phase::TargetReady,
    Phase::Running,
    Phase::Succeeded,
    Phase::Failed,
];

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduling => "Scheduling",
            Phase::Scheduled => "Scheduled",
            Phase::PreparingTarget => "PreparingTarget",
            Phase::TargetReady => "TargetReady",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
    pub fn parse(s: &str) -> Option<Phase> {
        PHASES.into_iter().find(|p| p.as_str() == s)
    }
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
    /// The transition table: a migration only moves forward, may fail from any phase that is
    /// not final, and succeeds only from Running (the source saw libvirt finish).
    pub fn may_become(self, next: Phase) -> bool {
        match (self, next) {
            (from, _) if from.is_final() => false,
            (_, Phase::Failed) => true,
            (Phase::Running, Phase::Succeeded) => true,
            (_, Phase::Succeeded) => false,
            (from, to) => to > from,
        }
    }
}

/// The phase of a migration object (`""` is Pending: just created).
pub fn phase_of(vmim: &Value) -> Phase {
    vmim.pointer("/status/phase").and_then(Value::as_str).and_then(Phase::parse).unwrap_or(Phase::Pending)
}

/// The VMI's `status.migrationState` when it belongs to the migration of `uid`.
pub fn state_for<'a>(vmi: &'a Value, uid: &str) -> Option<&'a Value> {
    vmi.pointer("/status/migrationState").filter(|s| s.get("migrationUid").and_then(Value::as_str) == Some(uid))
}

fn flag(state: &Value, field: &str) -> bool {
    state.get(field).and_then(Value::as_bool).unwrap_or(false)
}

fn has(state: &Value, field: &str) -> bool {
    state.get(field).is_some_and(|v| !v.is_null())
}

/// Where a migration stands, as its VMI's migrationState shows it.
pub fn phase_from_state(state: &Value) -> Phase {
    if flag(state, "failed") {
        Phase::Failed
    } else if flag(state, "completed") {
        Phase::Succeeded
    } else if has(state, "startTimestamp") {
        Phase::Running
    } else if has(state, "targetNodeDomainReadyTimestamp") {
        Phase::TargetReady
    } else if has(state, "targetNode") {
        Phase::PreparingTarget
    } else {
        Phase::Scheduling
    }
}

/// An unfinished migration in the VMI's status: the VMI is busy moving.
pub fn in_flight(vmi: &Value) -> Option<&Value> {
    vmi.pointer("/status/migrationState").filter(|s| !flag(s, "completed") && !flag(s, "failed"))
}

pub fn target_node(state: &Value) -> Option<&str> {
    state.get("targetNode").and_then(Value::as_str).filter(|n| !n.is_empty())
}

pub fn source_node(state: &Value) -> Option<&str> {
    state.get("sourceNode").and_then(Value::as_str).filter(|n| !n.is_empty())
}

pub fn is_ready(state: &Value) -> bool {
    has(state, "targetNodeDomainReadyTimestamp")
}

pub fn is_started(state: &Value) -> bool {
    has(state, "startTimestamp")
}

pub fn abort_requested(state: &Value) -> bool {
    flag(state, "abortRequested")
}

/// The migrationState the controller writes when it picks the target.
pub fn scheduled_state(vmim: &Value, source: &str, target: &str, address: std::net::IpAddr) -> Value {
    json!({
        "migrationUid": crate::meta::uid(vmim),
        "sourceNode": source,
        "targetNode": target,
        "targetNodeAddress": address.to_string(),
        "mode": "PreCopy",
    })
}

/// Sets fields of the VMI's migrationState (in a copy of the VMI).
pub fn update_state(vmi: &mut Value, fields: &[(&str, Value)]) {
    let state = crate::meta::at_mut(vmi, &["status", "migrationState"]);
    if !state.is_object() {
        *state = Value::Object(Map::new());
    }
    if let Some(map) = state.as_object_mut() {
        for (k, v) in fields {
            map.insert((*k).to_string(), v.clone());
        }
    }
}

/// Why a VMI cannot migrate: KubeVirt's reason and message, for its LiveMigratable condition
/// and a refused migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotMigratable {
    pub reason: &'static str,
    pub message: String,
}

/// What a VMI's volumes are, as far as migration cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// containerDisk, emptyDisk, ephemeral: the node makes them writable; a migration copies
    /// their top layers (block migration).
    NodeMade,
    /// cloud-init, ConfigMap, Secret, service account, downward API disks: the node makes them
    /// read-only, and the target makes its own.
    NodeMadeReadOnly,
    /// A claim, with whether every node reaches its volume (ReadWriteMany).
    Claim { name: String, shared: bool },
    /// hostDisk: a file on one host.
    HostDisk { name: String },
    /// A block-mode claim, which its node attaches through a loop device of its own.
    LoopBlock { name: String },
}

/// Whether the VMI may live-migrate, KubeVirt's rules: every claim shared, no pod-network
/// interface with the bridge binding (unless the VMI allows it); and no SR-IOV function, which
/// Converge does not unplug for a migration as KubeVirt does.
pub fn migratable(vmi: &Value, volumes: &[VolumeKind]) -> Result<(), NotMigratable> {
    for v in volumes {
        match v {
            VolumeKind::Claim { name, shared: false } => {
                return Err(NotMigratable {
                    reason: "DisksNotLiveMigratable",
                    message: format!(
                        "cannot migrate VMI: PVC {name} is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)"
                    ),
                })
            }
            VolumeKind::HostDisk { name } => {
                return Err(NotMigratable {
                    reason: "DisksNotLiveMigratable",
                    message: format!("cannot migrate VMI with non-shared HostDisk {name}"),
                })
            }
            VolumeKind::LoopBlock { name } => {
                return Err(NotMigratable {
                    reason: "DisksNotLiveMigratable",
                    message: format!(
                        "cannot migrate VMI: block-mode PVC {name} is attached through its node's loop device"
                    ),
                })
            }
            _ => {}
        }
    }
    let spec = crate::launcher::spec::VmiSpec::from_vmi(vmi).unwrap_or_default();
    let allow_bridge = crate::meta::annotation(vmi, ALLOW_POD_BRIDGE_ANNOTATION).is_some();
    let pod_networks: Vec<&str> = spec.networks.iter().filter(|n| n.pod.is_some()).map(|n| n.name.as_str()).collect();
    for iface in spec.domain.devices.interfaces.iter().filter(|i| pod_networks.contains(&i.name.as_str())) {
        if iface.bridge.is_some() && !allow_bridge {
            return Err(NotMigratable {
                reason: "InterfaceNotLiveMigratable",
                message: "cannot migrate VMI which does not use masquerade, bridge with kubevirt.io/allow-pod-bridge-network-live-migration VM annotation or a migratable plugin to connect to the pod network".into(),
            });
        }
    }
    if let Some(iface) = spec.domain.devices.interfaces.iter().find(|i| i.sriov.is_some()) {
        return Err(NotMigratable {
            reason: "InterfaceNotLiveMigratable",
            message: format!(
                "interface {} is an SR-IOV function, which Converge does not unplug for a migration",
                iface.name
            ),
        });
    }
    Ok(())
}

/// Whether any writable disk is the node's own making, to be copied (BlockMigration).
pub fn needs_block_migration(volumes: &[VolumeKind]) -> bool {
    volumes.iter().any(|v| matches!(v, VolumeKind::NodeMade))
}

#[cfg(test)]
mod tests;
