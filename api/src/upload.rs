//! CDI's upload path: `POST …/uploadtokenrequests` hands out a short-lived token for one claim,
//! and the upload proxy (`/v1beta1/upload`, `-async`, and the multipart `upload-form`, `-async`) takes the image with it.
//! Tokens are signed with a key derived from, but different from, the API's, so an upload token
//! never works as an API token, nor the other way round.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::auth::{self, Access, Authenticator, Principal, Role};
use crate::response::{json_response, status_response};
use crate::state::AppState;
use converge_engine::error::{ApiError, Cause};
use converge_engine::kinds;
use converge_engine::storage::{UploadError, UploadSession};
use converge_engine::ApiResult;

const TOKEN_TTL_SECONDS: i64 = 300;

/// The upload proxy's paths; they check their own token instead of the API's.
pub const PATHS: &[&str] = &[
    "/v1beta1/upload",
    "/v1beta1/upload-async",
    "/v1beta1/upload-form",
    "/v1beta1/upload-form-async",
    "/v1alpha1/upload",
    "/v1alpha1/upload-async",
];

/// The upload-token signer, from the API's signing secret.
pub fn authenticator(api_secret: &[u8]) -> Authenticator {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"converge upload tokens\0");
    h.update(api_secret);
    Authenticator::new(&h.finalize())
}

/// Pure: the claim a token request names, or the 422 it earns.
pub fn parse_token_request(namespace: &str, body: &[u8]) -> Result<(Value, String), ApiError> {
    let obj: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    let pvc = obj.pointer("/spec/pvcName").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut causes = vec![];
    if pvc.is_empty() {
        causes.push(Cause::required("spec.pvcName", "Required value: the claim to upload into"));
    }
    if let Some(ns) =
        obj.pointer("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty() && *n != namespace)
    {
        causes.push(Cause::invalid(
            "metadata.namespace",
            format!("the namespace of the object ({ns}) does not match the namespace on the request ({namespace})"),
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(kinds::UPLOAD_GROUP, "UploadTokenRequest", &name, causes));
    }
    Ok((obj, pvc))
}

pub async fn token_request(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let namespace = path.into_inner();
    let result = async {
        let principal = req.extensions().get::<Principal>().cloned().ok_or_else(ApiError::unauthorized)?;
        auth::authorize(
            &principal,
            &Access {
                write: true,
                namespace: Some(&namespace),
                cluster_scoped: false,
                listable_across_namespaces: false,
                resource: "uploadtokenrequests",
                group: kinds::UPLOAD_GROUP,
                verb: "create",
                status: false,
            },
        )?;
        let (mut obj, pvc) = parse_token_request(&namespace, &body)?;
        if state.store.get(&kinds::PERSISTENT_VOLUME_CLAIM, &namespace, &pvc).await?.is_none() {
            return Err(ApiError::not_found("", "persistentvolumeclaims", &pvc));
        }
        let claims = Authenticator::claims(
            &format!("{namespace}/{pvc}"),
            Role::Edit,
            vec![namespace.clone()],
            TOKEN_TTL_SECONDS,
        );
        let token = state.upload_auth.sign(&claims)?;
        obj["apiVersion"] = json!("upload.cdi.kubevirt.io/v1beta1");
        obj["kind"] = json!("UploadTokenRequest");
        obj["metadata"]["namespace"] = json!(namespace);
        obj["metadata"]["creationTimestamp"] = json!(converge_engine::meta::now_rfc3339());
        obj["status"] = json!({"token": token});
        Ok::<_, ApiError>(obj)
    }
    .await;
    match result {
        Ok(obj) => json_response(201, &obj, &[]),
        Err(e) => status_response(&e),
    }
}

pub(crate) fn upload_error(e: UploadError) -> ApiError {
    match e {
        UploadError::NotFound(m) => ApiError::not_found_message(m),
        UploadError::NotReady(m) => ApiError::unavailable(m),
        e @ UploadError::Elsewhere { .. } => ApiError::unavailable(e.to_string()),
        UploadError::Store(m) => ApiError::internal(m),
    }
}

/// An upload's bytes as they arrive.
pub(crate) type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>>>>;

pub(crate) fn raw_body(payload: web::Payload) -> BodyStream {
    Box::pin(payload.map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))))
}

/// The `file` field of a multipart form (CDI's `/upload-form`, what its web console posts),
/// streamed: an image is never held whole. The rest of the form is not read.
fn form_file(content_type: &str, mut payload: web::Payload) -> ApiResult<BodyStream> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("an upload form must be multipart/form-data: {e}")))?;
    // multer wants a stream it can send; actix's payload stays on this worker and is relayed.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    actix_web::rt::spawn(async move {
        while let Some(chunk) = payload.next().await {
            if tx.send(chunk.map_err(|e| std::io::Error::other(e.to_string()))).await.is_err() {
                break;
            }
        }
    });
    let form = multer::Multipart::new(tokio_stream::wrappers::ReceiverStream::new(rx), boundary);
    let fail = |why: String| Err(std::io::Error::other(why));
    let file = futures::stream::unfold(
        (form, None::<multer::Field<'static>>, false),
        move |(mut form, mut field, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(f) = field.as_mut() {
                    return match f.chunk().await {
                        Ok(Some(bytes)) => Some((Ok(bytes), (form, field, false))),
                        Ok(None) => None,
                        Err(e) => Some((fail(format!("reading the upload form: {e}")), (form, None, true))),
                    };
                }
                match form.next_field().await {
                    Ok(Some(f)) if f.name() == Some("file") => field = Some(f),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Some((fail("the upload form has no \"file\" field".into()), (form, None, true)))
                    }
                    Err(e) => return Some((fail(format!("reading the upload form: {e}")), (form, None, true))),
                }
            }
        },
    );
    Ok(Box::pin(file))
}

/// The proxy: streams the body into the claim the token names. `/upload` answers when the image
/// is in place; `/upload-async` once the body is received. The `-form` paths take the image as
/// a multipart form's `file` field.
pub async fn upload(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    let is_async = req.path().ends_with("-async");
    let is_form = req.path().contains("/upload-form");
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let result = async {
        let token = auth::bearer_token(header("authorization").as_deref(), None).ok_or_else(ApiError::unauthorized)?;
        let principal = state.upload_auth.verify(&token)?;
        let (namespace, claim) = principal.subject.split_once('/').ok_or_else(ApiError::unauthorized)?;
        let storage =
            state.storage.as_ref().ok_or_else(|| ApiError::unavailable("storage controllers are not running"))?;
        // A form's length is the form's, not the image's.
        let total = header("content-length").and_then(|l| l.parse::<u64>().ok()).filter(|l| *l > 0 && !is_form);
        let body =
            if is_form { form_file(&header("content-type").unwrap_or_default(), payload)? } else { raw_body(payload) };
        match storage.begin_upload(namespace, claim, total).await {
            Ok(session) => feed(session, body, is_async).await,
            // The volume lives on a joined node: its agent takes the body.
            Err(UploadError::Elsewhere { node: Some(node) }) => {
                relay(&state, &node, namespace, claim, total, is_async, body).await
            }
            Err(e) => Err(upload_error(e)),
        }
    }
    .await;
    match result {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => status_response(&e),
    }
}

/// Streams `body` into an upload; with `is_async`, answers once the body is in, else once the
/// image is in place.
pub async fn feed(session: UploadSession, mut body: BodyStream, is_async: bool) -> ApiResult<()> {
    while let Some(chunk) = body.next().await {
        if session.chunks.send(chunk).await.is_err() {
            break; // The import has already ended (with an error): it is reported below.
        }
    }
    drop(session.chunks);
    if is_async {
        return Ok(());
    }
    match session.done.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(ApiError::bad_request(format!("upload failed: {message}"))),
        Err(_) => Err(ApiError::internal("the upload ended without a result")),
    }
}

/// Relays an upload to the agent of `node`, where the claim's volume lives.
async fn relay(
    state: &AppState,
    node: &str,
    namespace: &str,
    claim: &str,
    total: Option<u64>,
    is_async: bool,
    mut body: BodyStream,
) -> ApiResult<()> {
    let found = state.store.get(&kinds::NODE, "", node).await?;
    let found = found.ok_or_else(|| ApiError::unavailable(format!("node {node:?} of the claim's volume is gone")))?;
    let remote = crate::nodes::link::RemoteNode::from_node(&found).map_err(ApiError::unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    // The body is read here (actix's payload stays on this thread) and sent on as it comes.
    let pump = async move {
        while let Some(chunk) = body.next().await {
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    };
    let sent_body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let size = total.map(|t| format!("&size={t}")).unwrap_or_default();
    let path = format!("/v1/uploads/{namespace}/{claim}?async={is_async}{size}");
    let ((), sent) = tokio::join!(pump, state.node_link.upload(&remote, &path, sent_body));
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests_need_a_claim() {
        let ok = parse_token_request("ns", br#"{"apiVersion":"upload.cdi.kubevirt.io/v1beta1","kind":"UploadTokenRequest","metadata":{"name":"t"},"spec":{"pvcName":"disk"}}"#).unwrap();
        assert_eq!(ok.1, "disk");
        let err = parse_token_request("ns", br#"{"metadata":{"name":"t"},"spec":{}}"#).unwrap_err();
        assert_eq!(err.code, 422);
        assert!(parse_token_request("ns", b"{").is_err());
        let other_ns =
            parse_token_request("ns", br#"{"metadata":{"namespace":"x"},"spec":{"pvcName":"d"}}"#).unwrap_err();
        assert_eq!(other_ns.code, 422);
    }

    #[test]
    fn upload_tokens_are_not_api_tokens() {
        let api = Authenticator::new(b"secret-one-that-is-long-enough-32b");
        let upload = authenticator(b"secret-one-that-is-long-enough-32b");
        let token = upload.sign(&Authenticator::claims("ns/disk", Role::Edit, vec![], 60)).unwrap();
        assert!(upload.verify(&token).is_ok());
        assert!(api.verify(&token).is_err());
    }
}
