//! Crash points for the fault suite. `CONVERGE_FAILPOINTS=name[,name…]` makes the process kill
//! itself with SIGKILL the first time it reaches a named point, so a test can prove that the step
//! after it is resumed (or safely redone) by the next `converge serve`. A point costs one atomic
//! load when the variable is unset.
//!
//! Points sit where effects happen, never inside a reconciler: reconcilers stay pure, and the
//! runtime and node agent that apply their plans are what a crash interrupts.

use std::sync::OnceLock;

/// The environment variable naming the points to crash at.
pub const ENV: &str = "CONVERGE_FAILPOINTS";

/// Every point, so a test can iterate them and a typo in the variable is reported.
pub const POINTS: &[&str] = &[
    // Controllers runtime: a VMI was created for a VM, the VM's status not yet written.
    VM_AFTER_VMI_CREATE,
    // Controllers runtime: a VM's VMI was deleted to stop it, the VM's status not yet written.
    VM_AFTER_VMI_DELETE,
    // Scheduler: the VMI is labelled with its node, its status does not name the node yet.
    VMI_AFTER_NODE_LABEL,
    // Node agent: disks are prepared, no domain started yet.
    NODE_AFTER_DISK_PREPARE,
    // Node agent: the domain runs as a transient one, not yet made persistent.
    NODE_BEFORE_PERSIST,
    // Node agent: the domain runs, the VMI's status still says Scheduled.
    NODE_AFTER_START,
    // Node agent: a VMI's domain is destroyed and undefined; its directory, addresses and
    // finalizer are not released yet.
    NODE_AFTER_TEARDOWN,
    // Bridge: an object of a host request is made, its step not yet marked done.
    BRIDGE_AFTER_OBJECT,
    // Bridge: a step of a host request failed and the record says RollingBack; nothing is
    // removed yet.
    BRIDGE_BEFORE_ROLLBACK,
];

pub const VM_AFTER_VMI_CREATE: &str = "vm-after-vmi-create";
pub const VM_AFTER_VMI_DELETE: &str = "vm-after-vmi-delete";
pub const VMI_AFTER_NODE_LABEL: &str = "vmi-after-node-label";
pub const NODE_AFTER_DISK_PREPARE: &str = "node-after-disk-prepare";
pub const NODE_BEFORE_PERSIST: &str = "node-before-persist";
pub const NODE_AFTER_START: &str = "node-after-start";
pub const NODE_AFTER_TEARDOWN: &str = "node-after-teardown";
pub const BRIDGE_AFTER_OBJECT: &str = "bridge-after-object";
pub const BRIDGE_BEFORE_ROLLBACK: &str = "bridge-before-rollback";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

fn parse(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

/// Names in the variable that are not points (reported at start-up, not fatal).
pub fn unknown() -> Vec<String> {
    armed().iter().filter(|p| !POINTS.contains(&p.as_str())).cloned().collect()
}

/// Kills the process here if `point` is armed.
pub fn hit(point: &'static str) {
    if armed().iter().any(|p| p == point) {
        eprintln!("converge: failpoint {point} reached: killing the process (SIGKILL)");
        // SIGKILL, not abort or exit: no destructors, no flushing, as `kill -9` from outside.
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_is_a_comma_separated_list() {
        assert_eq!(
            parse(" node-before-persist, ,vm-after-vmi-create"),
            vec!["node-before-persist", "vm-after-vmi-create"]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    fn points_are_distinct() {
        let mut sorted = POINTS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), POINTS.len());
    }
}
