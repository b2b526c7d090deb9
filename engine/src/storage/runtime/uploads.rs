//! Uploads, CDI style: the API's upload proxy hands over a request body for a claim that waits
//! for one; it is imported like any other stream.

use super::datavolumes::{clear_job, finish_job, progress_reporter, set_job};
use super::*;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    NotFound(String),
    /// Not ready for an upload now (not bound, busy, done).
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Store(String),
    /// The claim's volume lives on another node (`node`; `None`: the server's pool), which takes
    /// the upload.
    #[error("the volume of the claim lives on {}", node.as_deref().map_or("the server".to_string(), |n| format!("node {n:?}")))]
    Elsewhere { node: Option<String> },
}

/// An upload being received: send the body's chunks, then await `done`.
pub struct UploadSession {
    pub chunks: mpsc::Sender<std::io::Result<Bytes>>,
    /// The import's outcome: `Err` carries the message for the client.
    pub done: oneshot::Receiver<Result<(), String>>,
}

impl StorageControllers {
    /// Opens an upload into claim `namespace/claim` of `total` bytes, if the claim waits for one.
    pub async fn begin_upload(
        &self,
        namespace: &str,
        claim: &str,
        total: Option<u64>,
    ) -> Result<UploadSession, UploadError> {
        let s = &self.shared;
        let pvc = s
            .cluster
            .get(&kinds::PERSISTENT_VOLUME_CLAIM, namespace, claim)
            .await
            .map_err(|e| UploadError::Store(e.message))?
            .ok_or_else(|| UploadError::NotFound(format!("PersistentVolumeClaim {namespace}/{claim} not found")))?;
        if annotation(&pvc, super::super::ANN_UPLOAD_REQUEST).is_none() {
            return Err(UploadError::NotReady(format!(
                "claim {claim:?} is not an upload target (its DataVolume has no upload source)"
            )));
        }
        if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            return Err(UploadError::NotReady(format!("claim {claim:?} is not bound yet")));
        }
        let volume = pvc.pointer("/spec/volumeName").and_then(Value::as_str).unwrap_or_default();
        let pv =
            s.cluster.get(&kinds::PERSISTENT_VOLUME, "", volume).await.map_err(|e| UploadError::Store(e.message))?;
        if let Some(pv) = pv.filter(|pv| !s.config.keeps_volume(pv)) {
            return Err(UploadError::Elsewhere { node: super::super::placement::pv_node(&pv).map(str::to_string) });
        }
        match annotation(&pvc, ANN_POD_PHASE) {
            Some("Succeeded") => {
                return Err(UploadError::NotReady(format!("claim {claim:?} has already been uploaded")))
            }
            Some("Failed") => {
                return Err(UploadError::NotReady(format!(
                    "the upload into claim {claim:?} failed; delete and recreate its DataVolume"
                )))
            }
            _ => {}
        }
        let dv_uid = pvc
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|o| o.iter().find(|r| r["kind"] == "DataVolume"))
            .and_then(|r| r.get("uid"))
            .and_then(Value::as_str)
            .unwrap_or(meta::uid(&pvc))
            .to_string();
        {
            let mut jobs = s.jobs.lock().map_err(|_| UploadError::Store("job table poisoned".into()))?;
            if jobs.get(&dv_uid).is_some_and(|j| j.view.running) {
                return Err(UploadError::NotReady(format!("an upload into claim {claim:?} is already in progress")));
            }
            jobs.remove(&dv_uid);
        }
        set_job(s, &dv_uid, JobView { running: true, progress: 0.0, last_error: None });
        let content = match annotation(&pvc, "cdi.kubevirt.io/storage.contentType") {
            Some("archive") => ContentType::Archive,
            _ => ContentType::Kubevirt,
        };
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
        let (done_tx, done_rx) = oneshot::channel();
        let shared = Arc::clone(s);
        let key = (namespace.to_string(), claim.to_string());
        tokio::spawn(async move {
            let result = receive(&shared, &key, &dv_uid, rx, total, content).await;
            let message = result.as_ref().map_err(|e| e.to_string()).map(|_| ());
            finish_job(&shared, &key, &dv_uid, result, false).await;
            clear_job(&shared, &dv_uid);
            let _ = done_tx.send(message);
        });
        Ok(UploadSession { chunks: tx, done: done_rx })
    }
}

async fn receive(
    s: &Arc<Shared>,
    (ns, claim): &Key,
    dv_uid: &str,
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    total: Option<u64>,
    content: ContentType,
) -> Result<(), StorageError> {
    let target = super::datavolumes::target_of(s, ns, claim).await?;
    super::datavolumes::annotate_claim(s, ns, claim, &[(ANN_POD_PHASE, Some("Running".into()))])
        .await
        .map_err(|e| StorageError::Transient(e.message))?;
    let stream = tokio_stream_from(rx);
    let reader = tokio_util::io::StreamReader::new(stream);
    let progress = progress_reporter(s, dv_uid);
    importer::import_stream(reader, total, None, content, &target, Arc::clone(&s.tool), progress).await
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
