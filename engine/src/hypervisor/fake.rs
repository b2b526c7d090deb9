//! A hypervisor in memory that records every call: the node agent's unit tests drive it and
//! assert on what was asked of libvirt.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{DomainState, DomainSummary, HvResult, Hypervisor, HypervisorError, MigrationProgress, MigrationTarget};

#[derive(Default)]
struct Inner {
    domains: BTreeMap<String, (Option<String>, DomainState, String)>,
    /// Domains made persistent (`persist`); a transient one is gone once it stops.
    persistent: std::collections::BTreeSet<String>,
    /// Transient domains gone at their stop: (name, XML, how they stopped), until undefined.
    stopped: Vec<(String, String, DomainState)>,
    calls: Vec<String>,
    /// What the next `migrate` answers (`None`: success, the domain leaves).
    migration_failure: Option<String>,
}

pub struct FakeHypervisor {
    inner: Mutex<Inner>,
    tx: UnboundedSender<String>,
    rx: Mutex<Option<UnboundedReceiver<String>>>,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        let (tx, rx) = unbounded_channel();
        FakeHypervisor { inner: Mutex::default(), tx, rx: Mutex::new(Some(rx)) }
    }
}

fn name_of(xml: &str) -> String {
    xml.split("<name>").nth(1).and_then(|s| s.split("</name>").next()).unwrap_or_default().to_string()
}

impl FakeHypervisor {
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().map(|i| i.calls.clone()).unwrap_or_default()
    }
    /// Makes the next migrations fail with this libvirt message.
    pub fn fail_migrations(&self, message: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.migration_failure = Some(message.into());
        }
    }
    /// Changes a domain's state as if the guest or QEMU did it, and fires the event.
    pub fn set_state(&self, name: &str, state: DomainState) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(d) = inner.domains.get_mut(name) {
                d.1 = state;
            }
        }
        let _ = self.tx.send(name.into());
    }
    fn record<T>(&self, call: String, f: impl FnOnce(&mut Inner) -> HvResult<T>) -> HvResult<T> {
        let mut inner = self.inner.lock().map_err(|_| HypervisorError::Libvirt("poisoned".into()))?;
        inner.calls.push(call);
        f(&mut inner)
    }
    fn transition(&self, verb: &str, name: &str, to: DomainState) -> HvResult<()> {
        let result = self.record(format!("{verb} {name}"), |i| match i.domains.get_mut(name) {
            Some(d) => {
                d.1 = to;
                if !to.is_active() && !i.persistent.contains(name) {
                    if let Some((_, _, xml)) = i.domains.remove(name) {
                        i.stopped.push((name.to_string(), xml, to));
                    }
                }
                Ok(())
            }
            None => Err(HypervisorError::NoDomain(name.into())),
        });
        let _ = self.tx.send(name.into());
        result
    }
}

impl Hypervisor for FakeHypervisor {
    fn start(&self, xml: &str, paused: bool) -> HvResult<std::time::Duration> {
        let name = name_of(xml);
        let uid = super::libvirt::vmi_uid_from_xml(xml);
        let state = if paused { DomainState::Paused } else { DomainState::Running };
        self.record(format!("start {name}"), |i| {
            i.persistent.remove(&name);
            i.domains.insert(name.clone(), (uid, state, xml.to_string()));
            Ok(())
        })?;
        let _ = self.tx.send(name);
        Ok(std::time::Duration::ZERO)
    }
    fn persist(&self, xml: &str) -> HvResult<()> {
        let name = name_of(xml);
        self.record(format!("persist {name}"), |i| {
            i.persistent.insert(name);
            Ok(())
        })
    }
    /// Running domains, each with one second of CPU time and its name's length in resident KiB.
    fn stats(&self) -> HvResult<Vec<super::stats::DomainStats>> {
        let inner = self.inner.lock().map_err(|_| HypervisorError::Libvirt("poisoned".into()))?;
        Ok(inner
            .domains
            .iter()
            .filter(|(_, (_, state, _))| state.is_active())
            .map(|(name, _)| super::stats::DomainStats {
                name: name.clone(),
                cpu_time_ns: Some(1_000_000_000),
                memory_rss_bytes: Some(name.len() as u64 * 1024),
                ..Default::default()
            })
            .collect())
    }

    fn list(&self) -> HvResult<Vec<DomainSummary>> {
        let inner = self.inner.lock().map_err(|_| HypervisorError::Libvirt("poisoned".into()))?;
        Ok(inner
            .domains
            .iter()
            .map(|(name, (uid, state, xml))| DomainSummary {
                name: name.clone(),
                vmi_uid: uid.clone(),
                node_uid: super::libvirt::node_uid_from_xml(xml),
                state: *state,
                persistent: inner.persistent.contains(name),
            })
            .collect())
    }
    fn state(&self, name: &str) -> HvResult<Option<DomainState>> {
        Ok(self.inner.lock().ok().and_then(|i| i.domains.get(name).map(|d| d.1)))
    }
    fn state_by_uuid(&self, uuid: &str, name: &str) -> HvResult<Option<DomainState>> {
        let inner = self.inner.lock().map_err(|_| HypervisorError::Libvirt("poisoned".into()))?;
        let this = format!("<uuid>{uuid}</uuid>");
        let stopped = inner.stopped.iter().rev().find(|(n, xml, _)| n == name && xml.contains(&this)).map(|s| s.2);
        Ok(inner.domains.get(name).filter(|d| d.2.contains(&this)).map(|d| d.1).or(stopped))
    }
    fn shutdown(&self, name: &str) -> HvResult<()> {
        self.transition("shutdown", name, DomainState::ShutOffByGuest)
    }
    fn destroy(&self, name: &str) -> HvResult<()> {
        match self.transition("destroy", name, DomainState::Destroyed) {
            Err(HypervisorError::NoDomain(_)) => Ok(()),
            other => other,
        }
    }
    fn undefine(&self, name: &str) -> HvResult<()> {
        self.record(format!("undefine {name}"), |i| {
            i.persistent.remove(name);
            i.domains.remove(name);
            i.stopped.retain(|(n, _, _)| n != name);
            Ok(())
        })
    }
    fn pause(&self, name: &str) -> HvResult<()> {
        self.transition("pause", name, DomainState::Paused)
    }
    fn unpause(&self, name: &str) -> HvResult<()> {
        self.transition("unpause", name, DomainState::Running)
    }
    fn soft_reboot(&self, name: &str) -> HvResult<()> {
        self.transition("reboot", name, DomainState::Running)
    }
    fn xml(&self, name: &str) -> HvResult<String> {
        let inner = self.inner.lock().map_err(|_| HypervisorError::Libvirt("poisoned".into()))?;
        inner.domains.get(name).map(|d| d.2.clone()).ok_or_else(|| HypervisorError::NoDomain(name.into()))
    }
    fn migratable_xml(&self, name: &str) -> HvResult<String> {
        self.xml(name)
    }
    fn migrate(&self, name: &str, target: &MigrationTarget) -> HvResult<()> {
        let call = format!("migrate {name} to {} as {}", target.libvirt_uri, target.domain_name);
        let result = self.record(call, |i| {
            if let Some(message) = i.migration_failure.clone() {
                return Err(HypervisorError::Libvirt(message));
            }
            i.persistent.remove(name);
            i.domains.remove(name).map(|_| ()).ok_or_else(|| HypervisorError::NoDomain(name.into()))
        });
        let _ = self.tx.send(name.into());
        result
    }
    fn migration_progress(&self, _name: &str) -> HvResult<Option<MigrationProgress>> {
        Ok(None)
    }
    fn abort_migration(&self, name: &str) -> HvResult<()> {
        self.record(format!("abort migration {name}"), |_| Ok(()))
    }
    fn start_post_copy(&self, name: &str) -> HvResult<()> {
        self.record(format!("post-copy {name}"), |_| Ok(()))
    }
    fn last_migration(&self, _name: &str) -> HvResult<Option<MigrationProgress>> {
        Ok(None)
    }
    fn events(&self) -> Option<UnboundedReceiver<String>> {
        self.rx.lock().ok()?.take()
    }
}
