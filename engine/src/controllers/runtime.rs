//! Runs the reconcilers: one work queue per controller, fed by the store's change stream and a
//! periodic resync, a few workers each, and the code that turns plans into store writes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::queue::WorkQueue;
use super::{replicaset, vm, vmi, Key};
use crate::error::ApiResult;
use crate::events;
use crate::kinds::{self, ResourceKind};
use crate::meta;
use crate::store::{DeleteOptions, Store, UpdateMode};

const WORKERS: usize = 4;
/// The name KubeVirt's controllers record events under.
pub(crate) const COMPONENT: &str = "virtualmachine-controller";
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

/// Starts every controller on `store`.
pub fn spawn(store: Arc<Store>) -> Controllers {
    let queues = Arc::new(Queues { vm: WorkQueue::new(), vmi: WorkQueue::new(), rs: WorkQueue::new() });
    let mut tasks = vec![
        tokio::spawn(feed(Arc::clone(&store), Arc::clone(&queues))),
        tokio::spawn(super::nodes::run(Arc::clone(&store))),
        tokio::spawn(super::endpoints::run(Arc::clone(&store))),
    ];
    for _ in 0..WORKERS {
        let (s, q) = (Arc::clone(&store), Arc::clone(&queues.vm));
        tasks.push(tokio::spawn(work(q, move |key, q| {
            let s = Arc::clone(&s);
            async move { sync_vm(&s, key, &q).await }
        })));
        let (s, q) = (Arc::clone(&store), Arc::clone(&queues.vmi));
        tasks.push(tokio::spawn(work(q, move |key, q| {
            let s = Arc::clone(&s);
            async move { vmi::sync(&s, key, &q).await }
        })));
    }
    let (s, q) = (Arc::clone(&store), Arc::clone(&queues.rs));
    tasks.push(tokio::spawn(work(q, move |key, q| {
        let s = Arc::clone(&s);
        async move { replicaset::sync(&s, key, &q).await }
    })));
    Controllers { tasks }
}

async fn work<F, Fut>(queue: Arc<WorkQueue<Key>>, f: F)
where
    F: Fn(Key, Arc<WorkQueue<Key>>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
{
    loop {
        let key = queue.next().await;
        let span = tracing::debug_span!("reconcile", namespace = %key.0, name = %key.1);
        if let Err(e) = f(key.clone(), Arc::clone(&queue)).instrument(span).await {
            // Lost races are routine: the newer object is already queued.
            if e.code != 409 {
                tracing::warn!(namespace = %key.0, name = %key.1, error = %e.message, "reconcile failed; retrying");
            }
            queue.add_after(key.clone(), Duration::from_millis(if e.code == 409 { 50 } else { 1000 }));
        }
        queue.done(&key);
    }
}

async fn resync_all(store: &Store, queues: &Queues) {
    for (kind, queue) in [
        (&kinds::VIRTUAL_MACHINE, &queues.vm),
        (&kinds::VIRTUAL_MACHINE_INSTANCE, &queues.vmi),
        (&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, &queues.rs),
    ] {
        match store.list_values(kind, None).await {
            Ok(items) => items.iter().for_each(|o| queue.add(key_of(o))),
            Err(e) => tracing::warn!(error = %e.message, "controller resync could not list {}", kind.plural),
        }
    }
}

async fn feed(store: Arc<Store>, queues: Arc<Queues>) {
    let mut rx = store.subscribe();
    resync_all(&store, &queues).await;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let vm_key = kinds::VIRTUAL_MACHINE.store_key();
    let vmi_key = kinds::VIRTUAL_MACHINE_INSTANCE.store_key();
    let rs_key = kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET.store_key();
    let node_key = kinds::NODE.store_key();
    let dv_key = kinds::DATA_VOLUME.store_key();
    loop {
        tokio::select! {
            _ = resync.tick() => resync_all(&store, &queues).await,
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let key = (ev.namespace.clone(), ev.name.clone());
                    if ev.kind_key == vm_key {
                        queues.vm.add(key);
                    } else if ev.kind_key == dv_key {
                        owner_keys(&ev.object, "VirtualMachine").into_iter().for_each(|k| queues.vm.add(k));
                    } else if ev.kind_key == vmi_key {
                        owner_keys(&ev.object, "VirtualMachine").into_iter().for_each(|k| queues.vm.add(k));
                        owner_keys(&ev.object, "VirtualMachineInstanceReplicaSet").into_iter().for_each(|k| queues.rs.add(k));
                        queues.vmi.add(key);
                    } else if ev.kind_key == rs_key {
                        queues.rs.add(key);
                    } else if ev.kind_key == node_key {
                        // A node that appears or changes may fit VMIs waiting for one.
                        if let Ok(items) = store.list_values(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await {
                            items.iter().filter(|v| super::status::node_name(v).is_none()).for_each(|o| queues.vmi.add(key_of(o)));
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => resync_all(&store, &queues).await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Writes `status` if it differs from what is stored.
pub async fn write_status(store: &Store, kind: &ResourceKind, obj: &Value, status: Value) -> ApiResult<()> {
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut updated = obj.clone();
    updated["status"] = status;
    store.update(kind, updated, UpdateMode::Status, false).await.map(|_| ())
}

/// Deletes the object if it still has `uid`; gone already is fine.
pub(crate) async fn delete_uid(
    store: &Store,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
    uid: &str,
) -> ApiResult<()> {
    let opts = DeleteOptions { precondition_uid: Some(uid.to_string()), ..DeleteOptions::default() };
    match store.delete(kind, namespace, name, &opts).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

async fn sync_vm(store: &Store, (ns, name): Key, queue: &Arc<WorkQueue<Key>>) -> ApiResult<()> {
    let Some(vm_obj) = store.get(&kinds::VIRTUAL_MACHINE, &ns, &name).await? else { return Ok(()) };
    let vmi_obj = store.get(&kinds::VIRTUAL_MACHINE_INSTANCE, &ns, &name).await?;
    let mut plan = vm::reconcile(&vm_obj, vmi_obj.as_ref(), now());
    if plan.run_always {
        // The update wakes this VM again, and the next pass acts on the request (revisions and
        // DataVolumes included: nothing else is done on this one).
        let mut turned = vm_obj.clone();
        match turned.pointer("/spec/running").filter(|r| !r.is_null()) {
            Some(_) => turned["spec"]["running"] = true.into(),
            None => turned["spec"]["runStrategy"] = vm::RUN_ALWAYS.into(),
        }
        store.update(&kinds::VIRTUAL_MACHINE, turned, UpdateMode::Main, false).await?;
        return Ok(());
    }
    let frozen = super::revisions::freeze(store, &vm_obj).await?;
    let volumes = super::datavolumes::ensure(store, &vm_obj).await?;
    if let Some(printable) = volumes.printable() {
        // The VM waits for its DataVolumes: no VMI yet, and its status says why.
        if vmi_obj.is_none() {
            if plan.create_vmi.take().is_some() {
                queue.add_after((ns.clone(), name.clone()), Duration::from_secs(2));
            }
            plan.status["printableStatus"] = printable.into();
        }
        if let super::datavolumes::VolumesState::Error(message) = &volumes {
            let mut holder = serde_json::json!({"status": plan.status});
            super::status::set_condition(
                &mut holder,
                "Failure",
                true,
                "DataVolumeError",
                message,
                &meta::now_rfc3339(),
            );
            plan.status = holder["status"].take();
        }
    }
    if let (Some(uid), Some(_)) = (&plan.delete_vmi, &vmi_obj) {
        delete_uid(store, &kinds::VIRTUAL_MACHINE_INSTANCE, &ns, &name, uid).await?;
        crate::failpoint::hit(crate::failpoint::VM_AFTER_VMI_DELETE);
        let message = format!("Stopped the virtual machine by deleting the virtual machine instance {uid}");
        events::record(
            store,
            &kinds::VIRTUAL_MACHINE,
            &vm_obj,
            events::NORMAL,
            "SuccessfulDelete",
            &message,
            COMPONENT,
        )
        .await;
    }
    let mut status = plan.status;
    frozen.write_refs(&mut status);
    let mut create = plan.create_vmi;
    if let (true, Err(why)) = (create.is_some(), frozen.shape_ready()) {
        let mut holder = serde_json::json!({"status": status});
        super::status::set_condition(&mut holder, "Failure", true, "FailedCreate", &why, &meta::now_rfc3339());
        status = holder["status"].take();
        create = None;
        queue.add_after((ns.clone(), name.clone()), Duration::from_secs(10));
    }
    if let Some(mut new_vmi) = create {
        frozen.shape(&mut new_vmi["spec"]);
        match crate::admission::create_admitted(store, &kinds::VIRTUAL_MACHINE_INSTANCE, new_vmi, false).await {
            Ok(created) => {
                crate::failpoint::hit(crate::failpoint::VM_AFTER_VMI_CREATE);
                let message = format!(
                    "Started the virtual machine by creating the new virtual machine instance {}",
                    meta::name(&created)
                );
                events::record(
                    store,
                    &kinds::VIRTUAL_MACHINE,
                    &vm_obj,
                    events::NORMAL,
                    "SuccessfulCreate",
                    &message,
                    COMPONENT,
                )
                .await;
            }
            Err(e) if e.code == 409 => {}
            Err(e) => {
                events::record(
                    store,
                    &kinds::VIRTUAL_MACHINE,
                    &vm_obj,
                    events::WARNING,
                    "FailedCreate",
                    &e.message,
                    COMPONENT,
                )
                .await;
                // The template can't make a VMI: say why on the VM instead of retrying blindly.
                let mut holder = serde_json::json!({"status": status});
                let at = meta::now_rfc3339();
                super::status::set_condition(&mut holder, "Failure", true, "FailedCreate", &e.message, &at);
                holder["status"]["printableStatus"] = "ErrorFailedCreate".into();
                status = holder["status"].take();
                queue.add_after((ns.clone(), name.clone()), Duration::from_secs(10));
            }
        }
    }
    write_status(store, &kinds::VIRTUAL_MACHINE, &vm_obj, status).await?;
    if let Some(after) = plan.requeue_after {
        queue.add_after((ns, name), after);
    }
    Ok(())
}
