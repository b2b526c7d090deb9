//! What a node may do with storage: the volumes that live on it (`storage::placement`) are its
//! to make, fill and reclaim — a PersistentVolume pinned to it alone, the annotations of a
//! claim that selected it, the status of that claim's DataVolume, and the Secrets and ConfigMaps
//! such a DataVolume names for its import. A node's volume binds only to a claim that selected
//! that node (`storage::provisioner::may_bind`), so making one takes no claim over.

use converge_engine::kinds::{self, ResourceKind};
use converge_engine::meta;
use converge_engine::storage::placement::{pv_node, selected_node};
use converge_engine::storage::PROVISIONER;
use converge_engine::store::{Store, UpdateMode};
use converge_engine::{ApiError, ApiResult};
use serde_json::Value;

use super::{only_finalizers_dropped, refused};
use crate::auth::Principal;

/// Annotations a node writes on a claim it fills: CDI's progress and the import's failure.
fn node_annotation(key: &str) -> bool {
    key.starts_with("cdi.kubevirt.io/storage.pod.") || key == converge_engine::storage::datavolume::ANN_FAILURE
}

/// The object rule for PersistentVolumes, claims and DataVolumes (`None` for other kinds). A
/// DataVolume's status is allowed here only as far as its own shape goes; whether its claim
/// selected this node is `admit_related`'s to check.
pub fn admit(
    p: &Principal,
    node: &str,
    kind: &ResourceKind,
    old: Option<&Value>,
    new: &Value,
    mode: UpdateMode,
) -> Option<ApiResult<()>> {
    let refuse = |why: &str| Some(Err(refused(p, node, why)));
    if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME) {
        if pv_node(new) != Some(node) || old.is_some_and(|o| pv_node(o) != Some(node)) {
            return refuse("a node writes only volumes pinned to it alone");
        }
        return match (old, mode) {
            (None, _) if meta::annotation(new, "pv.kubernetes.io/provisioned-by") != Some(PROVISIONER) => {
                refuse("a node makes only volumes of Converge's provisioner")
            }
            (None, _) | (Some(_), UpdateMode::Status) => Some(Ok(())),
            (Some(old), UpdateMode::Main) if only_finalizers_dropped(old, new) => Some(Ok(())),
            (Some(_), UpdateMode::Main) => refuse("a node changes a volume only by dropping its finalizer"),
        };
    }
    if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME_CLAIM) {
        let Some(old) = old else { return refuse("nodes create no claims") };
        if selected_node(old) != Some(node) || selected_node(new) != Some(node) {
            return refuse("the claim did not select this node");
        }
        if mode != UpdateMode::Main || !only_node_annotations_changed(old, new) {
            return refuse("a node changes only the import annotations of a claim");
        }
        return Some(Ok(()));
    }
    if std::ptr::eq(kind, &kinds::DATA_VOLUME) {
        return match (old, mode) {
            (Some(_), UpdateMode::Status) => Some(Ok(())),
            _ => refuse("a node writes only the status of a DataVolume"),
        };
    }
    None
}

/// Whether `new` is `old` with only the node's annotations changed.
fn only_node_annotations_changed(old: &Value, new: &Value) -> bool {
    let strip = |obj: &Value| {
        let mut obj = obj.clone();
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for server_owned in ["resourceVersion", "managedFields", "generation", "creationTimestamp"] {
                md.remove(server_owned);
            }
            if let Some(a) = md.get_mut("annotations").and_then(Value::as_object_mut) {
                a.retain(|k, _| !node_annotation(k));
                if a.is_empty() {
                    md.remove("annotations");
                }
            }
        }
        obj
    };
    strip(old) == strip(new)
}

/// The claim `namespace/name` selected this node.
async fn claim_selected(store: &Store, node: &str, namespace: &str, name: &str) -> ApiResult<bool> {
    let pvc = store.get(&kinds::PERSISTENT_VOLUME_CLAIM, namespace, name).await?;
    Ok(pvc.as_ref().and_then(selected_node) == Some(node))
}

/// The rule needing the store: a DataVolume's status is a node's to write only when its claim
/// selected that node.
pub async fn admit_related(store: &Store, p: &Principal, kind: &ResourceKind, obj: &Value) -> ApiResult<()> {
    let Some(node) = p.node.as_deref() else { return Ok(()) };
    if !std::ptr::eq(kind, &kinds::DATA_VOLUME) {
        return Ok(());
    }
    match claim_selected(store, node, meta::namespace(obj), meta::name(obj)).await? {
        true => Ok(()),
        false => Err(refused(p, node, "the DataVolume's claim did not select this node")),
    }
}

/// A node deletes only a volume pinned to it (once its files are gone).
pub async fn may_delete(store: &Store, p: &Principal, kind: &ResourceKind, name: &str) -> ApiResult<()> {
    let Some(node) = p.node.as_deref() else { return Ok(()) };
    if !std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME) {
        return Err(refused(p, node, "a node deletes nothing but its own volumes"));
    }
    match store.get(kind, "", name).await? {
        Some(pv) if pv_node(&pv) == Some(node) => Ok(()),
        Some(_) => Err(refused(p, node, "the volume is not pinned to this node")),
        None => Err(ApiError::not_found("", "persistentvolumes", name)),
    }
}

/// Whether a DataVolume whose claim selected `node` names Secret (`secret`) or ConfigMap
/// `name` for its import: credentials (`secretRef`) or a CA (`certConfigMap`).
pub async fn named_by_import(store: &Store, node: &str, namespace: &str, name: &str, secret: bool) -> ApiResult<bool> {
    let field = if secret { "secretRef" } else { "certConfigMap" };
    let dvs = store.list_values(&kinds::DATA_VOLUME, Some(namespace)).await?;
    for dv in &dvs {
        let named = ["http", "s3", "registry", "gcs", "imageio", "vddk"]
            .iter()
            .any(|source| dv.pointer(&format!("/spec/source/{source}/{field}")).and_then(Value::as_str) == Some(name));
        if named && claim_selected(store, node, namespace, meta::name(dv)).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_engine::storage::placement::{node_affinity, SELECTED_NODE};
    use serde_json::json;

    fn principal() -> Principal {
        super::super::tests::node_principal("n1")
    }

    #[test]
    fn a_node_makes_and_drops_only_volumes_pinned_to_it() {
        let p = principal();
        let pv = |node: &str, finalizers: &[&str]| {
            json!({"metadata": {"name": "pvc-1", "finalizers": finalizers,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {"nodeAffinity": node_affinity(node), "hostPath": {"path": "/x/disk.img"}}})
        };
        let kind = &kinds::PERSISTENT_VOLUME;
        let check = |old: Option<&Value>, new: &Value, mode| admit(&p, "n1", kind, old, new, mode).expect("a rule");
        assert!(check(None, &pv("n1", &["f"]), UpdateMode::Main).is_ok());
        assert!(check(None, &pv("n2", &["f"]), UpdateMode::Main).is_err(), "pinned to another node");
        let mut unpinned = pv("n1", &[]);
        unpinned["spec"].as_object_mut().map(|s| s.remove("nodeAffinity"));
        assert!(check(None, &unpinned, UpdateMode::Main).is_err(), "pinned nowhere");
        let mut foreign = pv("n1", &[]);
        foreign["metadata"]["annotations"] = json!({});
        assert!(check(None, &foreign, UpdateMode::Main).is_err(), "not the provisioner's: would bind any claim");
        assert!(check(Some(&pv("n1", &["f"])), &pv("n1", &[]), UpdateMode::Main).is_ok(), "dropping its finalizer");
        assert!(check(Some(&pv("n1", &["f"])), &pv("n2", &["f"]), UpdateMode::Main).is_err(), "moving it");
        assert!(check(Some(&pv("n2", &["f"])), &pv("n2", &[]), UpdateMode::Main).is_err(), "another's");
        let mut repathed = pv("n1", &["f"]);
        repathed["spec"]["hostPath"]["path"] = json!("/etc/shadow");
        assert!(check(Some(&pv("n1", &["f"])), &repathed, UpdateMode::Main).is_err(), "its path");
        assert!(check(Some(&pv("n1", &["f"])), &pv("n1", &["f"]), UpdateMode::Status).is_ok());
    }

    #[test]
    fn a_node_writes_only_import_annotations_of_claims_that_selected_it() {
        let p = principal();
        let claim = |node: &str, annotations: Value| {
            let mut a = annotations;
            a[SELECTED_NODE] = json!(node);
            json!({"metadata": {"name": "c", "namespace": "ns", "annotations": a},
                   "spec": {"resources": {"requests": {"storage": "1Gi"}}}})
        };
        let kind = &kinds::PERSISTENT_VOLUME_CLAIM;
        let check = |old: &Value, new: &Value, mode| admit(&p, "n1", kind, Some(old), new, mode).expect("a rule");
        let before = claim("n1", json!({}));
        let running = claim("n1", json!({"cdi.kubevirt.io/storage.pod.phase": "Running"}));
        assert!(check(&before, &running, UpdateMode::Main).is_ok());
        assert!(check(
            &claim("n2", json!({})),
            &claim("n2", json!({"cdi.kubevirt.io/storage.pod.phase": "Running"})),
            UpdateMode::Main
        )
        .is_err());
        assert!(check(&before, &claim("n2", json!({})), UpdateMode::Main).is_err(), "re-selecting");
        let mut grown = running.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("1Ti");
        assert!(check(&before, &grown, UpdateMode::Main).is_err(), "its spec");
        assert!(check(&before, &claim("n1", json!({"owner": "n1"})), UpdateMode::Main).is_err(), "other annotations");
        assert!(check(&before, &before, UpdateMode::Status).is_err(), "its status is the server's");
        assert!(admit(&p, "n1", kind, None, &before, UpdateMode::Main).expect("rule").is_err(), "no creates");
        let dv = json!({"metadata": {"name": "c", "namespace": "ns"}});
        let dvs = &kinds::DATA_VOLUME;
        assert!(admit(&p, "n1", dvs, Some(&dv), &dv, UpdateMode::Status).expect("rule").is_ok());
        assert!(admit(&p, "n1", dvs, Some(&dv), &dv, UpdateMode::Main).expect("rule").is_err());
        assert!(admit(&p, "n1", &kinds::VIRTUAL_MACHINE, None, &dv, UpdateMode::Main).is_none());
    }
}
