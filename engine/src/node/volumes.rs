//! Before a guest starts: its claims attached (bound and filled, block ones through a loop
//! device) and its images present as `imagePullPolicy` asks, pulled from their registry if not.

use std::sync::Arc;

use serde_json::Value;

use super::disks::ClaimPaths;
use super::registry::{self, Credentials};
use super::Shared;
use crate::kinds;
use crate::meta;
use crate::storage::claims::{self, ClaimState, ClaimVolume};
use crate::storage::volume::{SystemVolumeTool, VolumeTool};

/// Why a guest must wait: (reason, message).
pub type Wait = (String, String);

/// Resolves every claim `vmi` uses, or says which one it waits for.
pub async fn attach_claims(s: &Shared, vmi: &Value) -> Result<ClaimPaths, Wait> {
    let ns = meta::namespace(vmi);
    let mut out = ClaimPaths::new();
    for claim in claims::claims_of(vmi) {
        let state = claims::resolve(&s.store, ns, &claim).await.map_err(|e| ("StoreError".to_string(), e.message))?;
        match state {
            ClaimState::Ready(v) if v.block => {
                let file = v.file.clone();
                if let Ok(mut m) = s.loop_backed.lock() {
                    m.entry(meta::uid(vmi).to_string()).or_default().push(file.clone());
                }
                let dev = tokio::task::spawn_blocking(move || SystemVolumeTool.attach_block(&file))
                    .await
                    .map_err(|e| ("FailedAttachVolume".to_string(), e.to_string()))?
                    .map_err(|e| ("FailedAttachVolume".to_string(), format!("claim {claim:?}: {e}")))?;
                out.insert(claim, ClaimVolume { file: dev, block: true });
            }
            ClaimState::Ready(v) => {
                out.insert(claim, v);
            }
            ClaimState::Waiting(reason, message) => return Err((reason, message)),
        }
    }
    Ok(out)
}

/// Detaches the loop devices attached for a VMI whose guest is gone.
pub async fn detach_claims(s: &Shared, vmi_uid: &str) {
    let files = s.loop_backed.lock().ok().and_then(|mut m| m.remove(vmi_uid)).unwrap_or_default();
    for file in files {
        let result = tokio::task::spawn_blocking(move || SystemVolumeTool.detach_block(&file)).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "could not detach a loop device");
        }
    }
}

/// Kubernetes' default: `Always` for `:latest` or untagged references, else `IfNotPresent`.
pub fn pull_policy(reference: &str, explicit: Option<&str>) -> String {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        return p.to_string();
    }
    let name = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || name.split_once(':').is_some_and(|(_, tag)| tag != "latest") {
        "IfNotPresent".into()
    } else {
        "Always".into()
    }
}

/// `(image, pullPolicy, pull secret)` of every container image a VMI boots from.
fn images_of(vmi: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    let mut out = vec![];
    for v in vmi.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
        if let Some(cd) = v.get("containerDisk") {
            let s = |k: &str| cd.get(k).and_then(Value::as_str).map(str::to_string);
            if let Some(image) = s("image") {
                out.push((image, s("imagePullPolicy"), s("imagePullSecret")));
            }
        }
    }
    if let Some(c) = vmi.pointer("/spec/domain/firmware/kernelBoot/container") {
        let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        if let Some(image) = s("image") {
            out.push((image, s("imagePullPolicy"), s("imagePullSecret")));
        }
    }
    out
}

async fn credentials(s: &Shared, ns: &str, secret: Option<&str>, image: &str) -> Result<Option<Credentials>, Wait> {
    let Some(name) = secret else { return Ok(None) };
    let obj = s.store.get(&kinds::SECRET, ns, name).await.map_err(|e| ("StoreError".to_string(), e.message))?;
    let obj = obj.ok_or_else(|| ("ErrImagePull".to_string(), format!("image pull secret {name:?} not found")))?;
    let registry = registry::registry_of(image).map_err(|e| ("InvalidImageName".to_string(), e.to_string()))?;
    Ok(registry::credentials_from_secret(&super::disks::secret_data(&obj), &registry))
}

/// Makes the VMI's images present; a failed pull says ErrImagePull the first time and
/// ImagePullBackOff after, as the kubelet does.
pub async fn ensure_images(s: &Arc<Shared>, vmi: &Value) -> Result<(), Wait> {
    let ns = meta::namespace(vmi);
    let uid = meta::uid(vmi).to_string();
    for (image, policy, secret) in images_of(vmi) {
        let policy = pull_policy(&image, policy.as_deref());
        let local = s.images.digest(&image);
        let result = match (policy.as_str(), &local) {
            ("Never", Some(_)) | ("IfNotPresent", Some(_)) => Ok(()),
            ("Never", None) => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image {image:?} is not present with pull policy of Never"),
                ))
            }
            _ => {
                let creds = credentials(s, ns, secret.as_deref(), &image).await?;
                pull(s, &image, creds.as_ref(), local.as_deref()).await
            }
        };
        if let Err(message) = result {
            let failures = {
                let mut f = s.pull_failures.lock().map_err(|_| ("ErrImagePull".to_string(), message.clone()))?;
                let n = f.entry(uid.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let reason = if failures > 1 { "ImagePullBackOff" } else { "ErrImagePull" };
            return Err((reason.into(), message));
        }
    }
    if let Ok(mut f) = s.pull_failures.lock() {
        f.remove(&uid);
    }
    Ok(())
}

/// Pulls `image` unless the registry's digest is the one already here.
async fn pull(s: &Shared, image: &str, creds: Option<&Credentials>, local: Option<&str>) -> Result<(), String> {
    let insecure = &s.config.insecure_registries;
    if let Some(local) = local {
        if let Ok(remote) = registry::remote_digest(image, creds, insecure).await {
            if remote == local {
                return Ok(());
            }
        }
    }
    let scratch = s.config.state_dir.join("images").join(".pulls");
    registry::pull(&s.images, &scratch, image, creds, insecure)
        .await
        .map(|_| ())
        .map_err(|e| format!("failed to pull image {image:?}: {e}"))
}

/// Back-off before the next pull attempt, as the kubelet's: 10 s doubling to 5 min.
pub fn pull_backoff(s: &Shared, vmi_uid: &str) -> std::time::Duration {
    let n = s.pull_failures.lock().ok().and_then(|f| f.get(vmi_uid).copied()).unwrap_or(0);
    std::time::Duration::from_secs((5u64 << n.min(6)).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        assert_eq!(pull_policy("127.0.0.1:5000/disk", None), "Always");
        assert_eq!(pull_policy("127.0.0.1:5000/disk:latest", None), "Always");
        assert_eq!(pull_policy("127.0.0.1:5000/disk:v1", None), "IfNotPresent");
        assert_eq!(pull_policy("quay.io/d@sha256:abc", None), "IfNotPresent");
        assert_eq!(pull_policy("x:v1", Some("Always")), "Always");
    }
}
