//! Foreman compatibility: old API versions served as other names for the current one.
//!
//! Foreman's KubeVirt plugin pins `kubevirt.io/v1alpha3`, which KubeVirt still serves beside
//! `v1` from the same stored objects (its CRD's `None` conversion changes only `apiVersion`). An
//! alias resolves to the `&'static ResourceKind` of the version it stands for, so admission,
//! controllers and the store never see it; only what goes out on the wire is shown in it.

use converge_engine::kinds::{self, ResourceKind};
use serde_json::Value;

/// `group/alias` is served as `group/version`.
#[derive(Debug, PartialEq, Eq)]
pub struct VersionAlias {
    pub group: &'static str,
    pub alias: &'static str,
    pub version: &'static str,
}

impl VersionAlias {
    /// `kubevirt.io/v1alpha3`.
    pub fn api_version(&self) -> String {
        format!("{}/{}", self.group, self.alias)
    }

    /// Show an outgoing object in the alias: only its top-level `apiVersion` changes.
    pub fn present(&self, obj: &mut Value) {
        if obj.get("apiVersion").is_some() {
            obj["apiVersion"] = Value::String(self.api_version());
        }
    }
}

pub static VERSION_ALIASES: &[VersionAlias] =
    &[VersionAlias { group: kinds::KUBEVIRT_GROUP, alias: "v1alpha3", version: "v1" }];

/// The alias `group/version` names, if it is one.
pub fn alias_of(group: &str, version: &str) -> Option<&'static VersionAlias> {
    VERSION_ALIASES.iter().find(|a| a.group == group && a.alias == version)
}

/// The version `group/version` stands for: itself unless it is an alias.
pub fn canonical_version<'a>(group: &str, version: &'a str) -> &'a str {
    alias_of(group, version).map_or(version, |a| a.version)
}

/// The kind served at `group/version` under `plural`, aliases resolved.
pub fn kind_at(group: &str, version: &str, plural: &str) -> Option<&'static ResourceKind> {
    kinds::by_plural(group, canonical_version(group, version), plural)
}

/// Every kind served at `group/version`, aliases resolved.
pub fn kinds_at(group: &str, version: &str) -> Vec<&'static ResourceKind> {
    kinds::served_at(group, canonical_version(group, version))
}

/// What discovery lists: every group/version, each alias right after the version it stands for,
/// so the current version comes first and is the preferred one.
pub fn served_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out = vec![];
    for (g, v) in kinds::group_versions() {
        out.push((g, v));
        out.extend(VERSION_ALIASES.iter().filter(|a| a.group == g && a.version == v).map(|a| (a.group, a.alias)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_alias_resolves_to_the_same_kind() {
        let kind = kind_at(kinds::KUBEVIRT_GROUP, "v1alpha3", "virtualmachines");
        assert!(kind.is_some_and(|k| std::ptr::eq(k, &kinds::VIRTUAL_MACHINE)));
        assert_eq!(kinds_at(kinds::KUBEVIRT_GROUP, "v1alpha3").len(), kinds_at(kinds::KUBEVIRT_GROUP, "v1").len());
        assert!(kind_at(kinds::CDI_GROUP, "v1alpha3", "datavolumes").is_none());
        let kubevirt: Vec<&str> =
            served_group_versions().into_iter().filter(|(g, _)| *g == kinds::KUBEVIRT_GROUP).map(|(_, v)| v).collect();
        assert_eq!(kubevirt, ["v1", "v1alpha3"]);
    }

    #[test]
    fn presenting_changes_only_the_top_level_api_version() {
        let alias = alias_of("kubevirt.io", "v1alpha3").expect("alias");
        let mut vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"ownerReferences": [{"apiVersion": "kubevirt.io/v1"}]}});
        alias.present(&mut vm);
        assert_eq!(vm["apiVersion"], "kubevirt.io/v1alpha3");
        assert_eq!(vm["metadata"]["ownerReferences"][0]["apiVersion"], "kubevirt.io/v1");
        let mut status = json!({"kind": "Status"});
        alias.present(&mut status);
        assert!(status.get("apiVersion").is_none());
    }
}
