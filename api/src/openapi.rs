//! Converge's own OpenAPI document (`/openapi.json`): utoipa documents the handlers it annotates,
//! and every resource route is added from the kind registry — the same table the router serves.
//! `openapi/converge.json` is the committed copy; a test fails when they drift.

use crate::openapi_k8s;
use converge_engine::kinds;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Converge",
        description = "Virtual machines as Kubernetes objects: KubeVirt's kubevirt.io/v1 API, served by Converge. \
            Every route but /healthz, /readyz, /livez and /version takes a bearer token.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::server::healthz,
        crate::server::readyz,
        crate::server::version,
        crate::server::api_versions,
        crate::server::api_groups,
        crate::tokens::create,
        crate::tokens::list,
        crate::tokens::revoke,
        crate::nodes::certificate::sign,
        crate::bridge::create,
        crate::bridge::list,
        crate::bridge::get,
        crate::bridge::delete,
        crate::bridge::start,
        crate::bridge::stop,
        crate::bridge::restart,
        crate::bridge::flavors,
        crate::bridge::images,
        crate::bridge::networks,
        crate::bridge::storage_classes
    ),
    components(schemas(crate::tokens::TokenRequest, crate::tokens::TokenRecord, crate::tokens::TokenList, crate::auth::Role,
        crate::nodes::certificate::ServingCertificateRequest, crate::nodes::certificate::ServingCertificate,
        crate::bridge::HostList, converge_bridge::provision::error::ErrorBody, converge_bridge::provision::BridgeError)),
    tags((name = "tokens", description = "Bearer tokens"), (name = "nodes", description = "Node agents joining the cluster"), (name = "discovery", description = "What the server serves"),
        (name = "bridge", description = "Provisioning for pipelines: a whole host (VM, disks, cloud-init) in one idempotent call, \
            its progress, power and deletion; and the flavors, images, networks and storage classes a request names. \
            Errors are {\"error\": {code, message, field, step}} with stable codes."))
)]
pub struct HandlerDoc;

/// The whole document, as served and committed.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(HandlerDoc::openapi()).unwrap_or_default();
    let mut schemas_needed =
        vec![openapi_k8s::STATUS_DEFINITION.to_string(), "k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta".to_string()];
    for k in kinds::ALL {
        for (path, mut item) in openapi_k8s::paths_for_document(k) {
            if let Some(ops) = item.as_object_mut() {
                for op in ops.values_mut() {
                    op["security"] = json!([{"BearerToken": []}]);
                }
            }
            doc["paths"][path] = item;
        }
        schemas_needed.push(k.definition.to_string());
        schemas_needed.push(format!("{}List", k.definition));
    }
    for (path, what) in [
        ("/v1beta1/upload", "Upload a disk image (raw or qcow2, optionally gz/xz) into the claim an upload token names; answers once the image is in place."),
        ("/v1beta1/upload-async", "As /v1beta1/upload, but answers as soon as the body is received; follow the DataVolume's phase."),
    ] {
        doc["paths"][path] = json!({"post": {
            "tags": ["upload"],
            "summary": what,
            "operationId": if path.ends_with("async") { "uploadAsync" } else { "upload" },
            "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "200": {"description": "the image was received (and, for /upload, written)"},
                "400": {"description": "the image was refused; the Status message says why"},
                "401": {"description": "missing, expired or wrong upload token"},
                "503": {"description": "the claim is not waiting for an upload (not bound yet, busy, or done)"},
            },
            "security": [{"UploadToken": []}],
        }});
    }
    let schemas = doc["components"]["schemas"].as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut all: Map<String, Value> = schemas;
    all.extend(openapi_k8s::reachable_schemas(&schemas_needed));
    doc["components"]["schemas"] = Value::Object(all);
    doc["components"]["responses"] = openapi_k8s::error_responses(true);
    // Every operation that takes a bearer token may refuse it; every refusal is a Status.
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|p| p.values_mut()) {
        for op in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            let bearer = op["security"].as_array().is_some_and(|s| s.iter().any(|s| s.get("BearerToken").is_some()));
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            if bearer {
                responses.entry("401").or_insert(json!({"$ref": "#/components/responses/Status401"}));
            }
            for (code, r) in responses.iter_mut() {
                let is_error = code.starts_with('4') || code.starts_with('5');
                if is_error && r.get("$ref").is_none() && r.get("content").is_none() {
                    r["content"] = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", openapi_k8s::STATUS_DEFINITION)}}});
                }
            }
        }
    }
    doc["components"]["securitySchemes"] = json!({"BearerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
               "UploadToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                   "description": "status.token of an UploadTokenRequest (upload.cdi.kubevirt.io/v1beta1)"}});
    doc
}

/// The document as served and committed, built once.
pub fn document_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| serde_json::to_string_pretty(&document()).unwrap_or_default() + "\n")
}

/// A docs page that needs nothing from the network: it fetches `/openapi.json` with the token
/// given in the page and lists every operation with its parameters and schemas.
pub const DOCS_PAGE: &str = include_str!("docs.html");

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_is_current() {
        let committed = include_str!("../../openapi/converge.json");
        let generated = super::document_text();
        if committed != generated {
            if std::env::var("CONVERGE_BLESS").is_ok() {
                let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/converge.json");
                std::fs::write(path, generated).expect("write openapi/converge.json");
            }
            panic!("openapi/converge.json is stale: run `CONVERGE_BLESS=1 cargo test -p converge-api committed_openapi` and commit it");
        }
    }
}
