//! Kubernetes-compatible REST for every registered kind: one dispatcher, typed by
//! `request::parse_path`, writing through admission and the store.

use crate::auth::{self, Access, Principal};
use crate::request::{self, FieldValidation, Query, ResourcePath, Subresource};
use crate::response::{json_response, status_response, Warnings};
use crate::state::AppState;
use crate::{table, watch};
use actix_web::http::Method;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use converge_engine::admission::{self, Operation};
use converge_engine::apply::{self, Operation as FieldOperation};
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::patch::{self, PatchError, PatchType};
use converge_engine::store::{DeleteOptions, DeleteOutcome, ListOptions, UpdateMode};
use converge_engine::{meta, schema, ApiError, ApiResult, Cause};
use serde_json::{json, Value};

/// Bodies larger than this are refused, as the apiserver refuses them.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub async fn dispatch(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let result = async {
        let body = read_body(payload).await?;
        handle(&req, &body, &state).await
    }
    .await;
    result.unwrap_or_else(|e| status_response(&e))
}

async fn read_body(mut payload: web::Payload) -> ApiResult<Vec<u8>> {
    use futures::StreamExt;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::too_large(MAX_BODY));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn verb(method: &Method, path: &ResourcePath, q: &Query) -> &'static str {
    match (method.as_str(), path.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if q.watch || path.watch_prefix => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

async fn handle(req: &HttpRequest, body: &[u8], state: &AppState) -> ApiResult<HttpResponse> {
    let path = request::parse_path(req.path())?;
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let q = request::parse_query(&pairs)?;
    let principal = req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
    let verb = verb(req.method(), &path, &q);
    if path.kind.create_only {
        return Err(ApiError::method_not_allowed(format!(
            "{} support only create; the request was {verb}",
            path.kind.plural
        )));
    }
    auth::authorize(
        &principal,
        &Access {
            write: req.method() != Method::GET,
            namespace: path.namespace.as_deref(),
            cluster_scoped: !path.kind.namespaced,
            // Foreman's plugin lists these across namespaces with a namespace-scoped token.
            listable_across_namespaces: path.kind.plural == "network-attachment-definitions",
            resource: path.kind.plural,
            group: path.kind.group,
            verb,
            status: path.subresource == Some(Subresource::Status),
        },
    )?;
    if let (&Method::GET, Some(name)) = (req.method(), &path.name) {
        crate::node_auth::may_read_named(&state.store, &principal, path.kind, item_namespace(&path), name).await?;
    }
    if let (&Method::DELETE, Some(name)) = (req.method(), &path.name) {
        crate::node_auth::may_delete(&state.store, &principal, path.kind, name).await?;
    }
    let accept = req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let as_table = request::wants_table(accept);
    if q.force.is_some()
        && !(req.method() == Method::PATCH && PatchType::from_content_type(content_type) == Some(PatchType::Apply))
    {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "PatchOptions",
            "",
            vec![Cause::forbidden("force", "may not be specified for non-apply patch")],
        ));
    }
    let user_agent = req.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("");
    let writer = Writer {
        principal: &principal,
        manager: q.field_manager.clone().unwrap_or_else(|| manager_from_user_agent(user_agent)),
    };
    match (req.method().as_str(), &path.name, path.subresource) {
        ("GET", None, _) if q.watch || path.watch_prefix => watch::serve(state, &path, &q, as_table).await,
        ("GET", None, _) => list(state, &path, &q, as_table).await,
        ("GET", Some(name), Some(Subresource::Scale)) => {
            Ok(json_response(200, &scale_of(&get(state, &path, name).await?), &[]))
        }
        ("GET", Some(name), _) if !as_table => {
            let kind = path.kind;
            let raw = state
                .store
                .get_raw(kind, item_namespace(&path), name)
                .await?
                .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))?;
            // Served as stored: a GET is never parsed and re-serialized.
            Ok(HttpResponse::Ok().content_type("application/json").body(path.present_raw(&raw).into_owned()))
        }
        ("GET", Some(name), _) => {
            let mut obj = get(state, &path, name).await?;
            path.present(&mut obj);
            if as_table {
                Ok(json_response(200, &table::table(path.kind, &[obj], json!({}), q.include_object), &[]))
            } else {
                Ok(json_response(200, &obj, &[]))
            }
        }
        ("POST", None, None) => create(state, &path, &q, body, content_type, &writer).await,
        ("PUT", Some(name), Some(Subresource::Scale)) => {
            scale_update(state, &path, name, &q, ScaleChange::Replace(body), &writer).await
        }
        ("PUT", Some(name), sub) => replace(state, &path, name, &q, body, content_type, mode(sub), &writer).await,
        ("PATCH", Some(name), Some(Subresource::Scale)) => {
            let pt = patch_type(path.kind, content_type)?;
            scale_update(state, &path, name, &q, ScaleChange::Patch(pt, body), &writer).await
        }
        ("PATCH", Some(name), sub) if PatchType::from_content_type(content_type) == Some(PatchType::Apply) => {
            crate::server_side_apply::apply(state, &path, name, &q, body, mode(sub), &writer).await
        }
        ("PATCH", Some(name), sub) => patch(state, &path, name, &q, body, content_type, mode(sub), &writer).await,
        ("DELETE", Some(name), None) => delete(state, &path, name, &q, body).await,
        ("DELETE", None, None) => delete_collection(state, &path, &q).await,
        (method, _, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        ))),
    }
}

/// Who makes a write: the principal it is authorized as and the field manager it is recorded as.
pub(crate) struct Writer<'a> {
    pub principal: &'a Principal,
    pub manager: String,
}

impl Writer<'_> {
    pub fn manager(&self, operation: FieldOperation, path: &ResourcePath, mode: UpdateMode) -> apply::Manager {
        apply::Manager {
            name: self.manager.clone(),
            operation,
            api_version: path.api_version(),
            subresource: (mode == UpdateMode::Status).then(|| "status".to_string()),
        }
    }
}

/// The apiserver's default manager: the client's name from its User-Agent (`kubectl/v1.32 …`).
fn manager_from_user_agent(user_agent: &str) -> String {
    let name = user_agent.split('/').next().unwrap_or("").trim();
    name.chars().filter(|c| !c.is_control()).take(request::MAX_FIELD_MANAGER).collect()
}

pub(crate) fn scope(kind: &ResourceKind, mode: UpdateMode) -> apply::Scope {
    match mode {
        UpdateMode::Status => apply::Scope::Status,
        _ => apply::Scope::Main { status_subresource: kind.status_subresource },
    }
}

pub(crate) fn apply_error(kind: &ResourceKind, name: &str, e: apply::ApplyError) -> ApiError {
    match e {
        apply::ApplyError::Conflicts(conflicts) => {
            let message = apply::ApplyError::Conflicts(conflicts.clone()).to_string();
            let causes = conflicts
                .into_iter()
                .map(|c| Cause {
                    reason: "FieldManagerConflict",
                    message: format!("conflict with {}", c.manager),
                    field: c.path,
                })
                .collect();
            let mut err = ApiError::invalid(kind.group, kind.kind, name, causes);
            err.code = 409;
            err.reason = "Conflict";
            err.message = message;
            err
        }
        apply::ApplyError::ManagedFields(m) => {
            ApiError::invalid(kind.group, kind.kind, name, vec![Cause::invalid("metadata.managedFields", m)])
        }
    }
}

fn mode(sub: Option<Subresource>) -> UpdateMode {
    if sub == Some(Subresource::Status) {
        UpdateMode::Status
    } else {
        UpdateMode::Main
    }
}

pub(crate) fn item_namespace(path: &ResourcePath) -> &str {
    path.namespace.as_deref().unwrap_or("")
}

pub(crate) async fn get(state: &AppState, path: &ResourcePath, name: &str) -> ApiResult<Value> {
    let kind = path.kind;
    state
        .store
        .get(kind, item_namespace(path), name)
        .await?
        .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))
}

async fn list(state: &AppState, path: &ResourcePath, q: &Query, as_table: bool) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    let opts = q.list_options(kind)?;
    let page = state.store.list(kind, path.namespace.as_deref(), &opts).await?;
    let mut list_meta = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = &page.continue_token {
        list_meta["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        list_meta["remainingItemCount"] = json!(r);
    }
    if as_table {
        let objects = page
            .items
            .iter()
            .map(|raw| table::parse_row_source(kind, raw, q.include_object))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok(json_response(200, &table::table(kind, &objects, list_meta, q.include_object), &[]));
    }
    // Items are spliced in as stored: a large list is never parsed and re-serialized.
    let mut body = String::with_capacity(page.items.iter().map(|i| i.len() + 1).sum::<usize>() + 256);
    body.push_str(&format!(
        "{{\"apiVersion\":\"{}\",\"kind\":\"{}\",\"metadata\":{},\"items\":[",
        path.api_version(),
        kind.list_kind(),
        list_meta
    ));
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&path.present_raw(item));
    }
    body.push_str("]}");
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

/// Parse a POST or PUT body (JSON, YAML, or protobuf for Kubernetes' own kinds) as an object.
pub(crate) fn decode(kind: &ResourceKind, body: &[u8], content_type: &str) -> ApiResult<Value> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            kind.kind, kind.version, kind.kind
        ))
    };
    let obj: Value = match ct {
        crate::protobuf::CONTENT_TYPE if crate::protobuf::accepts(kind) => return crate::protobuf::decode(kind, body),
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| cannot(e.to_string()))?,
        "application/yaml" => serde_yaml::from_slice(body).map_err(|e| cannot(e.to_string()))?,
        _ => {
            let mut accepted = vec!["application/json", "application/yaml"];
            if crate::protobuf::accepts(kind) {
                accepted.push(crate::protobuf::CONTENT_TYPE);
            }
            return Err(ApiError::unsupported_body(content_type, &accepted));
        }
    };
    if !obj.is_object() {
        return Err(cannot("the body must be a JSON object".into()));
    }
    Ok(obj)
}

/// apiVersion/kind as the endpoint expects (filled when absent), and the shape by the schema. An
/// object sent to an alias version leaves here in the version it stands for.
pub(crate) fn check_object(path: &ResourcePath, obj: &mut Value, validation: FieldValidation) -> ApiResult<Warnings> {
    let kind = path.kind;
    let expected = path.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != expected => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected})"
            )))
        }
        _ => obj["apiVersion"] = json!(kind.api_version()),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != kind.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )))
        }
        _ => obj["kind"] = json!(kind.kind),
    }
    let report = schema::check(kind.definition, obj, validation != FieldValidation::Strict);
    if !report.type_errors.is_empty() || !report.missing.is_empty() {
        let mut causes: Vec<Cause> = report.type_errors.into_iter().map(|(f, m)| Cause::invalid(f, m)).collect();
        causes.extend(report.missing.into_iter().map(|f| Cause::required(f, "Required value")));
        let mut err = ApiError::invalid(kind.group, kind.kind, meta::name(obj), causes);
        if kind.is_core() {
            err.code = 400;
            err.reason = "BadRequest";
        }
        return Err(err);
    }
    let unknown: Vec<String> = report.unknown_fields.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            kind.kind,
            kind.version,
            kind.kind,
            unknown.join(", ")
        ))),
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(vec![]),
    }
}

pub(crate) fn place(path: &ResourcePath, obj: &mut Value, url_name: Option<&str>) -> ApiResult<()> {
    let kind = path.kind;
    let m = meta::metadata_mut(obj);
    if kind.namespaced {
        let ns = path
            .namespace
            .as_deref()
            .ok_or_else(|| ApiError::method_not_allowed("namespaced resources are created in a namespace"))?;
        match m.get("namespace").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(given) if given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                m.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    if let Some(url_name) = url_name {
        match m.get("name").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(given) if given != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({url_name})"
                )))
            }
            _ => {
                m.insert("name".into(), json!(url_name));
            }
        }
    }
    Ok(())
}

async fn presets_for(state: &AppState, kind: &ResourceKind, namespace: &str) -> ApiResult<Vec<Value>> {
    admission::presets_for(&*state.store, kind, namespace).await
}

async fn create(
    state: &AppState,
    path: &ResourcePath,
    q: &Query,
    body: &[u8],
    content_type: &str,
    writer: &Writer<'_>,
) -> ApiResult<HttpResponse> {
    let mut obj = decode(path.kind, body, content_type)?;
    place(path, &mut obj, None)?;
    let warnings = check_object(path, &mut obj, q.field_validation)?;
    let manager = writer.manager(FieldOperation::Update, path, UpdateMode::Main);
    create_object(state, path, q, obj, warnings, Some(&manager), writer.principal).await
}

/// Admission and the store's create, shared by POST and an apply to a missing object. `obj` is
/// placed and checked; with `track`, the create is recorded in its `managedFields`.
pub(crate) async fn create_object(
    state: &AppState,
    path: &ResourcePath,
    q: &Query,
    mut obj: Value,
    mut warnings: Warnings,
    track: Option<&apply::Manager>,
    principal: &Principal,
) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    // Status is what the node and controllers report; a tenant's claim to a phase, an address
    // or a bound volume is dropped, as the apiserver resets status on create. Admins keep
    // theirs (restores and recordings replay whole objects); a namespaced admin is a tenant.
    if kind.status_subresource && !principal.is_cluster_admin() {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    crate::node_auth::admit_write(principal, kind, None, &obj, UpdateMode::Main)?;
    warnings.extend(admission::warnings(kind, &obj));
    let presets = presets_for(state, kind, item_namespace(path)).await?;
    admission::defaults_from_store(&state.store, kind, &mut obj).await?;
    let (instancetype, preference) = admission::lookup_instancetypes(&*state.store, kind, &obj).await?;
    let host = Some(state.store.host_access());
    let ctx = admission::Context { old: None, presets: &presets, instancetype, preference, host };
    admission::admit(kind, Operation::Create, &mut obj, &ctx)?;
    // Recorded as admitted: what the server fills in (defaults, a MAC) is the writer's too.
    if let Some(manager) = track {
        let scope = scope(kind, UpdateMode::Main);
        apply::track_update(kind.definition, scope, None, &mut obj, manager, &meta::now_rfc3339())
            .map_err(|e| apply_error(kind, meta::name(&obj), e))?;
    }
    let mut created = state.store.create(kind, obj, q.dry_run).await?;
    path.present(&mut created);
    Ok(json_response(201, &created, &warnings))
}

/// Admission and the store's update, shared by PUT and PATCH. With `track`, the update is
/// recorded in `managedFields` (an apply has recorded itself).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_update(
    state: &AppState,
    kind: &ResourceKind,
    mut obj: Value,
    old: &Value,
    q: &Query,
    mode: UpdateMode,
    track: Option<&apply::Manager>,
    principal: &Principal,
) -> ApiResult<Value> {
    crate::node_auth::admit_write(principal, kind, Some(old), &obj, mode)?;
    crate::node_auth::admit_related(&state.store, principal, kind, &obj).await?;
    if mode == UpdateMode::Main {
        // The frozen revision lives in the stored status; an update's body may not carry it.
        let mut probe = obj.clone();
        if let Some(status) = old.get("status") {
            probe["status"] = status.clone();
        }
        let (instancetype, preference) = admission::lookup_instancetypes(&*state.store, kind, &probe).await?;
        let host = Some(state.store.host_access());
        let ctx = admission::Context { old: Some(old), presets: &[], instancetype, preference, host };
        admission::admit(kind, Operation::Update, &mut obj, &ctx)?;
    }
    // Recorded as admitted, so a field the server puts back (a MAC left out of a client-side
    // apply) counts as no change.
    if let Some(manager) = track {
        apply::track_update(kind.definition, scope(kind, mode), Some(old), &mut obj, manager, &meta::now_rfc3339())
            .map_err(|e| apply_error(kind, meta::name(old), e))?;
    }
    state.store.update(kind, obj, mode, q.dry_run).await
}

#[allow(clippy::too_many_arguments)]
async fn replace(
    state: &AppState,
    path: &ResourcePath,
    name: &str,
    q: &Query,
    body: &[u8],
    content_type: &str,
    mode: UpdateMode,
    writer: &Writer<'_>,
) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    let mut obj = decode(kind, body, content_type)?;
    place(path, &mut obj, Some(name))?;
    let mut warnings = check_object(path, &mut obj, q.field_validation)?;
    warnings.extend(admission::warnings(kind, &obj));
    let old = get(state, path, name).await?;
    let manager = writer.manager(FieldOperation::Update, path, mode);
    let mut updated = write_update(state, kind, obj, &old, q, mode, Some(&manager), writer.principal).await?;
    path.present(&mut updated);
    Ok(json_response(200, &updated, &warnings))
}

fn patch_type(kind: &ResourceKind, content_type: &str) -> ApiResult<PatchType> {
    match PatchType::from_content_type(content_type) {
        Some(PatchType::Strategic) if !kind.is_core() => Err(ApiError::unsupported_media_type(content_type)),
        Some(PatchType::Apply) => Err(ApiError::unsupported_media_type(&format!(
            "{content_type} (the scale subresource takes no apply: apply spec.replicas to the object itself)"
        ))),
        Some(pt) => Ok(pt),
        None => Err(ApiError::unsupported_media_type(content_type)),
    }
}

fn patch_error(kind: &ResourceKind, name: &str, e: PatchError) -> ApiError {
    match e {
        PatchError::Malformed(m) => ApiError::bad_request(m),
        PatchError::Failed(m) => ApiError::invalid(kind.group, kind.kind, name, vec![Cause::invalid("", m)]),
        PatchError::TooLarge(m) => ApiError::too_large_because(m),
    }
}

/// How often a PATCH or an apply that lost a race to another writer is tried again.
pub(crate) const PATCH_RETRIES: usize = 5;

#[allow(clippy::too_many_arguments)]
async fn patch(
    state: &AppState,
    path: &ResourcePath,
    name: &str,
    q: &Query,
    body: &[u8],
    content_type: &str,
    mode: UpdateMode,
    writer: &Writer<'_>,
) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    let pt = patch_type(kind, content_type)?;
    let manager = writer.manager(FieldOperation::Update, path, mode);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = get(state, path, name).await?;
        // A patch applies to the object as the addressed version shows it (a copy only for an alias).
        let shown = match path.alias {
            Some(alias) => {
                let mut shown = current.clone();
                alias.present(&mut shown);
                std::borrow::Cow::Owned(shown)
            }
            None => std::borrow::Cow::Borrowed(&current),
        };
        let mut patched = patch::apply(pt, &shown, body).map_err(|e| patch_error(kind, name, e))?;
        let current_rv = meta::meta_str(&current, "resourceVersion").unwrap_or("").to_string();
        // A patch that names a resourceVersion asks for that exact version; otherwise the
        // version read is the precondition, and a lost race is retried.
        let client_rv = meta::meta_str(&patched, "resourceVersion").is_some_and(|rv| rv != current_rv);
        if meta::meta_str(&patched, "resourceVersion").is_none_or(str::is_empty) {
            meta::metadata_mut(&mut patched).insert("resourceVersion".into(), json!(current_rv));
        }
        if meta::name(&patched) != name || meta::namespace(&patched) != meta::namespace(&current) {
            return Err(ApiError::invalid(
                kind.group,
                kind.kind,
                name,
                vec![Cause::invalid("metadata.name", "field is immutable")],
            ));
        }
        let warnings = check_object(path, &mut patched, q.field_validation)?;
        match write_update(state, kind, patched, &current, q, mode, Some(&manager), writer.principal).await {
            Ok(mut updated) => {
                path.present(&mut updated);
                return Ok(json_response(200, &updated, &warnings));
            }
            Err(e) if e.code == 409 && !client_rv && attempt < PATCH_RETRIES => continue,
            Err(e) => return Err(e),
        }
    }
}

fn delete_options(q: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions { propagation: q.propagation, dry_run: q.dry_run, ..Default::default() };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            opts.propagation = Some(request::parse_propagation(p)?);
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) && opts.propagation.is_none() {
            opts.propagation = Some(converge_engine::store::Propagation::Orphan);
        }
        if let Some(dry) = v.get("dryRun").and_then(Value::as_array) {
            for d in dry {
                if d.as_str() != Some("All") {
                    return Err(ApiError::bad_request(format!(
                        "dryRun: Unsupported value: {d}: supported values: \"All\""
                    )));
                }
                opts.dry_run = true;
            }
        }
        if let Some(pre) = v.get("preconditions") {
            opts.precondition_uid = pre.get("uid").and_then(Value::as_str).map(str::to_string);
            opts.precondition_rv = pre.get("resourceVersion").and_then(Value::as_str).map(str::to_string);
        }
    }
    Ok(opts)
}

fn deleted_response(path: &ResourcePath, mut obj: Value) -> HttpResponse {
    let kind = path.kind;
    // Stores with the apiserver's ReturnDeletedObject answer with the object; the rest (custom
    // resources such as VirtualMachines among them, as fog-kubevirt's recordings show) with a
    // Success Status.
    if !std::ptr::eq(kind, &kinds::NAMESPACE) && !std::ptr::eq(kind, &kinds::STORAGE_CLASS) {
        let mut details = json!({"name": meta::name(&obj), "kind": kind.plural, "uid": meta::uid(&obj)});
        if !kind.group.is_empty() {
            details["group"] = json!(kind.group);
        }
        let status =
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details});
        return json_response(200, &status, &[]);
    }
    path.present(&mut obj);
    json_response(200, &obj, &[])
}

async fn delete(state: &AppState, path: &ResourcePath, name: &str, q: &Query, body: &[u8]) -> ApiResult<HttpResponse> {
    let opts = delete_options(q, body)?;
    match state.store.delete(path.kind, item_namespace(path), name, &opts).await? {
        DeleteOutcome::Deleted(obj) => Ok(deleted_response(path, obj)),
        DeleteOutcome::Pending(mut obj) => {
            path.present(&mut obj);
            Ok(json_response(200, &obj, &[]))
        }
    }
}

async fn delete_collection(state: &AppState, path: &ResourcePath, q: &Query) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    let opts = q.list_options(kind)?;
    let page = state
        .store
        .list(kind, path.namespace.as_deref(), &ListOptions { limit: None, continue_token: None, ..opts })
        .await?;
    let del = DeleteOptions { propagation: q.propagation, dry_run: q.dry_run, ..Default::default() };
    let mut items = vec![];
    for raw in page.items {
        let obj: Value = serde_json::from_str(&raw).map_err(|e| ApiError::internal(e.to_string()))?;
        match state.store.delete(kind, meta::namespace(&obj), meta::name(&obj), &del).await {
            Ok(DeleteOutcome::Deleted(mut o)) | Ok(DeleteOutcome::Pending(mut o)) => {
                path.present(&mut o);
                items.push(o)
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"apiVersion": path.api_version(), "kind": kind.list_kind(), "metadata": {"resourceVersion": state.store.current_rv().await?.to_string()}, "items": items});
    Ok(json_response(200, &list, &[]))
}

/// `autoscaling/v1` Scale for a replica set.
fn scale_of(obj: &Value) -> Value {
    let selector = meta::at(obj, &["spec", "selector"]).map(selector_string).unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta::name(obj), "namespace": meta::namespace(obj), "uid": meta::uid(obj),
            "resourceVersion": meta::meta_str(obj, "resourceVersion"), "creationTimestamp": meta::meta_str(obj, "creationTimestamp"),
        },
        "spec": {"replicas": meta::at(obj, &["spec", "replicas"]).cloned().unwrap_or(json!(1))},
        "status": {"replicas": meta::at(obj, &["status", "replicas"]).cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

fn selector_string(sel: &Value) -> String {
    let mut parts = vec![];
    for (k, v) in sel.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
        parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
    }
    for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> =
            e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("DoesNotExist") => format!("!{key}"),
            _ => key.to_string(),
        });
    }
    parts.join(",")
}

enum ScaleChange<'a> {
    Replace(&'a [u8]),
    Patch(PatchType, &'a [u8]),
}

async fn scale_update(
    state: &AppState,
    path: &ResourcePath,
    name: &str,
    q: &Query,
    change: ScaleChange<'_>,
    writer: &Writer<'_>,
) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    let current = get(state, path, name).await?;
    let scale = match change {
        ScaleChange::Replace(body) => {
            serde_json::from_slice::<Value>(body).map_err(|e| ApiError::bad_request(format!("Scale: {e}")))?
        }
        ScaleChange::Patch(pt, body) => {
            patch::apply(pt, &scale_of(&current), body).map_err(|e| patch_error(kind, name, e))?
        }
    };
    let replicas = meta::at(&scale, &["spec", "replicas"]).and_then(Value::as_i64).ok_or_else(|| {
        ApiError::invalid("autoscaling", "Scale", name, vec![Cause::required("spec.replicas", "Required value")])
    })?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            vec![Cause::invalid(
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let mut updated = current.clone();
    *meta::at_mut(&mut updated, &["spec", "replicas"]) = json!(replicas);
    if let Some(rv) = meta::meta_str(&scale, "resourceVersion").filter(|s| !s.is_empty()) {
        meta::metadata_mut(&mut updated).insert("resourceVersion".into(), json!(rv));
    }
    let mut manager = writer.manager(FieldOperation::Update, path, UpdateMode::Main);
    manager.subresource = Some("scale".into());
    let stored =
        write_update(state, kind, updated, &current, q, UpdateMode::Main, Some(&manager), writer.principal).await?;
    Ok(json_response(200, &scale_of(&stored), &[]))
}
