//! The MAC pool: interfaces without a `macAddress` get one at admission, persisted in the same
//! transaction as the object, released when the object is gone, never leased twice.
//!
//! A VMI controlled by a VirtualMachine shares its VM's lease: the VM holds the MAC through
//! restarts, as KubeMacPool does.

use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds::{self, ResourceKind};
use crate::meta;
use serde_json::Value;
use sqlx::{AnyConnection, Row};

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

/// The lease holder: the object itself, or the VM controlling a VMI.
fn lease_owner(kind: &ResourceKind, obj: &Value) -> (String, String, String, bool) {
    let ns = meta::namespace(obj).to_string();
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        let refs = meta::metadata(obj).and_then(|m| m.get("ownerReferences")).and_then(Value::as_array);
        if let Some(vm) = refs.into_iter().flatten().find(|r| {
            r.get("kind").and_then(Value::as_str) == Some("VirtualMachine")
                && r.get("controller").and_then(Value::as_bool) == Some(true)
        }) {
            let name = vm.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            return (kinds::VIRTUAL_MACHINE.store_key(), ns, name, false);
        }
    }
    (kind.store_key(), ns, meta::name(obj).to_string(), true)
}

/// Fill missing MACs, check given ones, and make the owner's leases match its interfaces.
pub async fn sync(conn: &mut AnyConnection, kind: &ResourceKind, obj: &mut Value, range: &MacRange) -> ApiResult<()> {
    let Some(path) = interfaces_path(kind) else {
        return Ok(());
    };
    let (owner_kind, owner_ns, owner_name, owns) = lease_owner(kind, obj);
    let field_base = path.join(".");
    let name = meta::name(obj).to_string();
    let Some(interfaces) = meta::at(obj, path).and_then(Value::as_array).map(|a| a.len()) else {
        if owns {
            release_owner(conn, &owner_kind, &owner_ns, &owner_name).await?;
        }
        return Ok(());
    };
    let mut wanted = vec![];
    for i in 0..interfaces {
        let iface = &mut meta::at_mut(obj, path)[i];
        let given = iface.get("macAddress").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let mac = match given {
            Some(text) => {
                let mac =
                    parse_mac(&text).map_err(|m| invalid(kind, &name, &format!("{field_base}[{i}].macAddress"), m))?;
                if let Some(holder) = holder_of(conn, mac).await? {
                    if holder != (owner_kind.clone(), owner_ns.clone(), owner_name.clone()) {
                        return Err(invalid(
                            kind,
                            &name,
                            &format!("{field_base}[{i}].macAddress"),
                            format!("MAC address {} is already in use by {}/{}", format_mac(mac), holder.1, holder.2),
                        ));
                    }
                }
                mac
            }
            None => {
                let mac = allocate(conn, range, &wanted).await?;
                iface["macAddress"] = Value::String(format_mac(mac));
                mac
            }
        };
        if wanted.contains(&mac) {
            return Err(invalid(
                kind,
                &name,
                &format!("{field_base}[{i}].macAddress"),
                format!("MAC address {} is used by two interfaces", format_mac(mac)),
            ));
        }
        wanted.push(mac);
    }
    if owns {
        let held = leases_of(conn, &owner_kind, &owner_ns, &owner_name).await?;
        for mac in held.iter().filter(|m| !wanted.contains(m)) {
            sqlx::query("DELETE FROM mac_leases WHERE mac = $1").bind(*mac as i64).execute(&mut *conn).await?;
        }
    }
    for mac in wanted {
        sqlx::query(
            "INSERT INTO mac_leases (mac, kind, namespace, name) VALUES ($1, $2, $3, $4) ON CONFLICT (mac) DO NOTHING",
        )
        .bind(mac as i64)
        .bind(&owner_kind)
        .bind(&owner_ns)
        .bind(&owner_name)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn invalid(kind: &ResourceKind, name: &str, field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(kind.group, kind.kind, name, vec![Cause::invalid(field, message)])
}

/// Release what an object held when it is gone (a VMI under a VM releases nothing).
pub async fn release(conn: &mut AnyConnection, kind: &ResourceKind, obj: &Value) -> ApiResult<()> {
    if interfaces_path(kind).is_none() {
        return Ok(());
    }
    let (owner_kind, ns, name, owns) = lease_owner(kind, obj);
    if owns {
        release_owner(conn, &owner_kind, &ns, &name).await?;
    }
    Ok(())
}

async fn release_owner(conn: &mut AnyConnection, kind: &str, ns: &str, name: &str) -> ApiResult<()> {
    sqlx::query("DELETE FROM mac_leases WHERE kind = $1 AND namespace = $2 AND name = $3")
        .bind(kind)
        .bind(ns)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn holder_of(conn: &mut AnyConnection, mac: u64) -> ApiResult<Option<(String, String, String)>> {
    let row = sqlx::query("SELECT kind, namespace, name FROM mac_leases WHERE mac = $1")
        .bind(mac as i64)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
        None => Ok(None),
    }
}

async fn leases_of(conn: &mut AnyConnection, kind: &str, ns: &str, name: &str) -> ApiResult<Vec<u64>> {
    let rows = sqlx::query("SELECT mac FROM mac_leases WHERE kind = $1 AND namespace = $2 AND name = $3")
        .bind(kind)
        .bind(ns)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| Ok(r.try_get::<i64, _>(0)? as u64)).collect()
}

/// Next free MAC after the cursor (wrapping once round the range).
async fn allocate(conn: &mut AnyConnection, range: &MacRange, taken_here: &[u64]) -> ApiResult<u64> {
    let size = range.end - range.start + 1;
    let row = sqlx::query("SELECT value FROM meta WHERE key = 'mac_cursor'").fetch_one(&mut *conn).await?;
    let cursor = row.try_get::<i64, _>(0)? as u64;
    let mut offset = cursor % size;
    for _ in 0..size.min(1 << 20) {
        let mac = range.start + offset;
        offset = (offset + 1) % size;
        if taken_here.contains(&mac) || holder_of(conn, mac).await?.is_some() {
            continue;
        }
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'mac_cursor'")
            .bind(offset as i64)
            .execute(&mut *conn)
            .await?;
        return Ok(mac);
    }
    Err(ApiError::unavailable("the MAC pool is exhausted"))
}

/// Every lease: (mac, kind key, namespace, name).
pub async fn all_leases(conn: &mut AnyConnection) -> ApiResult<Vec<(u64, String, String, String)>> {
    let rows =
        sqlx::query("SELECT mac, kind, namespace, name FROM mac_leases ORDER BY mac").fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok((r.try_get::<i64, _>(0)? as u64, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
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
