//! libvirt domain lifecycle events. The `virt` crate has no safe wrapper for
//! `virConnectDomainEventRegisterAny`, so this module holds the little unsafe code needed: a
//! callback that forwards the domain's name into a channel, and the thread that runs libvirt's
//! default event loop. It also keeps why each domain last stopped: a transient domain is gone
//! from libvirt the moment it stops, and its stop event is then the only record of the reason.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::sys;

use super::DomainState;

/// Stops remembered at most: the events are of every domain on the connection, not only ours,
/// and an entry leaves only when its domain is undefined or starts again.
const KEPT_STOPS: usize = 1024;

/// Why domains last stopped, by UUID (with the name they had), newest last.
#[derive(Default)]
pub struct Stops(Mutex<VecDeque<(String, String, DomainState)>>);

impl Stops {
    fn record(&self, uuid: &str, name: &str, stopped: Option<DomainState>) {
        let Ok(mut stops) = self.0.lock() else { return };
        stops.retain(|(u, _, _)| u != uuid);
        if let Some(state) = stopped {
            if stops.len() >= KEPT_STOPS {
                stops.pop_front();
            }
            stops.push_back((uuid.to_string(), name.to_string(), state));
        }
    }
    /// How the domain with this UUID and name stopped, if its stop was seen.
    pub fn of(&self, uuid: &str, name: &str) -> Option<DomainState> {
        let stops = self.0.lock().ok()?;
        stops.iter().rev().find(|(u, n, _)| u == uuid && n == name).map(|(_, _, state)| *state)
    }
    /// An undefined domain's stop is of no more use.
    pub fn forget(&self, name: &str) {
        if let Ok(mut stops) = self.0.lock() {
            stops.retain(|(_, n, _)| n != name);
        }
    }
}

/// What a lifecycle event says of the domain: `Some(Some(state))` it stopped so,
/// `Some(None)` it started (any stop recorded before is over), `None` nothing to keep.
fn stop_of(event: c_int, detail: c_int) -> Option<Option<DomainState>> {
    let (event, detail) = (u32::try_from(event).ok()?, u32::try_from(detail).ok()?);
    match event {
        sys::VIR_DOMAIN_EVENT_STARTED => Some(None),
        sys::VIR_DOMAIN_EVENT_STOPPED => Some(Some(match detail {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => DomainState::ShutOffByGuest,
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => DomainState::Destroyed,
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED | sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => DomainState::Crashed,
            _ => DomainState::ShutOff,
        })),
        _ => None,
    }
}

/// What the callback is given: where names go, and where stops are kept.
struct Sink {
    sender: UnboundedSender<String>,
    stops: Arc<Stops>,
}

/// Must run before the first connection is opened, or that connection delivers no events.
pub fn start_event_loop() -> Result<(), String> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    STARTED
        .get_or_init(|| {
            virt::event::event_register_default_impl().map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if virt::event::event_run_default_impl().is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the boxed sink registered below, alive until `free_sink` runs;
    // `dom` is valid for the duration of the callback.
    let sink = &*(opaque as *const Sink);
    let name = sys::virDomainGetName(dom);
    if name.is_null() {
        return 0;
    }
    let name = CStr::from_ptr(name).to_string_lossy().into_owned();
    if let Some(stopped) = stop_of(event, detail) {
        let mut uuid = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
        // SAFETY: the buffer holds VIR_UUID_STRING_BUFLEN bytes, what libvirt writes at most.
        if sys::virDomainGetUUIDString(dom, uuid.as_mut_ptr()) == 0 {
            sink.stops.record(&CStr::from_ptr(uuid.as_ptr()).to_string_lossy(), &name, stopped);
        }
    }
    let _ = sink.sender.send(name);
    0
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: created by Box::into_raw in `register`; libvirt calls this exactly once.
    drop(Box::from_raw(opaque as *mut Sink));
}

/// Registers for lifecycle events of every domain on `conn`; returns the callback id.
pub fn register(conn: &Connect, sender: UnboundedSender<String>, stops: Arc<Stops>) -> Result<c_int, String> {
    let opaque = Box::into_raw(Box::new(Sink { sender, stops })) as *mut c_void;
    // The generic callback type is a C function pointer taking (conn, dom, opaque); libvirt
    // calls it with the lifecycle signature for VIR_DOMAIN_EVENT_ID_LIFECYCLE, as its docs say.
    let callback: unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int =
        on_lifecycle;
    // SAFETY: the transmute only erases the callback's signature as libvirt's VIR_DOMAIN_EVENT_CALLBACK
    // macro does; `opaque` is owned by libvirt from here and released through `free_sink`.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(callback)),
            opaque,
            Some(free_sink),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        unsafe { free_sink(opaque) };
        return Err(virt::error::Error::last_error().to_string());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_kept_until_the_domain_starts_again_or_is_undefined() {
        let stops = Stops::default();
        let stopped = stop_of(sys::VIR_DOMAIN_EVENT_STOPPED as c_int, sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN as c_int);
        assert_eq!(stopped, Some(Some(DomainState::ShutOffByGuest)));
        stops.record("u1", "ns_a", stopped.flatten());
        assert_eq!(stops.of("u1", "ns_a"), Some(DomainState::ShutOffByGuest));
        assert_eq!(stops.of("u1", "ns_b"), None, "another name is another domain");
        stops.record("u1", "ns_a", stop_of(sys::VIR_DOMAIN_EVENT_STARTED as c_int, 0).flatten());
        assert_eq!(stops.of("u1", "ns_a"), None);
        stops.record("u1", "ns_a", Some(DomainState::Crashed));
        stops.forget("ns_a");
        assert_eq!(stops.of("u1", "ns_a"), None);
    }

    #[test]
    fn every_stop_detail_reads_as_a_state_and_other_events_keep_nothing() {
        let stop = |d: u32| stop_of(sys::VIR_DOMAIN_EVENT_STOPPED as c_int, d as c_int).flatten();
        assert_eq!(stop(sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED), Some(DomainState::Destroyed));
        assert_eq!(stop(sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED), Some(DomainState::Crashed));
        assert_eq!(stop(sys::VIR_DOMAIN_EVENT_STOPPED_FAILED), Some(DomainState::Crashed));
        assert_eq!(stop(sys::VIR_DOMAIN_EVENT_STOPPED_SAVED), Some(DomainState::ShutOff));
        assert_eq!(stop_of(sys::VIR_DOMAIN_EVENT_SUSPENDED as c_int, 0), None);
        assert_eq!(stop_of(-1, 0), None);
    }

    #[test]
    fn the_kept_stops_are_bounded() {
        let stops = Stops::default();
        for i in 0..KEPT_STOPS + 10 {
            stops.record(&i.to_string(), "d", Some(DomainState::Destroyed));
        }
        assert_eq!(stops.of("0", "d"), None, "the oldest went");
        assert_eq!(stops.of(&(KEPT_STOPS + 9).to_string(), "d"), Some(DomainState::Destroyed));
    }
}
