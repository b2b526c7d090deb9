//! `kubectl auth can-i` and `kubectl auth whoami`: SelfSubjectAccessReview
//! (`authorization.k8s.io/v1`) answered by the same `auth::authorize` every request meets, and
//! SelfSubjectReview (`authentication.k8s.io/v1`) naming the token's subject and role. Create
//! only; nothing is stored.

use crate::auth::{self, Access, Principal};
use crate::response::{json_response, status_response};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use converge_engine::{ApiError, ApiResult};
use serde_json::{json, Value};

pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// Paths any authenticated caller may read (discovery, documents, health).
const OPEN_PATHS: &[&str] = &["/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi"];

fn principal(req: &HttpRequest) -> ApiResult<Principal> {
    req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)
}

/// A review as kubectl's typed client sends it (protobuf) or as JSON.
fn body_of(req: &HttpRequest, body: &[u8], kind: &str, message: &str) -> ApiResult<Value> {
    let content_type = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().is_some_and(|t| t.trim() == crate::protobuf::CONTENT_TYPE) {
        return crate::protobuf::decode_message(message, body);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("{kind}: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!("{kind}: the body must be an object")));
    }
    Ok(v)
}

/// Whether `p` may do what `attributes` (a review's `resourceAttributes`) describe, and why not.
pub fn review(p: &Principal, attributes: &Value) -> (bool, Option<String>) {
    let text = |k: &str| attributes.get(k).and_then(Value::as_str).unwrap_or("");
    let (group, resource, verb) = (text("group"), text("resource"), text("verb"));
    let served = converge_engine::kinds::ALL.iter().find(|k| k.group == group && k.plural == resource);
    let access = Access {
        write: !matches!(verb, "get" | "list" | "watch"),
        namespace: Some(text("namespace")).filter(|n| !n.is_empty()),
        cluster_scoped: served.is_some_and(|k| !k.namespaced),
        listable_across_namespaces: resource == "network-attachment-definitions",
        resource,
        group,
        verb,
        status: text("subresource") == "status",
    };
    match auth::authorize(p, &access) {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e.message)),
    }
}

pub async fn access_review(req: HttpRequest, body: actix_web::web::Bytes) -> HttpResponse {
    let answer = || -> ApiResult<Value> {
        let p = principal(&req)?;
        let mut review_obj =
            body_of(&req, &body, "SelfSubjectAccessReview", "k8s.io.api.authorization.v1.SelfSubjectAccessReview")?;
        let spec = review_obj.get("spec").cloned().unwrap_or(Value::Null);
        let (allowed, reason) = if let Some(attributes) = spec.get("resourceAttributes") {
            review(&p, attributes)
        } else if let Some(path) = spec.pointer("/nonResourceAttributes/path").and_then(Value::as_str) {
            let verb = spec.pointer("/nonResourceAttributes/verb").and_then(Value::as_str).unwrap_or("");
            let open = verb == "get" && OPEN_PATHS.iter().any(|o| path == *o || path.starts_with(&format!("{o}/")));
            (open, (!open).then(|| format!("only GET of discovery, documents and health is open; not {verb} {path}")))
        } else {
            return Err(ApiError::invalid(
                AUTHORIZATION_GROUP,
                "SelfSubjectAccessReview",
                "",
                vec![converge_engine::Cause::required(
                    "spec.resourceAttributes",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )],
            ));
        };
        review_obj["apiVersion"] = json!(format!("{AUTHORIZATION_GROUP}/v1"));
        review_obj["kind"] = json!("SelfSubjectAccessReview");
        review_obj["status"] = json!({"allowed": allowed});
        if let Some(r) = reason {
            review_obj["status"]["reason"] = json!(r);
        }
        Ok(review_obj)
    };
    match answer() {
        Ok(v) => json_response(201, &v, &[]),
        Err(e) => status_response(&e),
    }
}

pub async fn self_review(req: HttpRequest) -> HttpResponse {
    match principal(&req) {
        Ok(p) => {
            let mut groups = vec![format!("converge:{}", p.role.as_str()), "system:authenticated".to_string()];
            groups.extend(p.namespaces.iter().map(|n| format!("converge:namespace:{n}")));
            let review = json!({"apiVersion": format!("{AUTHENTICATION_GROUP}/v1"), "kind": "SelfSubjectReview",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": p.subject, "uid": p.token_id, "groups": groups}}});
            json_response(201, &review, &[])
        }
        Err(e) => status_response(&e),
    }
}

/// Discovery of the two groups: one create-only resource each.
pub fn resource_list(group: &str) -> Option<Value> {
    let (name, kind) = match group {
        AUTHORIZATION_GROUP => ("selfsubjectaccessreviews", "SelfSubjectAccessReview"),
        AUTHENTICATION_GROUP => ("selfsubjectreviews", "SelfSubjectReview"),
        _ => return None,
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/v1"),
        "resources": [{"name": name, "singularName": "", "namespaced": false, "kind": kind, "verbs": ["create"]}]}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn tenant() -> Principal {
        Principal {
            token_id: "t".into(),
            subject: "alice".into(),
            role: Role::Edit,
            namespaces: vec!["team-a".into()],
            node: None,
        }
    }

    #[test]
    fn reviews_answer_as_requests_are_authorized() {
        let ask = |v: Value| review(&tenant(), &v).0;
        assert!(ask(
            json!({"namespace": "team-a", "verb": "create", "group": "kubevirt.io", "resource": "virtualmachines"})
        ));
        assert!(!ask(
            json!({"namespace": "team-b", "verb": "create", "group": "kubevirt.io", "resource": "virtualmachines"})
        ));
        assert!(!ask(
            json!({"namespace": "team-a", "verb": "update", "group": "kubevirt.io", "resource": "virtualmachines", "subresource": "status"})
        ));
        assert!(!ask(json!({"verb": "create", "group": "", "resource": "namespaces"})));
        let (_, why) = review(&tenant(), &json!({"namespace": "team-b", "verb": "delete", "resource": "configmaps"}));
        assert!(why.is_some_and(|w| !w.is_empty()));
    }
}
