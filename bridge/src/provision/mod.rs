//! `/bridge/v1`: one idempotent call makes a whole host — a VirtualMachine, a DataVolume per
//! disk, a cloud-init Secret — through the same admission and store as the Kubernetes API.
//!
//! A request is recorded (SQL, `record`) with its planned steps before anything is made; the
//! executor makes the objects in order, each labelled with the record's id, and a failed step
//! rolls back every object the request made. A crash leaves the record Creating or RollingBack,
//! and the next server resumes it (`Provisioner::recover`): never half a host.

pub mod cloudinit;
pub mod error;
pub mod executor;
pub mod listings;
pub mod record;
pub mod request;
pub mod state;
pub mod view;

pub use error::{BridgeError, ErrorCode};
pub use executor::{Answer, Provisioner};
pub use request::HostRequest;
pub use state::{HostState, StepState};

use converge_engine::kinds;
use std::sync::Arc;

/// The Idempotency-Key as stored: scoped to who sent it, so two clients never share answers.
pub fn scoped_key(subject: &str, key: Option<&str>) -> Result<String, BridgeError> {
    let Some(key) = key else { return Ok(String::new()) };
    if key.is_empty() || key.len() > 255 || key.chars().any(|c| c.is_control()) {
        return Err(BridgeError::field(
            ErrorCode::InvalidRequest,
            "Idempotency-Key",
            "the Idempotency-Key header must be 1 to 255 printable characters",
        ));
    }
    Ok(format!("{subject}\n{key}"))
}

/// An earlier request's answer for the same key: the same answer, or why there is none.
fn replay(existing: &record::HostRecord, hash: &str) -> Result<Answer, BridgeError> {
    if existing.request_hash != hash {
        return Err(BridgeError::field(
            ErrorCode::IdempotencyKeyReused,
            "Idempotency-Key",
            format!(
                "this Idempotency-Key was used for a different request (host {}/{}); use a new key for a new request",
                existing.namespace, existing.name
            ),
        ));
    }
    match &existing.response {
        Some((code, body)) => Ok(Answer { code: *code, body: body.clone(), replayed: true }),
        None => Err(BridgeError::new(
            ErrorCode::RequestInProgress,
            "a request with this Idempotency-Key is being carried out; retry shortly for its answer",
        )),
    }
}

/// `POST /bridge/v1/hosts`, after authentication, authorization and `request::decode`.
pub async fn create_host(
    p: &Arc<Provisioner>,
    request: HostRequest,
    key: Option<&str>,
    subject: &str,
) -> Result<Answer, BridgeError> {
    request::validate(&request)?;
    let key = scoped_key(subject, key)?;
    let hash = record::request_hash(&request);
    if !key.is_empty() {
        if let Some(existing) = record::by_key(p.store.pool(), &key).await? {
            return replay(&existing, &hash);
        }
    }
    if p.store.get(&kinds::NAMESPACE, "", &request.namespace).await?.is_none() {
        return Err(BridgeError::field(
            ErrorCode::FieldInvalid,
            "namespace",
            format!("there is no namespace {:?}; create it first", request.namespace),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let plan = request::plan(&id, &request);
    let Some(guard) = p.take(&id) else { return Err(BridgeError::internal("a fresh record id is in use")) };
    let new = record::NewHost {
        id: &id,
        request: &request,
        idempotency_key: &key,
        request_hash: &hash,
        created_by: subject,
        owner: &p.owner,
        steps: &plan.steps,
    };
    match record::insert(p.store.pool(), &new).await? {
        Ok(()) => {}
        Err(record::InsertConflict::SameKey(existing)) => return replay(&existing, &hash),
        Err(record::InsertConflict::HostExists) => {
            return Err(BridgeError::field(
                ErrorCode::HostExists,
                "name",
                format!("there is a host {}/{} already; GET it, or DELETE it first", request.namespace, request.name),
            ))
        }
    }
    let rec = p.reload(&id).await?;
    // The steps run in a task of their own: a client that hangs up does not stop them halfway.
    let worker = Arc::clone(p);
    let answer = tokio::spawn(async move {
        let _guard = guard;
        worker.run(rec).await
    });
    answer.await.map_err(|e| BridgeError::internal(format!("the host request's task: {e}")))?
}
