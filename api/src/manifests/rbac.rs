//! RBAC: `converge:view`, `converge:edit` and `converge:admin`, aggregated into Kubernetes'
//! own view, edit and admin roles as KubeVirt's `kubevirt.io:view/edit/admin` are, so binding a
//! user to `edit` in a namespace lets them run VMs there. Live migrations are neither edit's nor
//! admin's (KubeVirt 1.5): `converge:migrate`, as `kubevirt.io:migrate`, is bound on its own.

use super::{crd::custom_kinds, part_of};
use converge_engine::kinds::ResourceKind;
use serde_json::{json, Value};

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];
const ADMIN: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

/// The kinds of KubeVirt's and CDI's groups (not Multus's NetworkAttachmentDefinitions).
fn user_kinds() -> Vec<&'static ResourceKind> {
    custom_kinds(false)
}

/// One rule per group over `kinds`, in table order.
fn rules(kinds: &[&'static ResourceKind], verbs: &[&str]) -> Vec<Value> {
    let mut groups: Vec<&str> = vec![];
    for k in kinds {
        if !groups.contains(&k.group) {
            groups.push(k.group);
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let resources: Vec<&str> = kinds.iter().filter(|k| k.group == g).map(|k| k.plural).collect();
            json!({"apiGroups": [g], "resources": resources, "verbs": verbs})
        })
        .collect()
}

fn cluster_role(name: &str, aggregate_to: &str, rules: Vec<Value>) -> Value {
    let mut labels = part_of();
    if !aggregate_to.is_empty() {
        labels[format!("rbac.authorization.k8s.io/aggregate-to-{aggregate_to}")] = json!("true");
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": rules,
    })
}

/// The user-facing roles. Cluster-scoped kinds (cluster instancetypes and preferences, storage
/// profiles) stay read-only below `admin`: a namespace's editor chooses among them. With the
/// aggregated API, editors and admins may use its VM verbs.
pub fn cluster_roles(aggregated_api: bool) -> Vec<Value> {
    let all = user_kinds();
    let migrations = [&converge_engine::kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION];
    let is_migration = |k: &&ResourceKind| std::ptr::eq(*k, migrations[0]);
    let namespaced: Vec<_> = all.iter().copied().filter(|k| k.namespaced && !is_migration(k)).collect();
    let cluster: Vec<_> = all.iter().copied().filter(|k| !k.namespaced).collect();
    let mut edit = rules(&namespaced, WRITE);
    edit.extend(rules(&cluster, READ));
    edit.extend(rules(&migrations, READ));
    let mut admin = rules(&namespaced, ADMIN);
    admin.extend(rules(&cluster, READ));
    admin.extend(rules(&migrations, READ));
    let mut migrate = rules(&migrations, ADMIN);
    if aggregated_api {
        edit.extend(super::aggregated::edit_rules());
        admin.extend(super::aggregated::edit_rules());
        migrate.extend(super::aggregated::migrate_rules());
    }
    vec![
        cluster_role("converge:view", "view", rules(&all, READ)),
        cluster_role("converge:edit", "edit", edit),
        cluster_role("converge:admin", "admin", admin),
        cluster_role("converge:migrate", "", migrate),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_engine::kinds;

    #[test]
    fn editors_write_namespaced_kinds_and_read_cluster_ones() {
        let roles = cluster_roles(true);
        let edit = &roles[1];
        assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
        let rule_for = |plural: &str| {
            edit["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["resources"].as_array().is_some_and(|rs| rs.contains(&json!(plural))))
                .cloned()
                .unwrap_or_default()
        };
        assert!(rule_for("virtualmachines")["verbs"].as_array().is_some_and(|v| v.contains(&json!("create"))));
        assert_eq!(rule_for("virtualmachineclusterinstancetypes")["verbs"], json!(READ));
        assert_eq!(rule_for("datavolumes")["apiGroups"], json!([kinds::CDI_GROUP]));
        assert!(rule_for("network-attachment-definitions").is_null());
        assert_eq!(rule_for("virtualmachines/start")["verbs"], json!(["update"]));
        assert!(cluster_roles(false)[1].to_string().find("virtualmachines/start").is_none());
        assert_eq!(rule_for("virtualmachineinstancemigrations")["verbs"], json!(READ), "not edit's to start");
        let migrate = &roles[3];
        assert_eq!(migrate["metadata"]["name"], "converge:migrate");
        assert!(migrate["metadata"]["labels"].as_object().is_some_and(|l| !l.keys().any(|k| k.contains("aggregate"))));
        assert!(migrate["rules"][0]["verbs"].as_array().is_some_and(|v| v.contains(&json!("create"))));
    }
}
