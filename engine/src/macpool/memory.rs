//! Leases kept in memory, as KubeMacPool keeps them on a Kubernetes cluster: what the stored VMs
//! and VMIs hold (fed by a watch; the objects are the record), plus what admission handed out
//! in the last minute to objects not seen stored yet — a create still in flight, or one the
//! apiserver refused after the webhook (then the MAC comes free when its minute is up).

use super::{interfaces_path, lease_owner, macs_at, Holder, Leases};
use crate::error::ApiResult;
use crate::kinds::ResourceKind;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a MAC handed out at admission stays taken without its object being seen stored.
pub const PENDING_HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone)]
pub struct MemoryPool {
    stored: HashMap<u64, Holder>,
    held_by: HashMap<Holder, Vec<u64>>,
    pending: HashMap<u64, (Holder, Instant)>,
    cursor: u64,
}

impl MemoryPool {
    pub fn new() -> MemoryPool {
        MemoryPool::default()
    }

    /// An object as it is stored now (listed, added or modified): its MACs are its leases.
    pub fn observe(&mut self, kind: &ResourceKind, obj: &Value) {
        let Some(path) = interfaces_path(kind) else { return };
        let (holder, owns) = lease_owner(kind, obj);
        if !owns {
            return;
        }
        let macs = macs_at(Some(obj), path);
        self.drop_holder(&holder);
        for mac in &macs {
            self.pending.remove(mac);
            self.stored.insert(*mac, holder.clone());
        }
        if !macs.is_empty() {
            self.held_by.insert(holder, macs);
        }
    }

    /// An object gone: what it held is free.
    pub fn forget(&mut self, kind: &ResourceKind, obj: &Value) {
        if interfaces_path(kind).is_none() {
            return;
        }
        let (holder, owns) = lease_owner(kind, obj);
        if owns {
            self.drop_holder(&holder);
        }
    }

    /// What is stored, re-read whole (after the watch fell behind); pending leases stay.
    pub fn replace_stored(&mut self, fresh: MemoryPool) {
        self.stored = fresh.stored;
        self.held_by = fresh.held_by;
    }

    fn drop_holder(&mut self, holder: &Holder) {
        for mac in self.held_by.remove(holder).unwrap_or_default() {
            if self.stored.get(&mac) == Some(holder) {
                self.stored.remove(&mac);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        self.pending.retain(|_, (_, at)| now.duration_since(*at) < PENDING_HOLD);
    }

    /// How many MACs are taken (stored and pending).
    pub fn len(&self) -> usize {
        self.stored.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn age_pending(&mut self, by: Duration) {
        for (_, at) in self.pending.values_mut() {
            *at = at.checked_sub(by).unwrap_or(*at);
        }
    }
}

impl Leases for MemoryPool {
    async fn claim(&mut self, mac: u64, holder: &Holder) -> ApiResult<bool> {
        let now = Instant::now();
        self.expire(now);
        if self.stored.contains_key(&mac) || self.pending.contains_key(&mac) {
            return Ok(false);
        }
        self.pending.insert(mac, (holder.clone(), now));
        Ok(true)
    }

    async fn holder_of(&mut self, mac: u64) -> ApiResult<Option<Holder>> {
        Ok(self.stored.get(&mac).or_else(|| self.pending.get(&mac).map(|(h, _)| h)).cloned())
    }

    async fn release(&mut self, mac: u64) -> ApiResult<()> {
        // A stored object's MAC comes free when the watch shows it gone from the object: the
        // update dropping it may yet be refused.
        self.pending.remove(&mac);
        Ok(())
    }

    async fn next_cursor(&mut self) -> ApiResult<u64> {
        self.cursor += 1;
        Ok(self.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{format_mac, sync, MacRange};
    use super::*;
    use crate::kinds;
    use serde_json::json;

    fn vm(name: &str, macs: &[Option<&str>]) -> Value {
        let interfaces: Vec<Value> = macs
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Some(m) => json!({"name": format!("n{i}"), "macAddress": m}),
                None => json!({"name": format!("n{i}")}),
            })
            .collect();
        json!({"metadata": {"name": name, "namespace": "ns"},
               "spec": {"template": {"spec": {"domain": {"devices": {"interfaces": interfaces}}}}}})
    }

    fn mac_of(obj: &Value, i: usize) -> String {
        obj.pointer(&format!("/spec/template/spec/domain/devices/interfaces/{i}/macAddress"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn stored_and_pending_macs_are_never_given_twice() {
        let range = MacRange { start: 0x02_00_00_00_00_00, end: 0x02_00_00_00_00_03 };
        let mut pool = MemoryPool::new();
        pool.observe(&kinds::VIRTUAL_MACHINE, &vm("old", &[Some("02:00:00:00:00:00")]));
        let mut a = vm("a", &[None, None]);
        sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut a, None, &range).await.unwrap_or_default();
        assert_eq!((mac_of(&a, 0), mac_of(&a, 1)), ("02:00:00:00:00:01".into(), "02:00:00:00:00:02".into()));
        // Taken while pending, by another VM naming it.
        let mut b = vm("b", &[Some("02:00:00:00:00:01")]);
        let e = sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut b, None, &range).await.err();
        assert!(e.is_some_and(|e| e.message.contains("already in use by ns/a")));
        // The one left, then none.
        let mut c = vm("c", &[None]);
        sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut c, None, &range).await.unwrap_or_default();
        assert_eq!(mac_of(&c, 0), format_mac(0x02_00_00_00_00_03));
        let mut d = vm("d", &[None]);
        let e = sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut d, None, &range).await.err();
        assert!(e.is_some_and(|e| e.message.contains("exhausted")));
        // `a` is stored, `c` was refused by the apiserver: its MAC comes back after the hold.
        pool.observe(&kinds::VIRTUAL_MACHINE, &a);
        pool.age_pending(PENDING_HOLD);
        let mut e = vm("e", &[None]);
        sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut e, None, &range).await.unwrap_or_default();
        assert_eq!(mac_of(&e, 0), format_mac(0x02_00_00_00_00_03));
        // A deleted VM frees its MACs; an update of `a` keeping its MACs claims nothing new.
        pool.forget(&kinds::VIRTUAL_MACHINE, &vm("old", &[Some("02:00:00:00:00:00")]));
        let mut again = a.clone();
        sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut again, Some(&a), &range).await.unwrap_or_default();
        assert_eq!(again, a);
        let mut f = vm("f", &[Some("02:00:00:00:00:00")]);
        assert!(sync(&mut pool, &kinds::VIRTUAL_MACHINE, &mut f, None, &range).await.is_ok());
    }

    #[tokio::test]
    async fn a_vmi_under_its_vm_shares_the_vm_lease() {
        let range = MacRange::default();
        let mut pool = MemoryPool::new();
        let owned = vm("a", &[Some("02:00:00:00:00:05")]);
        pool.observe(&kinds::VIRTUAL_MACHINE, &owned);
        let mut vmi = json!({"metadata": {"name": "a", "namespace": "ns",
            "ownerReferences": [{"kind": "VirtualMachine", "name": "a", "controller": true}]},
            "spec": {"domain": {"devices": {"interfaces": [{"name": "n0", "macAddress": "02:00:00:00:00:05"}]}}}});
        assert!(sync(&mut pool, &kinds::VIRTUAL_MACHINE_INSTANCE, &mut vmi, None, &range).await.is_ok());
        pool.forget(&kinds::VIRTUAL_MACHINE_INSTANCE, &vmi);
        assert_eq!(pool.holder_of(0x02_00_00_00_00_05).await.ok().flatten().map(|h| h.2), Some("a".into()));
    }
}
