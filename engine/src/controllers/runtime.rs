//! Runs the VM, VMI and replica-set controllers (and the node lifecycle and endpoints loops) on
//! the worker runtime: one work queue per controller, fed by the cluster's change stream and a
//! periodic resync.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::launcher_pod::{self, PodSettings};
use super::{replicaset, vm_sync, vmi, Key};
use crate::cluster::Cluster;
use crate::kinds;
use crate::meta;
use crate::worker::{self, WorkQueue};

const WORKERS: usize = 4;
const RESYNC: Duration = Duration::from_secs(30);

pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Queues {
    vm: Arc<WorkQueue<Key>>,
    vmi: Arc<WorkQueue<Key>>,
    rs: Arc<WorkQueue<Key>>,
    migration: Arc<WorkQueue<Key>>,
}

fn key_of(obj: &Value) -> Key {
    (meta::namespace(obj).to_string(), meta::name(obj).to_string())
}

fn owner_keys(obj: &Value, owner_kind: &str) -> Vec<Key> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some(owner_kind))
        .filter_map(|r| r.get("name").and_then(Value::as_str))
        .map(|name| (meta::namespace(obj).to_string(), name.to_string()))
        .collect()
}

/// Which API the controllers run against.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiKind {
    /// Converge's own: VMIs are placed by Converge's scheduler, and the node lifecycle and the
    /// Services' endpoints are ours to keep.
    Converge,
    /// A real kube-apiserver: VMIs are placed through launcher pods by kube-scheduler, and
    /// kube-controller-manager keeps Nodes' lifecycle and Endpoints.
    Kubernetes(PodSettings),
}

/// Starts every controller on `cluster`; with `pod_ranges`, Nodes are given their pod ranges.
pub fn spawn(cluster: Arc<dyn Cluster>, pod_ranges: Option<super::nodeipam::PodRanges>, api: ApiKind) -> Controllers {
    let queues = Arc::new(Queues {
        vm: WorkQueue::new(),
        vmi: WorkQueue::new(),
        rs: WorkQueue::new(),
        migration: WorkQueue::new(),
    });
    let pods = matches!(api, ApiKind::Kubernetes(_));
    let mut tasks = vec![tokio::spawn(feed(Arc::clone(&cluster), Arc::clone(&queues), pods))];
    if api == ApiKind::Converge {
        tasks.push(tokio::spawn(super::nodes::run(Arc::clone(&cluster))));
        tasks.extend(super::endpoints::spawn(Arc::clone(&cluster)));
    }
    if let Some(ranges) = pod_ranges {
        tasks.push(tokio::spawn(super::nodeipam::run(Arc::clone(&cluster), ranges)));
    }
    let c = Arc::clone(&cluster);
    tasks.extend(worker::spawn("virtualmachine", &queues.vm, WORKERS, move |key| {
        let c = Arc::clone(&c);
        async move { vm_sync::sync(c.as_ref(), key).await }
    }));
    let c = Arc::clone(&cluster);
    match api {
        ApiKind::Converge => tasks.extend(worker::spawn("virtualmachineinstance", &queues.vmi, WORKERS, move |key| {
            let c = Arc::clone(&c);
            async move { vmi::sync(c.as_ref(), key).await }
        })),
        ApiKind::Kubernetes(settings) => {
            let settings = Arc::new(settings);
            tasks.extend(worker::spawn("virtualmachineinstance", &queues.vmi, WORKERS, move |key| {
                let (c, settings) = (Arc::clone(&c), Arc::clone(&settings));
                async move { launcher_pod::sync(c.as_ref(), key, &settings).await }
            }))
        }
    }
    let c = Arc::clone(&cluster);
    tasks.extend(worker::spawn("virtualmachineinstancereplicaset", &queues.rs, 1, move |key| {
        let c = Arc::clone(&c);
        async move { replicaset::sync(c.as_ref(), key).await }
    }));
    let c = Arc::clone(&cluster);
    tasks.extend(worker::spawn("migration", &queues.migration, 2, move |key| {
        let c = Arc::clone(&c);
        async move { super::migration::sync(c.as_ref(), key).await }
    }));
    Controllers { tasks }
}

/// What wakes these controllers.
const WATCHED: [&kinds::ResourceKind; 6] = [
    &kinds::VIRTUAL_MACHINE,
    &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION,
    &kinds::VIRTUAL_MACHINE_INSTANCE,
    &kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET,
    &kinds::NODE,
    &kinds::DATA_VOLUME,
];

async fn resync_all(cluster: &dyn Cluster, queues: &Queues) {
    for (kind, queue) in [
        (&kinds::VIRTUAL_MACHINE, &queues.vm),
        (&kinds::VIRTUAL_MACHINE_INSTANCE, &queues.vmi),
        (&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, &queues.rs),
        (&kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION, &queues.migration),
    ] {
        match cluster.list(kind, None).await {
            Ok(items) => items.iter().for_each(|o| queue.add(key_of(o))),
            Err(e) => tracing::warn!(error = %e.message, "controller resync could not list {}", kind.plural),
        }
    }
}

/// The migrations of a VMI whose migrationState moved (the agents write it).
async fn queue_migrations_of(cluster: &dyn Cluster, queues: &Queues, vmi: &Value) {
    let ns = meta::namespace(vmi);
    if let Ok(items) = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION, Some(ns)).await {
        items
            .iter()
            .filter(|m| m.pointer("/spec/vmiName").and_then(Value::as_str) == Some(meta::name(vmi)))
            .for_each(|m| queues.migration.add(key_of(m)));
    }
}

async fn feed(cluster: Arc<dyn Cluster>, queues: Arc<Queues>, pods: bool) {
    let mut rx = cluster.watch(&WATCHED);
    if pods {
        let _ = cluster.watch(&[&kinds::POD]);
    }
    let pod_key = kinds::POD.store_key();
    resync_all(cluster.as_ref(), &queues).await;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let vm_key = kinds::VIRTUAL_MACHINE.store_key();
    let vmi_key = kinds::VIRTUAL_MACHINE_INSTANCE.store_key();
    let rs_key = kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET.store_key();
    let node_key = kinds::NODE.store_key();
    let dv_key = kinds::DATA_VOLUME.store_key();
    let vmim_key = kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION.store_key();
    loop {
        tokio::select! {
            _ = resync.tick() => resync_all(cluster.as_ref(), &queues).await,
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let key = (ev.namespace.clone(), ev.name.clone());
                    if ev.kind_key == vm_key {
                        queues.vm.add(key);
                    } else if ev.kind_key == dv_key {
                        owner_keys(&ev.object, "VirtualMachine").into_iter().for_each(|k| queues.vm.add(k));
                    } else if ev.kind_key == vmim_key {
                        queues.migration.add(key);
                    } else if ev.kind_key == vmi_key {
                        if ev.object.pointer("/status/migrationState").is_some() {
                            queue_migrations_of(cluster.as_ref(), &queues, &ev.object).await;
                        }
                        owner_keys(&ev.object, "VirtualMachine").into_iter().for_each(|k| queues.vm.add(k));
                        owner_keys(&ev.object, "VirtualMachineInstanceReplicaSet").into_iter().for_each(|k| queues.rs.add(k));
                        queues.vmi.add(key);
                    } else if ev.kind_key == pod_key {
                        owner_keys(&ev.object, "VirtualMachineInstance").into_iter().for_each(|k| queues.vmi.add(k));
                    } else if ev.kind_key == rs_key {
                        queues.rs.add(key);
                    } else if ev.kind_key == node_key {
                        // A node that appears or changes may fit VMIs waiting for one.
                        if let Ok(items) = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await {
                            items.iter().filter(|v| super::status::node_name(v).is_none()).for_each(|o| queues.vmi.add(key_of(o)));
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => resync_all(cluster.as_ref(), &queues).await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}
