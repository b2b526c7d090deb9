//! `subresources.kubevirt.io` (v1 and v1alpha3), with virtctl's wire behaviour: PUT start / stop
//! / restart on VMs, PUT pause / unpause / softreboot on VMIs, GET console / vnc websockets
//! (`console.rs`), and the group's discovery, version and healthz. Parsing and the decisions
//! about what a request changes are pure functions, tested without a server.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use converge_engine::cluster::Cluster;
use converge_engine::controllers::status::{self as st, is_final, phase};
use converge_engine::controllers::vm::{
    run_strategy, RUN_ALWAYS, RUN_HALTED, RUN_MANUAL, RUN_ONCE, RUN_RERUN_ON_FAILURE,
};
use converge_engine::kinds;
use converge_engine::meta;
use converge_engine::store::UpdateMode;
use converge_engine::{ApiError, ApiResult};
use serde_json::{json, Value};

use crate::auth::{self, Access, Principal};
use crate::nodes::link::{self, NodeTarget};
use crate::response::{json_response, status_response};
use crate::state::AppState;
use converge_engine::node::NodeAgent;

pub const GROUP: &str = "subresources.kubevirt.io";
pub const VERSIONS: &[&str] = &["v1", "v1alpha3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOp {
    Start,
    Stop,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmiOp {
    Pause,
    Unpause,
    SoftReboot,
    Console,
    Vnc,
}

impl VmiOp {
    /// The last segment of the operation's path.
    pub fn path(self) -> &'static str {
        match self {
            VmiOp::Pause => "pause",
            VmiOp::Unpause => "unpause",
            VmiOp::SoftReboot => "softreboot",
            VmiOp::Console => "console",
            VmiOp::Vnc => "vnc",
        }
    }

    pub fn from_path(segment: &str) -> Option<VmiOp> {
        [VmiOp::Pause, VmiOp::Unpause, VmiOp::SoftReboot, VmiOp::Console, VmiOp::Vnc]
            .into_iter()
            .find(|op| op.path() == segment)
    }

    /// What the operation is asked with: the streams by GET, the rest by PUT.
    pub fn method(self) -> &'static str {
        match self {
            VmiOp::Console | VmiOp::Vnc => "GET",
            _ => "PUT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubRequest {
    Version,
    Healthz,
    Vm {
        namespace: String,
        name: String,
        op: VmOp,
    },
    /// virtctl migrate: a VirtualMachineInstanceMigration of the VM's guest.
    VmMigrate {
        namespace: String,
        name: String,
    },
    Vmi {
        namespace: String,
        name: String,
        op: VmiOp,
    },
}

/// Pure: method and path (after `/apis/subresources.kubevirt.io/{version}/`) → the request.
pub fn parse(method: &str, tail: &str) -> ApiResult<SubRequest> {
    let parts: Vec<&str> = tail.trim_matches('/').split('/').collect();
    let not_found = ApiError::route_not_found;
    let wrong_method = |want: &str| ApiError::method_not_allowed(format!("{tail} takes {want}"));
    match parts.as_slice() {
        ["version"] if method == "GET" => Ok(SubRequest::Version),
        ["healthz"] if method == "GET" => Ok(SubRequest::Healthz),
        ["namespaces", ns, "virtualmachines", name, "migrate"] => match method {
            "PUT" => Ok(SubRequest::VmMigrate { namespace: ns.to_string(), name: name.to_string() }),
            _ => Err(wrong_method("PUT")),
        },
        ["namespaces", ns, "virtualmachines", name, action] => {
            let op = match *action {
                "start" => VmOp::Start,
                "stop" => VmOp::Stop,
                "restart" => VmOp::Restart,
                _ => return Err(not_found()),
            };
            if method != "PUT" {
                return Err(wrong_method("PUT"));
            }
            Ok(SubRequest::Vm { namespace: ns.to_string(), name: name.to_string(), op })
        }
        ["namespaces", ns, "virtualmachineinstances", name, action] => {
            let op = VmiOp::from_path(action).ok_or_else(not_found)?;
            let want = op.method();
            if method != want {
                return Err(wrong_method(want));
            }
            Ok(SubRequest::Vmi { namespace: ns.to_string(), name: name.to_string(), op })
        }
        _ => Err(not_found()),
    }
}

/// What a start / stop / restart does to the VM (and its VMI's grace period).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmChange {
    /// Replace `spec.running` (when the VM uses it) or `spec.runStrategy` with this strategy.
    pub set_strategy: Option<&'static str>,
    pub add_requests: Vec<Value>,
    /// terminationGracePeriodSeconds to put on the running VMI first (stop's gracePeriod).
    pub vmi_grace: Option<i64>,
}

fn conflict(vm: &Value, why: &str) -> ApiError {
    ApiError::conflict("kubevirt.io", "virtualmachines", meta::name(vm), why)
}

fn running_vmi(vmi: Option<&Value>) -> Option<&Value> {
    vmi.filter(|v| !is_final(phase(v)) && !meta::is_deleting(v))
}

/// Pure: virt-api's rules for the three VM verbs, by run strategy.
pub fn vm_change(op: VmOp, vm: &Value, vmi: Option<&Value>, body: &Value) -> ApiResult<VmChange> {
    let strategy = run_strategy(vm);
    let live = running_vmi(vmi);
    let grace = body.get("gracePeriod").or_else(|| body.get("gracePeriodSeconds")).and_then(Value::as_i64);
    let max = converge_engine::admission::MAX_GRACE_PERIOD_SECONDS;
    if grace.is_some_and(|g| !(0..=max).contains(&g)) {
        return Err(ApiError::bad_request(format!("gracePeriod must be between 0 and {max}")));
    }
    // virt-api shortens the grace period of any guest not yet finished, one already stopping
    // included: `virtctl stop --force --grace-period=0` on a guest that ignores ACPI.
    let unfinished = vmi.filter(|v| !is_final(phase(v)));
    let old_grace = unfinished.and_then(|v| v.pointer("/spec/terminationGracePeriodSeconds")).and_then(Value::as_i64);
    let mut change = VmChange { vmi_grace: grace.filter(|_| unfinished.is_some()), ..VmChange::default() };
    let paused = body.get("paused").and_then(Value::as_bool) == Some(true);
    // virtctl start --paused: a Start request carrying startPaused, which the VM controller
    // turns into the new VMI's `startStrategy: Paused`.
    let start_request =
        if paused { json!({"action": "Start", "data": {"startPaused": "true"}}) } else { json!({"action": "Start"}) };
    match op {
        VmOp::Start => match strategy {
            RUN_ALWAYS => return Err(conflict(vm, "Always does not support manual start requests")),
            // A paused start is only a request: the VM controller turns the strategy to Always
            // itself before it acts on it, as virt-controller does. Two writes from here (request,
            // then strategy) let the controller see the request done and the strategy still Halted
            // in between, and delete the paused VMI it had just made.
            RUN_HALTED if paused => change.add_requests.push(start_request),
            RUN_HALTED => change.set_strategy = Some(RUN_ALWAYS),
            RUN_MANUAL | RUN_RERUN_ON_FAILURE | RUN_ONCE => {
                if live.is_some() {
                    return Err(conflict(vm, "VM is already running"));
                }
                change.add_requests.push(start_request);
            }
            other => return Err(ApiError::bad_request(format!("unknown runStrategy {other:?}"))),
        },
        VmOp::Stop => match strategy {
            // Stopping already: only a shorter grace period is something to do.
            RUN_HALTED if live.is_none() => {
                let shorter = match (grace, old_grace) {
                    (Some(new), Some(old)) => new < old,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if unfinished.is_none() || !shorter {
                    return Err(conflict(vm, "VM is not running"));
                }
            }
            RUN_HALTED => {}
            RUN_ALWAYS | RUN_RERUN_ON_FAILURE => change.set_strategy = Some(RUN_HALTED),
            _ => match live {
                Some(v) => change.add_requests.push(json!({"action": "Stop", "uid": meta::uid(v)})),
                None => return Err(conflict(vm, "VM is not running")),
            },
        },
        VmOp::Restart => {
            if strategy == RUN_HALTED {
                return Err(conflict(vm, "RunStategy Halted does not support manual restart requests"));
            }
            match live {
                Some(v) => {
                    change.add_requests.push(json!({"action": "Stop", "uid": meta::uid(v)}));
                    change.add_requests.push(json!({"action": "Start"}));
                }
                None => return Err(conflict(vm, "VM is not running")),
            }
        }
    }
    Ok(change)
}

fn is_dry_run(body: &Value) -> bool {
    body.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|v| v == "All"))
}

pub fn accepted() -> HttpResponse {
    HttpResponse::Accepted().finish()
}

pub fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// `version`, as virt-api answers it.
pub fn version_info() -> Value {
    json!({"gitVersion": format!("v{}", env!("CARGO_PKG_VERSION")), "gitCommit": "", "gitTreeState": "clean",
           "buildDate": "", "goVersion": "", "compiler": "rustc", "platform": "linux/amd64"})
}

/// `healthz`, as virt-api answers it.
pub fn healthz() -> Value {
    json!({"apiserver": "ok", "restclient": "ok"})
}

/// The group's APIResourceList, as virt-api serves it.
pub fn resource_list(version: &str) -> Value {
    resource_list_of(version, true)
}

/// The group's APIResourceList; without `vmi_ops`, the VM verbs alone (what a Kubernetes
/// cluster's aggregated server answers so far: the VMI verbs need the node's agent).
pub fn resource_list_of(version: &str, vmi_ops: bool) -> Value {
    let r = |name: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": "", "verbs": verbs});
    let mut resources = vec![];
    if vmi_ops {
        resources.extend([
            r("virtualmachineinstances/vnc", &["get"]),
            r("virtualmachineinstances/console", &["get"]),
            r("virtualmachineinstances/pause", &["update"]),
            r("virtualmachineinstances/unpause", &["update"]),
            r("virtualmachineinstances/softreboot", &["update"]),
        ]);
    }
    resources.extend([
        r("virtualmachines/start", &["update"]),
        r("virtualmachines/stop", &["update"]),
        r("virtualmachines/restart", &["update"]),
    ]);
    if vmi_ops {
        resources.push(r("virtualmachines/migrate", &["update"]));
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{version}"),
        "resources": resources,
    })
}

pub async fn group_version(req: HttpRequest) -> HttpResponse {
    let version = req.match_info().get("version").unwrap_or("");
    if !VERSIONS.contains(&version) {
        return status_response(&ApiError::route_not_found());
    }
    json_response(200, &resource_list(version), &[])
}

pub async fn handle(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    match dispatch(&req, payload, &state).await {
        Ok(resp) => resp,
        Err(e) => status_response(&e),
    }
}

/// Bodies here are small option objects.
const BODY_LIMIT: usize = 64 * 1024;

pub async fn read_body(mut payload: web::Payload) -> ApiResult<Vec<u8>> {
    use futures::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::too_large(BODY_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn dispatch(req: &HttpRequest, payload: web::Payload, state: &AppState) -> ApiResult<HttpResponse> {
    let version = req.match_info().get("version").unwrap_or("");
    if !VERSIONS.contains(&version) {
        return Err(ApiError::route_not_found());
    }
    let tail = req.match_info().get("tail").unwrap_or("");
    let request = parse(req.method().as_str(), tail)?;
    let principal = req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
    let (namespace, resource, verb) = match &request {
        SubRequest::Version | SubRequest::Healthz => (None, "", "get"),
        SubRequest::VmMigrate { namespace, .. } => (Some(namespace.as_str()), "virtualmachines/migrate", "update"),
        SubRequest::Vm { namespace, .. } => (Some(namespace.as_str()), "virtualmachines", "update"),
        SubRequest::Vmi { namespace, .. } => (Some(namespace.as_str()), "virtualmachineinstances", "update"),
    };
    if !resource.is_empty() {
        // Consoles and power actions change what a guest does: edit, as KubeVirt's roles grant them.
        auth::authorize(
            &principal,
            &Access {
                write: true,
                namespace,
                cluster_scoped: false,
                listable_across_namespaces: false,
                resource,
                group: GROUP,
                verb,
                status: false,
            },
        )?;
    }
    match request {
        SubRequest::Version => Ok(json_response(200, &version_info(), &[])),
        SubRequest::Healthz => Ok(json_response(200, &healthz(), &[])),
        SubRequest::VmMigrate { namespace, name } => {
            let body = read_body(payload).await?;
            migrate_request(&state.store, &namespace, &name, &parse_body(&body)?).await
        }
        SubRequest::Vm { namespace, name, op } => {
            let body = read_body(payload).await?;
            vm_request(&*state.store, &namespace, &name, op, &parse_body(&body)?).await
        }
        SubRequest::Vmi { namespace, name, op } => match op {
            VmiOp::Console | VmiOp::Vnc => crate::console::open(req, payload, state, &namespace, &name, op).await,
            _ => {
                let body = read_body(payload).await?;
                vmi_request(state, &namespace, &name, op, &parse_body(&body)?).await
            }
        },
    }
}

/// `GET /converge/v1/namespaces/{ns}/virtualmachineinstances/{name}/domain`: the live libvirt
/// domain XML of a running VMI (Converge's own; KubeVirt has no such endpoint).
pub async fn domain_xml(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let result: ApiResult<HttpResponse> = async {
        let (vmi, node) = vmi_to_read(&req, &state, "virtualmachineinstances").await?;
        let (ns, name) = (meta::namespace(&vmi).to_string(), meta::name(&vmi).to_string());
        let xml = match node {
            NodeTarget::Local(node) => node.with_domain(&ns, &name, |hv, d| hv.xml(d)).await.map_err(|e| {
                ApiError::not_found("kubevirt.io", "virtualmachineinstances", &format!("{name} (domain: {e})"))
            })?,
            NodeTarget::Remote(remote) => {
                let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/domain?uid={}", meta::uid(&vmi));
                state.node_link.call(&remote, reqwest::Method::GET, &path).await?
            }
        };
        Ok(HttpResponse::Ok().content_type("application/xml").body(xml))
    }
    .await;
    result.unwrap_or_else(|e| status_response(&e))
}

/// The VMI of the request's path, once the caller may read `resource` of it in its namespace,
/// and the node that runs it.
pub async fn vmi_to_read(req: &HttpRequest, state: &AppState, resource: &str) -> ApiResult<(Value, NodeTarget)> {
    let ns = req.match_info().get("namespace").unwrap_or("");
    let name = req.match_info().get("name").unwrap_or("");
    let principal = req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
    let access = Access {
        write: false,
        namespace: Some(ns),
        cluster_scoped: false,
        listable_across_namespaces: false,
        resource,
        group: "kubevirt.io",
        verb: "get",
        status: false,
    };
    auth::authorize(&principal, &access)?;
    let vmi = state
        .store
        .get(&kinds::VIRTUAL_MACHINE_INSTANCE, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachineinstances", name))?;
    let node = link::locate(state, &vmi).await?;
    Ok((vmi, node))
}

/// Pure: the migration virt-api makes for `virtctl migrate` (its `addedNodeSelector` kept).
pub fn migration_for(vm: &Value, body: &Value) -> Value {
    let mut spec = json!({"vmiName": meta::name(vm)});
    if let Some(selector) = body.get("addedNodeSelector").filter(|s| s.is_object()) {
        spec["addedNodeSelector"] = selector.clone();
    }
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"generateName": "kubevirt-migrate-vm-", "namespace": meta::namespace(vm)},
        "spec": spec,
    })
}

/// `PUT …/virtualmachines/{name}/migrate`: the migration of the VM's running guest to create,
/// and whether the request is a dry run. The caller creates it through admission, which refuses
/// a guest that cannot move with KubeVirt's reason.
pub(crate) async fn migration_request(
    cluster: &dyn Cluster,
    ns: &str,
    name: &str,
    body: &Value,
) -> ApiResult<(Value, bool)> {
    let vm = cluster
        .get(&kinds::VIRTUAL_MACHINE, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachines", name))?;
    let vmi = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, ns, name).await?;
    if running_vmi(vmi.as_ref()).is_none() {
        return Err(conflict(&vm, "VM is not running"));
    }
    Ok((migration_for(&vm, body), is_dry_run(body)))
}

async fn migrate_request(
    store: &converge_engine::store::Store,
    ns: &str,
    name: &str,
    body: &Value,
) -> ApiResult<HttpResponse> {
    let kind = &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION;
    // A dry run still asks admission whether the guest could move.
    let (migration, dry_run) = migration_request(store, ns, name, body).await?;
    converge_engine::admission::create_admitted(store, kind, migration, dry_run).await?;
    Ok(accepted())
}

pub(crate) async fn vm_request(
    cluster: &dyn Cluster,
    ns: &str,
    name: &str,
    op: VmOp,
    body: &Value,
) -> ApiResult<HttpResponse> {
    let vm = cluster
        .get(&kinds::VIRTUAL_MACHINE, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachines", name))?;
    let vmi = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, ns, name).await?;
    let change = vm_change(op, &vm, vmi.as_ref(), body)?;
    if is_dry_run(body) {
        return Ok(accepted());
    }
    if let (Some(grace), Some(mut v)) = (change.vmi_grace, vmi) {
        v["spec"]["terminationGracePeriodSeconds"] = json!(grace);
        cluster.update(&kinds::VIRTUAL_MACHINE_INSTANCE, v, UpdateMode::Main).await?;
    }
    if !change.add_requests.is_empty() {
        // Requests go first: the VM controller acts on them before the run strategy, so a
        // paused start is never overtaken by an unpaused one.
        let requests = change.add_requests.clone();
        modify_vm(cluster, ns, name, UpdateMode::Status, move |vm| {
            let status = st::status_mut(vm);
            let list = status.entry("stateChangeRequests").or_insert_with(|| json!([]));
            if let Some(items) = list.as_array_mut() {
                items.extend(requests.iter().cloned());
            }
        })
        .await?;
    }
    if let Some(strategy) = change.set_strategy {
        let uses_running = vm.pointer("/spec/running").is_some_and(|r| !r.is_null());
        modify_vm(cluster, ns, name, UpdateMode::Main, move |vm| {
            if uses_running {
                vm["spec"]["running"] = json!(strategy == RUN_ALWAYS);
            } else {
                vm["spec"]["runStrategy"] = json!(strategy);
            }
        })
        .await?;
    }
    Ok(accepted())
}

/// Read-modify-write of a VM, again on a lost race: the VM controller writes status often.
async fn modify_vm(
    cluster: &dyn Cluster,
    ns: &str,
    name: &str,
    mode: UpdateMode,
    change: impl Fn(&mut Value),
) -> ApiResult<()> {
    let mut attempt = 0;
    loop {
        let mut vm = cluster
            .get(&kinds::VIRTUAL_MACHINE, ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachines", name))?;
        change(&mut vm);
        match cluster.update(&kinds::VIRTUAL_MACHINE, vm, mode).await {
            Err(e) if e.code == 409 && attempt < 10 => attempt += 1,
            other => return other.map(|_| ()),
        }
    }
}

async fn vmi_request(state: &AppState, ns: &str, name: &str, op: VmiOp, body: &Value) -> ApiResult<HttpResponse> {
    let vmi = state
        .store
        .get(&kinds::VIRTUAL_MACHINE_INSTANCE, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachineinstances", name))?;
    if !vmi_op_allowed(&vmi, name, op, body)? {
        return Ok(accepted());
    }
    match link::locate(state, &vmi).await? {
        NodeTarget::Local(node) => domain_op(&node, ns, name, op).await?,
        NodeTarget::Remote(remote) => {
            state.node_link.call(&remote, reqwest::Method::PUT, &node_op_path(&vmi, op)).await?;
        }
    }
    Ok(accepted())
}

/// Where a node agent takes `op` on `vmi`: the uid says which guest of that name is meant.
pub fn node_op_path(vmi: &Value, op: VmiOp) -> String {
    format!(
        "/v1/namespaces/{}/virtualmachineinstances/{}/{}?uid={}",
        meta::namespace(vmi),
        meta::name(vmi),
        op.path(),
        meta::uid(vmi)
    )
}

/// Whether `op` may be taken on `vmi` now (virt-api's conflicts); false for a dry run, which
/// is answered without acting.
pub fn vmi_op_allowed(vmi: &Value, name: &str, op: VmiOp, body: &Value) -> ApiResult<bool> {
    let conflict = |why: &str| ApiError::conflict("kubevirt.io", "virtualmachineinstances", name, why);
    if phase(vmi) != st::RUNNING {
        return Err(conflict("VMI is not running"));
    }
    let paused = st::condition_true(vmi, "Paused");
    match op {
        VmiOp::Pause if paused => return Err(conflict("VMI is already paused")),
        VmiOp::Unpause if !paused => return Err(conflict("VMI is not paused")),
        VmiOp::SoftReboot if paused => return Err(conflict("VMI is paused")),
        _ => {}
    }
    Ok(!is_dry_run(body))
}

/// Pause, unpause or soft-reboot the domain of `ns/name` on this process's node agent.
pub async fn domain_op(node: &NodeAgent, ns: &str, name: &str, op: VmiOp) -> ApiResult<()> {
    let result = match op {
        VmiOp::Pause => node.with_domain(ns, name, |hv, d| hv.pause(d)).await,
        VmiOp::Unpause => node.with_domain(ns, name, |hv, d| hv.unpause(d)).await,
        VmiOp::SoftReboot => node.with_domain(ns, name, |hv, d| hv.soft_reboot(d)).await,
        _ => return Err(ApiError::bad_request(format!("{} is not an operation on the domain", op.path()))),
    };
    result.map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(spec: Value) -> Value {
        json!({"metadata": {"name": "v", "namespace": "d", "uid": "vm1"}, "spec": spec})
    }
    fn vmi(phase: &str) -> Value {
        json!({"metadata": {"name": "v", "uid": "i1"}, "status": {"phase": phase}})
    }

    #[test]
    fn paths_parse_to_requests() {
        assert_eq!(
            parse("PUT", "namespaces/d/virtualmachines/v/start").unwrap(),
            SubRequest::Vm { namespace: "d".into(), name: "v".into(), op: VmOp::Start }
        );
        assert_eq!(
            parse("GET", "namespaces/d/virtualmachineinstances/v/console").unwrap(),
            SubRequest::Vmi { namespace: "d".into(), name: "v".into(), op: VmiOp::Console }
        );
        assert_eq!(parse("GET", "version").unwrap(), SubRequest::Version);
        assert_eq!(parse("GET", "namespaces/d/virtualmachines/v/start").unwrap_err().code, 405);
        assert_eq!(parse("PUT", "namespaces/d/virtualmachines/v/explode").unwrap_err().code, 404);
    }

    #[test]
    fn start_follows_the_run_strategy() {
        let halted = vm(json!({"runStrategy": "Halted"}));
        assert_eq!(vm_change(VmOp::Start, &halted, None, &json!({})).unwrap().set_strategy, Some("Always"));
        let paused = vm_change(VmOp::Start, &halted, None, &json!({"paused": true})).unwrap();
        assert_eq!(paused.add_requests, vec![json!({"action": "Start", "data": {"startPaused": "true"}})]);
        assert_eq!(paused.set_strategy, None, "the VM controller sets it, in order with the request");
        let always = vm(json!({"running": true}));
        assert_eq!(vm_change(VmOp::Start, &always, None, &json!({})).unwrap_err().code, 409);
        let manual = vm(json!({"runStrategy": "Manual"}));
        assert_eq!(
            vm_change(VmOp::Start, &manual, None, &json!({})).unwrap().add_requests,
            vec![json!({"action": "Start"})]
        );
        assert_eq!(vm_change(VmOp::Start, &manual, Some(&vmi("Running")), &json!({})).unwrap_err().code, 409);
        // A finished VMI does not count as running.
        assert!(vm_change(VmOp::Start, &manual, Some(&vmi("Succeeded")), &json!({})).is_ok());
    }

    #[test]
    fn stop_and_restart() {
        let always = vm(json!({"runStrategy": "Always"}));
        let c = vm_change(VmOp::Stop, &always, Some(&vmi("Running")), &json!({"gracePeriod": 0})).unwrap();
        assert_eq!(c.set_strategy, Some("Halted"));
        assert_eq!(c.vmi_grace, Some(0));
        let manual = vm(json!({"runStrategy": "Manual"}));
        let c = vm_change(VmOp::Stop, &manual, Some(&vmi("Running")), &json!({})).unwrap();
        assert_eq!(c.add_requests, vec![json!({"action": "Stop", "uid": "i1"})]);
        assert_eq!(vm_change(VmOp::Stop, &vm(json!({"running": false})), None, &json!({})).unwrap_err().code, 409);
        let c = vm_change(VmOp::Restart, &always, Some(&vmi("Running")), &json!({})).unwrap();
        assert_eq!(c.add_requests.len(), 2);
        assert_eq!(vm_change(VmOp::Restart, &always, None, &json!({})).unwrap_err().code, 409);
        assert_eq!(vm_change(VmOp::Stop, &always, None, &json!({"gracePeriod": -1})).unwrap_err().code, 400);
    }

    #[test]
    fn a_forced_stop_shortens_the_grace_of_a_guest_already_stopping() {
        let halted = vm(json!({"runStrategy": "Halted"}));
        let mut stopping = vmi("Running");
        stopping["metadata"]["deletionTimestamp"] = json!("2026-12-04T00:00:00Z");
        stopping["spec"] = json!({"terminationGracePeriodSeconds": 180});
        let c = vm_change(VmOp::Stop, &halted, Some(&stopping), &json!({"gracePeriod": 0})).unwrap();
        assert_eq!((c.vmi_grace, c.set_strategy), (Some(0), None));
        // Nothing shorter to do: virt-api's conflict.
        assert_eq!(vm_change(VmOp::Stop, &halted, Some(&stopping), &json!({})).unwrap_err().code, 409);
        assert_eq!(
            vm_change(VmOp::Stop, &halted, Some(&stopping), &json!({"gracePeriod": 180})).unwrap_err().code,
            409
        );
        assert_eq!(
            vm_change(VmOp::Stop, &halted, Some(&vmi("Succeeded")), &json!({"gracePeriod": 0})).unwrap_err().code,
            409
        );
    }
}
