//! Runs the storage controllers: claims (provisioning, protection), volumes (reclaim),
//! DataVolumes (claims and the jobs that fill them) and StorageProfiles, fed from the cluster like
//! the VM controllers; plus the upload entry point the API's upload proxy calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::datavolume::{self, JobView, Observed, Source, ANN_FAILURE};
use super::importer::{self, ContentType, Target};
use super::placement::{self, StorageRole};
use super::volume::{SystemVolumeTool, VolumeTool};
use super::{claims, provisioner, StorageConfig, StorageError, ANN_CLONE_TO, ANN_POD_PHASE, ANN_RESTARTS};
use crate::cluster::Cluster;
use crate::controllers::Key;
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::kinds;
use crate::meta;
use crate::store::{DeleteOptions, UpdateMode};
use crate::worker::WorkQueue;
use crate::worker::{self, Action};

const COMPONENT: &str = "cdi-controller";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
const RESYNC: Duration = Duration::from_secs(30);
const MAX_BACKOFF: u64 = 300;

struct Job {
    view: JobView,
    handle: Option<JoinHandle<()>>,
}

struct Shared {
    cluster: Arc<dyn Cluster>,
    config: StorageConfig,
    tool: Arc<dyn VolumeTool>,
    fetcher: Arc<dyn super::sources::Fetcher>,
    /// Jobs by DataVolume uid.
    jobs: Mutex<HashMap<String, Job>>,
    pvcs: Arc<WorkQueue<Key>>,
    pvs: Arc<WorkQueue<Key>>,
    dvs: Arc<WorkQueue<Key>>,
}

/// The running storage controllers; dropping stops them.
pub struct StorageControllers {
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Drop for StorageControllers {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        if let Ok(mut jobs) = self.shared.jobs.lock() {
            jobs.values_mut().filter_map(|j| j.handle.take()).for_each(|h| h.abort());
        }
    }
}

fn key_of(obj: &Value) -> Key {
    (meta::namespace(obj).to_string(), meta::name(obj).to_string())
}

use meta::annotation;

/// Starts the storage controllers, making the default StorageClass if there is none.
pub async fn spawn(cluster: Arc<dyn Cluster>, config: StorageConfig) -> ApiResult<StorageControllers> {
    spawn_with(cluster, config, Arc::new(SystemVolumeTool), Arc::new(super::sources::HttpFetcher)).await
}

/// `spawn` with the OS boundaries given (tests pass recording doubles).
pub async fn spawn_with(
    cluster: Arc<dyn Cluster>,
    config: StorageConfig,
    tool: Arc<dyn VolumeTool>,
    fetcher: Arc<dyn super::sources::Fetcher>,
) -> ApiResult<StorageControllers> {
    let first_start = config.role == StorageRole::Server && cluster.list(&kinds::STORAGE_CLASS, None).await?.is_empty();
    if first_start {
        match cluster.create(&kinds::STORAGE_CLASS, provisioner::default_class()).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let shared = Arc::new(Shared {
        cluster,
        config,
        tool,
        fetcher,
        jobs: Mutex::new(HashMap::new()),
        pvcs: WorkQueue::new(),
        pvs: WorkQueue::new(),
        dvs: WorkQueue::new(),
    });
    let mut tasks = vec![tokio::spawn(feed(Arc::clone(&shared)))];
    let sh = Arc::clone(&shared);
    tasks.extend(worker::spawn("persistentvolumeclaim", &shared.pvcs, 1, move |key| {
        let s = Arc::clone(&sh);
        async move { sync_pvc(&s, &key).await.map(|()| Action::AwaitChange) }
    }));
    let sh = Arc::clone(&shared);
    tasks.extend(worker::spawn("persistentvolume", &shared.pvs, 1, move |key| {
        let s = Arc::clone(&sh);
        async move { sync_pv(&s, &key.1).await.map(|()| Action::AwaitChange) }
    }));
    let sh = Arc::clone(&shared);
    tasks.extend(worker::spawn("datavolume", &shared.dvs, 2, move |key| {
        let s = Arc::clone(&sh);
        async move { sync_dv(&s, &key).await.map(|()| Action::AwaitChange) }
    }));
    Ok(StorageControllers { tasks, shared })
}

async fn resync_all(s: &Shared) {
    for (kind, queue) in
        [(&kinds::PERSISTENT_VOLUME_CLAIM, &s.pvcs), (&kinds::PERSISTENT_VOLUME, &s.pvs), (&kinds::DATA_VOLUME, &s.dvs)]
    {
        if let Ok(items) = s.cluster.list(kind, None).await {
            items.iter().for_each(|o| queue.add(key_of(o)));
        }
    }
    if s.config.role.keeps_catalog() {
        sync_profiles(s).await;
        sync_data_sources(s).await;
    }
}

/// DataSources read Ready once the claim they name is there and filled, as CDI's do.
async fn sync_data_sources(s: &Shared) {
    let Ok(sources) = s.cluster.list(&kinds::DATA_SOURCE, None).await else { return };
    let now = meta::now_rfc3339();
    for ds in &sources {
        let ns = meta::namespace(ds);
        let claim = ds.pointer("/spec/source/pvc/name").and_then(Value::as_str);
        let claim_ns =
            ds.pointer("/spec/source/pvc/namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or(ns);
        let (ready, reason, message) = match claim {
            None => (false, "NoSource", "spec.source.pvc is not set".to_string()),
            Some(c) => match claims::resolve(&*s.cluster, claim_ns, c).await {
                Ok(claims::ClaimState::Ready(_)) => (true, "Ready", String::new()),
                Ok(claims::ClaimState::Waiting(reason, message)) => {
                    (false, if reason == "PVCNotFound" { "NotFound" } else { "Pending" }, message)
                }
                Err(e) => (false, "Error", e.message),
            },
        };
        let mut conditions = ds.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        super::set_cdi_condition(&mut conditions, "Ready", ready, reason, &message, &now);
        let status =
            json!({"conditions": conditions, "source": ds.pointer("/spec/source").cloned().unwrap_or(json!({}))});
        if ds.get("status").is_some_and(|old| super::same_ignoring_heartbeats(old, &status)) {
            continue;
        }
        let _ = crate::cluster::write_status(&*s.cluster, &kinds::DATA_SOURCE, ds, status).await;
    }
}

/// What wakes the storage controllers.
const WATCHED: [&kinds::ResourceKind; 6] = [
    &kinds::PERSISTENT_VOLUME_CLAIM,
    &kinds::PERSISTENT_VOLUME,
    &kinds::DATA_VOLUME,
    &kinds::VIRTUAL_MACHINE_INSTANCE,
    &kinds::STORAGE_CLASS,
    &kinds::DATA_SOURCE,
];

async fn feed(s: Arc<Shared>) {
    let mut rx = s.cluster.watch(&WATCHED);
    resync_all(&s).await;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let pvc_key = kinds::PERSISTENT_VOLUME_CLAIM.store_key();
    let pv_key = kinds::PERSISTENT_VOLUME.store_key();
    let dv_key = kinds::DATA_VOLUME.store_key();
    let vmi_key = kinds::VIRTUAL_MACHINE_INSTANCE.store_key();
    let sc_key = kinds::STORAGE_CLASS.store_key();
    let ds_key = kinds::DATA_SOURCE.store_key();
    loop {
        tokio::select! {
            _ = resync.tick() => resync_all(&s).await,
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    let key = (ev.namespace.clone(), ev.name.clone());
                    if ev.kind_key == pvc_key {
                        s.pvcs.add(key.clone());
                        s.dvs.add(key);
                        // Claims are watched by the PV that holds them and by clones waiting on them.
                        if let Some(pv) = ev.object.pointer("/spec/volumeName").and_then(Value::as_str) {
                            s.pvs.add((String::new(), pv.to_string()));
                        }
                        requeue_waiting_dvs(&s).await;
                        if s.config.role.keeps_catalog() {
                            sync_data_sources(&s).await;
                        }
                    } else if ev.kind_key == pv_key {
                        s.pvs.add(key);
                        // A volume a node made names the claim the server binds to it.
                        let claim = |f: &str| ev.object.pointer(&format!("/spec/claimRef/{f}")).and_then(Value::as_str);
                        if let (Some(ns), Some(name)) = (claim("namespace"), claim("name")) {
                            s.pvcs.add((ns.to_string(), name.to_string()));
                            s.dvs.add((ns.to_string(), name.to_string()));
                        }
                    } else if ev.kind_key == dv_key {
                        s.dvs.add(key);
                    } else if ev.kind_key == vmi_key {
                        // A guest appearing binds WaitForFirstConsumer claims; one going frees protected ones.
                        for claim in claims::claims_of(&ev.object) {
                            s.pvcs.add((ev.namespace.clone(), claim));
                        }
                    } else if ev.kind_key == sc_key {
                        if s.config.role.keeps_catalog() {
                            sync_profiles(&s).await;
                        }
                        if let Ok(items) = s.cluster.list(&kinds::PERSISTENT_VOLUME_CLAIM, None).await {
                            items.iter().for_each(|o| s.pvcs.add(key_of(o)));
                        }
                    } else if ev.kind_key == ds_key && s.config.role.keeps_catalog() {
                        requeue_waiting_dvs(&s).await;
                        sync_data_sources(&s).await;
                    }
                }
                Err(RecvError::Lagged(_)) => resync_all(&s).await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// DataVolumes still waiting on a source: a claim or DataSource change may unblock them.
async fn requeue_waiting_dvs(s: &Shared) {
    if let Ok(dvs) = s.cluster.list(&kinds::DATA_VOLUME, None).await {
        dvs.iter()
            .filter(|d| d.pointer("/status/phase").and_then(Value::as_str) != Some("Succeeded"))
            .for_each(|d| s.dvs.add(key_of(d)));
    }
}

/// One StorageProfile per StorageClass, as CDI keeps them.
async fn sync_profiles(s: &Shared) {
    let Ok(classes) = s.cluster.list(&kinds::STORAGE_CLASS, None).await else { return };
    for class in &classes {
        let want = provisioner::profile_for(class);
        match s.cluster.get(&kinds::STORAGE_PROFILE, "", meta::name(class)).await {
            Ok(None) => {
                let mut obj = want.clone();
                obj.as_object_mut().map(|m| m.remove("status"));
                if let Ok(created) = s.cluster.create(&kinds::STORAGE_PROFILE, obj).await {
                    let _ = crate::cluster::write_status(
                        &*s.cluster,
                        &kinds::STORAGE_PROFILE,
                        &created,
                        want["status"].clone(),
                    )
                    .await;
                }
            }
            Ok(Some(existing)) => {
                let _ = crate::cluster::write_status(
                    &*s.cluster,
                    &kinds::STORAGE_PROFILE,
                    &existing,
                    want["status"].clone(),
                )
                .await;
            }
            Err(_) => {}
        }
    }
}

async fn classes(s: &Shared) -> ApiResult<Vec<Value>> {
    s.cluster.list(&kinds::STORAGE_CLASS, None).await
}

/// Binds, provisions or releases one claim (on a node: makes the volumes that live there).
async fn sync_pvc(s: &Shared, (ns, name): &Key) -> ApiResult<()> {
    let Some(pvc) = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, ns, name).await? else { return Ok(()) };
    match s.config.role {
        StorageRole::Node => return provision_here(s, &pvc).await,
        // kube-controller-manager binds and protects claims there.
        StorageRole::Cluster => return Ok(()),
        StorageRole::Server => {}
    }
    let consumers = claims::consumers(&*s.cluster).await?;
    let consumed = consumers.contains_key(&(ns.clone(), name.clone()));
    if meta::is_deleting(&pvc) {
        if !consumed && meta::finalizers(&pvc).iter().any(|f| f == PVC_PROTECTION) {
            let mut next = pvc.clone();
            let rest: Vec<String> = meta::finalizers(&pvc).into_iter().filter(|f| f != PVC_PROTECTION).collect();
            meta::set_finalizers(&mut next, &rest);
            s.cluster.update(&kinds::PERSISTENT_VOLUME_CLAIM, next, UpdateMode::Main).await?;
        }
        return Ok(());
    }
    // The node of the claim's first guest: the scheduler's choice, else where a guest of it runs.
    let selected = placement::selected_node(&pvc)
        .map(str::to_string)
        .or_else(|| consumers.get(&(ns.clone(), name.clone())).cloned().flatten());
    let pvc_ref = &pvc;
    let pending = |reason: &'static str, message: String| async move {
        let pvc = pvc_ref;
        let kind = if reason == "WaitForFirstConsumer" || reason == "ExternalProvisioning" {
            events::NORMAL
        } else {
            events::WARNING
        };
        claim_event(s, pvc, kind, reason, &message, "persistentvolume-controller").await;
        crate::cluster::write_status(&*s.cluster, &kinds::PERSISTENT_VOLUME_CLAIM, pvc, json!({"phase": "Pending"}))
            .await
    };
    let pvs = s.cluster.list(&kinds::PERSISTENT_VOLUME, None).await?;
    // Bound already (or bound before a crash, status not yet written), or made for it by a node.
    // Only a volume it may bind counts: another node naming the claim does not block its own.
    let naming: Vec<&Value> = pvs
        .iter()
        .filter(|pv| pv.pointer("/spec/claimRef/uid").and_then(Value::as_str) == Some(meta::uid(&pvc)))
        .collect();
    let may_bind = |pv: &&Value| provisioner::may_bind(&pvc, pv, selected.as_deref(), s.config.node.as_deref());
    let mine = naming.iter().copied().find(|pv| may_bind(pv).is_ok());
    if let (None, Some(Err(why))) = (mine, naming.first().map(may_bind)) {
        if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Pending") || !events_said(s, &pvc, &why).await
        {
            pending("FailedBinding", why).await?;
        }
    }
    if let Some(pv) = mine {
        if pv.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            crate::cluster::write_status(&*s.cluster, &kinds::PERSISTENT_VOLUME, pv, json!({"phase": "Bound"})).await?;
        }
        if pvc.pointer("/spec/volumeName").and_then(Value::as_str) != Some(meta::name(pv)) {
            s.cluster
                .update(&kinds::PERSISTENT_VOLUME_CLAIM, provisioner::bound_claim(&pvc, pv), UpdateMode::Main)
                .await?;
            return Ok(());
        }
        return crate::cluster::write_status(
            &*s.cluster,
            &kinds::PERSISTENT_VOLUME_CLAIM,
            &pvc,
            provisioner::bound_status(pv),
        )
        .await;
    }
    // A volume someone made that fits (or the one the claim names). A claim that names none, in a
    // WaitForFirstConsumer class, waits for its consumer before it takes one (delayed binding).
    let all = classes(s).await?;
    let class = provisioner::class_for(pvc.pointer("/spec/storageClassName").and_then(Value::as_str), &all);
    let prebound = pvc.pointer("/spec/volumeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let delayed = !prebound && selected.is_none() && class.is_some_and(provisioner::waits_for_consumer);
    // A guest placed before its claim existed (or whose placement lost the race to mark it): the
    // claim learns its node here, and that node's agent makes the volume.
    if let (None, Some(node), true) =
        (placement::selected_node(&pvc), &selected, !prebound && class.is_some_and(provisioner::waits_for_consumer))
    {
        let mut marked = pvc.clone();
        *meta::at_mut(&mut marked, &["metadata", "annotations", placement::SELECTED_NODE]) = json!(node);
        s.cluster.update(&kinds::PERSISTENT_VOLUME_CLAIM, marked, UpdateMode::Main).await?;
        return Ok(());
    }
    if let Some(pv) = provisioner::pick_static(&pvc, &pvs, selected.as_deref()).filter(|_| !delayed) {
        let claimed = s
            .cluster
            .update(&kinds::PERSISTENT_VOLUME, provisioner::claimed_volume(pv, &pvc), UpdateMode::Main)
            .await?;
        crate::cluster::write_status(&*s.cluster, &kinds::PERSISTENT_VOLUME, &claimed, json!({"phase": "Bound"}))
            .await?;
        let bound = s
            .cluster
            .update(&kinds::PERSISTENT_VOLUME_CLAIM, provisioner::bound_claim(&pvc, &claimed), UpdateMode::Main)
            .await?;
        return crate::cluster::write_status(
            &*s.cluster,
            &kinds::PERSISTENT_VOLUME_CLAIM,
            &bound,
            provisioner::bound_status(&claimed),
        )
        .await;
    }
    if let Some(wanted) = pvc.pointer("/spec/volumeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        let why = match pvs.iter().find(|pv| meta::name(pv) == wanted) {
            None => format!("volume \"{wanted}\" not found"),
            Some(_) => format!("volume \"{wanted}\" does not match the claim (class, capacity, access modes, volume mode, selector) or is bound to another claim"),
        };
        return pending("FailedBinding", why).await;
    }
    if let Err((reason, message)) = provisioner::binding_decision(&pvc, class, selected.is_some()) {
        return pending(reason, message).await;
    }
    let Some(class) = class else { return Ok(()) };
    // Where the volume lives: its first guest's node, or (made at once) the server's own node;
    // a shared pool's on none.
    let node = match (provisioner::shared_pool(class), provisioner::waits_for_consumer(class)) {
        (true, _) => None,
        (false, true) => selected,
        (false, false) => s.config.node.clone(),
    };
    if !s.config.keeps(node.as_deref()) {
        let waiting =
            format!("waiting for the agent of node {:?} to create the volume", node.as_deref().unwrap_or_default());
        if pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Pending") {
            return Ok(());
        }
        return pending("ExternalProvisioning", waiting).await;
    }
    let Some(pv) = make_volume(s, &pvc, class, node.as_deref()).await? else {
        return crate::cluster::write_status(
            &*s.cluster,
            &kinds::PERSISTENT_VOLUME_CLAIM,
            &pvc,
            json!({"phase": "Pending"}),
        )
        .await;
    };
    crate::cluster::write_status(&*s.cluster, &kinds::PERSISTENT_VOLUME, &pv, json!({"phase": "Bound"})).await?;
    let bound = s
        .cluster
        .update(&kinds::PERSISTENT_VOLUME_CLAIM, provisioner::bound_claim(&pvc, &pv), UpdateMode::Main)
        .await?;
    crate::cluster::write_status(&*s.cluster, &kinds::PERSISTENT_VOLUME_CLAIM, &bound, provisioner::bound_status(&pv))
        .await
}

/// An event about a claim, from `component`.
async fn claim_event(s: &Shared, pvc: &Value, kind: &str, reason: &str, message: &str, component: &str) {
    events::record(&*s.cluster, &kinds::PERSISTENT_VOLUME_CLAIM, pvc, kind, reason, message, component).await;
}

/// Whether the claim's latest event already says `message` (a refusal repeated at every sync
/// would flood its events).
async fn events_said(s: &Shared, pvc: &Value, message: &str) -> bool {
    events::latest_for(&*s.cluster, pvc).await.is_some_and(|(_, said)| said == message)
}

/// On a node: makes the volume of a claim in a WaitForFirstConsumer class of this provisioner
/// whose first guest was placed here. The server (on Kubernetes, kube-controller-manager) binds
/// the claim to it.
async fn provision_here(s: &Shared, pvc: &Value) -> ApiResult<()> {
    let here = s.config.node.as_deref();
    if meta::is_deleting(pvc)
        || pvc.pointer("/spec/volumeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty())
        || placement::selected_node(pvc).is_none_or(|n| Some(n) != here)
    {
        return Ok(());
    }
    let all = classes(s).await?;
    let Some(class) = provisioner::class_for(pvc.pointer("/spec/storageClassName").and_then(Value::as_str), &all)
    else {
        return Ok(());
    };
    if !provisioner::waits_for_consumer(class) || provisioner::binding_decision(pvc, Some(class), true).is_err() {
        return Ok(());
    }
    let made = s.cluster.list(&kinds::PERSISTENT_VOLUME, None).await?;
    let claimed_here = |pv: &Value| {
        pv.pointer("/spec/claimRef/uid").and_then(Value::as_str) == Some(meta::uid(pvc))
            && placement::pv_node(pv) == here
    };
    if made.iter().any(claimed_here) {
        return Ok(());
    }
    make_volume(s, pvc, class, here).await.map(|_| ())
}

/// Makes the claim's volume in `class`'s pool here, and its PersistentVolume (claimed by it,
/// pinned to `node`). `None` when the claim cannot have one (the claim is told why).
async fn make_volume(s: &Shared, pvc: &Value, class: &Value, node: Option<&str>) -> ApiResult<Option<Value>> {
    let tell = |kind: &'static str, reason: &'static str, message: String| async move {
        events::record(
            &*s.cluster,
            &kinds::PERSISTENT_VOLUME_CLAIM,
            pvc,
            kind,
            reason,
            &message,
            PROVISIONER_COMPONENT,
        )
        .await;
    };
    let (pv, dir, size) = match provisioner::volume_for(pvc, class, &s.config, node) {
        Ok(v) => v,
        Err(message) => {
            tell(events::WARNING, "ProvisioningFailed", message).await;
            return Ok(None);
        }
    };
    if let Err(e) = make_volume_file(&dir, size) {
        let message = format!("failed to provision volume in {}: {e}", dir.display());
        tell(events::WARNING, "ProvisioningFailed", message.clone()).await;
        return Err(ApiError::internal(message));
    }
    let pv = match s.cluster.create(&kinds::PERSISTENT_VOLUME, pv.clone()).await {
        Ok(created) => created,
        Err(e) if e.code == 409 => s.cluster.get(&kinds::PERSISTENT_VOLUME, "", meta::name(&pv)).await?.ok_or(e)?,
        Err(e) => return Err(e),
    };
    tell(events::NORMAL, "ProvisioningSucceeded", format!("Successfully provisioned volume {}", meta::name(&pv))).await;
    Ok(Some(pv))
}

async fn release_finalizer(s: &Shared, pv: &Value) -> ApiResult<()> {
    let rest: Vec<String> = meta::finalizers(pv).into_iter().filter(|f| f != PV_PROTECTION).collect();
    if rest.len() == meta::finalizers(pv).len() {
        return Ok(());
    }
    let mut next = pv.clone();
    meta::set_finalizers(&mut next, &rest);
    s.cluster.update(&kinds::PERSISTENT_VOLUME, next, UpdateMode::Main).await.map(|_| ())
}

const PROVISIONER_COMPONENT: &str = "converge.dev/local-pool";

/// The volume's directory and its sparse `disk.img`, unless they exist.
fn make_volume_file(dir: &Path, size: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // QEMU runs as another user and opens the disk through these directories.
    crate::node::allow_traverse(dir)?;
    let disk = dir.join("disk.img");
    if !disk.exists() {
        // 0600: a tenant's data; libvirt hands it to QEMU's user while a guest runs.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&disk)?;
        file.set_len(size)?;
    }
    Ok(())
}

/// Reclaims a volume whose claim is gone: Delete removes it and its files, Retain keeps both.
async fn sync_pv(s: &Shared, name: &str) -> ApiResult<()> {
    let Some(pv) = s.cluster.get(&kinds::PERSISTENT_VOLUME, "", name).await? else { return Ok(()) };
    // The server keeps every volume's phase; the files, and the object once they are gone, are
    // for the process where the volume lives.
    let keeps = s.config.keeps_volume(&pv);
    let server = s.config.role == StorageRole::Server;
    if !server && !keeps {
        return Ok(());
    }
    // Unclaimed, or pre-bound by an admin to a claim that is not there yet.
    if pv.pointer("/spec/claimRef/uid").and_then(Value::as_str).is_none_or(str::is_empty) {
        if !server {
            return Ok(());
        }
        if meta::is_deleting(&pv) {
            return release_finalizer(s, &pv).await;
        }
        return crate::cluster::write_status(
            &*s.cluster,
            &kinds::PERSISTENT_VOLUME,
            &pv,
            json!({"phase": "Available"}),
        )
        .await;
    }
    let claim_ns = pv.pointer("/spec/claimRef/namespace").and_then(Value::as_str).unwrap_or_default();
    let claim_name = pv.pointer("/spec/claimRef/name").and_then(Value::as_str).unwrap_or_default();
    let claim_uid = pv.pointer("/spec/claimRef/uid").and_then(Value::as_str).unwrap_or_default();
    let claim = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, claim_ns, claim_name).await?;
    let released = claim.as_ref().is_none_or(|c| meta::uid(c) != claim_uid) || meta::is_deleting(&pv);
    if !released {
        return Ok(());
    }
    let policy = pv.pointer("/spec/persistentVolumeReclaimPolicy").and_then(Value::as_str).unwrap_or("Delete");
    if policy == "Retain" && !meta::is_deleting(&pv) {
        if !server {
            return Ok(());
        }
        return crate::cluster::write_status(&*s.cluster, &kinds::PERSISTENT_VOLUME, &pv, json!({"phase": "Released"}))
            .await;
    }
    if !keeps {
        return Ok(());
    }
    if policy == "Delete" || meta::is_deleting(&pv) {
        if let Some(file) = pv.pointer("/spec/hostPath/path").and_then(Value::as_str).map(PathBuf::from) {
            let _ = s.tool.detach_block(&file);
            // Only the directory this provisioner made, named after the volume.
            let ours = annotation(&pv, "pv.kubernetes.io/provisioned-by") == Some(super::PROVISIONER);
            if let Some(dir) = file.parent().filter(|d| ours && d.file_name().and_then(|n| n.to_str()) == Some(name)) {
                if policy == "Delete" {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
        }
        release_finalizer(s, &pv).await?;
        if !meta::is_deleting(&pv) {
            let opts = DeleteOptions { precondition_uid: Some(meta::uid(&pv).to_string()), ..DeleteOptions::default() };
            match s.cluster.delete(&kinds::PERSISTENT_VOLUME, "", name, opts).await {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

mod datavolumes;
#[cfg(test)]
mod tests;
mod uploads;

use datavolumes::sync_dv;
pub use uploads::{UploadError, UploadSession};
