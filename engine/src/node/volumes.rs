//! Before a guest starts: its claims attached (bound and filled, block ones through a loop
//! device) and its images present as `imagePullPolicy` asks, pulled from their registry if not.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let state =
            claims::resolve(&*s.cluster, ns, &claim).await.map_err(|e| ("StoreError".to_string(), e.message))?;
        match state {
            // The scheduler places a guest where its volumes are; one placed before its volume
            // was made elsewhere must not start on a path that is not there.
            ClaimState::Ready(v) if v.node.as_deref().is_some_and(|n| n != s.config.name) => {
                return Err((
                    "VolumeNodeAffinityConflict".into(),
                    format!("the volume of claim {claim:?} lives on node {:?}", v.node.unwrap_or_default()),
                ))
            }
            ClaimState::Ready(v) if v.block => {
                let file = v.file.clone();
                if let Ok(mut m) = s.loop_backed.lock() {
                    m.entry(meta::uid(vmi).to_string()).or_default().push(file.clone());
                }
                let dev = tokio::task::spawn_blocking(move || SystemVolumeTool.attach_block(&file))
                    .await
                    .map_err(|e| ("FailedAttachVolume".to_string(), e.to_string()))?
                    .map_err(|e| ("FailedAttachVolume".to_string(), format!("claim {claim:?}: {e}")))?;
                out.insert(claim, ClaimVolume { file: dev, block: true, node: v.node.clone() });
            }
            ClaimState::Ready(v) => {
                out.insert(claim, v);
            }
            ClaimState::Waiting(reason, message) => return Err((reason, message)),
        }
    }
    Ok(out)
}

/// Forgets a VMI whose guest is gone: detaches its loop devices, drops its pull record.
pub async fn release_vmi(s: &Shared, vmi_uid: &str) {
    if let Ok(mut f) = s.pull_failures.lock() {
        f.remove(vmi_uid);
    }
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
/// Every Secret a VMI names (image pull secrets, cloud-init user and network data): what its
/// node may read of the VMI's namespace.
pub fn secret_names(vmi: &Value) -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = images_of(vmi).into_iter().filter_map(|(_, _, s)| s).collect();
    let spec = crate::launcher::spec::VmiSpec::from_vmi(vmi).unwrap_or_default();
    for v in &spec.volumes {
        for src in [&v.cloud_init_no_cloud, &v.cloud_init_config_drive].into_iter().flatten() {
            names.extend(src.secret_ref.iter().chain(src.network_data_secret_ref.iter()).map(|r| r.name.clone()));
        }
    }
    names
}

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
    let obj = s.cluster.get(&kinds::SECRET, ns, name).await.map_err(|e| ("StoreError".to_string(), e.message))?;
    let obj = obj.ok_or_else(|| ("ErrImagePull".to_string(), format!("image pull secret {name:?} not found")))?;
    let registry = registry::registry_of(image).map_err(|e| ("InvalidImageName".to_string(), e.to_string()))?;
    Ok(registry::credentials_from_secret(&super::disks::secret_data(&obj), &registry))
}

/// How long a failed pull reads ErrImagePull before ImagePullBackOff, as the kubelet shows it.
const ERR_IMAGE_PULL_SHOWN: Duration = Duration::from_secs(2);

/// One VMI's failed pulls: how many in a row, when the last was, and what it said.
pub struct PullFailure {
    count: u32,
    at: Instant,
    message: String,
}

/// The kubelet's image pull back-off: 10 s doubling to 5 min.
fn backoff(count: u32) -> Duration {
    Duration::from_secs((5u64 << count.min(6)).min(300))
}

/// Makes the VMI's images present. A failed pull reads ErrImagePull, then ImagePullBackOff until
/// the back-off has passed and it is tried again; the duration is when to look next.
pub async fn ensure_images(s: &Arc<Shared>, vmi: &Value) -> Result<(), (String, String, Duration)> {
    let ns = meta::namespace(vmi);
    let uid = meta::uid(vmi).to_string();
    let previous =
        s.pull_failures.lock().ok().and_then(|f| f.get(&uid).map(|p| (p.count, p.at.elapsed(), p.message.clone())));
    if let Some((count, since, message)) = &previous {
        let wait = backoff(*count);
        if *since < ERR_IMAGE_PULL_SHOWN {
            return Err(("ErrImagePull".into(), message.clone(), ERR_IMAGE_PULL_SHOWN - *since));
        }
        if *since < wait {
            return Err(("ImagePullBackOff".into(), format!("Back-off pulling image: {message}"), wait - *since));
        }
    }
    for (image, policy, secret) in images_of(vmi) {
        let policy = pull_policy(&image, policy.as_deref());
        let local = s.images.digest(&image);
        let result = match (policy.as_str(), &local) {
            ("Never", Some(_)) | ("IfNotPresent", Some(_)) => Ok(()),
            ("Never", None) => {
                let message = format!("Container image {image:?} is not present with pull policy of Never");
                return Err(("ErrImageNeverPull".into(), message, Duration::from_secs(10)));
            }
            _ => match credentials(s, ns, secret.as_deref(), &image).await {
                Ok(creds) => pull(s, &image, creds.as_ref(), local.as_deref()).await,
                Err((_, message)) => Err(message),
            },
        };
        if let Err(message) = result {
            let count = previous.as_ref().map_or(0, |p| p.0) + 1;
            if let Ok(mut f) = s.pull_failures.lock() {
                f.insert(uid.clone(), PullFailure { count, at: Instant::now(), message: message.clone() });
            }
            return Err(("ErrImagePull".into(), message, ERR_IMAGE_PULL_SHOWN));
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
