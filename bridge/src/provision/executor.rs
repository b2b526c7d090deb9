//! Carries a host request out: each planned step makes its object through admission and the
//! store, recorded before and after; a failed step rolls back every object the request made.
//! Steps are re-entrant — an object that exists with the record's id label is the step's own,
//! made before a crash — so the next server resumes an interrupted request by running it again.

use super::error::{BridgeError, ErrorCode};
use super::record::{self, HostRecord};
use super::request::{self, PlannedStep, Precheck, HOST_ID_LABEL};
use super::state::{HostState, StepState};
use converge_engine::failpoint;
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::meta;
use converge_engine::store::{DeleteOptions, Propagation, Store};
use serde_json::Value;
use std::sync::Arc;

/// The answer to a create: HTTP code and JSON body, kept in the record for replays.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: u16,
    pub body: String,
    /// A stored answer given again for the same Idempotency-Key.
    pub replayed: bool,
}

impl Answer {
    pub fn error(e: &BridgeError) -> Answer {
        Answer { code: e.http_status(), body: e.body().to_string(), replayed: false }
    }
}

pub struct Provisioner {
    pub store: Arc<Store>,
    /// This server: records it works on carry it, so a restarted server can tell which
    /// records lost their worker.
    pub owner: String,
    /// Where clients reach this server (`https://host:port`), for the console URLs of views.
    pub base_url: String,
    /// Records a request of this process is carrying out right now; recovery leaves them be.
    in_flight: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Marks a record in flight for as long as it lives.
pub struct InFlight {
    provisioner: Arc<Provisioner>,
    id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut set) = self.provisioner.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

pub fn kind_of(kind: &str) -> Option<&'static ResourceKind> {
    match kind {
        "Secret" => Some(&kinds::SECRET),
        "DataVolume" => Some(&kinds::DATA_VOLUME),
        "VirtualMachine" => Some(&kinds::VIRTUAL_MACHINE),
        _ => None,
    }
}

fn owned_by(obj: &Value, host_id: &str) -> bool {
    meta::labels(obj).get(HOST_ID_LABEL).and_then(Value::as_str) == Some(host_id)
}

impl Provisioner {
    pub fn new(store: Arc<Store>, base_url: &str) -> Arc<Provisioner> {
        Arc::new(Provisioner {
            store,
            owner: uuid::Uuid::new_v4().to_string(),
            base_url: base_url.to_string(),
            in_flight: Default::default(),
        })
    }

    /// Takes a record for this process's request; `None` when one is already on it.
    pub fn take(self: &Arc<Self>, id: &str) -> Option<InFlight> {
        let mut set = self.in_flight.lock().ok()?;
        set.insert(id.to_string()).then(|| InFlight { provisioner: Arc::clone(self), id: id.to_string() })
    }

    fn pool(&self) -> &sqlx::AnyPool {
        self.store.pool()
    }

    async fn exists(&self, kind: &ResourceKind, namespace: &str, name: &str) -> Result<bool, BridgeError> {
        Ok(self.store.get(kind, namespace, name).await?.is_some())
    }

    /// The first precheck that fails, as the error the step reports.
    async fn precheck(&self, step: &PlannedStep) -> Result<(), BridgeError> {
        for check in &step.prechecks {
            match check {
                Precheck::StorageClass(class) => {
                    let classes = self.store.list_values(&kinds::STORAGE_CLASS, None).await?;
                    if converge_engine::storage::provisioner::class_for(class.as_deref(), &classes).is_none() {
                        let message = match class {
                            Some(c) => format!(
                                "there is no StorageClass {c:?}; GET /bridge/v1/storageclasses lists the classes there are"
                            ),
                            None => "no storageClass is given and there is no default StorageClass; name one (GET /bridge/v1/storageclasses)".to_string(),
                        };
                        return Err(BridgeError::field(
                            ErrorCode::StorageClassNotFound,
                            format!("{}.storageClass", step.field),
                            message,
                        ));
                    }
                }
                Precheck::DataSource { namespace, name } => {
                    if !self.exists(&kinds::DATA_SOURCE, namespace, name).await? {
                        return Err(BridgeError::field(
                            ErrorCode::DataSourceNotFound,
                            format!("{}.source.dataSource", step.field),
                            format!("there is no DataSource {namespace}/{name}; GET /bridge/v1/images lists the images there are"),
                        ));
                    }
                }
                Precheck::Pvc { namespace, name } => {
                    if !self.exists(&kinds::PERSISTENT_VOLUME_CLAIM, namespace, name).await? {
                        return Err(BridgeError::field(
                            ErrorCode::PvcNotFound,
                            format!("{}.source.pvc", step.field),
                            format!("there is no PersistentVolumeClaim {namespace}/{name} to clone"),
                        ));
                    }
                }
                Precheck::Networks(nads) => {
                    for (ns, name, field) in nads {
                        if !self.exists(&kinds::NETWORK_ATTACHMENT_DEFINITION, ns, name).await? {
                            return Err(BridgeError::field(
                                ErrorCode::NetworkNotFound,
                                field.clone(),
                                format!("there is no network {ns}/{name}; GET /bridge/v1/networks lists the networks there are"),
                            ));
                        }
                    }
                }
                Precheck::Flavor(name) => {
                    if !self.exists(&kinds::CLUSTER_INSTANCETYPE, "", name).await? {
                        return Err(BridgeError::field(
                            ErrorCode::FlavorNotFound,
                            "flavor",
                            format!("there is no flavor {name:?}; GET /bridge/v1/flavors lists the flavors there are"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes a step's object, or finds the one it made before a crash.
    async fn ensure(&self, host_id: &str, step: &PlannedStep) -> Result<(), BridgeError> {
        let kind = kind_of(step.kind).ok_or_else(|| BridgeError::internal(format!("no kind {}", step.kind)))?;
        let namespace = meta::namespace(&step.object).to_string();
        let object_field = (!step.field.is_empty()).then(|| step.field.clone());
        if let Some(existing) = self.store.get(kind, &namespace, step.object_name()).await? {
            if owned_by(&existing, host_id) {
                return Ok(());
            }
            return Err(BridgeError::new(
                ErrorCode::ObjectExists,
                format!(
                    "a {} {namespace}/{} exists and is not this host's; delete it or pick another host name",
                    step.kind,
                    step.object_name()
                ),
            )
            .with_field(Some("name".into())));
        }
        self.precheck(step).await?;
        match converge_engine::admission::create_admitted(&self.store, kind, step.object.clone(), false).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Err(BridgeError::new(
                ErrorCode::ObjectExists,
                format!("a {} {namespace}/{} was made by someone else meanwhile", step.kind, step.object_name()),
            )
            .with_field(Some("name".into()))),
            Err(e) => Err(BridgeError::from(e).with_field(object_field)),
        }
    }

    /// Deletes a step's object if it is the host's.
    async fn remove(&self, host_id: &str, kind: &str, namespace: &str, name: &str) -> Result<(), BridgeError> {
        let Some(kind) = kind_of(kind) else { return Ok(()) };
        let Some(obj) = self.store.get(kind, namespace, name).await? else { return Ok(()) };
        if !owned_by(&obj, host_id) {
            return Ok(());
        }
        let opts = DeleteOptions { propagation: Some(Propagation::Background), ..DeleteOptions::default() };
        match self.store.delete(kind, namespace, name, &opts).await {
            Err(e) if e.code != 404 => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Runs (or resumes) a Creating record to Created, or rolls it back.
    #[tracing::instrument(skip_all, fields(host = %format!("{}/{}", rec.namespace, rec.name), id = %rec.id))]
    pub async fn run(&self, rec: HostRecord) -> Result<Answer, BridgeError> {
        let plan = request::plan(&rec.id, &rec.request);
        for (i, step) in plan.steps.iter().enumerate() {
            let state = rec.steps.get(i).map(|s| s.state).unwrap_or(StepState::Pending);
            match state {
                StepState::Done => continue,
                StepState::Pending => {
                    record::step(self.pool(), &rec.id, i, StepState::Pending, StepState::Running, "").await?
                }
                StepState::Running => {}
                // Failed, and cut off before the record said RollingBack: roll back now.
                StepState::Failed => {
                    let error = rec.error.clone().unwrap_or_else(|| {
                        let message = rec.steps.get(i).map(|s| s.error.clone()).unwrap_or_default();
                        BridgeError::internal(message).at_step(&step.name)
                    });
                    return self.fail(&rec.id, error).await;
                }
                StepState::RolledBack | StepState::Skipped => {
                    return Err(BridgeError::internal(format!("step {} of a Creating host is {state:?}", step.name)))
                }
            }
            match self.ensure(&rec.id, step).await {
                Ok(()) => {
                    failpoint::hit(failpoint::BRIDGE_AFTER_OBJECT);
                    record::step(self.pool(), &rec.id, i, StepState::Running, StepState::Done, "").await?;
                }
                Err(e) => {
                    let e = e.at_step(&step.name);
                    tracing::info!(step = %step.name, error = %e.message, "a step failed: rolling back");
                    // The error first: a step is never Failed without the answer it gives.
                    record::set_error(self.pool(), &rec.id, &e).await?;
                    record::step(self.pool(), &rec.id, i, StepState::Running, StepState::Failed, &e.message).await?;
                    return self.fail(&rec.id, e).await;
                }
            }
        }
        let mut created = self.reload(&rec.id).await?;
        created.state = HostState::Created;
        created.updated_at = record::now_ms();
        let view = super::view::host_view(self, &created).await?;
        let answer = Answer { code: 201, body: view.to_string(), replayed: false };
        self.settle(&created, HostState::Creating, answer).await
    }

    /// Stores the answer with the state it belongs to; when another server settled the
    /// record first, its answer is the one given.
    async fn settle(&self, rec: &HostRecord, from: HostState, answer: Answer) -> Result<Answer, BridgeError> {
        let pool = self.pool();
        if record::settle(pool, &rec.id, from, rec.state, rec.updated_at, answer.code, &answer.body).await? {
            return Ok(answer);
        }
        match self.reload(&rec.id).await?.response {
            Some((code, body)) => Ok(Answer { code, body, replayed: true }),
            None => Err(BridgeError::internal(format!("host {} changed while it was being settled", rec.id))),
        }
    }

    /// Records why a Creating record failed, and rolls it back.
    async fn fail(&self, id: &str, error: BridgeError) -> Result<Answer, BridgeError> {
        record::set_error(self.pool(), id, &error).await?;
        record::transition(self.pool(), id, HostState::Creating, HostState::RollingBack).await?;
        failpoint::hit(failpoint::BRIDGE_BEFORE_ROLLBACK);
        let current = self.reload(id).await?;
        self.roll_back(&current).await
    }

    pub async fn reload(&self, id: &str) -> Result<HostRecord, BridgeError> {
        record::by_id(self.pool(), id).await?.ok_or_else(|| BridgeError::internal(format!("record {id} vanished")))
    }

    /// Removes what a RollingBack record made, newest first, and marks it Failed; the answer
    /// is the error of the step that failed.
    #[tracing::instrument(skip_all, fields(host = %format!("{}/{}", rec.namespace, rec.name), id = %rec.id))]
    pub async fn roll_back(&self, rec: &HostRecord) -> Result<Answer, BridgeError> {
        for (i, s) in rec.steps.iter().enumerate().rev() {
            match s.state {
                StepState::Done | StepState::Running | StepState::Failed => {
                    self.remove(&rec.id, &s.kind, &rec.namespace, &s.object_name).await?;
                    if s.state != StepState::Failed {
                        record::step(self.pool(), &rec.id, i, s.state, StepState::RolledBack, "").await?;
                    }
                }
                StepState::Pending => record::step(self.pool(), &rec.id, i, s.state, StepState::Skipped, "").await?,
                StepState::RolledBack | StepState::Skipped => {}
            }
        }
        let error = rec.error.clone().unwrap_or_else(|| BridgeError::internal("rolled back without an error"));
        let failed = HostRecord { state: HostState::Failed, updated_at: record::now_ms(), ..rec.clone() };
        self.settle(&failed, HostState::RollingBack, Answer::error(&error)).await
    }

    /// Starts tearing a Created host down: its objects are deleted, newest first; the record
    /// becomes Deleted once they are gone (`settle_deleting`).
    pub async fn delete(&self, rec: &HostRecord) -> Result<(), BridgeError> {
        match rec.state {
            HostState::Created => {
                if !record::transition(self.pool(), &rec.id, HostState::Created, HostState::Deleting).await? {
                    return Err(BridgeError::new(
                        ErrorCode::RequestInProgress,
                        "the host changed meanwhile; try again",
                    ));
                }
            }
            HostState::Deleting => {}
            HostState::Creating | HostState::RollingBack => {
                return Err(BridgeError::new(
                    ErrorCode::RequestInProgress,
                    format!("the host is {}; delete it once that is over", rec.state.as_str()),
                ))
            }
            HostState::Failed | HostState::Deleted => return Err(BridgeError::not_found(&rec.namespace, &rec.name)),
        }
        self.remove_all(rec).await
    }

    async fn remove_all(&self, rec: &HostRecord) -> Result<(), BridgeError> {
        for s in rec.steps.iter().rev() {
            self.remove(&rec.id, &s.kind, &rec.namespace, &s.object_name).await?;
        }
        Ok(())
    }

    /// Whether anything a host made is still there: its objects, its VMI, its volumes' claims.
    pub async fn leftovers(&self, rec: &HostRecord) -> Result<Vec<String>, BridgeError> {
        let mut left = vec![];
        for s in &rec.steps {
            let Some(kind) = kind_of(&s.kind) else { continue };
            if let Some(obj) = self.store.get(kind, &rec.namespace, &s.object_name).await? {
                if owned_by(&obj, &rec.id) {
                    left.push(format!("{} {}", s.kind, s.object_name));
                }
            }
            let derived: &[&ResourceKind] = match s.kind.as_str() {
                "VirtualMachine" => &[&kinds::VIRTUAL_MACHINE_INSTANCE],
                "DataVolume" => &[&kinds::PERSISTENT_VOLUME_CLAIM],
                _ => &[],
            };
            for kind in derived {
                if let Some(obj) = self.store.get(kind, &rec.namespace, &s.object_name).await? {
                    let ours = obj["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                        refs.iter().any(|r| r["kind"] == s.kind.as_str() && r["name"] == s.object_name.as_str())
                    });
                    if ours {
                        left.push(format!("{} {}", kind.kind, s.object_name));
                    }
                }
            }
        }
        Ok(left)
    }

    /// One pass over records no request is on: creates and rollbacks whose request died (on a
    /// store error here, or with a server that has gone quiet for `OWNER_LEASE`) are resumed;
    /// deletions are carried on and marked Deleted once nothing is left. Servers sharing a
    /// PostgreSQL store leave each other's live requests alone.
    pub async fn recover(self: &Arc<Self>) -> Result<(), BridgeError> {
        record::heartbeat(self.pool(), &self.owner).await?;
        let now = record::now_ms();
        record::forget_servers(self.pool(), now - FORGET_SERVER.as_millis() as i64).await?;
        for rec in record::unfinished(self.pool()).await? {
            if rec.state == HostState::Deleting {
                if self.leftovers(&rec).await?.is_empty() {
                    record::transition(self.pool(), &rec.id, HostState::Deleting, HostState::Deleted).await?;
                } else {
                    self.remove_all(&rec).await?;
                }
                continue;
            }
            if rec.owner != self.owner {
                // Another server's request is its own while that server lives.
                let alive = record::last_heartbeat(self.pool(), &rec.owner).await?;
                if alive.is_some_and(|at| now - at < OWNER_LEASE.as_millis() as i64) {
                    continue;
                }
            }
            let Some(_guard) = self.take(&rec.id) else { continue };
            if rec.owner != self.owner && !record::claim(self.pool(), &rec.id, &rec.owner, &self.owner).await? {
                continue;
            }
            tracing::info!(host = %format!("{}/{}", rec.namespace, rec.name), state = rec.state.as_str(),
                "resuming a host request that was cut off");
            if rec.state == HostState::Creating {
                self.run(rec).await?;
            } else {
                self.roll_back(&rec).await?;
            }
        }
        Ok(())
    }
}

/// A server that has not beaten for this long is gone: its unfinished requests are taken over.
pub const OWNER_LEASE: std::time::Duration = std::time::Duration::from_secs(10);
/// Servers silent this long are forgotten.
const FORGET_SERVER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Runs `recover` every `period` until the task is dropped.
pub async fn run_recovery(provisioner: Arc<Provisioner>, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = provisioner.recover().await {
            tracing::warn!(error = %e.message, "bridge: recovering host requests");
        }
    }
}
