//! Leases in the store's `mac_leases` table, written in the object's own transaction.

use super::{interfaces_path, lease_owner, Holder, Leases};
use crate::error::ApiResult;
use crate::kinds::ResourceKind;
use crate::store::db::{self, Db};
use serde_json::Value;

/// The lease table, through the transaction writing the object.
pub struct SqlLeases<'a, D: Db>(pub &'a mut D);

impl<D: Db> Leases for SqlLeases<'_, D> {
    async fn claim(&mut self, mac: u64, holder: &Holder) -> ApiResult<bool> {
        let done = db::query(
            "INSERT INTO mac_leases (mac, kind, namespace, name) VALUES ($1, $2, $3, $4) ON CONFLICT (mac) DO NOTHING",
        )
        .bind(mac as i64)
        .bind(&holder.0)
        .bind(&holder.1)
        .bind(&holder.2)
        .execute(&mut *self.0)
        .await?;
        Ok(done == 1)
    }

    async fn holder_of(&mut self, mac: u64) -> ApiResult<Option<Holder>> {
        let row = db::query("SELECT kind, namespace, name FROM mac_leases WHERE mac = $1")
            .bind(mac as i64)
            .fetch_optional(&mut *self.0)
            .await?;
        match row {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
            None => Ok(None),
        }
    }

    async fn release(&mut self, mac: u64) -> ApiResult<()> {
        db::query("DELETE FROM mac_leases WHERE mac = $1").bind(mac as i64).execute(&mut *self.0).await?;
        Ok(())
    }

    async fn next_cursor(&mut self) -> ApiResult<u64> {
        let row = db::query("UPDATE meta SET value = value + 1 WHERE key = 'mac_cursor' RETURNING value")
            .fetch_one(&mut *self.0)
            .await?;
        Ok(row.try_get::<i64>(0)?.max(1) as u64)
    }
}

/// Release what an object held when it is gone (a VMI under a VM releases nothing).
pub async fn release(conn: &mut impl Db, kind: &ResourceKind, obj: &Value) -> ApiResult<()> {
    if interfaces_path(kind).is_none() {
        return Ok(());
    }
    let ((owner_kind, ns, name), owns) = lease_owner(kind, obj);
    if owns {
        db::query("DELETE FROM mac_leases WHERE kind = $1 AND namespace = $2 AND name = $3")
            .bind(owner_kind)
            .bind(ns)
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Every lease: (mac, kind key, namespace, name).
pub async fn all_leases(conn: &mut impl Db) -> ApiResult<Vec<(u64, String, String, String)>> {
    let rows =
        db::query("SELECT mac, kind, namespace, name FROM mac_leases ORDER BY mac").fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok((r.try_get::<i64>(0)? as u64, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
}
