//! The MAC pool: interfaces without a `macAddress` get one at admission, never leased twice.
//! Where the leases live is a [`Leases`]: the store's table, written in the same transaction as
//! the object and released when it is gone (`sql`), or — on a Kubernetes cluster, where the
//! admission webhook assigns MACs — memory fed by a watch of the VMs and VMIs (`memory`), as
//! KubeMacPool keeps them.
//!
//! A VMI controlled by a VirtualMachine shares its VM's lease: the VM holds the MAC through
//! restarts, as KubeMacPool does.

mod memory;
mod sql;

pub use memory::MemoryPool;
pub use sql::{all_leases, release, SqlLeases};

use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds::{self, ResourceKind};
use crate::meta;
use serde_json::Value;
use std::future::Future;

/// Who holds a MAC: (kind's store key, namespace, name).
pub type Holder = (String, String, String);

/// Where leases are kept.
pub trait Leases {
    /// Lease `mac` to `holder` if nobody holds it; false when it is taken (by anyone).
    fn claim(&mut self, mac: u64, holder: &Holder) -> impl Future<Output = ApiResult<bool>> + Send;
    /// Who holds `mac`.
    fn holder_of(&mut self, mac: u64) -> impl Future<Output = ApiResult<Option<Holder>>> + Send;
    /// `mac` is no longer wanted by the object being admitted.
    fn release(&mut self, mac: u64) -> impl Future<Output = ApiResult<()>> + Send;
    /// The allocation cursor's next value (1, 2, …).
    fn next_cursor(&mut self) -> impl Future<Output = ApiResult<u64>> + Send;
}

/// An inclusive range of MACs, as 48-bit integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacRange {
    pub start: u64,
    pub end: u64,
}

impl Default for MacRange {
    /// Locally administered, unicast: `02:00:00:00:00:00`–`02:ff:ff:ff:ff:ff`, KubeMacPool's default.
    fn default() -> Self {
        MacRange { start: 0x02_00_00_00_00_00, end: 0x02_ff_ff_ff_ff_ff }
    }
}

impl MacRange {
    /// Parse `START-END`, e.g. `02:00:00:00:00:00-02:00:00:ff:ff:ff`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (a, b) = text.split_once('-').ok_or("a MAC range is START-END")?;
        let (start, end) = (parse_mac(a.trim())?, parse_mac(b.trim())?);
        if start > end {
            return Err("the range's start is after its end".into());
        }
        Ok(MacRange { start, end })
    }
}

pub fn parse_mac(text: &str) -> Result<u64, String> {
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(format!("\"{text}\" is not a MAC address (expected six hex octets)"));
    }
    parts.iter().try_fold(0u64, |acc, p| {
        u8::from_str_radix(p, 16)
            .map(|b| (acc << 8) | u64::from(b))
            .map_err(|_| format!("\"{text}\" is not a MAC address"))
    })
}

pub fn format_mac(mac: u64) -> String {
    (0..6).rev().map(|i| format!("{:02x}", (mac >> (i * 8)) & 0xff)).collect::<Vec<_>>().join(":")
}

/// Where a kind keeps its interfaces.
fn interfaces_path(kind: &ResourceKind) -> Option<&'static [&'static str]> {
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        Some(&["spec", "template", "spec", "domain", "devices", "interfaces"])
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        Some(&["spec", "domain", "devices", "interfaces"])
    } else {
        None
    }
}

/// The lease holder: the object itself, or the VM controlling a VMI (false: the VMI does not
/// hold the lease itself).
fn lease_owner(kind: &ResourceKind, obj: &Value) -> (Holder, bool) {
    let ns = meta::namespace(obj).to_string();
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        let refs = meta::metadata(obj).and_then(|m| m.get("ownerReferences")).and_then(Value::as_array);
        if let Some(vm) = refs.into_iter().flatten().find(|r| {
            r.get("kind").and_then(Value::as_str) == Some("VirtualMachine")
                && r.get("controller").and_then(Value::as_bool) == Some(true)
        }) {
            let name = vm.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            return ((kinds::VIRTUAL_MACHINE.store_key(), ns, name), false);
        }
    }
    ((kind.store_key(), ns, meta::name(obj).to_string()), true)
}

fn macs_at(obj: Option<&Value>, path: &[&str]) -> Vec<u64> {
    obj.and_then(|o| meta::at(o, path))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("macAddress").and_then(Value::as_str))
        .filter_map(|m| parse_mac(m).ok())
        .collect()
}

/// Fill missing MACs, claim given ones, and release what `previous` (the stored version) held
/// that `obj` no longer has. A stored object's MACs are exactly its leases, so what it held is
/// read from it, not from the lease table.
pub async fn sync(
    leases: &mut impl Leases,
    kind: &ResourceKind,
    obj: &mut Value,
    previous: Option<&Value>,
    range: &MacRange,
) -> ApiResult<()> {
    let Some(path) = interfaces_path(kind) else { return Ok(()) };
    let (owner, owns) = lease_owner(kind, obj);
    let field_base = path.join(".");
    let name = meta::name(obj).to_string();
    let held = macs_at(previous, path);
    let count = meta::at(obj, path).and_then(Value::as_array).map_or(0, Vec::len);
    let mut wanted = vec![];
    for i in 0..count {
        let field = format!("{field_base}[{i}].macAddress");
        let iface = &mut meta::at_mut(obj, path)[i];
        let given = iface.get("macAddress").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let mac = match given {
            Some(text) => {
                let mac = parse_mac(&text).map_err(|m| invalid(kind, &name, &field, m))?;
                if !held.contains(&mac) && !wanted.contains(&mac) && !leases.claim(mac, &owner).await? {
                    match leases.holder_of(mac).await? {
                        Some(h) if h == owner => {}
                        Some(h) => {
                            let msg = format!("MAC address {} is already in use by {}/{}", format_mac(mac), h.1, h.2);
                            return Err(invalid(kind, &name, &field, msg));
                        }
                        None => return Err(ApiError::unavailable("the MAC pool changed underneath; retry")),
                    }
                }
                mac
            }
            None => {
                let mac = allocate(leases, range, &owner).await?;
                iface["macAddress"] = Value::String(format_mac(mac));
                mac
            }
        };
        if wanted.contains(&mac) {
            let msg = format!("MAC address {} is used by two interfaces", format_mac(mac));
            return Err(invalid(kind, &name, &field, msg));
        }
        wanted.push(mac);
    }
    if owns {
        for mac in held.iter().filter(|m| !wanted.contains(m)) {
            leases.release(*mac).await?;
        }
    }
    Ok(())
}

fn invalid(kind: &ResourceKind, name: &str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(kind.group, kind.kind, name, vec![Cause::invalid(field, message)])
}

/// The next free MAC from the cursor (wrapping round the range), leased to `owner`.
async fn allocate(leases: &mut impl Leases, range: &MacRange, owner: &Holder) -> ApiResult<u64> {
    let size = range.end - range.start + 1;
    for _ in 0..size.min(1 << 16) {
        let mac = range.start + (leases.next_cursor().await? - 1) % size;
        if leases.claim(mac, owner).await? {
            return Ok(mac);
        }
    }
    Err(ApiError::unavailable("the MAC pool is exhausted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_format() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Ok(0x02_00_00_00_00_0a));
        assert_eq!(parse_mac("02-00-00-00-00-0A"), Ok(0x02_00_00_00_00_0a));
        assert_eq!(format_mac(0x02_00_00_00_00_0a), "02:00:00:00:00:0a");
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(MacRange::parse("02:00:00:00:00:00-02:00:00:00:00:ff").map(|r| r.end - r.start), Ok(255));
        assert!(MacRange::parse("02:00:00:00:00:ff-02:00:00:00:00:00").is_err());
    }
}
