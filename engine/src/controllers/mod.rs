//! Controllers as kube-rs shapes them: pure reconcilers (`vm`, `vmi`, `replicaset`, `scheduler`)
//! and a runtime that feeds them from the store through work queues and applies their plans.

pub mod queue;
pub mod replicaset;
pub mod revisions;
pub mod scheduler;
pub mod status;
pub mod vm;
pub mod vmi;

mod runtime;

pub use runtime::{spawn, write_status as runtime_write_status, Controllers};

/// The finalizer every VMI is born with; removed once its domain is gone (or it never had one).
pub const VMI_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";

/// `(namespace, name)`.
pub type Key = (String, String);
