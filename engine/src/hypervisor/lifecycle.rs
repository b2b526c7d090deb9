//! libvirt domain lifecycle events. The `virt` crate has no safe wrapper for
//! `virConnectDomainEventRegisterAny`, so this module holds the little unsafe code needed: a
//! callback that forwards the domain's name into a channel, and the thread that runs libvirt's
//! default event loop.

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};

use tokio::sync::mpsc::UnboundedSender;
use virt::connect::Connect;
use virt::sys;

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
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the boxed sender registered below, alive until `free_sender` runs;
    // `dom` is valid for the duration of the callback.
    let sender = &*(opaque as *const UnboundedSender<String>);
    let name = sys::virDomainGetName(dom);
    if !name.is_null() {
        let _ = sender.send(CStr::from_ptr(name).to_string_lossy().into_owned());
    }
    0
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    // SAFETY: created by Box::into_raw in `register`; libvirt calls this exactly once.
    drop(Box::from_raw(opaque as *mut UnboundedSender<String>));
}

/// Registers for lifecycle events of every domain on `conn`; returns the callback id.
pub fn register(conn: &Connect, sender: UnboundedSender<String>) -> Result<c_int, String> {
    let opaque = Box::into_raw(Box::new(sender)) as *mut c_void;
    // The generic callback type is a C function pointer taking (conn, dom, opaque); libvirt
    // calls it with the lifecycle signature for VIR_DOMAIN_EVENT_ID_LIFECYCLE, as its docs say.
    let callback: unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int =
        on_lifecycle;
    // SAFETY: the transmute only erases the callback's signature as libvirt's VIR_DOMAIN_EVENT_CALLBACK
    // macro does; `opaque` is owned by libvirt from here and released through `free_sender`.
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
            Some(free_sender),
        )
    };
    if id < 0 {
        // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
        unsafe { free_sender(opaque) };
        return Err(virt::error::Error::last_error().to_string());
    }
    Ok(id)
}
