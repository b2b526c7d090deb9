//! `subresources.kubevirt.io` through kube-apiserver's aggregation layer, as virt-api serves it:
//! discovery, the VM verbs (start, stop, restart) with virt-api's rules
//! (`subresources::vm_change`), and the VMI verbs (console, VNC, pause, unpause, softreboot)
//! relayed to the agent of the guest's node over mutual TLS (`nodes::link`), found at its Node's
//! InternalIP and the port it publishes. Every request comes through the front proxy (its
//! certificate is checked at the handshake, `front_proxy`); the user it names is authorized by
//! a SubjectAccessReview, so Kubernetes RBAC decides, as for virt-api.

use super::front_proxy::{self, FrontProxy, ProxiedUser};
use crate::nodes::link::{NodeLink, RemoteNode};
use crate::response::{json_response, status_response};
use crate::subresources::{self, SubRequest, VmiOp, GROUP, VERSIONS};
use actix_web::{web, HttpRequest, HttpResponse};
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::cluster::Cluster;
use converge_engine::error::{ApiError, ApiResult};
use converge_engine::kinds;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Aggregated {
    pub cluster: Arc<KubeCluster>,
    pub proxy: FrontProxy,
    pub node_link: NodeLink,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/apis", web::get().to(group_list))
        .route(&format!("/apis/{GROUP}"), web::get().to(group))
        .route(&format!("/apis/{GROUP}/{{version}}"), web::get().to(version))
        .route(&format!("/apis/{GROUP}/{{version}}/{{tail:.*}}"), web::to(request));
}

fn api_group() -> Value {
    let versions: Vec<Value> =
        VERSIONS.iter().map(|v| json!({"groupVersion": format!("{GROUP}/{v}"), "version": v})).collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": versions, "preferredVersion": versions[0]})
}

async fn group_list() -> HttpResponse {
    json_response(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]}), &[])
}

async fn group() -> HttpResponse {
    json_response(200, &api_group(), &[])
}

async fn version(req: HttpRequest) -> HttpResponse {
    let version = req.match_info().get("version").unwrap_or("");
    if !VERSIONS.contains(&version) {
        return status_response(&ApiError::route_not_found());
    }
    json_response(200, &subresources::resource_list_of(version, true), &[])
}

async fn request(req: HttpRequest, payload: web::Payload, state: web::Data<Aggregated>) -> HttpResponse {
    dispatch(&req, payload, &state).await.unwrap_or_else(|e| status_response(&e))
}

async fn dispatch(req: &HttpRequest, payload: web::Payload, state: &Aggregated) -> ApiResult<HttpResponse> {
    let version = req.match_info().get("version").unwrap_or("");
    if !VERSIONS.contains(&version) {
        return Err(ApiError::route_not_found());
    }
    let user = front_proxy::user_of(req.headers(), &state.proxy).ok_or_else(ApiError::unauthorized)?;
    let tail = req.match_info().get("tail").unwrap_or("");
    match subresources::parse(req.method().as_str(), tail)? {
        SubRequest::Version => Ok(json_response(200, &subresources::version_info(), &[])),
        SubRequest::Healthz => Ok(json_response(200, &subresources::healthz(), &[])),
        SubRequest::Vm { namespace, name, op } => {
            let verb = match op {
                subresources::VmOp::Start => "start",
                subresources::VmOp::Stop => "stop",
                subresources::VmOp::Restart => "restart",
            };
            authorize(&state.cluster, &user, &namespace, "virtualmachines", verb, "update", &name).await?;
            let body = subresources::read_body(payload).await?;
            let options = subresources::parse_body(&body)?;
            subresources::vm_request(&*state.cluster, &namespace, &name, op, &options).await
        }
        SubRequest::VmMigrate { namespace, name } => {
            authorize(&state.cluster, &user, &namespace, "virtualmachines", "migrate", "update", &name).await?;
            let body = subresources::read_body(payload).await?;
            let options = subresources::parse_body(&body)?;
            let (migration, dry_run) =
                subresources::migration_request(&*state.cluster, &namespace, &name, &options).await?;
            if !dry_run {
                state.cluster.create(&kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION, migration).await?;
            }
            Ok(subresources::accepted())
        }
        SubRequest::Vmi { namespace, name, op } => {
            // KubeVirt's roles: connecting is `get`, changing the guest's run is `update`.
            let verb = if matches!(op, VmiOp::Console | VmiOp::Vnc) { "get" } else { "update" };
            authorize(&state.cluster, &user, &namespace, "virtualmachineinstances", op.path(), verb, &name).await?;
            let vmi = state
                .cluster
                .get(&kinds::VIRTUAL_MACHINE_INSTANCE, &namespace, &name)
                .await?
                .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachineinstances", &name))?;
            match op {
                VmiOp::Console | VmiOp::Vnc => {
                    crate::console::connectable(&vmi)?;
                    let remote = node_of(&state.cluster, &vmi).await?;
                    crate::console::relay_to_node(req, payload, &state.node_link, &remote, &vmi, op).await
                }
                _ => {
                    let body = subresources::read_body(payload).await?;
                    if subresources::vmi_op_allowed(&vmi, &name, op, &subresources::parse_body(&body)?)? {
                        let remote = node_of(&state.cluster, &vmi).await?;
                        let path = subresources::node_op_path(&vmi, op);
                        state.node_link.call(&remote, reqwest::Method::PUT, &path).await?;
                    }
                    Ok(subresources::accepted())
                }
            }
        }
    }
}

/// The agent of the kubelet's Node the VMI runs on.
async fn node_of(cluster: &KubeCluster, vmi: &Value) -> ApiResult<RemoteNode> {
    let wanted = converge_engine::controllers::status::node_name(vmi).unwrap_or("");
    if wanted.is_empty() {
        return Err(ApiError::unavailable("the VMI is on no node"));
    }
    let node = cluster
        .get(&kinds::NODE, "", wanted)
        .await?
        .ok_or_else(|| ApiError::unavailable(format!("node {wanted:?} of the VMI is gone")))?;
    RemoteNode::from_kubelets_node(&node).map_err(ApiError::unavailable)
}

/// Asks the apiserver whether `user` may `verb` `resource/subresource`, as KubeVirt's roles grant
/// them.
async fn authorize(
    cluster: &KubeCluster,
    user: &ProxiedUser,
    namespace: &str,
    resource: &str,
    subresource: &str,
    verb: &str,
    name: &str,
) -> ApiResult<()> {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user.name,
            "groups": user.groups,
            "resourceAttributes": {
                "namespace": namespace, "verb": verb, "group": GROUP,
                "resource": resource, "subresource": subresource, "name": name,
            },
        },
    });
    let answer = cluster.raw_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &review).await?;
    if answer.pointer("/status/allowed").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{resource}.{GROUP} \"{name}\" is forbidden: User \"{}\" cannot {verb} resource \"{resource}/{subresource}\" in API group \"{GROUP}\" in the namespace \"{namespace}\"",
        user.name
    )))
}
