//! The real hypervisor: libvirt's QEMU driver through the `virt` crate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use virt::connect::Connect;
use virt::domain::{DomainShutoffReason, DomainState as VirtState, DomainStateReason};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::sys;

use super::{lifecycle, migration, DomainState, DomainSummary, HvResult, Hypervisor, HypervisorError};
use super::{MigrationProgress, MigrationTarget};

/// Empty name on the event channel: "the connection was re-opened, look at everything".
pub const RESYNC_ALL: &str = "";

/// Connections the calls are spread over. libvirtd works at most `max_client_requests` (5)
/// calls of one connection at a time and queues the rest: with one connection, the node's
/// workers and its event-driven lookups waited behind each other's domain starts.
const CONNECTIONS: usize = 4;
// One for events and quick calls, at least one for starts (`with_start_conn` divides by the rest).
const _: () = assert!(CONNECTIONS >= 2);

pub struct Libvirt {
    uri: String,
    /// The first also carries the lifecycle events.
    conns: Vec<Mutex<Option<Connect>>>,
    next: AtomicUsize,
    events_tx: UnboundedSender<String>,
    events_rx: Mutex<Option<UnboundedReceiver<String>>>,
    /// Why domains stopped, from their events: a transient one leaves nothing else behind.
    stops: Arc<lifecycle::Stops>,
}

fn err(e: virt::error::Error) -> HypervisorError {
    HypervisorError::Libvirt(e.to_string())
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    matches!(e.code(), Enum::Known(ErrorNumber::NoDomain))
}

impl Libvirt {
    /// Opens `uri` (e.g. `qemu:///system`) with lifecycle events flowing.
    pub fn open(uri: &str) -> HvResult<Libvirt> {
        virt::error::clear_error_callback();
        lifecycle::start_event_loop().map_err(HypervisorError::Libvirt)?;
        let (events_tx, events_rx) = unbounded_channel();
        let hv = Libvirt {
            uri: uri.into(),
            conns: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            stops: Arc::default(),
        };
        for slot in 0..CONNECTIONS {
            hv.live(slot)?;
        }
        Ok(hv)
    }

    /// `9.0.0`: the libvirt library version, for the Node's containerRuntimeVersion.
    pub fn version(&self) -> String {
        let v = Connect::version().unwrap_or(0);
        format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
    }

    fn connect(&self, events: bool) -> HvResult<Connect> {
        let conn = Connect::open(Some(&self.uri)).map_err(err)?;
        // Keepalives make a restarted libvirtd show up as a dead connection within seconds.
        let _ = conn.set_keep_alive(5, 3);
        if events {
            lifecycle::register(&conn, self.events_tx.clone(), Arc::clone(&self.stops))
                .map_err(HypervisorError::Libvirt)?;
            let _ = self.events_tx.send(RESYNC_ALL.into());
        }
        Ok(conn)
    }

    /// The connection of `slot`, reopened if libvirtd went away. The lock covers only picking
    /// the connection: libvirt connections are thread-safe, and calls from many workers run
    /// side by side on one (a lock held across calls serialized every start).
    fn live(&self, slot: usize) -> HvResult<Connect> {
        let lock = self.conns.get(slot).ok_or_else(|| HypervisorError::Libvirt("no such connection".into()))?;
        let mut guard = lock.lock().map_err(|_| HypervisorError::Libvirt("connection lock poisoned".into()))?;
        if guard.as_ref().is_some_and(|c| !c.is_alive().unwrap_or(false)) {
            // Dropping the dead connection closes it.
            guard.take();
        }
        if guard.is_none() {
            *guard = Some(self.connect(slot == 0)?);
        }
        guard.as_ref().cloned().ok_or_else(|| HypervisorError::Libvirt("not connected".into()))
    }

    /// Runs `f` on the next connection in turn. The events' connection is checked on every
    /// call, so that it comes back with libvirtd even while calls go to the others.
    fn with_conn<T>(&self, f: impl Fn(&Connect) -> HvResult<T>) -> HvResult<T> {
        f(&self.live(0)?)
    }

    /// Long calls (domain starts) go round the other connections, so that a quick query never
    /// waits behind them in libvirtd's per-connection queue.
    fn with_start_conn<T>(&self, f: impl Fn(&Connect) -> HvResult<T>) -> HvResult<T> {
        let _ = self.live(0)?;
        let slot = 1 + self.next.fetch_add(1, Ordering::Relaxed) % (self.conns.len() - 1);
        f(&self.live(slot)?)
    }

    fn with_domain<T>(&self, name: &str, f: impl Fn(&virt::domain::Domain) -> HvResult<T>) -> HvResult<T> {
        self.with_conn(|conn| match conn.lookup_domain_by_name(name) {
            Ok(dom) => f(&dom),
            Err(e) if is_no_domain(&e) => Err(HypervisorError::NoDomain(name.into())),
            Err(e) => Err(err(e)),
        })
    }
}

fn read_state(dom: &virt::domain::Domain) -> HvResult<DomainState> {
    let (state, reason) = dom.state().map_err(err)?;
    Ok(match state {
        Enum::Known(VirtState::Running | VirtState::Blocked) => DomainState::Running,
        Enum::Known(VirtState::Paused | VirtState::PMSuspended) => DomainState::Paused,
        Enum::Known(VirtState::Shutdown) => DomainState::ShuttingDown,
        Enum::Known(VirtState::Crashed) => DomainState::Crashed,
        Enum::Known(VirtState::Shutoff) => match reason {
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(DomainShutoffReason::Shutdown))) => {
                DomainState::ShutOffByGuest
            }
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(DomainShutoffReason::Destroyed))) => {
                DomainState::Destroyed
            }
            Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                DomainShutoffReason::Crashed | DomainShutoffReason::Failed,
            ))) => DomainState::Crashed,
            _ => DomainState::ShutOff,
        },
        // `state()` reads a vanished domain as Unknown rather than failing.
        Enum::Known(VirtState::NoState) | Enum::Unknown(_) => {
            return Err(HypervisorError::NoDomain(dom.name().unwrap_or_default()))
        }
    })
}

/// The VMI uid from `<metadata><converge:vmi uid="…"/>`.
pub fn vmi_uid_from_xml(xml: &str) -> Option<String> {
    metadata_attr(xml, b"uid")
}

/// The Node uid from `<metadata><converge:vmi node="…"/>`.
pub fn node_uid_from_xml(xml: &str) -> Option<String> {
    metadata_attr(xml, b"node")
}

fn metadata_attr(xml: &str, attr: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e))
                if e.name().as_ref().ends_with(b":vmi") =>
            {
                return e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.as_ref() == attr)
                    .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

impl Hypervisor for Libvirt {
    fn start(&self, xml: &str, paused: bool) -> HvResult<std::time::Duration> {
        self.with_start_conn(|conn| {
            let t0 = std::time::Instant::now();
            let flags = if paused { sys::VIR_DOMAIN_START_PAUSED } else { 0 };
            conn.create_domain_xml(xml, flags).map_err(err)?;
            Ok(t0.elapsed())
        })
    }

    fn persist(&self, xml: &str) -> HvResult<()> {
        self.with_start_conn(|conn| conn.define_domain_xml(xml).map(|_| ()).map_err(err))
    }

    fn stats(&self) -> HvResult<Vec<super::stats::DomainStats>> {
        self.with_conn(super::stats::read_all)
    }

    fn list(&self) -> HvResult<Vec<DomainSummary>> {
        self.with_conn(|conn| {
            let mut out = Vec::new();
            let all = conn.list_all_domains(0).map_err(err)?;
            // One call for all the transient ones, rather than one per domain on every resync.
            let transient: std::collections::HashSet<String> = conn
                .list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
                .map_err(err)?
                .iter()
                .filter_map(|d| d.name().ok())
                .collect();
            for dom in all {
                let Ok(name) = dom.name() else { continue };
                let Ok(state) = read_state(&dom) else { continue };
                let xml = dom.xml_desc(0).unwrap_or_default();
                out.push(DomainSummary {
                    persistent: !transient.contains(&name),
                    name,
                    vmi_uid: vmi_uid_from_xml(&xml),
                    node_uid: node_uid_from_xml(&xml),
                    state,
                });
            }
            Ok(out)
        })
    }

    fn state(&self, name: &str) -> HvResult<Option<DomainState>> {
        match self.with_domain(name, read_state) {
            Ok(state) => Ok(Some(state)),
            Err(HypervisorError::NoDomain(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn state_by_uuid(&self, uuid: &str, name: &str) -> HvResult<Option<DomainState>> {
        self.with_conn(|conn| match conn.lookup_domain_by_uuid_string(uuid) {
            Ok(dom) if dom.name().map_err(err)? == name => read_state(&dom).map(Some),
            Ok(_) => Ok(None),
            Err(e) if is_no_domain(&e) => Ok(self.stops.of(uuid, name)),
            Err(e) => Err(err(e)),
        })
        .or_else(|e| match e {
            HypervisorError::NoDomain(_) => Ok(self.stops.of(uuid, name)),
            e => Err(e),
        })
    }

    fn shutdown(&self, name: &str) -> HvResult<()> {
        self.with_domain(name, |dom| dom.shutdown().map_err(err))
    }

    fn destroy(&self, name: &str) -> HvResult<()> {
        match self.with_domain(name, |dom| {
            if dom.is_active().map_err(err)? {
                dom.destroy().map_err(err)?;
            }
            Ok(())
        }) {
            Err(HypervisorError::NoDomain(_)) => Ok(()),
            other => other,
        }
    }

    fn undefine(&self, name: &str) -> HvResult<()> {
        self.stops.forget(name);
        match self.with_domain(name, |dom| dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM).map_err(err)) {
            Err(HypervisorError::NoDomain(_)) => Ok(()),
            other => other,
        }
    }

    fn pause(&self, name: &str) -> HvResult<()> {
        self.with_domain(name, |dom| dom.suspend().map_err(err))
    }

    fn unpause(&self, name: &str) -> HvResult<()> {
        self.with_domain(name, |dom| dom.resume().map_err(err))
    }

    fn soft_reboot(&self, name: &str) -> HvResult<()> {
        self.with_domain(name, |dom| dom.reboot(sys::VIR_DOMAIN_REBOOT_ACPI_POWER_BTN).map_err(err))
    }

    fn xml(&self, name: &str) -> HvResult<String> {
        self.with_domain(name, |dom| dom.xml_desc(0).map_err(err))
    }

    fn migratable_xml(&self, name: &str) -> HvResult<String> {
        self.with_domain(name, |dom| dom.xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE).map_err(err))
    }

    fn migrate(&self, name: &str, target: &MigrationTarget) -> HvResult<()> {
        // A start connection: the call lasts as long as the migration, and quick queries (the
        // progress, the abort) must not queue behind it.
        self.with_start_conn(|conn| match conn.lookup_domain_by_name(name) {
            Ok(dom) => migration::migrate(&dom, &target.libvirt_uri, target),
            Err(e) if is_no_domain(&e) => Err(HypervisorError::NoDomain(name.into())),
            Err(e) => Err(err(e)),
        })
    }

    fn migration_progress(&self, name: &str) -> HvResult<Option<MigrationProgress>> {
        self.with_domain(name, migration::progress)
    }

    fn abort_migration(&self, name: &str) -> HvResult<()> {
        self.with_domain(name, migration::abort)
    }

    fn start_post_copy(&self, name: &str) -> HvResult<()> {
        self.with_domain(name, migration::start_post_copy)
    }

    fn last_migration(&self, name: &str) -> HvResult<Option<MigrationProgress>> {
        self.with_domain(name, migration::completed)
    }

    fn events(&self) -> Option<UnboundedReceiver<String>> {
        self.events_rx.lock().ok()?.take()
    }
}
