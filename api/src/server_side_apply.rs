//! `PATCH` with `application/apply-patch+yaml`: server-side apply, for every kind. The merge,
//! ownership and conflicts are the engine's (`converge_engine::apply`); here the request is read,
//! the object created when missing, and the result written through admission like any update.

use crate::request::{Query, ResourcePath};
use crate::resources::{self, Writer};
use crate::response::json_response;
use crate::state::AppState;
use actix_web::HttpResponse;
use converge_engine::admission;
use converge_engine::apply::{self, Operation};
use converge_engine::store::UpdateMode;
use converge_engine::{meta, ApiError, ApiResult, Cause};
use serde_json::Value;

/// An apply body: YAML (JSON being YAML too), one object.
fn parse_config(body: &[u8]) -> ApiResult<Value> {
    let config: Value =
        serde_yaml::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !config.is_object() {
        return Err(ApiError::bad_request("an applied configuration must be an object"));
    }
    for field in ["apiVersion", "kind"] {
        if config.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!("Object '{field}' is missing in the applied configuration")));
        }
    }
    Ok(config)
}

fn options_error(message: &str) -> ApiError {
    ApiError::invalid("meta.k8s.io", "PatchOptions", "", vec![Cause::required("fieldManager", message)])
}

pub async fn apply(
    state: &AppState,
    path: &ResourcePath,
    name: &str,
    q: &Query,
    body: &[u8],
    mode: UpdateMode,
    writer: &Writer<'_>,
) -> ApiResult<HttpResponse> {
    let kind = path.kind;
    if q.field_manager.is_none() {
        return Err(options_error("is required for apply patch"));
    }
    let manager = writer.manager(Operation::Apply, path, mode);
    let force = q.force.unwrap_or(false);
    let mut config = parse_config(body)?;
    resources::place(path, &mut config, Some(name))?;
    // Checked and brought to the stored version as any written object is.
    let warnings = resources::check_object(path, &mut config, q.field_validation)?;
    let precondition = meta::meta_str(&config, "resourceVersion").filter(|rv| !rv.is_empty()).map(str::to_string);
    let scope = resources::scope(kind, mode);
    let now = meta::now_rfc3339();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let live = state.store.get(kind, resources::item_namespace(path), name).await?;
        let Some(live) = live else {
            if mode == UpdateMode::Status {
                return Err(ApiError::not_found(kind.group, kind.plural, name));
            }
            let obj = apply::apply(kind.definition, scope, None, &config, &manager, force, &now, &|_| {})
                .map_err(|e| resources::apply_error(kind, name, e))?;
            match resources::create_object(state, path, q, obj, warnings.clone(), None, writer.principal).await {
                // Another writer created it between the read and the create: apply to theirs.
                Err(e) if e.reason == "AlreadyExists" && attempt < resources::PATCH_RETRIES => continue,
                created => return created,
            }
        };
        let live_rv = meta::meta_str(&live, "resourceVersion").unwrap_or("").to_string();
        if precondition.as_ref().is_some_and(|rv| *rv != live_rv) {
            return Err(ApiError::conflict(
                kind.group,
                kind.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        // What admission will put back (a VM's MACs, its machine type) is compared as it will be
        // stored, so leaving it out of a configuration changes nothing and takes nothing.
        let defaults = |obj: &mut Value| admission::default_update(kind, obj, &live);
        let mut merged = apply::apply(kind.definition, scope, Some(&live), &config, &manager, force, &now, &defaults)
            .map_err(|e| resources::apply_error(kind, name, e))?;
        meta::metadata_mut(&mut merged).insert("resourceVersion".into(), Value::String(live_rv));
        match resources::write_update(state, kind, merged, &live, q, mode, None, writer.principal).await {
            Ok(mut updated) => {
                path.present(&mut updated);
                return Ok(json_response(200, &updated, &warnings));
            }
            // Another writer came between the read and the write: apply again to what it left.
            Err(e) if e.code == 409 && precondition.is_none() && attempt < resources::PATCH_RETRIES => continue,
            Err(e) => return Err(e),
        }
    }
}
