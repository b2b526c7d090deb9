//! Live migration through libvirt: peer to peer (the source libvirtd talks to the target's), the
//! guest's memory and disks over QEMU's own connections to the target's migration address.

use virt::domain::{Domain, JobStats, MigrateParameters};
use virt::sys;

use super::{HvResult, HypervisorError, MigrationProgress, MigrationTarget};

/// libvirt's flags for a migration as Converge runs it: live, peer to peer, the domain defined
/// on the target and undefined here, and nothing left half-done on an error.
pub fn migration_flags(target: &MigrationTarget) -> u32 {
    let mut flags = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PEER2PEER
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | sys::VIR_MIGRATE_ABORT_ON_ERROR;
    if !target.copy_disks.is_empty() {
        // Only the top layer: the target has the same base (the image) under its overlay.
        flags |= sys::VIR_MIGRATE_NON_SHARED_INC;
    }
    if target.shared_disks {
        flags |= sys::VIR_MIGRATE_UNSAFE;
    }
    if target.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if target.post_copy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    if target.tls {
        flags |= sys::VIR_MIGRATE_TLS;
    }
    flags
}

/// `tcp://ADDRESS` (IPv6 in brackets), what QEMU connects to for memory and disks.
pub fn tcp_uri(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(a) => format!("tcp://{a}"),
        std::net::IpAddr::V6(a) => format!("tcp://[{a}]"),
    }
}

pub(super) fn parameters(target: &MigrationTarget) -> MigrateParameters {
    let uri = tcp_uri(target.address);
    MigrateParameters {
        dest_name: Some(target.domain_name.clone()),
        dest_xml: Some(target.domain_xml.clone()),
        // The target QEMU listens on this address only (libvirt's default is every address).
        listen_address: Some(target.address.to_string()),
        uri: Some(uri.clone()),
        disks_uri: (!target.copy_disks.is_empty()).then_some(uri),
        migrate_disks: target.copy_disks.clone(),
        bandwidth: target.bandwidth_mib,
        ..Default::default()
    }
}

fn err(e: virt::error::Error) -> HypervisorError {
    HypervisorError::Libvirt(e.to_string())
}

pub(super) fn migrate(dom: &Domain, dconn_uri: &str, target: &MigrationTarget) -> HvResult<()> {
    dom.migrate_to_uri3(Some(dconn_uri), parameters(target), migration_flags(target)).map_err(err)
}

fn progress_of(stats: &JobStats) -> MigrationProgress {
    MigrationProgress {
        elapsed_ms: stats.time_elapsed.unwrap_or(0),
        data_total: stats.data_total.unwrap_or(0),
        data_processed: stats.data_processed.unwrap_or(0),
        data_remaining: stats.data_remaining.unwrap_or(0),
        memory_bps: stats.mem_bps.unwrap_or(0),
        downtime_ms: stats.downtime,
    }
}

/// `virDomainGetJobStats`, safely: the `virt` crate's wrapper builds a Vec from libvirt's
/// pointer even when libvirt returns none (no job: a null pointer, which aborted the process)
/// and frees libvirt's memory with Rust's allocator.
fn job_stats(dom: &Domain, flags: u32) -> HvResult<JobStats> {
    let mut kind: std::os::raw::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut count: std::os::raw::c_int = 0;
    // SAFETY: `dom` is a live domain; libvirt fills the three out-pointers, allocating `params`.
    let rc = unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut count, flags) };
    if rc < 0 {
        return Err(HypervisorError::Libvirt(virt::error::Error::last_error().to_string()));
    }
    if params.is_null() || count <= 0 {
        return Ok(JobStats { r#type: kind, ..Default::default() });
    }
    // SAFETY: libvirt returned `count` initialized parameters at `params`; they are copied (the
    // strings are read, not taken, by the conversion) before libvirt's own free releases them.
    let copied = unsafe { std::slice::from_raw_parts(params, count as usize) }.to_vec();
    let stats = JobStats::from((kind, copied));
    // SAFETY: `params`/`count` are what virDomainGetJobStats allocated, freed once.
    unsafe { sys::virTypedParamsFree(params, count) };
    Ok(stats)
}

/// The running job's progress; `None` when no job runs.
pub(super) fn progress(dom: &Domain) -> HvResult<Option<MigrationProgress>> {
    let stats = job_stats(dom, 0)?;
    if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
        return Ok(None);
    }
    Ok(Some(progress_of(&stats)))
}

/// The last finished job's figures (on the target after a migration: its downtime, its time).
pub(super) fn completed(dom: &Domain) -> HvResult<Option<MigrationProgress>> {
    let stats = job_stats(dom, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)?;
    if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
        return Ok(None);
    }
    Ok(Some(progress_of(&stats)))
}

pub(super) fn start_post_copy(dom: &Domain) -> HvResult<()> {
    // SAFETY: `dom` holds a live virDomainPtr for the duration of the call.
    let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
    if rc < 0 {
        return Err(HypervisorError::Libvirt(virt::error::Error::last_error().to_string()));
    }
    Ok(())
}

pub(super) fn abort(dom: &Domain) -> HvResult<()> {
    // SAFETY: `dom` holds a live virDomainPtr for the duration of the call; virDomainAbortJob
    // takes no ownership of it.
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        return Err(HypervisorError::Libvirt(virt::error::Error::last_error().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(copy: bool) -> MigrationTarget {
        let copy_disks = if copy { vec!["vda".to_string()] } else { vec![] };
        MigrationTarget {
            libvirt_uri: "qemu+unix:///system?socket=/run/b/libvirt-sock".into(),
            address: "127.0.0.1".parse().unwrap(),
            domain_name: "b-default_vm".into(),
            domain_xml: "<domain/>".into(),
            copy_disks,
            shared_disks: false,
            bandwidth_mib: Some(64),
            auto_converge: false,
            post_copy: false,
            tls: false,
        }
    }

    #[test]
    fn disks_are_copied_only_when_asked_and_only_their_top_layer() {
        let with = migration_flags(&target(true));
        assert_ne!(with & sys::VIR_MIGRATE_NON_SHARED_INC, 0);
        assert_eq!(with & sys::VIR_MIGRATE_NON_SHARED_DISK, 0);
        assert_eq!(migration_flags(&target(false)) & sys::VIR_MIGRATE_NON_SHARED_INC, 0);
        for f in [sys::VIR_MIGRATE_LIVE, sys::VIR_MIGRATE_PEER2PEER, sys::VIR_MIGRATE_PERSIST_DEST] {
            assert_ne!(with & f, 0);
        }
        assert_eq!(with & sys::VIR_MIGRATE_TUNNELLED, 0);
        assert_eq!(with & sys::VIR_MIGRATE_UNSAFE, 0, "libvirt's safety checks stand unless a class says shared");
        let shared = MigrationTarget { shared_disks: true, ..target(false) };
        assert_ne!(migration_flags(&shared) & sys::VIR_MIGRATE_UNSAFE, 0);
        assert_eq!(with & sys::VIR_MIGRATE_TLS, 0);
        assert_ne!(migration_flags(&MigrationTarget { tls: true, ..target(false) }) & sys::VIR_MIGRATE_TLS, 0);
    }

    #[test]
    fn the_target_listens_and_is_reached_on_its_address() {
        let p = parameters(&target(true));
        assert_eq!(p.uri.as_deref(), Some("tcp://127.0.0.1"));
        assert_eq!(p.disks_uri.as_deref(), Some("tcp://127.0.0.1"));
        assert_eq!(p.listen_address.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.dest_name.as_deref(), Some("b-default_vm"));
        assert_eq!(p.migrate_disks, vec!["vda".to_string()], "only the disks the node made");
        assert_eq!(p.bandwidth, Some(64));
        assert_eq!(parameters(&target(false)).disks_uri, None);
        assert_eq!(tcp_uri("fd00::1".parse().unwrap()), "tcp://[fd00::1]");
    }
}
