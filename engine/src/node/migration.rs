//! The node agents' share of a live migration (virt-handler's): the target makes the guest's
//! files as for a start and says it is ready; the source then has its libvirtd migrate the
//! domain to the target's, peer to peer, under the target's name and paths
//! (`migration::xml`), follows its progress, aborts it when asked, and hands the VMI to the
//! target once the guest runs there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::Shared;
use crate::controllers::status::{self as st, node_name};
use crate::error::{ApiError, ApiResult};
use crate::hypervisor::{HypervisorError, MigrationTarget};
use crate::kinds;
use crate::meta;
use crate::migration::{self as mig, xml, Endpoint, NotMigratable, VolumeKind};

/// How often a running migration's progress and abort request are looked at.
const POLL: Duration = Duration::from_millis(1000);
/// How often its progress is written to the VMI (and so the migration): every write is an event
/// to every watcher of VMIs.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// What this node publishes so that guests can migrate to it (`--migration-uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationConfig {
    /// This node's libvirtd as the other nodes' libvirtds reach it.
    pub libvirt_uri: String,
    /// Where its QEMUs listen for incoming guests.
    pub address: std::net::IpAddr,
}

/// Migrations this node is sending, by VMI uid.
#[derive(Default)]
pub struct Outgoing {
    running: Mutex<HashSet<String>>,
}

impl Outgoing {
    fn claim(&self, uid: &str) -> bool {
        self.running.lock().map(|mut m| m.insert(uid.to_string())).unwrap_or(false)
    }
    fn release(&self, uid: &str) {
        if let Ok(mut m) = self.running.lock() {
            m.remove(uid);
        }
    }
    pub fn is_sending(&self, uid: &str) -> bool {
        self.running.lock().map(|m| m.contains(uid)).unwrap_or(false)
    }
}

/// The endpoint this node publishes on its Node, or `None` when it takes no migrations.
pub fn endpoint(config: &super::NodeConfig) -> Option<Endpoint> {
    checked_endpoint(config).unwrap_or_else(|err| {
        tracing::warn!(error = %err, "this node takes no migrations");
        None
    })
}

/// The endpoint, or why it is unusable.
pub fn checked_endpoint(config: &super::NodeConfig) -> Result<Option<Endpoint>, mig::EndpointError> {
    let Some(m) = config.migration.as_ref() else { return Ok(None) };
    // Absolute: the source re-roots paths from this directory to the target's.
    let state_dir = std::path::absolute(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
    let e = Endpoint {
        libvirt_uri: m.libvirt_uri.clone(),
        address: m.address,
        state_dir,
        domain_prefix: config.domain_prefix.clone(),
        network_namespace: config.network.as_ref().map(|n| n.node_namespace.clone()),
    };
    e.validate().map(|()| Some(e))
}

/// What a volume is to a migration, from the VMI's spec alone (claims: `None`, see
/// `volume_kinds`).
fn spec_kind(v: &Value) -> Option<VolumeKind> {
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    if v.get("persistentVolumeClaim").is_some() || v.get("dataVolume").is_some() {
        None
    } else if v.get("hostDisk").is_some() {
        Some(VolumeKind::HostDisk { name })
    } else if ["containerDisk", "emptyDisk", "ephemeral"].iter().any(|k| v.get(*k).is_some()) {
        Some(VolumeKind::NodeMade)
    } else {
        Some(VolumeKind::NodeMadeReadOnly)
    }
}

fn volumes(vmi: &Value) -> impl Iterator<Item = &Value> {
    vmi.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten()
}

/// What the VMI's volumes are, as migration sees them: each claim and its volume read once, for
/// the claim's access modes and where the volume lives.
pub(super) async fn volume_kinds(s: &Shared, vmi: &Value) -> ApiResult<Vec<VolumeKind>> {
    use crate::storage::claims::{state_of, ClaimState};
    let ns = meta::namespace(vmi);
    let mut out = vec![];
    for v in volumes(vmi) {
        if let Some(kind) = spec_kind(v) {
            out.push(kind);
            continue;
        }
        let claim = v.pointer("/persistentVolumeClaim/claimName").or_else(|| v.pointer("/dataVolume/name"));
        let claim = claim.and_then(Value::as_str).unwrap_or_default();
        let pvc = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, ns, claim).await?;
        let pv = match pvc.as_ref().and_then(|p| p.pointer("/spec/volumeName")).and_then(Value::as_str) {
            Some(n) => s.cluster.get(&kinds::PERSISTENT_VOLUME, "", n).await?,
            None => None,
        };
        let rwx = pvc
            .as_ref()
            .and_then(|p| p.pointer("/spec/accessModes"))
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m == "ReadWriteMany"));
        // A volume pinned to a node is reached there only, whatever the claim asked.
        out.push(match state_of(pvc.as_ref(), pv.as_ref(), claim) {
            ClaimState::Ready(cv) if cv.block => VolumeKind::LoopBlock { name: claim.to_string() },
            ClaimState::Ready(cv) => VolumeKind::Claim { name: claim.to_string(), shared: rwx && cv.node.is_none() },
            ClaimState::Waiting(..) => VolumeKind::Claim { name: claim.to_string(), shared: false },
        });
    }
    Ok(out)
}

/// The LiveMigratable reason of a node that takes part in no migration.
const NO_MIGRATION: &str = "NotMigratable";

/// Sets the VMI's LiveMigratable condition and migrationMethod, as virt-handler does. The
/// condition is worked out (its claims read) when the guest starts here, when it has none, and
/// when this node's part in migrations changed since; otherwise it stands.
pub(super) async fn mark_migratability(s: &Shared, vmi: &Value, next: &mut Value, now: &str, started: bool) {
    // Only disks the node makes are ever copied: the spec says which.
    let copied = volumes(vmi).filter_map(spec_kind).collect::<Vec<_>>();
    let method = if mig::needs_block_migration(&copied) { "BlockMigration" } else { "LiveMigration" };
    st::status_mut(next).insert("migrationMethod".into(), json!(method));
    let known = st::condition(vmi, "LiveMigratable");
    let said_no_migration = known.is_some_and(|c| c["reason"] == NO_MIGRATION);
    if !started && known.is_some() && said_no_migration == s.config.migration.is_none() {
        return;
    }
    let verdict = match s.config.migration {
        None => Err(NotMigratable {
            reason: NO_MIGRATION,
            message: "this node takes part in no live migration (its agent runs without --migration-uri)".into(),
        }),
        Some(_) => match volume_kinds(s, vmi).await {
            Ok(kinds) => mig::migratable(vmi, &kinds),
            Err(_) => return,
        },
    };
    match verdict {
        Ok(()) => st::set_condition(next, "LiveMigratable", true, "", "", now),
        Err(n) => st::set_condition(next, "LiveMigratable", false, n.reason, &n.message, now),
    }
}

/// The migration this VMI is in and this node's part in it, if any.
pub(super) enum Role<'a> {
    /// Sending the guest: the VMI is on this node.
    Source(&'a Value),
    /// Receiving it: the VMI is still on the source.
    Target(&'a Value),
    /// A migration to this node that ended without it (failed, aborted): what was made goes.
    FormerTarget,
}

pub(super) fn role<'a>(s: &Shared, vmi: &'a Value) -> Option<Role<'a>> {
    let me = s.config.name.as_str();
    let state = vmi.pointer("/status/migrationState")?;
    let on_me = node_name(vmi) == Some(me);
    match (mig::in_flight(vmi), on_me) {
        (Some(state), true) if mig::source_node(state) == Some(me) => Some(Role::Source(state)),
        (Some(state), false) if mig::target_node(state) == Some(me) => Some(Role::Target(state)),
        (None, false) if mig::target_node(state) == Some(me) => Some(Role::FormerTarget),
        _ => None,
    }
}

/// The target's sync: make the guest's files, then say so. `Some(delay)` looks again.
pub(super) async fn sync_target(s: &Arc<Shared>, vmi: &Value, state: &Value) -> ApiResult<Option<Duration>> {
    if mig::is_ready(state) {
        if mig::is_started(state) {
            join_pod_once_running(s, vmi).await?;
        }
        return Ok(None);
    }
    match prepare(s, vmi).await {
        Ok(()) => {}
        Err(super::agent::StartError::Wait(_, _, after)) => return Ok(Some(after)),
        Err(super::agent::StartError::Retry(e)) => return Err(e),
        Err(super::agent::StartError::Fatal(reason, message)) => {
            // The migration fails before it starts; the guest stays where it is.
            tracing::warn!(%reason, %message, "cannot prepare a migration target");
            let now = meta::now_rfc3339();
            let why = format!("the target node cannot prepare the guest: {reason}: {message}");
            let fields = [("failed", json!(true)), ("failureReason", json!(why)), ("endTimestamp", json!(now))];
            return write_state(s, vmi, &fields).await.map(|_| None);
        }
    }
    let now = meta::now_rfc3339();
    write_state(s, vmi, &[("targetNodeDomainReadyTimestamp", json!(now))]).await?;
    Ok(None)
}

/// The guest runs here (libvirt resumed it at the switch-over, or it runs in post-copy): its
/// taps join its pod now, not when the source's handover is read, so its network is back as
/// soon as it is.
async fn join_pod_once_running(s: &Arc<Shared>, vmi: &Value) -> ApiResult<()> {
    let Some(net) = &s.net else { return Ok(()) };
    // Joined already (its DHCP answers), or nothing to join: no libvirt call at each progress write.
    let spec = crate::launcher::spec::VmiSpec::from_vmi(vmi).unwrap_or_default();
    if net.dhcp.running(meta::uid(vmi)) || !crate::network::plan::uses_pod_network(&spec) {
        return Ok(());
    }
    let domain = super::agent::domain_name_of(&s.config.domain_prefix, meta::namespace(vmi), meta::name(vmi));
    let hv = Arc::clone(&s.hv);
    let state = tokio::task::spawn_blocking(move || hv.state(&domain))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if state == Some(crate::hypervisor::DomainState::Running) {
        // Its interfaces are written once the VMI is this node's (the handover).
        let _ = super::network::adopt_running(s, net, vmi).await;
    }
    Ok(())
}

/// The target's part of a start: the guest's files, then its pod (a pod address of this node's,
/// the taps its incoming QEMU opens under this node's names). The taps join the pod once the
/// guest runs here (`network::adopt_running`).
async fn prepare(s: &Arc<Shared>, vmi: &Value) -> Result<(), super::agent::StartError> {
    use super::agent::StartError;
    super::agent::prepare_files(s, vmi).await?;
    let Some(net) = &s.net else { return Ok(()) };
    match super::network::prepare_pod(s, net, vmi).await {
        Ok(_) => Ok(()),
        Err(super::network::PodError::Retry(m)) => Err(StartError::Retry(ApiError::unavailable(m))),
        Err(super::network::PodError::Invalid(m)) => Err(StartError::Fatal("FailedNetworkSetup".into(), m)),
    }
}

/// A migration to this node ended without it: the incoming domain (if libvirt left one) and
/// the files go. Nothing to look at once the files are gone: the target made them before any
/// domain could come (so a resync costs no libvirt call for the migrations that ended long ago).
pub(super) async fn clean_former_target(s: &Arc<Shared>, vmi: &Value, domain: &str) -> ApiResult<()> {
    let dir = super::agent::vmi_dir(s, meta::uid(vmi));
    if !dir.exists() {
        return Ok(());
    }
    let (hv, n) = (Arc::clone(&s.hv), domain.to_string());
    let exists = tokio::task::spawn_blocking(move || hv.state(&n))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .is_some();
    // The pod address this node leased for the guest is the guest's alone here: it goes too.
    let owner = Some((meta::namespace(vmi), meta::name(vmi)));
    if exists {
        super::agent::tear_down(s, domain, meta::uid(vmi), owner).await?;
    } else {
        super::agent::release_vmi(s, meta::uid(vmi), owner).await;
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// The source's sync while its VMI migrates: starts the migration once the target is ready.
/// `true` when the migration owns the VMI now (the agent's usual sync leaves it alone).
pub(super) fn sync_source(s: &Arc<Shared>, vmi: &Value, state: &Value) -> bool {
    let uid = meta::uid(vmi);
    if s.outgoing.is_sending(uid) {
        return true;
    }
    if !mig::is_ready(state) || mig::is_started(state) || mig::abort_requested(state) {
        // Started by this node's agent before it restarted: libvirt's job went on without it.
        if mig::is_started(state) && s.outgoing.claim(uid) {
            let (s, vmi, state) = (Arc::clone(s), vmi.clone(), state.clone());
            tokio::spawn(async move {
                let outcome = follow_after_restart(&s, &vmi, &state).await;
                if let Err(e) = end(&s, &vmi, outcome).await {
                    tracing::warn!(error = %e.message, "could not record the end of a migration");
                }
                s.outgoing.release(meta::uid(&vmi));
                s.queue.add((meta::namespace(&vmi).to_string(), meta::name(&vmi).to_string()));
            });
            return true;
        }
        return false;
    }
    if !s.outgoing.claim(uid) {
        return true;
    }
    let (s, vmi, state) = (Arc::clone(s), vmi.clone(), state.clone());
    tokio::spawn(async move {
        let outcome = send(&s, &vmi, &state).await;
        if let Err(e) = end(&s, &vmi, outcome).await {
            tracing::warn!(error = %e.message, "could not record the end of a migration");
        }
        s.outgoing.release(meta::uid(&vmi));
        s.queue.add((meta::namespace(&vmi).to_string(), meta::name(&vmi).to_string()));
    });
    true
}

/// Runs the migration; `Ok` once the guest runs on the target.
async fn send(s: &Arc<Shared>, vmi: &Value, state: &Value) -> Result<String, String> {
    let target_name = mig::target_node(state).ok_or("the migration names no target")?.to_string();
    let node = s.cluster.get(&kinds::NODE, "", &target_name).await.map_err(|e| e.message)?;
    let node = node.ok_or_else(|| format!("the target node {target_name} is gone"))?;
    let target = Endpoint::of_node(&node).map_err(|e| e.to_string())?;
    let mine = endpoint(&s.config).ok_or("this node takes no part in migrations")?;
    let (ns, name) = (meta::namespace(vmi), meta::name(vmi));
    let domain = super::agent::domain_name_of(&s.config.domain_prefix, ns, name);
    let target_domain = super::agent::domain_name_of(&target.domain_prefix, ns, name);
    let (hv, d) = (Arc::clone(&s.hv), domain.clone());
    let source_xml = tokio::task::spawn_blocking(move || hv.migratable_xml(&d))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let from = xml::Placement {
        state_dir: &mine.state_dir,
        node_uid: &s.node_uid,
        network_namespace: mine.network_namespace.as_deref(),
    };
    let to = xml::Placement {
        state_dir: &target.state_dir,
        node_uid: meta::uid(&node),
        network_namespace: target.network_namespace.as_deref(),
    };
    let domain_xml = xml::for_target(&source_xml, &domain, meta::uid(vmi), &from, &to).map_err(|e| e.to_string())?;
    let kinds = volume_kinds(s, vmi).await.map_err(|e| e.message)?;
    let options = mig::policy::options(state.get("migrationConfiguration"));
    let plan = MigrationTarget {
        libvirt_uri: target.libvirt_uri.clone(),
        address: target.address,
        domain_name: target_domain,
        domain_xml,
        copy_disks: xml::node_made_disks(&source_xml, &mine.state_dir),
        shared_disks: kinds.iter().any(|k| matches!(k, VolumeKind::Claim { shared: true, .. })),
        bandwidth_mib: options.bandwidth_mib,
        auto_converge: options.auto_converge,
        post_copy: options.post_copy,
        tls: target.stream_over_tls(),
    };
    let memory = crate::launcher::spec::VmiSpec::from_vmi(vmi).ok().and_then(|s| s.guest_memory_bytes()).unwrap_or(0);
    let mut watch = Watch::new(options, mig::policy::completion_limit(&options, memory));
    let now = meta::now_rfc3339();
    // Only while nothing ended it meanwhile: the controller ends a migration that was deleted
    // before it started, and a start written over that end would run it anyway.
    let started = write_state_with(s, vmi, &[("startTimestamp", json!(now))], |v| {
        mig::in_flight(v).is_some_and(|st| !mig::abort_requested(st))
    })
    .await
    .map_err(|e| e.message)?;
    if !started {
        return Err("Live migration aborted before it started".into());
    }
    let (hv, d) = (Arc::clone(&s.hv), domain.clone());
    let mut migrating = tokio::task::spawn_blocking(move || hv.migrate(&d, &plan));
    let mut tick = tokio::time::interval(POLL);
    let mut aborted = false;
    let mut reported = std::time::Instant::now();
    let result = loop {
        tokio::select! {
            done = &mut migrating => break done.map_err(|e| e.to_string())?,
            _ = tick.tick() => {
                let (hv, d) = (Arc::clone(&s.hv), domain.clone());
                let progress = tokio::time::timeout(POLL, tokio::task::spawn_blocking(move || hv.migration_progress(&d))).await;
                if let Ok(Ok(Ok(Some(p)))) = progress {
                    watch.saw(p.data_remaining);
                    report_progress(s, vmi, &p, &mut reported).await;
                }
                let step = if aborted {
                    Step::Wait
                } else if abort_asked(s, vmi).await {
                    Step::Abort("Live migration aborted".into())
                } else {
                    watch.step()
                };
                match step {
                    Step::Wait => {}
                    Step::PostCopy => {
                        let (hv, d) = (Arc::clone(&s.hv), domain.clone());
                        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || hv.start_post_copy(&d)).await {
                            let _ = write_state(s, vmi, &[("mode", json!("PostCopy"))]).await;
                        }
                    }
                    Step::Abort(why) => {
                        aborted = true;
                        watch.reason = Some(why);
                        let (hv, d) = (Arc::clone(&s.hv), domain.clone());
                        let _ = tokio::task::spawn_blocking(move || hv.abort_migration(&d)).await;
                    }
                }
            }
        }
    };
    match (result, watch.reason) {
        (Ok(()), _) => Ok(target_name),
        (Err(_), Some(why)) => Err(why),
        (Err(HypervisorError::Libvirt(m)), None) | (Err(HypervisorError::NoDomain(m)), None) => Err(m),
    }
}

/// A migration this agent started before it restarted, followed to its end as libvirt ends it
/// (and aborted if asked meanwhile). The job is peer to peer with `UNDEFINE_SOURCE`: libvirt
/// undefines the domain here only once the guest runs on the target, so a domain gone is a
/// guest moved; a domain still here, with no job left, is a migration that failed.
async fn follow_after_restart(s: &Arc<Shared>, vmi: &Value, state: &Value) -> Result<String, String> {
    let target = mig::target_node(state).ok_or("the migration names no target")?.to_string();
    let domain = super::agent::domain_name_of(&s.config.domain_prefix, meta::namespace(vmi), meta::name(vmi));
    let (mut aborted, mut reported) = (false, std::time::Instant::now());
    loop {
        let (hv, d) = (Arc::clone(&s.hv), domain.clone());
        let progress =
            tokio::task::spawn_blocking(move || hv.migration_progress(&d)).await.map_err(|e| e.to_string())?;
        match progress {
            Ok(Some(p)) => {
                report_progress(s, vmi, &p, &mut reported).await;
                if !aborted && abort_asked(s, vmi).await {
                    aborted = true;
                    let (hv, d) = (Arc::clone(&s.hv), domain.clone());
                    let _ = tokio::task::spawn_blocking(move || hv.abort_migration(&d)).await;
                }
                tokio::time::sleep(POLL).await;
            }
            Ok(None) => break,
            Err(HypervisorError::NoDomain(_)) => return Ok(target),
            Err(e) => return Err(format!("the source node's agent restarted and cannot follow the migration: {e}")),
        }
    }
    let (hv, d) = (Arc::clone(&s.hv), domain.clone());
    match tokio::task::spawn_blocking(move || hv.state(&d)).await.map_err(|e| e.to_string())? {
        Ok(None) => Ok(target),
        Ok(Some(_)) if aborted => Err("Live migration aborted".into()),
        Ok(Some(_)) => Err("the migration ended while the source node's agent restarted, and the guest stayed".into()),
        Err(e) => Err(format!("the source node's agent restarted and cannot follow the migration: {e}")),
    }
}

/// Writes a running migration's progress (`migrationState.progress`, see `schema`), at most
/// every `PROGRESS_EVERY` since `reported`.
async fn report_progress(
    s: &Shared,
    vmi: &Value,
    p: &crate::hypervisor::MigrationProgress,
    reported: &mut std::time::Instant,
) {
    if reported.elapsed() < PROGRESS_EVERY {
        return;
    }
    *reported = std::time::Instant::now();
    let progress = json!({
        "dataTotalBytes": p.data_total,
        "dataProcessedBytes": p.data_processed,
        "dataRemainingBytes": p.data_remaining,
        "memoryTransferRateBytesPerSecond": p.memory_bps,
        "timestamp": meta::now_rfc3339(),
    });
    let _ = write_state_with(s, vmi, &[("progress", progress)], |v| mig::in_flight(v).is_some()).await;
}

/// What the source does next about a running migration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Wait,
    PostCopy,
    Abort(String),
}

/// The source's watch over a running migration: KubeVirt's completion timeout (per GiB moved;
/// post-copy then, where the policy allows it, else an abort) and progress timeout.
struct Watch {
    options: mig::policy::Options,
    limit: Duration,
    started: std::time::Instant,
    /// The least data remaining seen, and when it last went down.
    least: Option<(u64, std::time::Instant)>,
    post_copy_started: bool,
    /// Why the source aborted, when it did.
    reason: Option<String>,
}

impl Watch {
    fn new(options: mig::policy::Options, limit: Duration) -> Watch {
        let now = std::time::Instant::now();
        Watch { options, limit, started: now, least: None, post_copy_started: false, reason: None }
    }

    fn saw(&mut self, remaining: u64) {
        let now = std::time::Instant::now();
        if self.least.is_none_or(|(least, _)| remaining < least) {
            self.least = Some((remaining, now));
        }
    }

    fn step(&mut self) -> Step {
        if self.post_copy_started {
            // Post-copy cannot go back: the guest already runs on the target.
            return Step::Wait;
        }
        if self.started.elapsed() > self.limit {
            if self.options.post_copy {
                self.post_copy_started = true;
                return Step::PostCopy;
            }
            return Step::Abort(format!(
                "Live migration is not completed after {} seconds and has been aborted",
                self.limit.as_secs()
            ));
        }
        let stalled = self.least.is_some_and(|(_, since)| since.elapsed().as_secs() > self.options.progress_timeout);
        if stalled {
            return Step::Abort(format!(
                "Live migration stuck for {} seconds and has been aborted",
                self.options.progress_timeout
            ));
        }
        Step::Wait
    }
}

async fn abort_asked(s: &Shared, vmi: &Value) -> bool {
    let fresh = s.cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, meta::namespace(vmi), meta::name(vmi)).await;
    fresh.ok().flatten().as_ref().and_then(|v| mig::state_for(v, state_uid(vmi))).is_some_and(mig::abort_requested)
}

fn state_uid(vmi: &Value) -> &str {
    vmi.pointer("/status/migrationState/migrationUid").and_then(Value::as_str).unwrap_or_default()
}

/// Records how the migration ended: on success the VMI is the target's now, and what this node
/// held for the guest goes; on failure the guest runs here still.
async fn end(s: &Arc<Shared>, vmi: &Value, outcome: Result<String, String>) -> ApiResult<()> {
    let now = meta::now_rfc3339();
    let uid = meta::uid(vmi).to_string();
    match outcome {
        Ok(target) => {
            let fields = [("completed", json!(true)), ("endTimestamp", json!(now))];
            write_handover(s, vmi, &fields, &target).await?;
            let domain = super::agent::domain_name_of(&s.config.domain_prefix, meta::namespace(vmi), meta::name(vmi));
            super::agent::forget_local(s, &domain, &uid, (meta::namespace(vmi), meta::name(vmi))).await;
            tracing::info!(vmi = %meta::name(vmi), %target, "migrated");
        }
        Err(message) => {
            let abort = abort_asked(s, vmi).await;
            let mut fields =
                vec![("failed", json!(true)), ("failureReason", json!(message)), ("endTimestamp", json!(now))];
            if abort {
                fields.push(("abortStatus", json!("Succeeded")));
            }
            write_state(s, vmi, &fields).await?;
            tracing::warn!(vmi = %meta::name(vmi), %message, "migration failed; the guest stays");
        }
    }
    Ok(())
}

async fn write_state(s: &Shared, vmi: &Value, fields: &[(&str, Value)]) -> ApiResult<()> {
    write_state_with(s, vmi, fields, |_| true).await.map(|_| ())
}

/// The end of a migration that moved the guest: completed, and the VMI the target's, in one write.
async fn write_handover(s: &Shared, vmi: &Value, fields: &[(&str, Value)], target: &str) -> ApiResult<()> {
    update_vmi(s, vmi, |next| {
        mig::update_state(next, fields);
        st::status_mut(next).insert("nodeName".into(), json!(target));
        true
    })
    .await
    .map(|_| ())
}

/// Writes fields of the VMI's migrationState (of this migration only) on a fresh read when
/// `when` holds for it, again on a conflict; `Ok(false)` when it did not hold.
async fn write_state_with(
    s: &Shared,
    vmi: &Value,
    fields: &[(&str, Value)],
    when: impl Fn(&Value) -> bool,
) -> ApiResult<bool> {
    update_vmi(s, vmi, |next| {
        if !when(next) {
            return false;
        }
        mig::update_state(next, fields);
        true
    })
    .await
}

/// Read-modify-write of this migration's VMI status; `change` says whether to write.
async fn update_vmi(s: &Shared, vmi: &Value, change: impl Fn(&mut Value) -> bool) -> ApiResult<bool> {
    let migration = state_uid(vmi).to_string();
    for _ in 0..10 {
        let Some(fresh) =
            s.cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, meta::namespace(vmi), meta::name(vmi)).await?
        else {
            return Ok(false);
        };
        if meta::uid(&fresh) != meta::uid(vmi) || mig::state_for(&fresh, &migration).is_none() {
            return Ok(false);
        }
        let mut next = fresh.clone();
        if !change(&mut next) {
            return Ok(false);
        }
        let status = next.get("status").cloned().unwrap_or_default();
        match crate::cluster::write_status(&*s.cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, &fresh, status).await {
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(true),
        }
    }
    Err(ApiError::unavailable("the VMI kept changing while its migration state was written"))
}

/// The VMIs this node is receiving or sending, or received for nothing (for its resync).
pub(super) fn involved(s: &Shared, vmis: &[Value]) -> HashSet<(String, String)> {
    vmis.iter()
        .filter(|v| role(s, v).is_some())
        .map(|v| (meta::namespace(v).to_string(), meta::name(v).to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_time_a_migration_goes_post_copy_where_allowed_else_it_is_aborted() {
        let strict = mig::policy::Options::default();
        let mut w = Watch::new(strict, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(w.step(), Step::Abort(m) if m.contains("not completed after 0 seconds")));
        let lenient = mig::policy::Options { post_copy: true, ..strict };
        let mut w = Watch::new(lenient, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(w.step(), Step::PostCopy);
        assert_eq!(w.step(), Step::Wait, "once in post-copy, no way back and no abort");
        let mut w = Watch::new(strict, Duration::from_secs(3600));
        w.saw(100);
        w.saw(50);
        assert_eq!(w.step(), Step::Wait, "progressing");
        let stuck = mig::policy::Options { progress_timeout: 0, ..strict };
        let mut w = Watch::new(stuck, Duration::from_secs(3600));
        w.saw(100);
        std::thread::sleep(Duration::from_millis(1100));
        w.saw(100);
        assert!(matches!(w.step(), Step::Abort(m) if m.contains("stuck")));
    }
}
