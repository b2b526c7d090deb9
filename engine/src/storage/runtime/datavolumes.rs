//! The DataVolume side of the runtime: claims for DataVolumes, clone sources, and the jobs that
//! fill claims (import, clone, blank) with retries and backoff.

use super::*;
use crate::node::images::ImageStore;
use crate::node::registry;
use crate::storage::sources::{self, HttpSource};

async fn secret(
    s: &Shared,
    ns: &str,
    name: Option<&str>,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, StorageError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return Ok(Default::default()) };
    match s.cluster.get(&kinds::SECRET, ns, name).await {
        Ok(Some(obj)) => Ok(crate::node::disks::secret_data(&obj)),
        Ok(None) => Err(StorageError::Transient(format!("secret {name:?} not found in namespace {ns:?}"))),
        Err(e) => Err(StorageError::Transient(e.message)),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn key_pair(data: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<(String, String)> {
    Some((text(data.get("accessKeyId")?), text(data.get("secretKey")?)))
}

/// CDI's HTTP source with its Secrets and ConfigMap read.
async fn http_source(s: &Shared, ns: &str, body: &Value, url: String) -> Result<HttpSource, StorageError> {
    let auth = secret(s, ns, body.get("secretRef").and_then(Value::as_str)).await?;
    let mut extra_headers: Vec<String> = body
        .get("extraHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    for name in body.get("secretExtraHeaders").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
    {
        extra_headers.extend(secret(s, ns, Some(name)).await?.values().map(|v| text(v)));
    }
    let ca_pem = match body.get("certConfigMap").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(cm) => {
            let obj =
                s.cluster.get(&kinds::CONFIG_MAP, ns, cm).await.map_err(|e| StorageError::Transient(e.message))?;
            let obj =
                obj.ok_or_else(|| StorageError::Transient(format!("configmap {cm:?} not found in namespace {ns:?}")))?;
            let pem: String = obj
                .get("data")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.as_str())
                .collect();
            Some(pem.into_bytes())
        }
        None => None,
    };
    Ok(HttpSource {
        url,
        extra_headers,
        basic_auth: key_pair(&auth),
        ca_pem,
        insecure_skip_verify: body.get("insecureSkipVerify").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// The volume behind a claim, as an import target.
pub(super) async fn target_of(s: &Shared, ns: &str, claim: &str) -> Result<Target, StorageError> {
    let transient = |m: String| StorageError::Transient(m);
    let pvc = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, ns, claim).await.map_err(|e| transient(e.message))?;
    let pv_name = pvc.as_ref().and_then(|p| p.pointer("/spec/volumeName")).and_then(Value::as_str).unwrap_or_default();
    let pv = s.cluster.get(&kinds::PERSISTENT_VOLUME, "", pv_name).await.map_err(|e| transient(e.message))?;
    let pv = pv
        .filter(|pv| pvc.as_ref().is_some_and(|c| provisioner::bound_to(pv, c)))
        .ok_or_else(|| transient(format!("claim {claim:?} has no volume yet")))?;
    // Never another place's files: on one machine its path may even be there.
    if !s.config.keeps_volume(&pv) {
        return Err(transient(format!("the volume of claim {claim:?} does not live here")));
    }
    let dir = provisioner::layout(&pv).map(|(dir, _)| dir);
    let capacity = pv
        .pointer("/spec/capacity/storage")
        .and_then(|q| crate::quantity::parse_value(q).ok())
        .map(|v| crate::storage::aligned_down(v as u64));
    match (dir, capacity) {
        (Some(dir), Some(capacity)) => Ok(Target { dir, capacity }),
        _ => Err(StorageError::refused(format!("the volume of claim {claim:?} is not one this node can fill"))),
    }
}

/// Sets (or, with `None`, removes) annotations on a claim, retrying lost races.
pub(super) async fn annotate_claim(
    s: &Shared,
    ns: &str,
    name: &str,
    changes: &[(&str, Option<String>)],
) -> ApiResult<()> {
    for _ in 0..10 {
        let Some(pvc) = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, ns, name).await? else { return Ok(()) };
        let mut next = pvc.clone();
        let annotations = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            for (k, v) in changes {
                match v {
                    Some(v) => a.insert(k.to_string(), json!(v)),
                    None => a.remove(*k),
                };
            }
        }
        if next == pvc {
            return Ok(());
        }
        match s.cluster.update(&kinds::PERSISTENT_VOLUME_CLAIM, next, UpdateMode::Main).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal(format!("could not annotate claim {ns}/{name}")))
}

/// The claim a clone reads, once the source is allowed and ready: (reason, message) otherwise.
type Blocked = (String, String);

/// The claim a clone copies, once the namespaces allow it (a DataSource resolved to its claim).
async fn clone_claim(s: &Shared, dv: &Value, source: &Source) -> ApiResult<Result<(String, String), Blocked>> {
    let ns = meta::namespace(dv);
    let (src_ns, src_name) = match source {
        Source::Pvc { namespace, name } => (namespace.clone(), name.clone()),
        Source::Ref { namespace, name } => {
            let Some(ds) = s.cluster.get(&kinds::DATA_SOURCE, namespace, name).await? else {
                return Ok(Err(("DataSourceNotFound".into(), format!("DataSource {namespace}/{name} not found"))));
            };
            let pvc_name = ds.pointer("/spec/source/pvc/name").and_then(Value::as_str);
            let pvc_ns = ds
                .pointer("/spec/source/pvc/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            match pvc_name {
                Some(n) => (pvc_ns.to_string(), n.to_string()),
                None => {
                    return Ok(Err((
                        "DataSourceNotReady".into(),
                        format!(
                            "DataSource {namespace}/{name} has no spec.source.pvc; Converge clones only from claims"
                        ),
                    )))
                }
            }
        }
        _ => return Ok(Err(("NotAClone".into(), "not a clone".into()))),
    };
    if src_ns != ns {
        let allowed = s
            .cluster
            .get(&kinds::NAMESPACE, "", &src_ns)
            .await?
            .as_ref()
            .and_then(|n| annotation(n, ANN_CLONE_TO))
            .is_some_and(|list| list.split(',').map(str::trim).any(|t| t == "*" || t == ns));
        if !allowed {
            return Ok(Err((
                "CloneUnauthorized".into(),
                format!(
                    "cloning claims of namespace {src_ns:?} into {ns:?} is not allowed; \
                     annotate namespace {src_ns} with {ANN_CLONE_TO}={ns} (or *) to allow it"
                ),
            )));
        }
    }
    Ok(Ok((src_ns, src_name)))
}

/// The size of a clone that names none: its source claim's, as CDI infers it (`storage: {}`).
async fn clone_size(s: &Shared, dv: &Value, source: &Source) -> ApiResult<Result<Value, Blocked>> {
    let (src_ns, src_name) = match clone_claim(s, dv, source).await? {
        Ok(claim) => claim,
        Err(blocked) => return Ok(Err(blocked)),
    };
    let claim = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, &src_ns, &src_name).await?;
    let size = claim.as_ref().and_then(|c| {
        c.pointer("/status/capacity/storage").or_else(|| c.pointer("/spec/resources/requests/storage")).cloned()
    });
    Ok(size.ok_or_else(|| {
        (
            "CloneSourceNotFound".into(),
            format!("the source claim {src_ns}/{src_name} does not exist yet; the clone takes its size"),
        )
    }))
}

async fn clone_source(s: &Shared, dv: &Value, source: &Source) -> ApiResult<Result<PathBuf, Blocked>> {
    let (src_ns, src_name) = match clone_claim(s, dv, source).await? {
        Ok(claim) => claim,
        Err(blocked) => return Ok(Err(blocked)),
    };
    // A guest writing the source would give a torn copy: the clone waits, as CDI's does.
    if claims::consumed(&*s.cluster).await?.contains(&(src_ns.clone(), src_name.clone())) {
        return Ok(Err((
            "CloneSourceInUse".into(),
            format!(
                "the source claim {src_ns}/{src_name} is in use by a running guest; the clone waits until it stops"
            ),
        )));
    }
    Ok(match claims::resolve(&*s.cluster, &src_ns, &src_name).await? {
        claims::ClaimState::Ready(v) if !s.config.keeps(v.node.as_deref()) => Err((
            "CloneSourceOnAnotherNode".into(),
            format!(
                "the source claim {src_ns}/{src_name} lives {}; clones between nodes are not made yet",
                v.node.map_or("in the server's pool".to_string(), |n| format!("on node {n:?}"))
            ),
        )),
        claims::ClaimState::Ready(v) if !v.block || v.file.exists() => Ok(v.file),
        claims::ClaimState::Ready(_) => {
            Err(("CloneSourceNotReady".into(), "the source volume's file is missing".into()))
        }
        claims::ClaimState::Waiting(_, message) => Err(("CloneSourceNotReady".into(), message)),
    })
}

pub(in crate::storage::runtime) async fn sync_dv(s: &Arc<Shared>, (ns, name): &Key) -> ApiResult<()> {
    let dv = s.cluster.get(&kinds::DATA_VOLUME, ns, name).await?;
    let Some(dv) = dv.filter(|d| !meta::is_deleting(d)) else {
        cancel_jobs(s).await;
        return Ok(());
    };
    let uid = meta::uid(&dv).to_string();
    // The job before the claim: a job ends by marking the claim, then leaving the table, so a job
    // gone here has its mark on the claim read next — read the other way round, a job finishing
    // in between looked never started and was run again.
    let job = s.jobs.lock().ok().and_then(|j| j.get(&uid).map(|j| j.view.clone()));
    // One read of the claim for the whole sync: who drives the DataVolume and what it does must
    // agree (a claim bound between two reads would start a job here for another node's volume).
    let pvc = s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, ns, name).await?;
    if !drives_here(s, pvc.as_ref()).await? {
        return Ok(());
    }
    let now = meta::now_rfc3339();
    let source = match datavolume::source_of(&dv) {
        Ok(src) => src,
        Err(message) => return write_failed(s, &dv, "InvalidSource", &message, &now).await,
    };
    let all = classes(s).await?;
    let class_name = dv
        .pointer("/spec/storage/storageClassName")
        .or_else(|| dv.pointer("/spec/pvc/storageClassName"))
        .and_then(Value::as_str);
    let class = provisioner::class_for(class_name, &all);
    let profile = match class {
        Some(c) => s.cluster.get(&kinds::STORAGE_PROFILE, "", meta::name(c)).await?,
        None => None,
    };
    if let Some(p) = pvc.as_ref().filter(|p| !meta::owner_uids(p).contains(&uid)) {
        let message =
            format!("PersistentVolumeClaim {:?} already exists and is not owned by this DataVolume", meta::name(p));
        return write_failed(s, &dv, "ErrClaimNotValid", &message, &now).await;
    }
    let class_waits = class.is_some_and(provisioner::waits_for_consumer);
    let immediate = annotation(&dv, placement::BIND_IMMEDIATE) == Some("true");
    let wait_for_consumer = class_waits && !immediate;
    let restarts = pvc.as_ref().and_then(|p| annotation(p, ANN_RESTARTS)).and_then(|r| r.parse().ok()).unwrap_or(0);
    let bound = pvc.as_ref().and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Bound");
    let mut clone_from = None;
    let mut blocked = None;
    if source.is_clone() && bound && job.is_none() {
        match clone_source(s, &dv, &source).await? {
            Ok(path) => clone_from = Some(path),
            Err(why) => blocked = Some(why),
        }
    }
    // A blocked clone looks again soon: a namespace may start allowing it, a source may appear.
    if blocked.is_some() {
        s.dvs.add_after((ns.clone(), name.clone()), Duration::from_secs(3));
    }
    let claim_waiting = match pvc.as_ref().filter(|_| !bound) {
        Some(p) => events::latest_for(&*s.cluster, p).await.map(|(_, message)| message),
        None => None,
    };
    let seen = Observed { pvc: pvc.as_ref(), wait_for_consumer, job: job.clone(), blocked, restarts, claim_waiting };
    let decision = datavolume::decide(&dv, &source, &seen, &now);
    let mut sized = dv.clone();
    if decision.create_claim && source.is_clone() && datavolume::requested_size(&dv).is_none() {
        match clone_size(s, &dv, &source).await? {
            Ok(size) => datavolume::set_requested_size(&mut sized, size),
            Err((reason, message)) => {
                // Nothing to size the claim by yet: the DataVolume waits, and looks again soon.
                s.dvs.add_after((ns.clone(), name.clone()), Duration::from_secs(3));
                let mut status = decision.status.clone();
                if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
                    crate::storage::set_cdi_condition(conditions, "Running", false, &reason, &message, &now);
                }
                if !dv.get("status").is_some_and(|old| super::super::same_ignoring_heartbeats(old, &status)) {
                    crate::cluster::write_status(&*s.cluster, &kinds::DATA_VOLUME, &dv, status).await?;
                }
                return Ok(());
            }
        }
    }
    if decision.create_claim {
        match datavolume::claim_for(&sized, profile.as_ref()) {
            Ok(mut claim) => {
                if class_waits && immediate {
                    // No guest to follow: the claim is given a node now, as kube-scheduler would.
                    let nodes = s.cluster.list(&kinds::NODE, None).await?;
                    if let Some(node) = placement::immediate_node(s.config.node.as_deref(), &nodes) {
                        *meta::at_mut(&mut claim, &["metadata", "annotations", placement::SELECTED_NODE]) = json!(node);
                    }
                }
                match s.cluster.create(&kinds::PERSISTENT_VOLUME_CLAIM, claim).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return write_failed(s, &dv, "ClaimNotCreated", &e.message, &now).await,
                }
            }
            Err(message) => return write_failed(s, &dv, "InvalidStorage", &message, &now).await,
        }
    }
    let source_kind = match &source {
        Source::Upload => "Upload",
        Source::Pvc { .. } | Source::Ref { .. } => "Clone",
        _ => "Import",
    };
    if decision.start_job && source != Source::Upload {
        start_job(s, &dv, source, clone_from);
    }
    let old_phase = dv.pointer("/status/phase").and_then(Value::as_str).unwrap_or("").to_string();
    let new_phase = decision.status["phase"].as_str().unwrap_or("").to_string();
    if !dv.get("status").is_some_and(|old| super::super::same_ignoring_heartbeats(old, &decision.status)) {
        crate::cluster::write_status(&*s.cluster, &kinds::DATA_VOLUME, &dv, decision.status.clone()).await?;
    }
    if old_phase != new_phase {
        phase_event(s, &dv, &new_phase, &decision.status, source_kind).await;
    }
    if job.as_ref().is_some_and(|j| j.running) || decision.start_job {
        s.dvs.add_after((ns.clone(), name.clone()), Duration::from_secs(1));
    }
    Ok(())
}

/// Whether this process drives the DataVolume: the process that keeps its claim's volume once
/// the claim is bound (it fills it, and only it knows how far it got), the server (or the
/// controllers, on Kubernetes) before.
async fn drives_here(s: &Shared, pvc: Option<&Value>) -> ApiResult<bool> {
    let volume = pvc.and_then(|p| p.pointer("/spec/volumeName")).and_then(Value::as_str);
    let bound = pvc.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Bound");
    let pv = match volume.filter(|v| bound && !v.is_empty()) {
        Some(name) => s.cluster.get(&kinds::PERSISTENT_VOLUME, "", name).await?,
        None => None,
    };
    Ok(match pv {
        Some(pv) => s.config.keeps_volume(&pv),
        None => s.config.role != StorageRole::Node,
    })
}

async fn phase_event(s: &Shared, dv: &Value, phase: &str, status: &Value, source_kind: &str) {
    let name = meta::name(dv);
    let holder = json!({"status": status});
    let running_message = datavolume::running_message(&holder).unwrap_or("");
    let (kind, reason, message) = match phase {
        "Succeeded" => {
            (events::NORMAL, succeeded_reason(source_kind), format!("{source_kind} Successful into PVC {name}"))
        }
        "Failed" => (events::WARNING, "Error", running_message.to_string()),
        "ImportScheduled" => (events::NORMAL, "ImportScheduled", format!("Import into {name} scheduled")),
        "CloneScheduled" => (events::NORMAL, "CloneScheduled", format!("Cloning into {name} scheduled")),
        "UploadReady" => (events::NORMAL, "UploadReady", format!("Upload into {name} ready")),
        "WaitForFirstConsumer" => {
            (events::NORMAL, "WaitForFirstConsumer", format!("PVC {name} waits for its first consumer"))
        }
        _ => return,
    };
    events::record(&*s.cluster, &kinds::DATA_VOLUME, dv, kind, reason, &message, COMPONENT).await;
}

fn succeeded_reason(source_kind: &str) -> &'static str {
    match source_kind {
        "Upload" => "UploadSucceeded",
        "Clone" => "CloneSucceeded",
        _ => "ImportSucceeded",
    }
}

async fn write_failed(s: &Shared, dv: &Value, reason: &str, message: &str, now: &str) -> ApiResult<()> {
    let mut conditions = dv.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    super::super::set_cdi_condition(&mut conditions, "Ready", false, "Error", "", now);
    super::super::set_cdi_condition(&mut conditions, "Running", false, reason, message, now);
    let status = json!({"phase": "Failed", "progress": "N/A", "claimName": meta::name(dv), "conditions": conditions});
    if dv.get("status").is_some_and(|old| super::super::same_ignoring_heartbeats(old, &status)) {
        return Ok(());
    }
    if dv.pointer("/status/phase").and_then(Value::as_str) != Some("Failed") {
        events::record(&*s.cluster, &kinds::DATA_VOLUME, dv, events::WARNING, reason, message, COMPONENT).await;
    }
    crate::cluster::write_status(&*s.cluster, &kinds::DATA_VOLUME, dv, status).await
}

/// Stops jobs whose DataVolume is gone or being deleted.
async fn cancel_jobs(s: &Shared) {
    let Ok(dvs) = s.cluster.list(&kinds::DATA_VOLUME, None).await else { return };
    let live: std::collections::HashSet<String> =
        dvs.iter().filter(|d| !meta::is_deleting(d)).map(|d| meta::uid(d).to_string()).collect();
    if let Ok(mut jobs) = s.jobs.lock() {
        jobs.retain(|uid, job| {
            let keep = live.contains(uid);
            if !keep {
                if let Some(h) = job.handle.take() {
                    h.abort();
                }
            }
            keep
        });
    }
}

pub(super) fn set_job(s: &Shared, uid: &str, view: JobView) {
    if let Ok(mut jobs) = s.jobs.lock() {
        jobs.entry(uid.to_string()).or_insert_with(|| Job { view: JobView::default(), handle: None }).view = view;
    }
}

pub(super) fn clear_job(s: &Shared, uid: &str) {
    if let Ok(mut jobs) = s.jobs.lock() {
        jobs.remove(uid);
    }
}

pub(super) fn progress_reporter(s: &Arc<Shared>, uid: &str) -> importer::ProgressFn {
    let (s, uid) = (Arc::downgrade(s), uid.to_string());
    Arc::new(move |p| {
        if let Some(s) = s.upgrade() {
            if let Ok(mut jobs) = s.jobs.lock() {
                if let Some(j) = jobs.get_mut(&uid) {
                    j.view.progress = j.view.progress.max(p);
                }
            }
        }
    })
}

fn start_job(s: &Arc<Shared>, dv: &Value, source: Source, clone_from: Option<PathBuf>) {
    let uid = meta::uid(dv).to_string();
    set_job(s, &uid, JobView { running: true, progress: 0.0, last_error: None });
    let (shared, dv, uid_c) = (Arc::clone(s), dv.clone(), uid.clone());
    let handle = tokio::spawn(async move {
        let key = key_of(&dv);
        let result = fill(&shared, &dv, &source, clone_from).await;
        finish_job(&shared, &key, &uid_c, result, true).await;
    });
    if let Ok(mut jobs) = s.jobs.lock() {
        if let Some(j) = jobs.get_mut(&uid) {
            j.handle = Some(handle);
        }
    }
}

/// Records how a job ended on the claim; failures that may heal are retried after a backoff
/// (`retry`), final ones fail the DataVolume.
pub(super) async fn finish_job(s: &Arc<Shared>, key: &Key, uid: &str, result: Result<(), StorageError>, retry: bool) {
    let (ns, name) = key;
    let outcome = match &result {
        Ok(()) => annotate_claim(s, ns, name, &[(ANN_POD_PHASE, Some("Succeeded".into())), (ANN_FAILURE, None)]).await,
        Err(e) if e.is_final() => {
            tracing::warn!(namespace = %ns, name = %name, error = %e, "volume population failed");
            annotate_claim(s, ns, name, &[(ANN_POD_PHASE, Some("Failed".into())), (ANN_FAILURE, Some(e.to_string()))])
                .await
        }
        Err(e) => {
            tracing::info!(namespace = %ns, name = %name, error = %e, "volume population will be retried");
            let restarts = match s.cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, ns, name).await {
                Ok(Some(p)) => {
                    annotation(&p, ANN_RESTARTS).and_then(|r| r.parse::<u32>().ok()).unwrap_or(0).saturating_add(1)
                }
                _ => 1,
            };
            let _ = annotate_claim(s, ns, name, &[(ANN_RESTARTS, Some(restarts.to_string()))]).await;
            let progress = s.jobs.lock().ok().and_then(|j| j.get(uid).map(|j| j.view.progress)).unwrap_or(0.0);
            set_job(s, uid, JobView { running: false, progress, last_error: Some(e.to_string()) });
            s.dvs.add(key.clone());
            if retry {
                let backoff = (s.config.retry_base * (1u32 << restarts.min(9))).min(Duration::from_secs(MAX_BACKOFF));
                tokio::time::sleep(backoff).await;
            }
            Ok(())
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(namespace = %ns, name = %name, error = %e.message, "could not record the end of a volume job");
    }
    clear_job(s, uid);
    s.dvs.add(key.clone());
}

fn content_type(dv: &Value) -> ContentType {
    match dv.pointer("/spec/contentType").and_then(Value::as_str) {
        Some("archive") => ContentType::Archive,
        _ => ContentType::Kubevirt,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StorageError::Transient(e.to_string()))?
}

/// Fills the DataVolume's claim from its source.
async fn fill(s: &Arc<Shared>, dv: &Value, source: &Source, clone_from: Option<PathBuf>) -> Result<(), StorageError> {
    let (ns, name) = (meta::namespace(dv), meta::name(dv));
    let target = target_of(s, ns, name).await?;
    annotate_claim(s, ns, name, &[(ANN_POD_PHASE, Some("Running".into()))])
        .await
        .map_err(|e| StorageError::Transient(e.message))?;
    let progress = progress_reporter(s, meta::uid(dv));
    let allow_private = s.config.allow_private_imports;
    let tool = Arc::clone(&s.tool);
    let kind = content_type(dv);
    if kind == ContentType::Archive && !matches!(source, Source::Http(_) | Source::S3(_)) {
        return Err(StorageError::refused("contentType archive is supported for http and s3 sources only"));
    }
    match source {
        Source::Http(body) => {
            let url = body.get("url").and_then(Value::as_str).unwrap_or_default().to_string();
            let src = http_source(s, ns, body, url).await?;
            let (reader, len) = s.fetcher.open(&src, allow_private).await?;
            let checksum = body.get("checksum").and_then(Value::as_str);
            importer::import_stream(reader, len, checksum, kind, &target, tool, progress).await
        }
        Source::S3(body) => {
            let url = body.get("url").and_then(Value::as_str).unwrap_or_default();
            let creds = key_pair(&secret(s, ns, body.get("secretRef").and_then(Value::as_str)).await?);
            let signed = sources::s3_signed_url(url, creds.as_ref().map(|(k, v)| (k.as_str(), v.as_str())))?;
            let mut src = http_source(s, ns, &json!({"certConfigMap": body.get("certConfigMap")}), signed).await?;
            src.basic_auth = None;
            let (reader, len) = s.fetcher.open(&src, allow_private).await?;
            importer::import_stream(reader, len, None, kind, &target, tool, progress).await
        }
        Source::Registry(body) => {
            let url = body.get("url").and_then(Value::as_str).unwrap_or_default();
            let reference = url.strip_prefix("docker://").unwrap_or(url).to_string();
            let registry = registry::registry_of(&reference).map_err(|e| StorageError::refused(e.to_string()))?;
            let data = secret(s, ns, body.get("secretRef").and_then(Value::as_str)).await?;
            let creds = registry::credentials_from_secret(&data, &registry);
            let scratch = target.dir.join(".registry");
            let images = ImageStore::open(&scratch).map_err(|e| StorageError::Transient(e.to_string()))?;
            let pulled =
                registry::pull(&images, &scratch, &reference, creds.as_ref(), &s.config.insecure_registries).await;
            let result = match pulled {
                Ok(_) => {
                    // The pull reports no progress of its own: it counts as the first 80 %.
                    progress(0.8);
                    let disk = images.disk(&reference, None).map_err(|e| StorageError::refused(e.to_string()))?;
                    let t = target.clone();
                    let converted = Arc::clone(&progress);
                    let out = blocking(move || {
                        importer::finalize(&disk, false, false, &t, tool.as_ref(), &|p| converted(0.8 + 0.2 * p))
                    })
                    .await;
                    if out.is_ok() {
                        progress(1.0);
                    }
                    out
                }
                Err(registry::RegistryError::BadReference(r, why)) => {
                    Err(StorageError::refused(format!("invalid registry URL {r:?}: {why}")))
                }
                Err(e) => Err(StorageError::Transient(e.to_string())),
            };
            let _ = std::fs::remove_dir_all(&scratch);
            result
        }
        Source::Pvc { .. } | Source::Ref { .. } => {
            let src = clone_from.ok_or_else(|| StorageError::Transient("the clone source is not ready".into()))?;
            let t = target.clone();
            let out = blocking(move || importer::clone_from(&src, &t, tool.as_ref())).await;
            progress(1.0);
            out
        }
        Source::Blank => {
            let t = target.clone();
            let out = blocking(move || importer::blank(&t)).await;
            progress(1.0);
            out
        }
        Source::Upload => Ok(()),
    }
}
