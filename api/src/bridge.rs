//! `/bridge/v1`, the provisioning API for pipelines: thin handlers over
//! `converge_bridge::provision`. The same bearer tokens and roles as the Kubernetes API; every
//! error in the bridge's one shape (`{"error": {code, message, field, step}}`).

use crate::auth::{self, Access, Principal};
use crate::state::AppState;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use converge_bridge::provision::error::ErrorBody;
use converge_bridge::provision::listings::{self, FlavorList, ImageList, NetworkList, StorageClassList};
use converge_bridge::provision::record::{self, ListFilter};
use converge_bridge::provision::view::{self, HostView};
use converge_bridge::provision::{self as prov, BridgeError, ErrorCode, HostState};
use converge_engine::kinds;
use converge_engine::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PREFIX: &str = "/bridge/";

/// Bodies are a host request: user data of up to 64 KiB and a few disks.
const BODY_LIMIT: usize = 512 * 1024;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// The error answers a bridge route may give, each in the bridge's shape.
#[allow(dead_code)] // Only read by the OpenAPI derive.
#[derive(utoipa::IntoResponses)]
pub enum BridgeErrors {
    /// The body or a parameter is not what the route takes.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No valid bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token may not do this here.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such host.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The host exists, is busy, or is not in a state the action applies to.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is larger than the API takes.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// A field's value is refused, or something it names does not exist.
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// The store did not answer; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

pub fn error_response(e: &BridgeError) -> HttpResponse {
    if e.http_status() >= 500 {
        tracing::error!(code = ?e.code, message = %e.message, "bridge request failed");
    }
    HttpResponse::build(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json")
        .body(e.body().to_string())
}

fn json(code: u16, body: &impl Serialize) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .content_type("application/json")
        .body(serde_json::to_string(body).unwrap_or_default())
}

fn respond(r: Result<HttpResponse, BridgeError>) -> HttpResponse {
    r.unwrap_or_else(|e| error_response(&e))
}

fn principal(req: &HttpRequest) -> Result<Principal, BridgeError> {
    req.extensions().get::<Principal>().cloned().ok_or_else(|| ApiError::unauthorized().into())
}

/// Hosts are VMs with volumes: a host request needs the rights a VM request needs.
fn authorize(p: &Principal, namespace: Option<&str>, write: bool, verb: &str) -> Result<(), BridgeError> {
    let access = Access {
        write,
        namespace,
        cluster_scoped: false,
        listable_across_namespaces: true,
        resource: "virtualmachines",
        group: kinds::KUBEVIRT_GROUP,
        verb,
        status: false,
    };
    auth::authorize(p, &access).map_err(BridgeError::from)
}

async fn read_body(mut payload: web::Payload) -> Result<Vec<u8>, BridgeError> {
    use futures::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BridgeError::new(ErrorCode::InvalidRequest, format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(BridgeError::new(ErrorCode::TooLarge, format!("the body is larger than {BODY_LIMIT} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Make a host: its VM, a DataVolume per disk and a cloud-init Secret, in one call.
///
/// The objects are made in order (Secret, disks, VM); if a step fails, what was made is
/// removed and the answer names the step. With an `Idempotency-Key`, the same key and body
/// give the same answer again, and one host.
#[utoipa::path(post, path = "/bridge/v1/hosts", operation_id = "createHost", tag = "bridge", request_body = converge_bridge::provision::HostRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same key and body give the same answer and one host")),
    responses((status = 201, description = "Every object is made; the host is provisioning (follow it with GET)", body = HostView), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn create(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let who = principal(&req)?;
            let body = read_body(payload).await?;
            // Authorized in the namespace the body names (as the request will default it),
            // before the rest of the body is looked at.
            let namespace = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("namespace").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "default".to_string());
            authorize(&who, Some(&namespace), true, "create")?;
            let request = prov::request::decode(&body)?;
            let key = match req.headers().get("idempotency-key") {
                Some(v) => Some(v.to_str().map_err(|_| {
                    BridgeError::field(
                        ErrorCode::InvalidRequest,
                        "Idempotency-Key",
                        "the Idempotency-Key header is not text",
                    )
                })?),
                None => None,
            };
            let location = format!("/bridge/v1/hosts/{}/{}", request.namespace, request.name);
            let answer = prov::create_host(&state.bridge, request, key, &who.subject).await?;
            let mut resp = HttpResponse::build(StatusCode::from_u16(answer.code).unwrap_or(StatusCode::OK));
            resp.content_type("application/json");
            if answer.code == 201 {
                resp.insert_header(("Location", location));
            }
            if answer.replayed {
                resp.insert_header(("Idempotent-Replayed", "true"));
            }
            Ok(resp.body(answer.body))
        }
        .await,
    )
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only hosts in this namespace.
    namespace: Option<String>,
    /// Only hosts in these states, comma-separated (`Created,Failed`).
    state: Option<String>,
    /// Only hosts whose name starts with this.
    name_prefix: Option<String>,
    /// Hosts per page (1–500, 50 by default).
    limit: Option<usize>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HostList {
    #[schema(value_type = Vec<HostView>)]
    pub items: Vec<Value>,
    /// Pass as `continue` for the next page; absent on the last.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

fn list_filter(q: ListQuery, who: &Principal) -> Result<ListFilter, BridgeError> {
    let bad = |field: &str, message: String| BridgeError::field(ErrorCode::InvalidRequest, field, message);
    let mut states = vec![];
    for s in q.state.as_deref().unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
        states.push(HostState::parse(s).ok_or_else(|| {
            bad(
                "state",
                format!("{s:?} is not a host state (Creating, RollingBack, Created, Failed, Deleting, Deleted)"),
            )
        })?);
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad("limit", format!("between 1 and {MAX_PAGE}")));
    }
    let after = match q.continue_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad("continue", "not a continue token from this API".into()))?,
    };
    if let Some(prefix) = &q.name_prefix {
        if prefix.len() > 63 || prefix.chars().any(|c| c.is_control()) {
            return Err(bad("namePrefix", "at most 63 printable characters".into()));
        }
    }
    Ok(ListFilter {
        allowed_namespaces: (!who.namespaces.is_empty()).then(|| who.namespaces.clone()),
        namespace: q.namespace,
        states,
        name_prefix: q.name_prefix.filter(|p| !p.is_empty()),
        limit,
        after,
    })
}

/// List hosts (every state, deleted ones too), oldest first, a page at a time.
#[utoipa::path(get, path = "/bridge/v1/hosts", operation_id = "listHosts", tag = "bridge", params(ListQuery),
    responses((status = 200, description = "A page of hosts", body = HostList), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let who = principal(&req)?;
            let q = web::Query::<ListQuery>::from_query(req.query_string())
                .map_err(|e| BridgeError::new(ErrorCode::InvalidRequest, format!("the query: {e}")))?
                .into_inner();
            authorize(&who, q.namespace.as_deref(), false, "list")?;
            let filter = list_filter(q, &who)?;
            let (records, more) = record::list(state.store.pool(), &filter).await?;
            let continue_token = if more { records.last().map(|r| r.seq.to_string()) } else { None };
            let mut items = vec![];
            for rec in &records {
                items.push(view::host_view(&state.bridge, rec).await?);
            }
            Ok(json(200, &HostList { items, continue_token }))
        }
        .await,
    )
}

fn path_of(req: &HttpRequest) -> (String, String) {
    let part = |k: &str| req.match_info().get(k).unwrap_or_default().to_string();
    (part("namespace"), part("name"))
}

/// The host of this name — live, else its newest record — for a caller allowed to see it.
async fn host_record(
    req: &HttpRequest,
    state: &AppState,
    write: bool,
    verb: &str,
) -> Result<record::HostRecord, BridgeError> {
    let who = principal(req)?;
    let (ns, name) = path_of(req);
    authorize(&who, Some(&ns), write, verb)?;
    record::by_name(state.store.pool(), &ns, &name).await?.ok_or_else(|| BridgeError::not_found(&ns, &name))
}

/// A host's progress: its steps, volumes, MACs and addresses, printableStatus and consoles.
#[utoipa::path(get, path = "/bridge/v1/hosts/{namespace}/{name}", operation_id = "getHost", tag = "bridge",
    params(("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "The host (its newest record if it was deleted or failed)", body = HostView), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let rec = host_record(&req, &state, false, "get").await?;
            Ok(json(200, &view::host_view(&state.bridge, &rec).await?))
        }
        .await,
    )
}

/// Delete a host: everything its request made (VM, DataVolumes and their claims, Secret). The
/// record goes Deleting, then Deleted once nothing is left, and stays.
#[utoipa::path(delete, path = "/bridge/v1/hosts/{namespace}/{name}", operation_id = "deleteHost", tag = "bridge",
    params(("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 202, description = "Deleting", body = HostView), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn delete(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let rec = host_record(&req, &state, true, "delete").await?;
            state.bridge.delete(&rec).await?;
            let rec = state.bridge.reload(&rec.id).await?;
            Ok(json(202, &view::host_view(&state.bridge, &rec).await?))
        }
        .await,
    )
}

async fn power(req: HttpRequest, state: web::Data<AppState>, op: crate::subresources::VmOp) -> HttpResponse {
    respond(
        async {
            let rec = host_record(&req, &state, true, "update").await?;
            if rec.state != HostState::Created {
                return Err(BridgeError::new(
                    ErrorCode::Conflict,
                    format!("the host is {}; only a Created host starts, stops and restarts", rec.state.as_str()),
                ));
            }
            crate::subresources::vm_request(
                &*state.store,
                &rec.namespace,
                &rec.name,
                op,
                &Value::Object(Default::default()),
            )
            .await
            .map_err(BridgeError::from)?;
            Ok(json(202, &view::host_view(&state.bridge, &rec).await?))
        }
        .await,
    )
}

/// Start a stopped host.
#[utoipa::path(post, path = "/bridge/v1/hosts/{namespace}/{name}/start", operation_id = "startHost", tag = "bridge",
    params(("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 202, description = "Starting", body = HostView), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn start(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    power(req, state, crate::subresources::VmOp::Start).await
}

/// Stop a running host.
#[utoipa::path(post, path = "/bridge/v1/hosts/{namespace}/{name}/stop", operation_id = "stopHost", tag = "bridge",
    params(("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 202, description = "Stopping", body = HostView), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn stop(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    power(req, state, crate::subresources::VmOp::Stop).await
}

/// Restart a running host (a new VMI, as `virtctl restart`).
#[utoipa::path(post, path = "/bridge/v1/hosts/{namespace}/{name}/restart", operation_id = "restartHost", tag = "bridge",
    params(("namespace" = String, Path), ("name" = String, Path)),
    responses((status = 202, description = "Restarting", body = HostView), BridgeErrors),
    security(("BearerToken" = [])))]
pub async fn restart(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    power(req, state, crate::subresources::VmOp::Restart).await
}

/// Objects of `kind` the caller may read, across the namespaces it may read.
async fn visible(req: &HttpRequest, state: &AppState, kind: &kinds::ResourceKind) -> Result<Vec<Value>, BridgeError> {
    let who = principal(req)?;
    let all = state.store.list_values(kind, None).await?;
    if who.namespaces.is_empty() || !kind.namespaced {
        return Ok(all);
    }
    Ok(all.into_iter().filter(|o| who.namespaces.iter().any(|n| n == converge_engine::meta::namespace(o))).collect())
}

/// Flavors: the cluster's VirtualMachineClusterInstancetypes, for a host's `flavor`.
#[utoipa::path(get, path = "/bridge/v1/flavors", operation_id = "listFlavors", tag = "bridge",
    responses((status = 200, description = "Flavors", body = FlavorList), BridgeErrors), security(("BearerToken" = [])))]
pub async fn flavors(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let items = listings::flavors(&visible(&req, &state, &kinds::CLUSTER_INSTANCETYPE).await?);
            Ok(json(200, &FlavorList { items }))
        }
        .await,
    )
}

/// Images: DataSources (a disk's `source.dataSource`) and the registry images this node holds
/// (`source.registry`).
#[utoipa::path(get, path = "/bridge/v1/images", operation_id = "listImages", tag = "bridge",
    responses((status = 200, description = "Images", body = ImageList), BridgeErrors), security(("BearerToken" = [])))]
pub async fn images(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let sources = visible(&req, &state, &kinds::DATA_SOURCE).await?;
            let registry = state.node.as_ref().map(|n| n.images().list()).unwrap_or_default();
            Ok(json(200, &ImageList { items: listings::images(&sources, &registry) }))
        }
        .await,
    )
}

/// Networks: `pod` and the NetworkAttachmentDefinitions, for a nic's `network`.
#[utoipa::path(get, path = "/bridge/v1/networks", operation_id = "listNetworks", tag = "bridge",
    responses((status = 200, description = "Networks", body = NetworkList), BridgeErrors), security(("BearerToken" = [])))]
pub async fn networks(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let nads = visible(&req, &state, &kinds::NETWORK_ATTACHMENT_DEFINITION).await?;
            Ok(json(200, &NetworkList { items: listings::networks(&nads) }))
        }
        .await,
    )
}

/// Storage classes, for a disk's `storageClass`.
#[utoipa::path(get, path = "/bridge/v1/storageclasses", operation_id = "listStorageClasses", tag = "bridge",
    responses((status = 200, description = "Storage classes", body = StorageClassList), BridgeErrors), security(("BearerToken" = [])))]
pub async fn storage_classes(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    respond(
        async {
            let classes = visible(&req, &state, &kinds::STORAGE_CLASS).await?;
            Ok(json(200, &StorageClassList { items: listings::storage_classes(&classes) }))
        }
        .await,
    )
}

/// Anything else under /bridge/: the bridge's shape, not a Kubernetes Status.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(&BridgeError::new(ErrorCode::NotFound, format!("there is no route {} {}", req.method(), req.path())))
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    error_response(&BridgeError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {}", req.path(), req.method()),
    ))
}

/// The bridge's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str| web::resource(path.to_string()).default_service(web::to(method_not_allowed));
    cfg.service(resource("/bridge/v1/hosts").route(web::post().to(create)).route(web::get().to(list)))
        .service(
            resource("/bridge/v1/hosts/{namespace}/{name}").route(web::get().to(get)).route(web::delete().to(delete)),
        )
        .service(resource("/bridge/v1/hosts/{namespace}/{name}/start").route(web::post().to(start)))
        .service(resource("/bridge/v1/hosts/{namespace}/{name}/stop").route(web::post().to(stop)))
        .service(resource("/bridge/v1/hosts/{namespace}/{name}/restart").route(web::post().to(restart)))
        .service(resource("/bridge/v1/flavors").route(web::get().to(flavors)))
        .service(resource("/bridge/v1/images").route(web::get().to(images)))
        .service(resource("/bridge/v1/networks").route(web::get().to(networks)))
        .service(resource("/bridge/v1/storageclasses").route(web::get().to(storage_classes)))
        .route("/bridge/{tail:.*}", web::to(not_found));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(namespaces: &[&str]) -> Principal {
        Principal {
            token_id: "t".into(),
            subject: "s".into(),
            role: auth::Role::Edit,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            node: None,
        }
    }

    fn query(q: &str) -> ListQuery {
        web::Query::<ListQuery>::from_query(q).expect("query").into_inner()
    }

    #[test]
    fn list_queries_become_filters() {
        let f = list_filter(query("state=Created,Failed&limit=2&continue=7&namePrefix=web"), &who(&["a"])).expect("ok");
        assert_eq!(f.states, vec![HostState::Created, HostState::Failed]);
        assert_eq!((f.limit, f.after, f.name_prefix.as_deref()), (2, 7, Some("web")));
        assert_eq!(f.allowed_namespaces, Some(vec!["a".to_string()]));
        for (q, field) in
            [("state=Sleeping", "state"), ("limit=0", "limit"), ("limit=501", "limit"), ("continue=x", "continue")]
        {
            let e = list_filter(query(q), &who(&[])).expect_err(q);
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidRequest, Some(field)));
        }
        assert!(web::Query::<ListQuery>::from_query("colour=blue").is_err());
    }
}
