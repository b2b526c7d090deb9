//! The libvirt boundary. The node agent talks to a `Hypervisor`; the real one is libvirt through
//! the `virt` crate (`libvirt.rs`), the double records calls for unit tests (`fake.rs`).

pub mod fake;
mod libvirt;
mod lifecycle;
mod migration;
pub mod stats;

pub use libvirt::{node_uid_from_xml, vmi_uid_from_xml, Libvirt, RESYNC_ALL};
pub use migration::migration_flags;

/// What libvirt says a domain is doing, with the reason where it matters to a VMI's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    /// Shutting down, not yet off.
    ShuttingDown,
    /// Off after the guest powered itself off (or an ACPI shutdown it honoured).
    ShutOffByGuest,
    /// Off because someone destroyed it.
    Destroyed,
    /// Off because QEMU died or failed.
    Crashed,
    /// Defined, never started (or off for another reason).
    ShutOff,
}

impl DomainState {
    pub fn is_active(self) -> bool {
        matches!(self, DomainState::Running | DomainState::Paused | DomainState::ShuttingDown)
    }
}

/// One domain Converge owns, as listed by the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSummary {
    pub name: String,
    /// The VMI uid from the domain's Converge metadata; `None` for domains that aren't ours.
    pub vmi_uid: Option<String>,
    /// The Node uid from the same metadata: which agent made it.
    pub node_uid: Option<String>,
    pub state: DomainState,
    /// Defined (its definition outlives QEMU), not only running.
    pub persistent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("no domain named {0}")]
    NoDomain(String),
}

pub type HvResult<T> = Result<T, HypervisorError>;

/// Where and how a live migration goes (libvirt's peer-to-peer migration: the source libvirtd
/// drives it, talking to the target's libvirtd at `libvirt_uri`).
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationTarget {
    /// The target libvirtd as the source libvirtd reaches it (`qemu+unix:///system?socket=…`
    /// on one machine, `qemu+tls://HOST/system` across machines).
    pub libvirt_uri: String,
    /// Where the target's QEMU listens for the guest's memory and disks, and where the source's
    /// QEMU sends them.
    pub address: std::net::IpAddr,
    /// The domain on the target: its name and XML (the target's paths, taps, node).
    pub domain_name: String,
    pub domain_xml: String,
    /// The disks (target devices) whose top layers are copied to the target (containerDisk
    /// overlays, ephemeral disks: KubeVirt's BlockMigration); the others stay (shared volumes,
    /// read-only disks the target made itself).
    pub copy_disks: Vec<String>,
    /// Writable disks stay in place because the admin's class says every node reaches them
    /// (`parameters.shared`): libvirt, which recognises only the shared file systems it knows
    /// (NFS, GFS2, Ceph…), is told so (`VIR_MIGRATE_UNSAFE`).
    pub shared_disks: bool,
    /// MiB/s; `None` is unlimited.
    pub bandwidth_mib: Option<u64>,
    pub auto_converge: bool,
    pub post_copy: bool,
    /// The guest's memory and disks go encrypted, QEMU to QEMU (`VIR_MIGRATE_TLS`): both
    /// libvirtds hold certificates of one CA for their QEMUs (`/etc/pki/qemu`).
    pub tls: bool,
}

/// A migration job's progress, as libvirt reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationProgress {
    pub elapsed_ms: u64,
    pub data_total: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    /// Bytes per second of guest memory being sent.
    pub memory_bps: u64,
    /// How long the guest was paused for the switch-over (known once it finished).
    pub downtime_ms: Option<u64>,
}

/// Calls block (libvirt is synchronous): the node agent makes them from blocking threads.
pub trait Hypervisor: Send + Sync + 'static {
    /// Starts the domain as a transient one (`virDomainCreateXML`, one call), with its vCPUs
    /// stopped when `paused` (KubeVirt's `startStrategy: Paused`); returns how long libvirt
    /// took. Defining first and then starting cost 6–16 % more at 50–100 starts in P1.
    fn start(&self, xml: &str, paused: bool) -> HvResult<std::time::Duration>;
    /// Makes a running domain persistent (`virDomainDefineXML` of its XML), so that its
    /// definition outlives QEMU and a restart of Converge. The node calls it once no start is
    /// in flight (see `node::persist`): a define costs libvirtd CPU the starts need.
    fn persist(&self, xml: &str) -> HvResult<()>;
    fn list(&self) -> HvResult<Vec<DomainSummary>>;
    fn state(&self, name: &str) -> HvResult<Option<DomainState>>;
    /// The state of the domain with this UUID, if it still has this name (`None` otherwise):
    /// a domain this node started, looked up without reading its XML again. A transient domain
    /// that stopped (gone from libvirt at once) reads as its stop event said, until `undefine`.
    fn state_by_uuid(&self, uuid: &str, name: &str) -> HvResult<Option<DomainState>>;
    /// Asks the guest to power off (ACPI).
    fn shutdown(&self, name: &str) -> HvResult<()>;
    /// Pulls the plug. A domain already off is fine.
    fn destroy(&self, name: &str) -> HvResult<()>;
    /// Removes the definition of a stopped domain; a missing one is fine.
    fn undefine(&self, name: &str) -> HvResult<()>;
    fn pause(&self, name: &str) -> HvResult<()>;
    fn unpause(&self, name: &str) -> HvResult<()>;
    /// Asks the guest to reboot (ACPI), the way KubeVirt's soft reboot does without an agent.
    fn soft_reboot(&self, name: &str) -> HvResult<()>;
    fn xml(&self, name: &str) -> HvResult<String>;
    /// The XML a migration starts from (`VIR_DOMAIN_XML_MIGRATABLE`: no runtime-only parts).
    fn migratable_xml(&self, name: &str) -> HvResult<String>;
    /// Live-migrates `name` to `target`; blocks until the guest runs there (or the migration
    /// failed or was aborted, and the guest still runs here).
    fn migrate(&self, name: &str, target: &MigrationTarget) -> HvResult<()>;
    /// The migration job of `name` now; `None` when none runs.
    fn migration_progress(&self, name: &str) -> HvResult<Option<MigrationProgress>>;
    /// Stops a running migration: the guest stays here.
    fn abort_migration(&self, name: &str) -> HvResult<()>;
    /// Switches a running migration (started with `post_copy`) to post-copy: the guest runs on
    /// the target at once and fetches the pages it still lacks from here.
    fn start_post_copy(&self, name: &str) -> HvResult<()>;
    /// The figures of the last finished job of `name` (on a migration's target: its downtime).
    fn last_migration(&self, name: &str) -> HvResult<Option<MigrationProgress>>;
    /// Every domain's statistics (CPU, vCPUs, memory, NICs, disks), in one call.
    fn stats(&self) -> HvResult<Vec<stats::DomainStats>>;
    /// Names of domains whose lifecycle changed, as libvirt reports them. One receiver.
    fn events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>>;
}
