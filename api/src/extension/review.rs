//! `admission.k8s.io/v1` AdmissionReviews, parsed and answered without a socket: a request
//! becomes a [`Review`], an admission outcome becomes the response body.

use base64::Engine;
use converge_bridge::foreman;
use converge_engine::error::ApiError;
use converge_engine::kinds::ResourceKind;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

/// Who is asking, as the apiserver authenticated them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One admission request.
#[derive(Debug)]
pub struct Review {
    pub uid: String,
    pub kind: &'static ResourceKind,
    pub operation: Operation,
    pub object: Value,
    pub old_object: Option<Value>,
    pub namespace: String,
    pub dry_run: bool,
    pub user: UserInfo,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReviewError {
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(String),
    #[error("admission.k8s.io/{0} reviews are not served (v1 is)")]
    Version(String),
    #[error("{group}/{version} {resource} is not a kind Converge admits")]
    UnknownResource { group: String, version: String, resource: String },
    #[error("a {0:?} review carries no object")]
    NoObject(Operation),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    uid: String,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: String,
    operation: Operation,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<Value>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default)]
    user_info: UserInfo,
}

#[derive(Deserialize)]
struct GroupVersionResource {
    #[serde(default)]
    group: String,
    version: String,
    resource: String,
}

/// Parse a review. The webhooks are registered with `matchPolicy: Equivalent`, so the object
/// comes in the version the rule names; an old version of the kind is accepted too.
pub fn parse(body: &[u8]) -> Result<Review, ReviewError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if envelope.api_version != "admission.k8s.io/v1" {
        return Err(ReviewError::Version(envelope.api_version.trim_start_matches("admission.k8s.io/").to_string()));
    }
    let request = envelope.request.ok_or_else(|| ReviewError::Malformed("no request".into()))?;
    let gvr = &request.resource;
    let kind = foreman::kind_at(&gvr.group, &gvr.version, &gvr.resource)
        .filter(|_| request.sub_resource.is_empty())
        .ok_or_else(|| ReviewError::UnknownResource {
            group: gvr.group.clone(),
            version: gvr.version.clone(),
            resource: format!("{}{}", gvr.resource, if request.sub_resource.is_empty() { "" } else { "/…" }),
        })?;
    let object = match (request.operation, request.object) {
        (_, Some(o)) if o.is_object() => o,
        (Operation::Delete, _) => request.old_object.clone().unwrap_or(Value::Null),
        (op, _) => return Err(ReviewError::NoObject(op)),
    };
    Ok(Review {
        uid: request.uid,
        kind,
        operation: request.operation,
        object,
        old_object: request.old_object.filter(Value::is_object),
        namespace: request.namespace,
        dry_run: request.dry_run.unwrap_or(false),
        user: request.user_info,
    })
}

/// The uid of a body that did not parse as a review, if it has one, to answer it.
pub fn uid_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/request/uid").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

fn envelope(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Allowed, with the JSON patch turning `before` into `after` (none when they are equal).
pub fn allowed(uid: &str, before: &Value, after: &Value, warnings: &[String]) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    let patch = json_patch::diff(before, after);
    if !patch.0.is_empty() {
        let text = serde_json::to_vec(&patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    envelope(response)
}

/// Denied with the error's Status: the apiserver hands its code, reason and field causes to the
/// client, its message prefixed with the webhook's name.
pub fn denied(uid: &str, error: &ApiError) -> Value {
    envelope(json!({"uid": uid, "allowed": false, "status": error.to_status()}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_engine::error::Cause;
    use converge_engine::kinds;

    fn review(resource: Value, operation: &str, object: Value) -> Vec<u8> {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u1", "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
            "resource": resource, "operation": operation, "namespace": "ns", "object": object,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]}, "dryRun": false,
        }})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn requests_parse_into_kinds_and_operations() {
        let vm = json!({"metadata": {"name": "a"}});
        let r = parse(&review(
            json!({"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"}),
            "CREATE",
            vm.clone(),
        ));
        let r = r.map_err(|e| e.to_string());
        assert!(
            matches!(&r, Ok(r) if std::ptr::eq(r.kind, &kinds::VIRTUAL_MACHINE) && r.operation == Operation::Create && r.user.username == "alice"),
            "{r:?}"
        );
        let old = parse(&review(
            json!({"group": "kubevirt.io", "version": "v1alpha3", "resource": "virtualmachines"}),
            "UPDATE",
            vm.clone(),
        ));
        assert!(old.is_ok_and(|r| std::ptr::eq(r.kind, &kinds::VIRTUAL_MACHINE)));
        let pods = parse(&review(json!({"group": "", "version": "v1", "resource": "pods"}), "CREATE", vm.clone()));
        assert!(matches!(pods, Err(ReviewError::UnknownResource { .. })));
        let empty = parse(&review(
            json!({"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"}),
            "CREATE",
            Value::Null,
        ));
        assert_eq!(empty.err(), Some(ReviewError::NoObject(Operation::Create)));
        assert!(
            matches!(parse(b"{\"apiVersion\": \"admission.k8s.io/v1beta1\"}"), Err(ReviewError::Version(v)) if v == "v1beta1")
        );
        assert!(matches!(parse(b"[1, 2"), Err(ReviewError::Malformed(_))));
        assert_eq!(uid_of(&review(json!({}), "CREATE", vm)), "u1");
    }

    #[test]
    fn answers_carry_a_patch_or_the_status_with_causes() {
        let before = json!({"spec": {"a": 1}});
        let after = json!({"spec": {"a": 1, "b": [2]}});
        let answer = allowed("u1", &before, &after, &[]);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let patch =
            answer["response"]["patch"].as_str().and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok());
        let patch: Value = patch.and_then(|p| serde_json::from_slice(&p).ok()).unwrap_or_default();
        assert_eq!(patch, json!([{"op": "add", "path": "/spec/b", "value": [2]}]));
        assert!(allowed("u1", &before, &before, &[]).pointer("/response/patch").is_none());
        let e = ApiError::invalid(
            "kubevirt.io",
            "VirtualMachine",
            "a",
            vec![Cause::required("spec.template", "Required value")],
        );
        let no = denied("u1", &e);
        assert_eq!(
            (no["response"]["allowed"].clone(), no["response"]["status"]["code"].clone()),
            (json!(false), json!(422))
        );
        assert_eq!(no["response"]["status"]["details"]["causes"][0]["field"], "spec.template");
    }
}
