//! The node agent's reconcile loop: for one `(namespace, name)` it compares the VMI (if any, if
//! scheduled here) with the libvirt domain of that name and acts — start, adopt, report, shut
//! down, clean up. Woken by VMI changes, libvirt lifecycle events and a periodic resync.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::launch_timing::LaunchTimer;
use super::{disks, Shared};
use crate::controllers::status::{self as st, is_final, node_name, phase};
use crate::controllers::{Key, VMI_FINALIZER};
use crate::error::{ApiError, ApiResult};
use crate::hypervisor::{DomainState, HypervisorError, RESYNC_ALL};
use crate::kinds;
use crate::launcher::build::{self, build_domain, Accel, NodeContext};
use crate::launcher::spec::VmiSpec;
use crate::meta;
use crate::network::plan::PodPlan;
use crate::store::UpdateMode;
use crate::worker::{self, Action};

const WORKERS: usize = 8;
/// Domain starts at once. Under TCG on two cores a start is CPU-bound; more in flight only share
/// the CPU and all finish later (measured at 50 VMIs: see docs/architecture.md).
pub(super) const START_SLOTS: usize = 4;
/// KubeVirt's default when a VMI names no terminationGracePeriodSeconds.
const DEFAULT_GRACE_SECS: u64 = 180;

pub fn domain_name_of(prefix: &str, namespace: &str, name: &str) -> String {
    build::domain_name(prefix, namespace, name)
}

pub(crate) fn key_of_domain(prefix: &str, domain: &str) -> Option<Key> {
    let rest = domain.strip_prefix(prefix)?;
    let (ns, name) = rest.split_once('_')?;
    Some((ns.to_string(), name.to_string()))
}

fn hv_error(e: HypervisorError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))
}

pub(super) fn spawn(shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(feed_store(Arc::clone(&shared))),
        tokio::spawn(feed_resync(Arc::clone(&shared))),
        tokio::spawn(super::persist::run(Arc::clone(&shared))),
    ];
    if let Some(events) = shared.hv.events() {
        tasks.push(tokio::spawn(feed_libvirt(Arc::clone(&shared), events)));
    }
    if shared.net.is_some() {
        tasks.push(tokio::spawn(forward_services(Arc::clone(&shared))));
        tasks.push(tokio::spawn(super::routes::run(Arc::clone(&shared))));
    }
    let s = Arc::clone(&shared);
    tasks.extend(worker::spawn("node", &shared.queue, WORKERS, move |key| {
        let s = Arc::clone(&s);
        async move { sync(&s, &key).await.map(Action::from) }
    }));
    tasks
}

async fn feed_store(s: Arc<Shared>) {
    let mut rx = s.cluster.watch(&[&kinds::VIRTUAL_MACHINE_INSTANCE]);
    let vmi_key = kinds::VIRTUAL_MACHINE_INSTANCE.store_key();
    loop {
        match rx.recv().await {
            Ok(ev) if ev.kind_key == vmi_key => {
                if node_name(&ev.object) == Some(s.config.name.as_str())
                    || super::migration::role(&s, &ev.object).is_some()
                {
                    s.queue.add((ev.namespace.clone(), ev.name.clone()));
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => resync(&s).await,
            Err(RecvError::Closed) => return,
        }
    }
}

/// Keeps the node's Service rules in step with Services and their Endpoints (which follow the
/// VMIs): changes are gathered for a moment, then the whole rule set is applied at once.
async fn forward_services(s: Arc<Shared>) {
    let Some(net) = s.net.clone() else { return };
    let mut rx = s.cluster.watch(&[&kinds::SERVICE, &kinds::ENDPOINTS, &kinds::VIRTUAL_MACHINE_INSTANCE]);
    let watched = [kinds::SERVICE.store_key(), kinds::ENDPOINTS.store_key()];
    let mut dirty = true;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut resync = tokio::time::interval(s.config.resync);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => dirty |= watched.contains(&ev.kind_key),
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if dirty {
                    dirty = false;
                    if let Err(e) = super::network::sync_services(&s, &net).await {
                        tracing::warn!(error = %e, "service rules not applied; retrying");
                        dirty = true;
                    }
                }
            }
            _ = resync.tick() => dirty = true,
        }
    }
}

async fn feed_libvirt(s: Arc<Shared>, mut events: tokio::sync::mpsc::UnboundedReceiver<String>) {
    while let Some(domain) = events.recv().await {
        if domain == RESYNC_ALL {
            // A new connection: libvirtd may have restarted, and what it runs is read afresh.
            if let Ok(mut started) = s.started_domains.lock() {
                started.clear();
            }
            resync(&s).await;
        } else if let Some(key) = key_of_domain(&s.config.domain_prefix, &domain) {
            s.queue.add(key);
        }
    }
}

async fn feed_resync(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(s.config.resync);
    loop {
        tick.tick().await;
        resync(&s).await;
    }
}

/// Queues every VMI on this node and every domain this node made (orphans included).
async fn resync(s: &Arc<Shared>) {
    if let Ok(vmis) = s.cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await {
        for v in vmis.iter().filter(|v| node_name(v) == Some(s.config.name.as_str())) {
            s.queue.add((meta::namespace(v).to_string(), meta::name(v).to_string()));
        }
        super::migration::involved(s, &vmis).into_iter().for_each(|k| s.queue.add(k));
    }
    let hv = Arc::clone(&s.hv);
    if let Ok(Ok(domains)) = blocking(move || hv.list()).await {
        for d in domains.iter().filter(|d| d.node_uid.as_deref() == Some(s.node_uid.as_str())) {
            // Only domains named as the agent names them: a copy of one of ours under another
            // name (the bench's baselines run such copies) is someone else's to manage.
            if let Some(key) = key_of_domain(&s.config.domain_prefix, &d.name) {
                if !d.persistent && d.state.is_active() {
                    s.pending_persist.found(&d.name);
                }
                s.queue.add(key);
            }
        }
    }
}

pub(super) fn vmi_dir(s: &Shared, uid: &str) -> PathBuf {
    s.config.state_dir.join("vmis").join(uid)
}

fn forget_domain(s: &Shared, name: &str) {
    if let Ok(mut started) = s.started_domains.lock() {
        started.remove(name);
    }
}

/// The domain of this name, if this node made it: (VMI uid, state).
async fn our_domain(s: &Arc<Shared>, name: &str) -> ApiResult<Option<(String, DomainState)>> {
    let known = s.started_domains.lock().ok().and_then(|m| m.get(name).cloned());
    if let Some((vmi_uid, uuid)) = known {
        let (hv, n) = (Arc::clone(&s.hv), name.to_string());
        match blocking(move || hv.state_by_uuid(&uuid, &n)).await?.map_err(hv_error)? {
            Some(state) => return Ok(Some((vmi_uid, state))),
            // Gone or replaced: what is there now is read in full below.
            None => forget_domain(s, name),
        }
    }
    let (hv, n) = (Arc::clone(&s.hv), name.to_string());
    let xml = match blocking(move || hv.xml(&n)).await? {
        Ok(xml) => xml,
        Err(HypervisorError::NoDomain(_)) => return Ok(None),
        Err(e) => return Err(hv_error(e)),
    };
    if crate::hypervisor::node_uid_from_xml(&xml).as_deref() != Some(s.node_uid.as_str()) {
        return Ok(None);
    }
    let (hv, n) = (Arc::clone(&s.hv), name.to_string());
    let state = blocking(move || hv.state(&n)).await?.map_err(hv_error)?;
    Ok(match (crate::hypervisor::vmi_uid_from_xml(&xml), state) {
        (Some(uid), Some(state)) => Some((uid, state)),
        _ => None,
    })
}

/// Destroys and undefines a domain and removes the VMI's directory.
pub(super) async fn tear_down(
    s: &Arc<Shared>,
    domain: &str,
    vmi_uid: &str,
    owner: Option<(&str, &str)>,
) -> ApiResult<()> {
    let (hv, n) = (Arc::clone(&s.hv), domain.to_string());
    blocking(move || hv.destroy(&n).and_then(|_| hv.undefine(&n))).await?.map_err(hv_error)?;
    forget_domain(s, domain);
    crate::failpoint::hit(crate::failpoint::NODE_AFTER_TEARDOWN);
    release_vmi(s, vmi_uid, owner).await;
    let _ = std::fs::remove_dir_all(vmi_dir(s, vmi_uid));
    if let Ok(mut d) = s.shutdown_deadlines.lock() {
        d.remove(vmi_uid);
    }
    Ok(())
}

/// A guest that left this node (migrated): what the node held for it goes, its pod address
/// (leased to `owner`, its namespace and name) included; the domain is the target's now.
pub(super) async fn forget_local(s: &Arc<Shared>, domain: &str, vmi_uid: &str, owner: (&str, &str)) {
    forget_domain(s, domain);
    release_vmi(s, vmi_uid, Some(owner)).await;
    let _ = std::fs::remove_dir_all(vmi_dir(s, vmi_uid));
}

/// What a VMI held on this node besides its domain: loop devices, its pod network and address
/// (`owner` is its namespace and name, when the address is still its own to give back).
pub(super) async fn release_vmi(s: &Shared, vmi_uid: &str, owner: Option<(&str, &str)>) {
    super::volumes::release_vmi(s, vmi_uid).await;
    if let Some(net) = &s.net {
        super::network::release_pod(net, vmi_uid, owner).await;
    }
}

async fn write(s: &Shared, vmi: &Value, next: &Value) -> ApiResult<()> {
    match next.get("status") {
        Some(status) if vmi.get("status") != Some(status) => {
            crate::cluster::write_status(&*s.cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, vmi, status.clone()).await
        }
        _ => Ok(()),
    }
}

async fn remove_finalizer(s: &Shared, vmi: &Value) -> ApiResult<()> {
    let rest: Vec<String> = meta::finalizers(vmi).into_iter().filter(|f| f != VMI_FINALIZER).collect();
    if rest.len() == meta::finalizers(vmi).len() {
        return Ok(());
    }
    let mut updated = vmi.clone();
    meta::set_finalizers(&mut updated, &rest);
    match s.cluster.update(&kinds::VIRTUAL_MACHINE_INSTANCE, updated, UpdateMode::Main).await {
        Err(e) if e.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

/// One pass over one key; `Some(delay)` asks to be looked at again.
async fn sync(s: &Arc<Shared>, (ns, name): &Key) -> ApiResult<Option<Duration>> {
    let mut timer = LaunchTimer::start();
    let domain = domain_name_of(&s.config.domain_prefix, ns, name);
    let vmi = s.cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, ns, name).await?;
    if let Some(v) = &vmi {
        use super::migration::{self as m, Role};
        match m::role(s, v) {
            Some(Role::Target(state)) => return m::sync_target(s, v, state).await,
            Some(Role::FormerTarget) => {
                m::clean_former_target(s, v, &domain).await?;
                return Ok(None);
            }
            Some(Role::Source(state)) if m::sync_source(s, v, state) => return Ok(None),
            _ => {}
        }
    }
    let vmi = vmi.filter(|v| node_name(v) == Some(s.config.name.as_str()));
    let existing = our_domain(s, &domain).await?;

    // A domain whose VMI is gone, or was replaced by a new VMI of the same name, goes.
    if let Some((uid, _)) = &existing {
        if vmi.as_ref().is_none_or(|v| meta::uid(v) != uid) {
            // A new VMI of the same name holds the name's address now: it is not ours to free.
            let owner = vmi.is_none().then_some((ns.as_str(), name.as_str()));
            tear_down(s, &domain, uid, owner).await?;
            return Ok(vmi.is_some().then_some(Duration::ZERO));
        }
    }
    let Some(vmi) = vmi else { return Ok(None) };
    let uid = meta::uid(&vmi).to_string();
    let state = existing.map(|(_, state)| state);
    let now = meta::now_rfc3339();

    if meta::is_deleting(&vmi) {
        return shut_down_for_delete(s, &vmi, &domain, state, &now).await;
    }
    if is_final(phase(&vmi)) {
        let owner = Some((ns.as_str(), name.as_str()));
        if state.is_some() {
            tear_down(s, &domain, &uid, owner).await?;
        } else {
            release_vmi(s, &uid, owner).await;
            let _ = std::fs::remove_dir_all(vmi_dir(s, &uid));
        }
        remove_finalizer(s, &vmi).await?;
        return Ok(None);
    }
    let mut next = vmi.clone();
    let mut launched = false;
    match (phase(&vmi), state) {
        // Not started yet — or defined but never started, when a crash came between the two.
        (st::PENDING | st::SCHEDULING | st::SCHEDULED, ds) if ds.is_none_or(|d| !d.is_active()) => {
            timer.lookup = timer.lap();
            match start_domain(s, &vmi, &mut timer).await {
                Ok(pod) => {
                    launched = true;
                    crate::failpoint::hit(crate::failpoint::NODE_AFTER_START);
                    mark_running(s, &mut next, &now, pod.as_ref());
                    if vmi.pointer("/spec/startStrategy").and_then(Value::as_str) == Some("Paused") {
                        st::set_condition(&mut next, "Paused", true, "PausedByUser", "VMI was started paused", &now);
                        st::set_condition(&mut next, "Ready", false, "PausedByUser", "VMI was started paused", &now);
                    }
                }
                Err(StartError::Retry(e)) => return Err(e),
                Err(StartError::Wait(reason, message, after)) => {
                    // Still Scheduled: the guest starts once its images and volumes are there.
                    st::set_condition(&mut next, "Synchronized", false, &reason, &message, &now);
                    st::set_condition(&mut next, "Ready", false, &reason, &message, &now);
                    write(s, &vmi, &next).await?;
                    return Ok(Some(after));
                }
                Err(StartError::Fatal(reason, message)) => {
                    tracing::warn!(namespace = %ns, name = %name, %reason, %message, "VMI cannot start");
                    st::set_condition(&mut next, "Synchronized", false, &reason, &message, &now);
                    st::set_condition(&mut next, "Ready", false, &reason, &message, &now);
                    st::set_phase(&mut next, st::FAILED, &now);
                }
            }
        }
        // Started before a crash or restart of `converge serve`: adopt it.
        (st::PENDING | st::SCHEDULING | st::SCHEDULED, Some(_)) => mark_running(s, &mut next, &now, None),
        (_, Some(DomainState::Running)) => {
            if let Some(net) = &s.net {
                if let Some(interfaces) = super::network::adopt_running(s, net, &vmi).await {
                    st::status_mut(&mut next).insert("interfaces".into(), json!(interfaces));
                }
            }
            st::set_condition(&mut next, "Ready", true, "", "", &now);
            st::remove_condition(&mut next, "Paused");
        }
        (_, Some(DomainState::Paused)) => {
            st::set_condition(&mut next, "Paused", true, "PausedByUser", "VMI was paused by user", &now);
            st::set_condition(&mut next, "Ready", false, "PausedByUser", "VMI was paused by user", &now);
        }
        (_, Some(DomainState::ShuttingDown)) => return Ok(Some(Duration::from_secs(1))),
        (_, Some(DomainState::ShutOffByGuest)) => {
            st::set_condition(&mut next, "Ready", false, "GuestShutdown", "the guest powered itself off", &now);
            st::set_phase(&mut next, st::SUCCEEDED, &now);
        }
        (_, Some(ds)) => {
            let why = match ds {
                DomainState::Crashed => "QEMU exited unexpectedly",
                DomainState::Destroyed => "the domain was destroyed outside Converge",
                _ => "the domain stopped for an unknown reason",
            };
            st::set_condition(&mut next, "Ready", false, "DomainFailed", why, &now);
            st::set_phase(&mut next, st::FAILED, &now);
        }
        (_, None) => {
            st::set_condition(&mut next, "Ready", false, "DomainNotFound", "the domain vanished", &now);
            st::set_phase(&mut next, st::FAILED, &now);
        }
    }
    if phase(&next) == st::RUNNING {
        super::migration::mark_migratability(s, &vmi, &mut next, &now, launched).await;
    }
    write(s, &vmi, &next).await?;
    if launched {
        timer.status = timer.lap().saturating_sub(timer.start);
        timer.report(ns, name);
    }
    record_transition(s, &vmi, &next).await;
    Ok(is_final(phase(&next)).then_some(Duration::ZERO))
}

/// virt-handler's events for what just happened to the guest.
async fn record_transition(s: &Shared, before: &Value, after: &Value) {
    use crate::events::{record, NORMAL, WARNING};
    let (from, to) = (phase(before), phase(after));
    let event = match to {
        _ if from == to => None,
        st::RUNNING => Some((NORMAL, "Started", "VirtualMachineInstance started.".to_string())),
        st::SUCCEEDED => Some((NORMAL, "Stopped", "The VirtualMachineInstance was shut down.".to_string())),
        st::FAILED => {
            let why = st::condition(after, "Ready")
                .and_then(|c| c.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("failed");
            Some((WARNING, "Stopped", format!("The VirtualMachineInstance crashed: {why}")))
        }
        _ => None,
    };
    if let Some((kind, reason, message)) = event {
        let component = "virt-handler";
        record(&*s.cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, after, kind, reason, &message, component).await;
    }
}

fn mark_running(s: &Shared, next: &mut Value, now: &str, pod: Option<&PodPlan>) {
    st::set_phase(next, st::RUNNING, now);
    st::set_condition(next, "Ready", true, "", "", now);
    match (&s.emulation_reason, s.accel) {
        (Some(why), Accel::Tcg) => st::set_condition(next, "SoftwareEmulation", true, "KVMUnusable", why, now),
        _ => st::remove_condition(next, "SoftwareEmulation"),
    }
    let spec = VmiSpec::from_vmi(next).unwrap_or_default();
    let known = next.pointer("/status/interfaces").filter(|i| pod.is_none() && i.is_array()).cloned();
    let interfaces = known.unwrap_or_else(|| json!(super::network::interface_status(&spec, pod)));
    let status = st::status_mut(next);
    status.insert("interfaces".into(), interfaces);
    status.insert("guestOSInfo".into(), json!({}));
    status.insert("qosClass".into(), json!("Burstable"));
}

/// libvirt's words when a domain of that UUID exists under another name (`virDomainObjListAdd`).
fn uuid_in_use(message: &str) -> bool {
    message.contains("is already defined with uuid") || message.contains("already exists with uuid")
}

pub(super) enum StartError {
    /// Try again (libvirt unreachable, cluster conflict).
    Retry(ApiError),
    /// The VMI cannot run as specified: it fails, with this reason and message.
    Fatal(String, String),
    /// Not yet (an image to pull, a volume being filled): reason, message, when to look again.
    Wait(String, String, Duration),
}

/// Makes the guest's files (images pulled, claims attached, disks made): what a start and a
/// migration's target both need, at the same paths under this node's state directory.
pub(super) async fn prepare_files(s: &Arc<Shared>, vmi: &Value) -> Result<(), StartError> {
    prepare(s, vmi, &mut LaunchTimer::start()).await.map(|_| ())
}

async fn prepare(s: &Arc<Shared>, vmi: &Value, timer: &mut LaunchTimer) -> Result<build::Prepared, StartError> {
    let uid = meta::uid(vmi).to_string();
    let dir = vmi_dir(s, &uid);
    std::fs::create_dir_all(&dir).map_err(|e| StartError::Retry(ApiError::internal(e.to_string())))?;
    if let Some((owner, group)) = s.qemu_owner {
        // QEMU binds the console and VNC sockets here.
        let _ = std::os::unix::fs::chown(&dir, Some(owner), Some(group));
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770));
    }
    let secrets = cloud_init_secrets(s, vmi).await.map_err(StartError::Retry)?;
    if let Err((reason, message, after)) = super::volumes::ensure_images(s, vmi).await {
        return Err(StartError::Wait(reason, message, after));
    }
    let claims = super::volumes::attach_claims(s, vmi)
        .await
        .map_err(|(reason, message)| StartError::Wait(reason, message, Duration::from_secs(2)))?;
    let (vmi_c, dir_c, shared) = (vmi.clone(), dir, Arc::clone(s));
    timer.inputs = timer.lap();
    let prepared = blocking(move || {
        let host = &shared.config.host_access;
        disks::prepare(&vmi_c, &dir_c, &shared.images, shared.tool.as_ref(), &secrets, &claims, host)
    })
    .await
    .map_err(StartError::Retry)?;
    match prepared {
        Ok(p) => {
            crate::failpoint::hit(crate::failpoint::NODE_AFTER_DISK_PREPARE);
            Ok(p)
        }
        Err(disks::DiskError::Image(e)) => Err(StartError::Fatal("ErrImagePull".into(), e.to_string())),
        Err(e) => Err(StartError::Fatal("FailedDiskPreparation".into(), e.to_string())),
    }
}

async fn start_domain(s: &Arc<Shared>, vmi: &Value, timer: &mut LaunchTimer) -> Result<Option<PodPlan>, StartError> {
    let uid = meta::uid(vmi).to_string();
    let dir = vmi_dir(s, &uid);
    let prepared = prepare(s, vmi, timer).await?;
    timer.disks = timer.lap();
    let pod = match &s.net {
        Some(net) => Some(super::network::prepare_pod(s, net, vmi).await.map_err(|e| match e {
            super::network::PodError::Retry(m) => StartError::Retry(ApiError::unavailable(m)),
            super::network::PodError::Invalid(m) => StartError::Fatal("FailedNetworkSetup".into(), m),
        })?),
        None => None,
    };
    timer.network = timer.lap();
    let ctx = NodeContext {
        nics: pod.as_ref().map(|p| p.nics.clone()),
        accel: s.accel,
        vmi_dir: dir,
        tb_cache_mib: s.config.tb_cache_mib,
        ovmf: build::Ovmf::debian(),
        node_uid: s.node_uid.clone(),
        domain_prefix: s.config.domain_prefix.clone(),
    };
    let (xml, domain_name, domain_uuid) = build_domain(vmi, &ctx, &prepared)
        .and_then(|d| Ok((d.to_xml().map_err(|e| build::BuildError::Spec(e.to_string()))?, d.name, d.uuid)))
        .map_err(|e| StartError::Fatal("FailedCreate".into(), e.to_string()))?;
    let hv = Arc::clone(&s.hv);
    let paused = vmi.pointer("/spec/startStrategy").and_then(Value::as_str) == Some("Paused");
    timer.build = timer.lap();
    let slot = s.start_slots.acquire().await.map_err(|e| StartError::Retry(ApiError::internal(e.to_string())))?;
    timer.slot = timer.lap();
    let (started, xml) = blocking(move || (hv.start(&xml, paused), xml)).await.map_err(StartError::Retry)?;
    drop(slot);
    match started {
        Ok(took) => {
            timer.start = took;
            s.pending_persist.started(&domain_name, &domain_uuid, xml);
            if let Ok(mut started) = s.started_domains.lock() {
                started.insert(domain_name, (uid, domain_uuid));
            }
            if let (Some(net), Some(plan)) = (&s.net, &pod) {
                if let Err(e) = super::network::finish_pod(net, plan, vmi).await {
                    return Err(StartError::Fatal("FailedNetworkSetup".into(), e.to_string()));
                }
            }
            Ok(pod)
        }
        // The VM's firmware UUID is the domain's, and one libvirtd holds one domain of a UUID:
        // another node's agent on this machine still runs the VM's last guest (its agent was
        // lost; back, it removes it). The guest starts once the UUID is free.
        Err(HypervisorError::Libvirt(message)) if uuid_in_use(&message) => {
            Err(StartError::Wait("DomainUUIDInUse".into(), message, Duration::from_secs(3)))
        }
        Err(HypervisorError::Libvirt(message)) if !message.contains("connect") => {
            Err(StartError::Fatal("FailedCreate".into(), message))
        }
        Err(e) => Err(StartError::Retry(hv_error(e))),
    }
}

async fn cloud_init_secrets(s: &Shared, vmi: &Value) -> ApiResult<disks::SecretData> {
    let spec = VmiSpec::from_vmi(vmi).unwrap_or_default();
    let mut names = vec![];
    for v in &spec.volumes {
        for src in [&v.cloud_init_no_cloud, &v.cloud_init_config_drive].into_iter().flatten() {
            names.extend(src.secret_ref.iter().chain(src.network_data_secret_ref.iter()).map(|r| r.name.clone()));
        }
    }
    let mut out = disks::SecretData::new();
    for name in names {
        if let Some(secret) = s.cluster.get(&kinds::SECRET, meta::namespace(vmi), &name).await? {
            out.insert(name, disks::secret_data(&secret));
        }
    }
    Ok(out)
}

/// A deleted VMI: ask the guest to power off, pull the plug after its grace period, then let
/// the object go.
async fn shut_down_for_delete(
    s: &Arc<Shared>,
    vmi: &Value,
    domain: &str,
    state: Option<DomainState>,
    now: &str,
) -> ApiResult<Option<Duration>> {
    let uid = meta::uid(vmi).to_string();
    if let Some(ds) = state.filter(|d| d.is_active()) {
        let grace =
            VmiSpec::from_vmi(vmi).ok().and_then(|sp| sp.termination_grace_period_seconds).map(|g| g.max(0) as u64);
        // Bounded before the deadline is computed: an overflow there panicked with the lock held.
        let max = crate::admission::MAX_GRACE_PERIOD_SECONDS as u64;
        let grace = Duration::from_secs(grace.unwrap_or(DEFAULT_GRACE_SECS).min(max));
        let mut first_request = false;
        // Computed before the lock is taken: nothing that can fail runs while it is held.
        let if_first = Instant::now().checked_add(grace).unwrap_or_else(Instant::now);
        let deadline = {
            let mut d = s.shutdown_deadlines.lock().map_err(|_| ApiError::internal("deadline lock poisoned"))?;
            let deadline = d.entry(uid.clone()).or_insert_with(|| {
                first_request = true;
                if_first
            });
            // A grace period shortened meanwhile (a forced stop) brings the deadline forward.
            *deadline = (*deadline).min(if_first);
            *deadline
        };
        if first_request {
            let message = "Signaled Graceful Shutdown";
            crate::events::record(
                &*s.cluster,
                &kinds::VIRTUAL_MACHINE_INSTANCE,
                vmi,
                crate::events::NORMAL,
                "ShuttingDown",
                message,
                "virt-handler",
            )
            .await;
        }
        let (hv, n) = (Arc::clone(&s.hv), domain.to_string());
        if Instant::now() >= deadline || grace.is_zero() || ds == DomainState::Paused {
            blocking(move || hv.destroy(&n)).await?.map_err(hv_error)?;
        } else {
            // ACPI again on every pass: a guest still booting may miss the first press.
            let _ = blocking(move || hv.shutdown(&n)).await?;
            return Ok(Some(deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(2))));
        }
    }
    tear_down(s, domain, &uid, Some((meta::namespace(vmi), meta::name(vmi)))).await?;
    let mut next = vmi.clone();
    if !is_final(phase(vmi)) {
        st::set_condition(&mut next, "Ready", false, "Deleted", "the VMI was deleted", now);
        st::set_phase(&mut next, st::SUCCEEDED, now);
        write(s, vmi, &next).await?;
        return Ok(Some(Duration::ZERO));
    }
    remove_finalizer(s, vmi).await?;
    Ok(None)
}
