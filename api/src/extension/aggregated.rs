//! `subresources.kubevirt.io` through kube-apiserver's aggregation layer, as virt-api serves it:
//! discovery, and the VM verbs (start, stop, restart) with virt-api's rules
//! (`subresources::vm_change`). Every request comes through the front proxy (its certificate is
//! checked at the handshake, `front_proxy`); the user it names is authorized by a
//! SubjectAccessReview, so Kubernetes RBAC decides, as for virt-api.
//!
//! The VMI verbs (console, VNC, pause, unpause, softreboot) need the agent of the guest's node,
//! which this server does not reach yet on a Kubernetes cluster: they are not listed, and answer
//! 404.

use super::front_proxy::{self, FrontProxy, ProxiedUser};
use crate::response::{json_response, status_response};
use crate::subresources::{self, SubRequest, GROUP, VERSIONS};
use actix_web::{web, HttpRequest, HttpResponse};
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::error::{ApiError, ApiResult};
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Aggregated {
    pub cluster: Arc<KubeCluster>,
    pub proxy: FrontProxy,
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
    json_response(200, &subresources::resource_list_of(version, false), &[])
}

async fn request(req: HttpRequest, body: web::Bytes, state: web::Data<Aggregated>) -> HttpResponse {
    dispatch(&req, &body, &state).await.unwrap_or_else(|e| status_response(&e))
}

const BODY_LIMIT: usize = 64 * 1024;

async fn dispatch(req: &HttpRequest, body: &[u8], state: &Aggregated) -> ApiResult<HttpResponse> {
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
            authorize(&state.cluster, &user, &namespace, "virtualmachines", verb, &name).await?;
            if body.len() > BODY_LIMIT {
                return Err(ApiError::too_large(BODY_LIMIT));
            }
            let options = match body.iter().all(u8::is_ascii_whitespace) {
                true => json!({}),
                false => serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?,
            };
            subresources::vm_request(&*state.cluster, &namespace, &name, op, &options).await
        }
        SubRequest::Vmi { .. } => Err(ApiError::route_not_found()),
    }
}

/// Asks the apiserver whether `user` may `update` `resource/subresource` (KubeVirt's roles grant
/// the VM verbs as `update` of the subresource).
async fn authorize(
    cluster: &KubeCluster,
    user: &ProxiedUser,
    namespace: &str,
    resource: &str,
    subresource: &str,
    name: &str,
) -> ApiResult<()> {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user.name,
            "groups": user.groups,
            "resourceAttributes": {
                "namespace": namespace, "verb": "update", "group": GROUP,
                "resource": resource, "subresource": subresource, "name": name,
            },
        },
    });
    let answer = cluster.raw_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &review).await?;
    if answer.pointer("/status/allowed").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{resource}.{GROUP} \"{name}\" is forbidden: User \"{}\" cannot update resource \"{resource}/{subresource}\" in API group \"{GROUP}\" in the namespace \"{namespace}\"",
        user.name
    )))
}
