//! CDI's DataVolume controller, pure: the claim a DataVolume asks for, and its phase, progress
//! and conditions from the claim and the job filling it. `runtime` runs the jobs.

use serde_json::{json, Value};

use super::{set_cdi_condition, ANN_POD_PHASE, ANN_UPLOAD_REQUEST};
use crate::meta;

/// Where a DataVolume's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Http(Value),
    S3(Value),
    Registry(Value),
    /// Clone of a claim, perhaps in another namespace.
    Pvc {
        namespace: String,
        name: String,
    },
    /// A DataSource to resolve to a claim.
    Ref {
        namespace: String,
        name: String,
    },
    Upload,
    Blank,
}

impl Source {
    pub fn is_clone(&self) -> bool {
        matches!(self, Source::Pvc { .. } | Source::Ref { .. })
    }
}

/// The sources this node can fill a volume from; every other one is named in the error.
pub fn source_of(dv: &Value) -> Result<Source, String> {
    let ns = meta::namespace(dv).to_string();
    if let Some(r) = dv.pointer("/spec/sourceRef") {
        if r.get("kind").and_then(Value::as_str) != Some("DataSource") {
            return Err("spec.sourceRef.kind must be DataSource".into());
        }
        let name =
            r.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or("spec.sourceRef.name is required")?;
        let namespace = r.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or(&ns);
        return Ok(Source::Ref { namespace: namespace.to_string(), name: name.to_string() });
    }
    let src =
        dv.pointer("/spec/source").and_then(Value::as_object).ok_or("spec.source or spec.sourceRef is required")?;
    let kinds: Vec<&String> = src.keys().collect();
    if kinds.len() != 1 {
        return Err(format!("spec.source must name exactly one source, found {}", kinds.len()));
    }
    let (kind, body) = src.iter().next().ok_or("spec.source is empty")?;
    let url_of = |what: &str| {
        body.get("url")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(|_| ())
            .ok_or(format!("spec.source.{what}.url is required"))
    };
    Ok(match kind.as_str() {
        "http" => {
            url_of("http")?;
            Source::Http(body.clone())
        }
        "s3" => {
            url_of("s3")?;
            Source::S3(body.clone())
        }
        "registry" => {
            url_of("registry")?;
            Source::Registry(body.clone())
        }
        "pvc" => Source::Pvc {
            namespace: body
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(&ns)
                .to_string(),
            name: body
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or("spec.source.pvc.name is required")?
                .to_string(),
        },
        "upload" => Source::Upload,
        "blank" => Source::Blank,
        other => {
            return Err(format!(
                "source {other:?} is not supported by Converge (http, s3, registry, pvc, upload, blank)"
            ))
        }
    })
}

/// The size `dv` asks for, from `spec.storage` or `spec.pvc`.
pub fn requested_size(dv: &Value) -> Option<&Value> {
    dv.pointer("/spec/storage/resources/requests/storage")
        .or_else(|| dv.pointer("/spec/pvc/resources/requests/storage"))
}

/// Fill in the size a clone takes from its source.
pub fn set_requested_size(dv: &mut Value, size: Value) {
    let api = if dv.pointer("/spec/pvc").is_some_and(Value::is_object) { "pvc" } else { "storage" };
    *meta::at_mut(dv, &["spec", api, "resources", "requests", "storage"]) = size;
}

/// The claim for `dv`: `spec.pvc` as given, or `spec.storage` filled from the StorageProfile's
/// first claim property set (accessModes, volumeMode), as CDI does.
pub fn claim_for(dv: &Value, profile: Option<&Value>) -> Result<Value, String> {
    let mut spec = if let Some(pvc) = dv.pointer("/spec/pvc").filter(|v| v.is_object()) {
        pvc.clone()
    } else if let Some(storage) = dv.pointer("/spec/storage").filter(|v| v.is_object()) {
        let mut s = storage.clone();
        let defaults = profile.and_then(|p| p.pointer("/status/claimPropertySets/0"));
        let preferred_mode = s.get("volumeMode").and_then(Value::as_str).map(str::to_string);
        let set = profile
            .and_then(|p| p.pointer("/status/claimPropertySets"))
            .and_then(Value::as_array)
            .and_then(|sets| {
                sets.iter().find(|set| {
                    preferred_mode.as_deref().is_none_or(|m| set.get("volumeMode").and_then(Value::as_str) == Some(m))
                })
            })
            .or(defaults);
        if s.get("accessModes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            s["accessModes"] = set.and_then(|d| d.get("accessModes")).cloned().unwrap_or(json!(["ReadWriteOnce"]));
        }
        if s.get("volumeMode").is_none() {
            s["volumeMode"] = set.and_then(|d| d.get("volumeMode")).cloned().unwrap_or(json!("Filesystem"));
        }
        s
    } else {
        return Err("spec.pvc or spec.storage is required".into());
    };
    if spec.pointer("/resources/requests/storage").is_none() {
        return Err("the volume size is required: spec.storage.resources.requests.storage (or spec.pvc...)".into());
    }
    if let Some(m) = spec.as_object_mut() {
        m.remove("dataSource");
        m.remove("dataSourceRef");
    }
    let content_type = dv.pointer("/spec/contentType").and_then(Value::as_str).unwrap_or("kubevirt");
    let mut annotations = json!({
        ANN_POD_PHASE: "Pending",
        "cdi.kubevirt.io/storage.contentType": content_type,
        super::ANN_POPULATED_FOR: meta::name(dv),
    });
    if source_of(dv) == Ok(Source::Upload) {
        annotations[ANN_UPLOAD_REQUEST] = json!("");
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": meta::name(dv),
            "namespace": meta::namespace(dv),
            "labels": {"app": "containerized-data-importer", "app.kubernetes.io/component": "storage"},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "cdi.kubevirt.io/v1beta1",
                "kind": "DataVolume",
                "name": meta::name(dv),
                "uid": meta::uid(dv),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    }))
}

/// What the job filling a claim is doing, as the controller sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobView {
    pub running: bool,
    /// 0.0–1.0.
    pub progress: f64,
    /// The last failure, while waiting to retry.
    pub last_error: Option<String>,
}

/// Everything `decide` looks at besides the DataVolume.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    pub pvc: Option<&'a Value>,
    /// The claim waits for its first consumer.
    pub wait_for_consumer: bool,
    pub job: Option<JobView>,
    /// Why the source can't be used yet (reason, message), e.g. a missing DataSource.
    pub blocked: Option<(String, String)>,
    /// Times the job has been restarted after failures.
    pub restarts: i64,
    /// Why the claim is not bound yet, from its newest event (shown on the Bound condition).
    pub claim_waiting: Option<String>,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: Value,
    pub create_claim: bool,
    pub start_job: bool,
}

use meta::annotation;

/// The message of a DataVolume's Running condition: why it is failing or retrying.
pub fn running_message(dv: &Value) -> Option<&str> {
    dv.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Running"))
        .and_then(|c| c.get("message"))
        .and_then(Value::as_str)
}

/// The failure message a job left on the claim.
pub const ANN_FAILURE: &str = "converge.dev/import-failure";

/// The DataVolume's next status and actions.
pub fn decide(dv: &Value, source: &Source, seen: &Observed, now: &str) -> Decision {
    let old = dv.get("status").cloned().unwrap_or(json!({}));
    let mut conditions: Vec<Value> = old.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let (scheduled, in_progress) = if source.is_clone() {
        ("CloneScheduled", "CloneInProgress")
    } else if *source == Source::Upload {
        ("UploadScheduled", "UploadReady")
    } else {
        ("ImportScheduled", "ImportInProgress")
    };
    let name = meta::name(dv);
    let mut progress = old.get("progress").and_then(Value::as_str).unwrap_or("N/A").to_string();
    let mut create_claim = false;
    let mut start_job = false;
    let pod_phase = seen.pvc.and_then(|p| annotation(p, ANN_POD_PHASE));
    let bound = seen.pvc.and_then(|p| p.pointer("/status/phase")).and_then(Value::as_str) == Some("Bound");
    let mut phase = "Pending";
    match seen.pvc {
        None => {
            create_claim = true;
            set_cdi_condition(&mut conditions, "Bound", false, "Pending", &format!("PVC {name} Pending"), now);
        }
        Some(_) if !bound => {
            phase = if seen.wait_for_consumer { "WaitForFirstConsumer" } else { "Pending" };
            let reason = if seen.wait_for_consumer { "WaitForFirstConsumer" } else { "Pending" };
            let message = match &seen.claim_waiting {
                Some(why) => format!("PVC {name} Pending: {why}"),
                None => format!("PVC {name} Pending"),
            };
            set_cdi_condition(&mut conditions, "Bound", false, reason, &message, now);
        }
        Some(_) => set_cdi_condition(&mut conditions, "Bound", true, "Bound", &format!("PVC {name} Bound"), now),
    }
    let mut running = (false, "", String::new());
    let phase = if !bound {
        phase
    } else if pod_phase == Some("Succeeded") {
        progress = "100.0%".into();
        running = (false, "Completed", String::new());
        "Succeeded"
    } else if pod_phase == Some("Failed") {
        let why = seen.pvc.and_then(|p| annotation(p, ANN_FAILURE)).unwrap_or("the import failed");
        running = (false, "Error", why.to_string());
        "Failed"
    } else if let Some((reason, message)) = &seen.blocked {
        set_cdi_condition(&mut conditions, "Running", false, reason, message, now);
        let blocked_phase = if reason == "CloneUnauthorized" { "Failed" } else { scheduled };
        return finish(dv, conditions, blocked_phase, progress, seen.restarts, create_claim, false, now);
    } else if let Some(job) = &seen.job {
        progress = format!("{:.2}%", (job.progress * 100.0).min(100.0));
        match (&job.last_error, job.running) {
            (_, true) => running = (true, "", String::new()),
            (Some(e), false) => running = (false, "Error", e.clone()),
            (None, false) => {}
        }
        in_progress
    } else if *source == Source::Upload {
        running = (true, "Pod is running", String::new());
        start_job = true;
        in_progress
    } else {
        start_job = true;
        if progress == "N/A" {
            progress = "0.00%".into();
        }
        scheduled
    };
    set_cdi_condition(&mut conditions, "Running", running.0, running.1, &running.2, now);
    finish(dv, conditions, phase, progress, seen.restarts, create_claim, start_job, now)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    dv: &Value,
    mut conditions: Vec<Value>,
    phase: &str,
    progress: String,
    restarts: i64,
    create_claim: bool,
    start_job: bool,
    now: &str,
) -> Decision {
    let ready = phase == "Succeeded";
    let (reason, message) = match phase {
        "Succeeded" => ("Completed", String::new()),
        "Failed" => ("Error", String::new()),
        p => (p, String::new()),
    };
    set_cdi_condition(&mut conditions, "Ready", ready, reason, &message, now);
    // Bound, Ready, Running: CDI's order.
    conditions.sort_by_key(|c| match c["type"].as_str() {
        Some("Bound") => 0,
        Some("Ready") => 1,
        _ => 2,
    });
    let mut status = json!({
        "claimName": meta::name(dv),
        "phase": phase,
        "progress": progress,
        "conditions": conditions,
    });
    if restarts > 0 {
        status["restartCount"] = json!(restarts);
    }
    Decision { status, create_claim, start_job }
}

#[cfg(test)]
#[path = "datavolume_tests.rs"]
mod tests;
