//! The admission webhooks: the admission the embedded API runs on a create or update —
//! defaults, presets, instancetypes, validation with field causes, the MAC pool — answered to
//! kube-apiserver's AdmissionReviews, as virt-api's webhooks and KubeMacPool answer them.
//!
//! `/mutate` admits and answers the changes as a JSON patch; `/validate` admits the final object
//! again (after every mutating webhook) and only allows or denies.

use super::review::{self, Operation, Review};
use actix_web::{web, HttpResponse};
use converge_engine::admission::{self, Context};
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::cluster::Cluster;
use converge_engine::error::{ApiError, ApiResult};
use converge_engine::host_access::HostAccess;
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::macpool::{self, MacRange, MemoryPool};
use converge_engine::store::WatchEventType;
use serde_json::Value;
use std::sync::Arc;

/// The paths the webhook configurations call.
pub const MUTATE_PATH: &str = "/mutate";
pub const VALIDATE_PATH: &str = "/validate";

/// Whose writes to a VMI's status are kept (the VMI kind has no status subresource, as
/// KubeVirt's has none): Converge's own service accounts, and cluster admins.
#[derive(Debug, Clone)]
pub struct StatusWriters {
    pub users: Vec<String>,
}

impl StatusWriters {
    /// The controllers' and node agents' service accounts in `namespace`.
    pub fn of_namespace(namespace: &str) -> StatusWriters {
        StatusWriters {
            users: ["converge-controllers", "converge-node"]
                .iter()
                .map(|sa| format!("system:serviceaccount:{namespace}:{sa}"))
                .collect(),
        }
    }

    fn allows(&self, user: &review::UserInfo) -> bool {
        self.users.contains(&user.username) || user.groups.iter().any(|g| g == "system:masters")
    }
}

pub(super) struct State {
    pub(super) cluster: Arc<KubeCluster>,
    pub(super) pool: tokio::sync::Mutex<MemoryPool>,
    pub(super) mac_range: MacRange,
    pub(super) status_writers: StatusWriters,
    pub(super) host: HostAccess,
}

pub(super) async fn fill_pool(cluster: &dyn Cluster, pool: &mut MemoryPool) -> ApiResult<()> {
    for kind in [&kinds::VIRTUAL_MACHINE, &kinds::VIRTUAL_MACHINE_INSTANCE] {
        for obj in cluster.list(kind, None).await? {
            pool.observe(kind, &obj);
        }
    }
    Ok(())
}

/// Keeps the pool at what is stored: a VM's MACs are free once the VM is gone or no longer
/// names them.
pub(super) async fn follow_pool(
    state: Arc<State>,
    mut events: tokio::sync::broadcast::Receiver<Arc<converge_engine::store::WatchEvent>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                let Some(kind) = kinds::by_store_key(&event.kind_key) else { continue };
                let mut pool = state.pool.lock().await;
                match event.event_type {
                    WatchEventType::Deleted => pool.forget(kind, &event.object),
                    _ => pool.observe(kind, &event.object),
                }
            }
            Err(RecvError::Lagged(_)) => {
                let mut fresh = MemoryPool::new();
                match fill_pool(&*state.cluster, &mut fresh).await {
                    Ok(()) => state.pool.lock().await.replace_stored(fresh),
                    Err(e) => tracing::warn!(error = %e.message, "re-reading the VMs for the MAC pool"),
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

pub(super) async fn answer(state: web::Data<State>, body: web::Bytes, mutate: bool) -> HttpResponse {
    let reply = match review::parse(&body) {
        Ok(review) => match admit(&state, &review, mutate).await {
            Ok((after, warnings)) => {
                review::allowed(&review.uid, &review.object, if mutate { &after } else { &review.object }, &warnings)
            }
            Err(e) => review::denied(&review.uid, &e),
        },
        Err(e) => review::denied(&review::uid_of(&body), &ApiError::bad_request(e.to_string())),
    };
    HttpResponse::Ok().json(reply)
}

/// What the embedded API does on a create or an update of the main resource.
#[tracing::instrument(skip_all, fields(kind = review.kind.kind, op = ?review.operation, mutate))]
async fn admit(state: &State, review: &Review, mutate: bool) -> ApiResult<(Value, Vec<String>)> {
    let kind: &'static ResourceKind = review.kind;
    let mut obj = review.object.clone();
    let op = match review.operation {
        Operation::Create => admission::Operation::Create,
        Operation::Update => admission::Operation::Update,
        Operation::Delete | Operation::Connect => return Ok((obj, vec![])),
    };
    let old = review.old_object.as_ref();
    if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        if !state.status_writers.allows(&review.user) {
            // KubeVirt's webhook turns back a status change by anyone but its own.
            match old.and_then(|o| o.get("status")) {
                Some(status) => obj["status"] = status.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // A status write (the node agent's, mostly) changes nothing admission looks at.
        if old.is_some_and(|o| o.get("spec") == obj.get("spec")) {
            return Ok((obj, vec![]));
        }
    }
    let presets = match (op, mutate) {
        (admission::Operation::Create, true) => {
            admission::presets_for(&*state.cluster, kind, &review.namespace).await?
        }
        _ => vec![],
    };
    let mut probe = obj.clone();
    if let Some(status) = old.and_then(|o| o.get("status")) {
        // The frozen revision lives in the stored status.
        probe["status"] = status.clone();
    }
    let (instancetype, preference) = admission::lookup_instancetypes(&*state.cluster, kind, &probe).await?;
    let ctx = Context { old, presets: &presets, instancetype, preference, host: Some(&state.host) };
    admission::admit(kind, op, &mut obj, &ctx)?;
    if mutate {
        if review.dry_run {
            let mut scratch = state.pool.lock().await.clone();
            macpool::sync(&mut scratch, kind, &mut obj, old, &state.mac_range).await?;
        } else {
            macpool::sync(&mut *state.pool.lock().await, kind, &mut obj, old, &state.mac_range).await?;
        }
    }
    let warnings = admission::warnings(kind, &obj);
    Ok((obj, warnings))
}
