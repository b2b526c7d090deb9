//! Addresses kept in the store (`address_leases`): pod IPs, Service cluster IPs and node ports.
//! A lease names its holder; removing the holder from the store removes its leases in the same
//! transaction, so nothing outlives the object that held it.

use std::net::Ipv4Addr;

use crate::store::db::{self, Db};
use serde_json::Value;

use super::Cidr;
use crate::error::{ApiError, ApiResult, Cause};
use crate::kinds::{self, ResourceKind};
use crate::meta;

pub const POD_POOL: &str = "pods";
pub const SERVICE_POOL: &str = "services";
pub const NODE_PORT_POOL: &str = "node-ports";

/// What Services are given addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceNetwork {
    pub cidr: Cidr,
    pub node_ports: (u16, u16),
}

impl Default for ServiceNetwork {
    fn default() -> Self {
        ServiceNetwork { cidr: Cidr::parse("10.96.0.0/16").unwrap_or(Cidr::ZERO), node_ports: (30000, 32767) }
    }
}

pub type Owner<'a> = (&'a str, &'a str, &'a str);

/// Takes `address` in `pool` for `owner`; false when someone holds it (the owner included).
pub async fn claim(conn: &mut impl Db, pool: &str, address: &str, owner: Owner<'_>) -> ApiResult<bool> {
    let done = db::query(
        "INSERT INTO address_leases (pool, address, kind, namespace, name) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (pool, address) DO NOTHING",
    )
    .bind(pool)
    .bind(address)
    .bind(owner.0)
    .bind(owner.1)
    .bind(owner.2)
    .execute(&mut *conn)
    .await?;
    Ok(done == 1)
}

/// Takes `address` for `owner`; true when it is now `owner`'s, or already was.
async fn claim_or_held(conn: &mut impl Db, pool: &str, address: &str, owner: Owner<'_>) -> ApiResult<bool> {
    if claim(conn, pool, address, owner).await? {
        return Ok(true);
    }
    let held = holder(conn, pool, address).await?;
    Ok(held.is_some_and(|h| (h.0.as_str(), h.1.as_str(), h.2.as_str()) == owner))
}

pub async fn holder(conn: &mut impl Db, pool: &str, address: &str) -> ApiResult<Option<(String, String, String)>> {
    let row = db::query("SELECT kind, namespace, name FROM address_leases WHERE pool = $1 AND address = $2")
        .bind(pool)
        .bind(address)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
        None => Ok(None),
    }
}

/// Addresses `owner` holds in `pool`.
pub async fn held(conn: &mut impl Db, pool: &str, owner: Owner<'_>) -> ApiResult<Vec<String>> {
    let rows =
        db::query("SELECT address FROM address_leases WHERE pool = $1 AND kind = $2 AND namespace = $3 AND name = $4")
            .bind(pool)
            .bind(owner.0)
            .bind(owner.1)
            .bind(owner.2)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter().map(|r| r.try_get::<String>(0)).collect()
}

/// Every lease of a pool: (address, kind key, namespace, name).
pub async fn all(conn: &mut impl Db, pool: &str) -> ApiResult<Vec<(String, String, String, String)>> {
    let rows = db::query("SELECT address, kind, namespace, name FROM address_leases WHERE pool = $1 ORDER BY address")
        .bind(pool)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
}

/// Drops every lease of an object (it is being removed from the store).
pub async fn release(conn: &mut impl Db, kind: &ResourceKind, obj: &Value) -> ApiResult<()> {
    release_owner(conn, None, (&kind.store_key(), meta::namespace(obj), meta::name(obj))).await
}

pub async fn release_owner(conn: &mut impl Db, pool: Option<&str>, owner: Owner<'_>) -> ApiResult<()> {
    db::query("DELETE FROM address_leases WHERE kind = $1 AND namespace = $2 AND name = $3 AND ($4 = '' OR pool = $4)")
        .bind(owner.0)
        .bind(owner.1)
        .bind(owner.2)
        .bind(pool.unwrap_or(""))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The pod address of `owner`: the one it holds, else the lowest free one (the network address,
/// the gateway, `reserved` and the broadcast address are never handed out).
pub async fn lease_pod_address(
    conn: &mut impl Db,
    cidr: &Cidr,
    reserved: &[Ipv4Addr],
    owner: Owner<'_>,
) -> ApiResult<Ipv4Addr> {
    if let Some(ip) = held(conn, POD_POOL, owner).await?.first().and_then(|a| a.parse().ok()) {
        return Ok(ip);
    }
    let taken: std::collections::HashSet<String> = all(conn, POD_POOL).await?.into_iter().map(|l| l.0).collect();
    for n in 2..cidr.size().saturating_sub(1) {
        let ip = cidr.nth(n);
        if reserved.contains(&ip) || taken.contains(&ip.to_string()) {
            continue;
        }
        if claim(conn, POD_POOL, &ip.to_string(), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::unavailable(format!("no free pod address left in {cidr}")))
}

fn invalid(obj: &Value, field: &str, message: String) -> ApiError {
    ApiError::invalid("", "Service", meta::name(obj), vec![Cause::invalid(field, message)])
}

/// A Service's cluster IP and node ports: given ones are claimed (or refused when taken or out of
/// range), missing ones allocated; an update keeps what the stored version had.
pub async fn sync_service(
    conn: &mut impl Db,
    kind: &ResourceKind,
    obj: &mut Value,
    previous: Option<&Value>,
    net: &ServiceNetwork,
) -> ApiResult<()> {
    if !std::ptr::eq(kind, &kinds::SERVICE) {
        return Ok(());
    }
    let key = kind.store_key();
    let (ns, name) = (meta::namespace(obj).to_string(), meta::name(obj).to_string());
    let owner = (key.as_str(), ns.as_str(), name.as_str());
    let old_ip = previous.and_then(|p| p.pointer("/spec/clusterIP")).and_then(Value::as_str).map(str::to_string);
    let given = obj.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let ip = match (old_ip, given) {
        (Some(old), Some(new)) if old != new => {
            return Err(invalid(obj, "spec.clusterIP", format!("Invalid value: \"{new}\": field is immutable")));
        }
        (Some(old), _) => old,
        (None, Some(none)) if none == "None" => none,
        (None, Some(text)) => {
            let ip: Ipv4Addr = text.parse().map_err(|_| {
                invalid(obj, "spec.clusterIP", format!("Invalid value: \"{text}\": not an IPv4 address"))
            })?;
            if !net.cidr.contains(ip) {
                let m = format!(
                    "Invalid value: \"{text}\": provided IP is not in the valid range. The range of valid IPs is {}",
                    net.cidr
                );
                return Err(invalid(obj, "spec.clusterIP", m));
            }
            if !claim_or_held(conn, SERVICE_POOL, &text, owner).await? {
                let m = format!("Invalid value: \"{text}\": provided IP is already allocated");
                return Err(invalid(obj, "spec.clusterIP", m));
            }
            text
        }
        (None, None) => allocate_ip(conn, net, owner).await?,
    };
    obj["spec"]["clusterIP"] = Value::String(ip.clone());
    obj["spec"]["clusterIPs"] = serde_json::json!([ip]);

    let wants_node_ports =
        matches!(obj.pointer("/spec/type").and_then(Value::as_str), Some("NodePort" | "LoadBalancer"));
    let old_ports: Vec<(String, u64)> = previous
        .and_then(|p| p.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((p.get("name").and_then(Value::as_str).unwrap_or("").to_string(), p.get("nodePort")?.as_u64()?))
        })
        .collect();
    let count = obj.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len);
    let mut kept = vec![];
    for i in 0..count {
        let field = format!("spec.ports[{i}].nodePort");
        let port = &obj["spec"]["ports"][i];
        let pname = port.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let given = port.get("nodePort").and_then(Value::as_u64).filter(|p| *p != 0);
        if !wants_node_ports {
            if given.is_some() {
                return Err(invalid(obj, &field, "Forbidden: may not be used when `type` is 'ClusterIP'".into()));
            }
            continue;
        }
        let node_port = match given.or_else(|| old_ports.iter().find(|(n, _)| *n == pname).map(|p| p.1)) {
            Some(p) => {
                let (lo, hi) = net.node_ports;
                if p < u64::from(lo) || p > u64::from(hi) {
                    let m = format!("Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}");
                    return Err(invalid(obj, &field, m));
                }
                let text = p.to_string();
                if !claim_or_held(conn, NODE_PORT_POOL, &text, owner).await? {
                    return Err(invalid(
                        obj,
                        &field,
                        format!("Invalid value: {p}: provided port is already allocated"),
                    ));
                }
                p
            }
            None => allocate_node_port(conn, net, owner).await?,
        };
        obj["spec"]["ports"][i]["nodePort"] = serde_json::json!(node_port);
        kept.push(node_port.to_string());
    }
    for old in held(conn, NODE_PORT_POOL, owner).await? {
        if !kept.contains(&old) {
            db::query("DELETE FROM address_leases WHERE pool = $1 AND address = $2")
                .bind(NODE_PORT_POOL)
                .bind(&old)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn allocate_ip(conn: &mut impl Db, net: &ServiceNetwork, owner: Owner<'_>) -> ApiResult<String> {
    let size = net.cidr.size();
    // Random probing, as the apiserver's allocator does; the first addresses stay for fixed use.
    let start = rand::random::<u64>() % size.max(1);
    for i in 0..size.min(1 << 16) {
        let n = (start + i) % size;
        if n < 10 || n == size - 1 {
            continue;
        }
        let ip = net.cidr.nth(n).to_string();
        if claim(conn, SERVICE_POOL, &ip, owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::unavailable(format!("no free cluster IP left in {}", net.cidr)))
}

async fn allocate_node_port(conn: &mut impl Db, net: &ServiceNetwork, owner: Owner<'_>) -> ApiResult<u64> {
    let (lo, hi) = (u64::from(net.node_ports.0), u64::from(net.node_ports.1));
    let span = hi - lo + 1;
    let start = rand::random::<u64>() % span;
    for i in 0..span {
        let p = lo + (start + i) % span;
        if claim(conn, NODE_PORT_POOL, &p.to_string(), owner).await? {
            return Ok(p);
        }
    }
    Err(ApiError::unavailable(format!("no free node port left in {lo}-{hi}")))
}
