//! The migration controller (virt-controller's share of a live migration): checks that the VMI
//! may move, picks the target with the scheduler (never the source), writes the VMI's
//! `status.migrationState` that the two node agents act on, follows the agents' progress into
//! the migration's phase, and turns deleting an unfinished migration into an abort.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::scheduler::{self, NodeView, Request};
use super::status::{self as st, node_name};
use super::Key;
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds;
use crate::meta;
use crate::migration::{self as mig, Endpoint, Phase};
use crate::store::UpdateMode;
use crate::worker::Action;

/// KubeVirt's defaults: migrations at once leaving one node, and in the whole cluster.
pub const PARALLEL_OUTBOUND_PER_NODE: usize = 2;
pub const PARALLEL_PER_CLUSTER: usize = 5;

/// How long a target may take to prepare (pull images, make disks) before the migration fails.
pub const TARGET_PREPARE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the controller reads besides the migration and its VMI.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub nodes: Vec<Value>,
    pub used: BTreeMap<String, Request>,
    pub policies: Vec<Value>,
    /// The VMI's Namespace (its labels select policies).
    pub namespace: Option<Value>,
    /// Migrations in flight, by source node.
    pub outbound: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationPlan {
    pub add_finalizer: bool,
    pub remove_finalizer: bool,
    /// The migration's new status.
    pub status: Option<Value>,
    /// The VMI's new status (its migrationState).
    pub vmi_status: Option<Value>,
    /// After a migration: the VMI's `kubevirt.io/nodeName` label names its new node.
    pub relabel_vmi: Option<String>,
    pub event: Option<(&'static str, &'static str, String)>,
    pub requeue_after: Option<Duration>,
}

fn name_of_vmi(vmim: &Value) -> &str {
    vmim.pointer("/spec/vmiName").and_then(Value::as_str).unwrap_or("")
}

fn failed(next: &mut Value, reason: &str, message: &str, now: &str) {
    set_phase(next, Phase::Failed, now);
    st::set_condition(next, "Failed", true, reason, message, now);
}

/// Moves the migration's phase forward as the table allows, recording when.
fn set_phase(vmim: &mut Value, to: Phase, now: &str) -> bool {
    let from = mig::phase_of(vmim);
    let fresh = vmim.pointer("/status/phase").is_none();
    if !fresh && (from == to || !from.may_become(to)) {
        return false;
    }
    let status = st::status_mut(vmim);
    status.insert("phase".into(), json!(to.as_str()));
    let stamps = status.entry("phaseTransitionTimestamps").or_insert_with(|| json!([]));
    if let Some(list) = stamps.as_array_mut() {
        list.push(json!({"phase": to.as_str(), "phaseTransitionTimestamp": now}));
    }
    true
}

fn phase_since(vmim: &Value, phase: Phase) -> Option<chrono::DateTime<chrono::Utc>> {
    vmim.pointer("/status/phaseTransitionTimestamps")?
        .as_array()?
        .iter()
        .rev()
        .find(|t| t.get("phase").and_then(Value::as_str) == Some(phase.as_str()))
        .and_then(|t| t.get("phaseTransitionTimestamp").and_then(Value::as_str))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The node for the guest to move to, or why there is none.
pub fn pick_target(
    vmi: &Value,
    source: &str,
    nodes: &[Value],
    used: &BTreeMap<String, Request>,
) -> Result<(String, Endpoint), String> {
    let (mut skipped_source, mut no_endpoint, mut other_network) = (0, 0, 0);
    let mut candidates = vec![];
    let mut endpoints = BTreeMap::new();
    // The guest's interfaces are taps on a pod network, or QEMU's user network, as its node has
    // it: a target must have the same (a domain carries its interfaces over unchanged).
    let pod_network = |e: &Endpoint| e.network_namespace.is_some();
    let source_pod_network =
        nodes.iter().find(|n| meta::name(n) == source).and_then(|n| Endpoint::of_node(n).ok()).map(|e| pod_network(&e));
    for node in nodes {
        let name = meta::name(node);
        if name == source {
            skipped_source += 1;
            continue;
        }
        match Endpoint::of_node(node) {
            Ok(e) if source_pod_network.is_some_and(|p| p != pod_network(&e)) => other_network += 1,
            Ok(e) => {
                endpoints.insert(name.to_string(), e);
                candidates.push(NodeView::from_node(node));
            }
            Err(_) => no_endpoint += 1,
        }
    }
    let mut extra = vec![];
    if skipped_source > 0 {
        extra.push(format!("{skipped_source} node(s) were the source"));
    }
    if no_endpoint > 0 {
        extra.push(format!("{no_endpoint} node(s) publish no migration endpoint"));
    }
    if other_network > 0 {
        extra.push(format!("{other_network} node(s) had a pod network unlike the source's"));
    }
    let picked = match candidates.is_empty() {
        true => Err(format!("0/{} nodes are available", nodes.len())),
        false => scheduler::schedule(vmi, &candidates, used, &[]).map_err(|m| m.trim_end_matches('.').to_string()),
    };
    match picked {
        Ok(node) => endpoints.remove(&node).map(|e| (node, e)).ok_or_else(|| "the picked node vanished".into()),
        Err(message) if extra.is_empty() => Err(format!("{message}.")),
        Err(message) => Err(format!("{message}; {}.", extra.join(", "))),
    }
}

/// Pure: what to do about one migration, given its VMI and the nodes.
pub fn reconcile(vmim: &Value, vmi: Option<&Value>, facts: &Facts, now: &str) -> MigrationPlan {
    let mut plan = MigrationPlan::default();
    let uid = meta::uid(vmim);
    let phase = mig::phase_of(vmim);
    let state = vmi.and_then(|v| mig::state_for(v, uid));
    let mut next = vmim.clone();

    if meta::is_deleting(vmim) {
        match (vmi, state) {
            (Some(vmi), Some(state)) if mig::in_flight(vmi).is_some() => {
                let mut v = vmi.clone();
                if mig::is_started(state) {
                    // The source agent stops libvirt's job and reports the end.
                    if !mig::abort_requested(state) {
                        mig::update_state(&mut v, &[("abortRequested", json!(true))]);
                    }
                } else {
                    // Never started: nothing to stop; the target agent removes what it made.
                    mig::update_state(
                        &mut v,
                        &[
                            ("abortRequested", json!(true)),
                            ("abortStatus", json!("Succeeded")),
                            ("failed", json!(true)),
                            ("failureReason", json!("Live migration aborted")),
                            ("endTimestamp", json!(now)),
                        ],
                    );
                }
                plan.vmi_status = v.get("status").cloned().filter(|s| Some(s) != vmi.get("status"));
                plan.requeue_after = Some(Duration::from_secs(1));
            }
            _ => plan.remove_finalizer = meta::finalizers(vmim).iter().any(|f| f == mig::FINALIZER),
        }
        return plan;
    }
    if phase.is_final() {
        if let (Some(vmi), Some(state), Phase::Succeeded) = (vmi, state, phase) {
            plan.relabel_vmi = relabel(vmi, state);
        }
        return plan;
    }
    plan.add_finalizer = !meta::finalizers(vmim).iter().any(|f| f == mig::FINALIZER);
    let Some(vmi) = vmi.filter(|v| !meta::is_deleting(v) && !st::is_final(st::phase(v))) else {
        let message = format!("the VirtualMachineInstance {} does not exist or is not running", name_of_vmi(vmim));
        failed(&mut next, "VMINotRunning", &message, now);
        plan.status = next.get("status").cloned();
        plan.event = Some((crate::events::WARNING, "FailedMigration", message));
        return plan;
    };
    match state {
        None => schedule(&mut plan, vmim, vmi, facts, now),
        Some(state) => {
            follow(&mut plan, &mut next, vmi, state, now);
            plan.status = next.get("status").cloned().filter(|s| Some(s) != vmim.get("status"));
        }
    }
    plan
}

/// The node the VMI's label should name after the migration moved it, when it does not yet.
fn relabel(vmi: &Value, state: &Value) -> Option<String> {
    let target = mig::target_node(state)?;
    let label = meta::labels(vmi).get(super::vmi::NODE_NAME_LABEL).and_then(Value::as_str).map(str::to_string);
    (node_name(vmi) == Some(target) && label.as_deref() != Some(target)).then(|| target.to_string())
}

/// Records every phase up to `last` not yet passed, so that the history reads as it happened.
fn pass_through(vmim: &mut Value, last: Phase, now: &str) {
    for p in [Phase::Scheduled, Phase::PreparingTarget, Phase::TargetReady, Phase::Running] {
        if p <= last {
            set_phase(vmim, p, now);
        }
    }
}

/// A scheduled migration: its phase follows the agents' fields of the VMI's migrationState
/// (mirrored into the migration's status); a target that never gets ready ends it.
fn follow(plan: &mut MigrationPlan, next: &mut Value, vmi: &Value, state: &Value, now: &str) {
    let (phase, derived) = (mig::phase_of(next), mig::phase_from_state(state));
    let fresh = next.pointer("/status/phase").is_none();
    match derived {
        Phase::Succeeded => {
            pass_through(next, Phase::Running, now);
            set_phase(next, Phase::Succeeded, now);
            let target = mig::target_node(state).unwrap_or_default();
            let message = format!("The VirtualMachineInstance migrated to node {target}.");
            plan.event = Some((crate::events::NORMAL, "Migrated", message));
            plan.relabel_vmi = relabel(vmi, state);
        }
        Phase::Failed => {
            set_phase(next, Phase::Failed, now);
            let why = state.get("failureReason").and_then(Value::as_str).unwrap_or("unknown");
            let message = format!("VirtualMachineInstance migration uid {} failed: {why}", meta::uid(next));
            st::set_condition(next, "Failed", true, "MigrationFailed", &message, now);
            plan.event = Some((crate::events::WARNING, "FailedMigration", message));
        }
        _ if derived > phase || fresh => pass_through(next, derived, now),
        _ if phase == Phase::PreparingTarget => {
            let since = phase_since(next, Phase::PreparingTarget);
            let now_t = chrono::DateTime::parse_from_rfc3339(now).ok().map(|t| t.with_timezone(&chrono::Utc));
            let waited = since.zip(now_t).and_then(|(s, n)| (n - s).to_std().ok()).unwrap_or_default();
            if waited >= TARGET_PREPARE_TIMEOUT {
                // The target never got ready (its agent is gone): the migration ends, and the
                // target agent, if it returns, removes what it made.
                let mut v = vmi.clone();
                let why = "the target node did not prepare the guest in time";
                mig::update_state(
                    &mut v,
                    &[("failed", json!(true)), ("failureReason", json!(why)), ("endTimestamp", json!(now))],
                );
                plan.vmi_status = v.get("status").cloned();
            } else {
                plan.requeue_after = Some(TARGET_PREPARE_TIMEOUT.saturating_sub(waited).max(Duration::from_secs(1)));
            }
        }
        _ => {}
    }
    st::status_mut(next).insert("migrationState".into(), state.clone());
}

fn schedule(plan: &mut MigrationPlan, vmim: &Value, vmi: &Value, facts: &Facts, now: &str) {
    let mut next = vmim.clone();
    if vmim.pointer("/status/phase").is_none() {
        set_phase(&mut next, Phase::Pending, now);
    }
    let refuse = |next: &mut Value, plan: &mut MigrationPlan, reason: &str, message: String| {
        failed(next, reason, &message, now);
        plan.event = Some((crate::events::WARNING, "FailedMigration", message));
    };
    let source = node_name(vmi).unwrap_or_default();
    let busy = facts.outbound.get(source).copied().unwrap_or(0) >= PARALLEL_OUTBOUND_PER_NODE
        || facts.outbound.values().sum::<usize>() >= PARALLEL_PER_CLUSTER;
    if mig::in_flight(vmi).is_some() || (busy && st::phase(vmi) == st::RUNNING) {
        // One migration of a VMI at a time, and a few per node and cluster: this one waits.
        plan.requeue_after = Some(Duration::from_secs(2));
    } else if st::phase(vmi) != st::RUNNING {
        refuse(&mut next, plan, "VMINotRunning", format!("Cannot migrate VMI in phase {}", st::phase(vmi)));
    } else if let Some(c) = st::condition(vmi, "LiveMigratable").filter(|c| c["status"] != "True") {
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("NotMigratable");
        let message = c.get("message").and_then(Value::as_str).unwrap_or("");
        refuse(&mut next, plan, reason, format!("Cannot migrate VMI, Reason: {reason}, Message: {message}"));
    } else {
        match pick_target(&with_added_selector(vmi, vmim), source, &facts.nodes, &facts.used) {
            Ok((target, endpoint)) => {
                let mut v = vmi.clone();
                let mut state = mig::scheduled_state(vmim, source, &target, endpoint.address);
                let policy = mig::policy::pick(&facts.policies, vmi, facts.namespace.as_ref());
                if let Some(p) = policy {
                    state["migrationPolicyName"] = json!(meta::name(p));
                }
                state["migrationConfiguration"] = mig::policy::configuration(policy);
                st::status_mut(&mut v).insert("migrationState".into(), state);
                plan.vmi_status = v.get("status").cloned();
                set_phase(&mut next, Phase::Scheduling, now);
                set_phase(&mut next, Phase::Scheduled, now);
                set_phase(&mut next, Phase::PreparingTarget, now);
                st::status_mut(&mut next).insert("migrationState".into(), v["status"]["migrationState"].clone());
                plan.requeue_after = Some(TARGET_PREPARE_TIMEOUT);
            }
            Err(message) => refuse(&mut next, plan, "Unschedulable", format!("no node can take the guest: {message}")),
        }
    }
    plan.status = next.get("status").cloned().filter(|s| Some(s) != vmim.get("status"));
}

/// The VMI as the target is chosen for it: the migration's `addedNodeSelector` joins its own
/// node selector (KubeVirt's: it narrows the targets, never widens them).
fn with_added_selector(vmi: &Value, vmim: &Value) -> Value {
    let mut v = vmi.clone();
    if let Some(added) = vmim.pointer("/spec/addedNodeSelector").and_then(Value::as_object) {
        let selector = meta::at_mut(&mut v, &["spec", "nodeSelector"]);
        if !selector.is_object() {
            *selector = json!({});
        }
        if let Some(map) = selector.as_object_mut() {
            for (k, val) in added {
                map.entry(k.clone()).or_insert_with(|| val.clone());
            }
        }
    }
    v
}

/// What each node holds, counting a migrating guest on its target as well.
fn usage(vmis: &[Value]) -> BTreeMap<String, Request> {
    let mut used = super::vmi::node_usage(vmis);
    for v in vmis {
        if let Some(target) = mig::in_flight(v).and_then(mig::target_node) {
            let r = scheduler::request_of(v);
            let e = used.entry(target.to_string()).or_default();
            e.cpu_milli += r.cpu_milli;
            e.memory_bytes += r.memory_bytes;
        }
    }
    used
}

/// Migrations in flight by source node.
fn outbound(vmis: &[Value]) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for source in vmis.iter().filter_map(mig::in_flight).filter_map(mig::source_node) {
        *out.entry(source.to_string()).or_default() += 1;
    }
    out
}

/// One placement at a time, shared with the VMI controller's (see `vmi::placement_lock`).
pub(super) async fn sync(cluster: &dyn Cluster, (ns, name): Key) -> ApiResult<Action> {
    let _placing = super::vmi::placement_lock().lock().await;
    let Some(vmim) = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION, &ns, &name).await? else {
        return Ok(Action::AwaitChange);
    };
    let vmi = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, &ns, name_of_vmi(&vmim)).await?;
    let scheduling = vmi.as_ref().is_some_and(|v| mig::state_for(v, meta::uid(&vmim)).is_none())
        && !mig::phase_of(&vmim).is_final()
        && !meta::is_deleting(&vmim);
    let facts = match scheduling {
        true => {
            let vmis = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await?;
            Facts {
                nodes: cluster.list(&kinds::NODE, None).await?,
                used: usage(&vmis),
                outbound: outbound(&vmis),
                policies: cluster.list(&kinds::MIGRATION_POLICY, None).await?,
                namespace: cluster.get(&kinds::NAMESPACE, "", &ns).await?,
            }
        }
        false => Facts::default(),
    };
    let plan = reconcile(&vmim, vmi.as_ref(), &facts, &meta::now_rfc3339());
    apply(cluster, vmim, vmi, plan).await
}

async fn apply(cluster: &dyn Cluster, mut vmim: Value, vmi: Option<Value>, plan: MigrationPlan) -> ApiResult<Action> {
    let kind = &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION;
    if plan.add_finalizer {
        let mut with = meta::finalizers(&vmim);
        with.push(mig::FINALIZER.into());
        meta::set_finalizers(&mut vmim, &with);
        vmim = cluster.update(kind, vmim, UpdateMode::Main).await?;
    }
    if let (Some(vmi), Some(status)) = (&vmi, plan.vmi_status) {
        crate::cluster::write_status(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, vmi, status).await?;
    }
    if let (Some(vmi), Some(node)) = (&vmi, &plan.relabel_vmi) {
        if let Some(mut fresh) =
            cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, meta::namespace(vmi), meta::name(vmi)).await?
        {
            *meta::at_mut(&mut fresh, &["metadata", "labels", super::vmi::NODE_NAME_LABEL]) =
                Value::String(node.clone());
            cluster.update(&kinds::VIRTUAL_MACHINE_INSTANCE, fresh, UpdateMode::Main).await?;
        }
    }
    if let Some(status) = plan.status {
        crate::cluster::write_status(cluster, kind, &vmim, status).await?;
    }
    if let Some((event_kind, reason, message)) = plan.event {
        crate::events::record(cluster, kind, &vmim, event_kind, reason, &message, super::COMPONENT).await;
    }
    if plan.remove_finalizer {
        if let Some(mut fresh) = cluster.get(kind, meta::namespace(&vmim), meta::name(&vmim)).await? {
            let rest: Vec<String> = meta::finalizers(&fresh).into_iter().filter(|f| f != mig::FINALIZER).collect();
            meta::set_finalizers(&mut fresh, &rest);
            cluster.update(kind, fresh, UpdateMode::Main).await?;
        }
    }
    Ok(plan.requeue_after.into())
}

#[cfg(test)]
#[path = "migration_tests.rs"]
mod tests;
