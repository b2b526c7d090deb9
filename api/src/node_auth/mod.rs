//! What a node agent's token may do, as Kubernetes' Node authorizer and NodeRestriction
//! admission plugin limit a kubelet: read what running guests needs, write its own Node, the
//! status of the VMIs placed on it (and drop their finalizer once their domain is gone), and
//! record events — nothing else. A node cannot touch another node's VMIs or any spec, so a
//! compromised host cannot reach guests it does not run.
//!
//! Two steps: `authorize` (the request: resource and verb) before anything is read, and
//! `admit_write` / `may_read_secret` (the object) where the handler has it.

use converge_engine::kinds::{self, ResourceKind};
use converge_engine::meta;
use converge_engine::store::{Store, UpdateMode};
use converge_engine::{ApiError, ApiResult};
use serde_json::Value;

use crate::auth::{forbidden, Access, Principal};

mod migration;
mod volumes;
pub use volumes::{admit_related, may_delete};

/// (group, resource) a node reads (get, list, watch).
const READS: &[(&str, &str)] = &[
    ("kubevirt.io", "virtualmachineinstances"),
    ("", "nodes"),
    ("", "services"),
    ("", "endpoints"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "persistentvolumeclaims"),
    ("", "persistentvolumes"),
    ("cdi.kubevirt.io", "datavolumes"),
    ("k8s.cni.cncf.io", "network-attachment-definitions"),
    ("", "events"),
    // What filling its volumes takes (`volumes`).
    ("storage.k8s.io", "storageclasses"),
    ("cdi.kubevirt.io", "storageprofiles"),
    ("cdi.kubevirt.io", "datasources"),
    ("", "namespaces"),
];

/// (group, resource) a node creates.
const CREATES: &[(&str, &str)] = &[("", "nodes"), ("", "events"), ("", "persistentvolumes")];
/// (group, resource) a node updates and patches (never deletes). Which objects is
/// `admit_write`'s to say.
const UPDATES: &[(&str, &str)] = &[
    ("", "nodes"),
    ("kubevirt.io", "virtualmachineinstances"),
    ("", "events"),
    ("", "persistentvolumes"),
    ("", "persistentvolumeclaims"),
    ("cdi.kubevirt.io", "datavolumes"),
];

fn listed(list: &[(&str, &str)], a: &Access) -> bool {
    list.iter().any(|(g, r)| *g == a.group && *r == a.resource)
}

/// The request-level rule for a node's principal.
pub fn authorize(p: &Principal, a: &Access) -> ApiResult<()> {
    let allowed = match a.verb {
        "get" | "list" | "watch" => {
            // A Secret or ConfigMap only by name, and only one its guests or imports name
            // (`may_read_named`).
            listed(READS, a)
                || (a.group.is_empty() && matches!(a.resource, "secrets" | "configmaps") && a.verb == "get")
        }
        "create" => listed(CREATES, a) && !a.status,
        "update" | "patch" => listed(UPDATES, a),
        // Its own volumes, once their files are gone (`may_delete`).
        "delete" => a.group.is_empty() && a.resource == "persistentvolumes",
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(forbidden(p, a))
    }
}

fn refused(p: &Principal, node: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!("User \"{}\" (node {node}) may not do this: {why}", p.subject))
}

fn node_of(vmi: &Value) -> Option<&str> {
    vmi.pointer("/status/nodeName").and_then(Value::as_str)
}

/// What the object-level rule says of a write by a node: its own Node (by name); a VMI placed on
/// it, whose status it may write as long as the VMI stays its own, and whose main resource it
/// may only change by dropping finalizers; events freely. `old` is the stored object (`None`
/// for a create).
pub fn admit_write(
    p: &Principal,
    kind: &ResourceKind,
    old: Option<&Value>,
    new: &Value,
    mode: UpdateMode,
) -> ApiResult<()> {
    let Some(node) = p.node.as_deref() else { return Ok(()) };
    if std::ptr::eq(kind, &kinds::EVENT) {
        return Ok(());
    }
    if std::ptr::eq(kind, &kinds::NODE) {
        let own = meta::name(new) == node && old.is_none_or(|o| meta::name(o) == node);
        if !own {
            return Err(refused(p, node, "a node writes only its own Node"));
        }
        // Its pod range is the cluster's to give, and cordons and taints the admin's to set.
        return match old {
            None if new.pointer("/spec/podCIDR").is_some() || new.pointer("/spec/podCIDRs").is_some() => {
                Err(refused(p, node, "a node does not choose its pod range"))
            }
            Some(old) if mode == UpdateMode::Main && old.get("spec") != new.get("spec") => {
                Err(refused(p, node, "a node does not change its Node's spec"))
            }
            _ => Ok(()),
        };
    }
    if let Some(rule) = volumes::admit(p, node, kind, old, new, mode) {
        return rule;
    }
    if !std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        return Err(refused(p, node, "not a kind nodes write"));
    }
    let Some(old) = old else { return Err(refused(p, node, "nodes create no VMIs")) };
    if mode == UpdateMode::Status {
        // The VMI's node, or a migration's target (`migration`).
        return migration::admit_status(node, old, new).map_err(|why| refused(p, node, why));
    }
    if node_of(old) != Some(node) {
        return Err(refused(p, node, "the VMI is not placed on this node"));
    }
    match only_finalizers_dropped(old, new) {
        true => Ok(()),
        false => Err(refused(p, node, "a node changes no VMI spec or metadata but dropping a finalizer")),
    }
}

/// Whether `new` is `old` with some of its finalizers removed and nothing else changed (the
/// server's own metadata aside).
fn only_finalizers_dropped(old: &Value, new: &Value) -> bool {
    let (kept, had) = (meta::finalizers(new), meta::finalizers(old));
    if !kept.iter().all(|f| had.contains(f)) {
        return false;
    }
    let comparable = |obj: &Value| {
        let mut obj = obj.clone();
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
        if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for server_owned in ["finalizers", "resourceVersion", "managedFields", "generation", "creationTimestamp"] {
                md.remove(server_owned);
            }
        }
        obj
    };
    comparable(old) == comparable(new)
}

/// A node reads a Secret only when a VMI placed on it names it (image pull, cloud-init) or an
/// import into a volume on it does (credentials); a ConfigMap only when such an import names it
/// (a CA).
pub async fn may_read_named(
    store: &Store,
    p: &Principal,
    kind: &ResourceKind,
    namespace: &str,
    name: &str,
) -> ApiResult<()> {
    let Some(node) = p.node.as_deref() else { return Ok(()) };
    let secret = std::ptr::eq(kind, &kinds::SECRET);
    if !secret && !std::ptr::eq(kind, &kinds::CONFIG_MAP) {
        return Ok(());
    }
    let by_guest = secret && {
        let vmis = store.list_values(&kinds::VIRTUAL_MACHINE_INSTANCE, Some(namespace)).await?;
        vmis.iter().filter(|v| node_of(v) == Some(node)).any(|v| converge_engine::node::secret_names(v).contains(name))
    };
    if by_guest || volumes::named_by_import(store, node, namespace, name, secret).await? {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{} \"{name}\" is forbidden: User \"{}\" cannot get resource \"{}\" in the namespace \"{namespace}\": no relationship found between node '{node}' and this object",
        kind.plural, p.subject, kind.plural
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use serde_json::json;

    pub(super) fn node_principal(node: &str) -> Principal {
        Principal {
            token_id: "t".into(),
            subject: format!("system:node:{node}"),
            role: Role::Node,
            namespaces: vec![],
            node: Some(node.into()),
        }
    }

    fn access<'a>(verb: &'a str, group: &'a str, resource: &'a str, status: bool) -> Access<'a> {
        Access {
            write: !matches!(verb, "get" | "list" | "watch"),
            namespace: Some("ns"),
            cluster_scoped: resource == "nodes",
            listable_across_namespaces: false,
            resource,
            group,
            verb,
            status,
        }
    }

    #[test]
    fn a_node_reads_what_it_runs_and_writes_only_nodes_vmis_and_events() {
        let p = node_principal("n1");
        let ok = |verb, group, resource, status| crate::auth::authorize(&p, &access(verb, group, resource, status));
        assert!(ok("watch", "kubevirt.io", "virtualmachineinstances", false).is_ok());
        assert!(ok("update", "kubevirt.io", "virtualmachineinstances", true).is_ok());
        assert!(ok("patch", "", "nodes", true).is_ok());
        assert!(ok("create", "", "events", false).is_ok());
        assert!(ok("get", "", "secrets", false).is_ok(), "by name, then the object rule");
        assert!(ok("get", "", "configmaps", false).is_ok(), "by name, then the object rule");
        assert!(ok("delete", "", "persistentvolumes", false).is_ok(), "its own, by the object rule");
        for (verb, group, resource) in [
            ("list", "", "secrets"),
            ("watch", "", "secrets"),
            ("create", "kubevirt.io", "virtualmachineinstances"),
            ("delete", "kubevirt.io", "virtualmachineinstances"),
            ("get", "kubevirt.io", "virtualmachines"),
            ("update", "kubevirt.io", "virtualmachines"),
            ("create", "", "persistentvolumeclaims"),
            ("delete", "", "persistentvolumeclaims"),
            ("list", "", "configmaps"),
            ("delete", "", "nodes"),
            ("create", "", "namespaces"),
        ] {
            assert!(ok(verb, group, resource, false).is_err(), "{verb} {resource}");
        }
    }

    #[test]
    fn the_object_rule_keeps_a_node_to_its_own() {
        let p = node_principal("n1");
        let vmi = |node: &str, finalizers: &[&str], memory: &str| {
            json!({"metadata": {"name": "v", "namespace": "ns", "finalizers": finalizers, "resourceVersion": "3"},
                   "spec": {"domain": {"memory": {"guest": memory}}}, "status": {"nodeName": node, "phase": "Running"}})
        };
        let vmi_kind = &kinds::VIRTUAL_MACHINE_INSTANCE;
        let mine = vmi("n1", &["f"], "1Gi");
        let theirs = vmi("n2", &["f"], "1Gi");
        assert!(admit_write(&p, vmi_kind, Some(&mine), &mine, UpdateMode::Status).is_ok());
        assert!(admit_write(&p, vmi_kind, Some(&theirs), &theirs, UpdateMode::Status).is_err(), "another node's VMI");
        assert!(admit_write(&p, vmi_kind, Some(&mine), &vmi("n2", &["f"], "1Gi"), UpdateMode::Status).is_err());
        assert!(admit_write(&p, vmi_kind, Some(&mine), &vmi("n1", &[], "1Gi"), UpdateMode::Main).is_ok());
        assert!(admit_write(&p, vmi_kind, Some(&mine), &vmi("n1", &[], "8Gi"), UpdateMode::Main).is_err(), "spec");
        assert!(admit_write(&p, vmi_kind, Some(&mine), &vmi("n1", &["f", "g"], "1Gi"), UpdateMode::Main).is_err());
        assert!(admit_write(&p, vmi_kind, None, &mine, UpdateMode::Main).is_err(), "no creates");
        let node = |name: &str| json!({"metadata": {"name": name}});
        assert!(admit_write(&p, &kinds::NODE, None, &node("n1"), UpdateMode::Main).is_ok());
        assert!(admit_write(&p, &kinds::NODE, Some(&node("n2")), &node("n2"), UpdateMode::Status).is_err());
        assert!(admit_write(&p, &kinds::NODE, None, &node("n2"), UpdateMode::Main).is_err());
        let ranged = json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.9.0/24"}});
        assert!(admit_write(&p, &kinds::NODE, None, &ranged, UpdateMode::Main).is_err(), "choosing a pod range");
        assert!(admit_write(&p, &kinds::NODE, Some(&node("n1")), &ranged, UpdateMode::Main).is_err(), "or taking one");
        let relabelled = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        assert!(admit_write(&p, &kinds::NODE, Some(&node("n1")), &relabelled, UpdateMode::Main).is_ok(), "labels");
        assert!(admit_write(&p, &kinds::SERVICE, None, &node("x"), UpdateMode::Main).is_err());
    }
}
