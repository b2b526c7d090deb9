//! The registry of served kinds: everything the router, discovery, the store and the OpenAPI
//! documents need to know about a kind lives in one table row.

/// What the apiserver knows about one resource.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    pub categories: &'static [&'static str],
    pub status_subresource: bool,
    pub scale_subresource: bool,
    /// Definition name in the schema registry (`crate::schema`).
    pub definition: &'static str,
    /// Only `create` is served (a virtual resource such as UploadTokenRequest): nothing is stored.
    pub create_only: bool,
}

impl ResourceKind {
    /// `v1` or `kubevirt.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Key the store files objects under: stable across versions of one group.
    pub fn store_key(&self) -> String {
        format!("{}/{}", if self.group.is_empty() { "core" } else { self.group }, self.plural)
    }
    /// Core kinds accept strategic-merge-patch; custom resources answer 415, as CRDs do.
    pub fn is_core(&self) -> bool {
        self.group.is_empty()
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    /// The `/api/v1` or `/apis/g/v` prefix.
    pub fn path_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

pub const KUBEVIRT_GROUP: &str = "kubevirt.io";

pub static VIRTUAL_MACHINE: ResourceKind = ResourceKind {
    group: KUBEVIRT_GROUP,
    version: "v1",
    kind: "VirtualMachine",
    plural: "virtualmachines",
    singular: "virtualmachine",
    short_names: &["vm", "vms"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "v1.VirtualMachine",
    create_only: false,
};

pub static VIRTUAL_MACHINE_INSTANCE: ResourceKind = ResourceKind {
    group: KUBEVIRT_GROUP,
    version: "v1",
    kind: "VirtualMachineInstance",
    plural: "virtualmachineinstances",
    singular: "virtualmachineinstance",
    short_names: &["vmi", "vmis"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "v1.VirtualMachineInstance",
    create_only: false,
};

pub static VIRTUAL_MACHINE_INSTANCE_REPLICA_SET: ResourceKind = ResourceKind {
    group: KUBEVIRT_GROUP,
    version: "v1",
    kind: "VirtualMachineInstanceReplicaSet",
    plural: "virtualmachineinstancereplicasets",
    singular: "virtualmachineinstancereplicaset",
    short_names: &["vmirs", "vmirss"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: true,
    definition: "v1.VirtualMachineInstanceReplicaSet",
    create_only: false,
};

pub static VIRTUAL_MACHINE_INSTANCE_MIGRATION: ResourceKind = ResourceKind {
    group: KUBEVIRT_GROUP,
    version: "v1",
    kind: "VirtualMachineInstanceMigration",
    plural: "virtualmachineinstancemigrations",
    singular: "virtualmachineinstancemigration",
    short_names: &["vmim", "vmims"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "v1.VirtualMachineInstanceMigration",
    create_only: false,
};

pub const MIGRATIONS_GROUP: &str = "migrations.kubevirt.io";

pub static MIGRATION_POLICY: ResourceKind = ResourceKind {
    group: MIGRATIONS_GROUP,
    version: "v1alpha1",
    kind: "MigrationPolicy",
    plural: "migrationpolicies",
    singular: "migrationpolicy",
    short_names: &[],
    namespaced: false,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "v1alpha1.MigrationPolicy",
    create_only: false,
};

pub static VIRTUAL_MACHINE_INSTANCE_PRESET: ResourceKind = ResourceKind {
    group: KUBEVIRT_GROUP,
    version: "v1",
    kind: "VirtualMachineInstancePreset",
    plural: "virtualmachineinstancepresets",
    singular: "virtualmachineinstancepreset",
    short_names: &["vmipreset", "vmipresets"],
    namespaced: true,
    categories: &["all"],
    status_subresource: false,
    scale_subresource: false,
    definition: "v1.VirtualMachineInstancePreset",
    create_only: false,
};

pub static NAMESPACE: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    short_names: &["ns"],
    namespaced: false,
    categories: &[],
    status_subresource: true,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Namespace",
    create_only: false,
};

pub static SECRET: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    short_names: &[],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Secret",
    create_only: false,
};

pub static CONFIG_MAP: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    short_names: &["cm"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.ConfigMap",
    create_only: false,
};

pub const INSTANCETYPE_GROUP: &str = "instancetype.kubevirt.io";

pub static INSTANCETYPE: ResourceKind = ResourceKind {
    group: INSTANCETYPE_GROUP,
    version: "v1beta1",
    kind: "VirtualMachineInstancetype",
    plural: "virtualmachineinstancetypes",
    singular: "virtualmachineinstancetype",
    short_names: &["vminstancetype", "vminstancetypes", "vmf", "vmfs"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "v1beta1.VirtualMachineInstancetype",
    create_only: false,
};

pub static CLUSTER_INSTANCETYPE: ResourceKind = ResourceKind {
    group: INSTANCETYPE_GROUP,
    version: "v1beta1",
    kind: "VirtualMachineClusterInstancetype",
    plural: "virtualmachineclusterinstancetypes",
    singular: "virtualmachineclusterinstancetype",
    short_names: &["vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs"],
    namespaced: false,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "v1beta1.VirtualMachineClusterInstancetype",
    create_only: false,
};

pub static PREFERENCE: ResourceKind = ResourceKind {
    group: INSTANCETYPE_GROUP,
    version: "v1beta1",
    kind: "VirtualMachinePreference",
    plural: "virtualmachinepreferences",
    singular: "virtualmachinepreference",
    short_names: &["vmpref", "vmprefs", "vmp", "vmps"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "v1beta1.VirtualMachinePreference",
    create_only: false,
};

pub static CLUSTER_PREFERENCE: ResourceKind = ResourceKind {
    group: INSTANCETYPE_GROUP,
    version: "v1beta1",
    kind: "VirtualMachineClusterPreference",
    plural: "virtualmachineclusterpreferences",
    singular: "virtualmachineclusterpreference",
    short_names: &["vmcp", "vmcps"],
    namespaced: false,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "v1beta1.VirtualMachineClusterPreference",
    create_only: false,
};

pub static CONTROLLER_REVISION: ResourceKind = ResourceKind {
    group: "apps",
    version: "v1",
    kind: "ControllerRevision",
    plural: "controllerrevisions",
    singular: "controllerrevision",
    short_names: &[],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.apps.v1.ControllerRevision",
    create_only: false,
};

pub static NODE: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    short_names: &["no"],
    namespaced: false,
    categories: &[],
    status_subresource: true,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Node",
    create_only: false,
};

pub static EVENT: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    short_names: &["ev"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Event",
    create_only: false,
};

pub const STORAGE_GROUP: &str = "storage.k8s.io";
pub const CDI_GROUP: &str = "cdi.kubevirt.io";
pub const UPLOAD_GROUP: &str = "upload.cdi.kubevirt.io";

pub static PERSISTENT_VOLUME_CLAIM: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "PersistentVolumeClaim",
    plural: "persistentvolumeclaims",
    singular: "persistentvolumeclaim",
    short_names: &["pvc"],
    namespaced: true,
    categories: &[],
    status_subresource: true,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.PersistentVolumeClaim",
    create_only: false,
};

pub static PERSISTENT_VOLUME: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "PersistentVolume",
    plural: "persistentvolumes",
    singular: "persistentvolume",
    short_names: &["pv"],
    namespaced: false,
    categories: &[],
    status_subresource: true,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.PersistentVolume",
    create_only: false,
};

pub static STORAGE_CLASS: ResourceKind = ResourceKind {
    group: STORAGE_GROUP,
    version: "v1",
    kind: "StorageClass",
    plural: "storageclasses",
    singular: "storageclass",
    short_names: &["sc"],
    namespaced: false,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.storage.v1.StorageClass",
    create_only: false,
};

pub static DATA_VOLUME: ResourceKind = ResourceKind {
    group: CDI_GROUP,
    version: "v1beta1",
    kind: "DataVolume",
    plural: "datavolumes",
    singular: "datavolume",
    short_names: &["dv", "dvs"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "cdi.v1beta1.DataVolume",
    create_only: false,
};

pub static DATA_SOURCE: ResourceKind = ResourceKind {
    group: CDI_GROUP,
    version: "v1beta1",
    kind: "DataSource",
    plural: "datasources",
    singular: "datasource",
    short_names: &["das"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "cdi.v1beta1.DataSource",
    create_only: false,
};

pub static STORAGE_PROFILE: ResourceKind = ResourceKind {
    group: CDI_GROUP,
    version: "v1beta1",
    kind: "StorageProfile",
    plural: "storageprofiles",
    singular: "storageprofile",
    short_names: &[],
    namespaced: false,
    categories: &[],
    status_subresource: true,
    scale_subresource: false,
    definition: "cdi.v1beta1.StorageProfile",
    create_only: false,
};

pub static UPLOAD_TOKEN_REQUEST: ResourceKind = ResourceKind {
    group: UPLOAD_GROUP,
    version: "v1beta1",
    kind: "UploadTokenRequest",
    plural: "uploadtokenrequests",
    singular: "uploadtokenrequest",
    short_names: &["utr", "utrs"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "cdi.v1beta1.UploadTokenRequest",
    create_only: true,
};

/// Every served kind, in discovery order.
pub static SERVICE: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    short_names: &["svc"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Service",
    create_only: false,
};

pub static ENDPOINTS: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    short_names: &["ep"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Endpoints",
    create_only: false,
};

pub static ENDPOINT_SLICE: ResourceKind = ResourceKind {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    short_names: &[],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.api.discovery.v1.EndpointSlice",
    create_only: false,
};

pub static NETWORK_ATTACHMENT_DEFINITION: ResourceKind = ResourceKind {
    group: "k8s.cni.cncf.io",
    version: "v1",
    kind: "NetworkAttachmentDefinition",
    plural: "network-attachment-definitions",
    singular: "network-attachment-definition",
    short_names: &["net-attach-def"],
    namespaced: true,
    categories: &[],
    status_subresource: false,
    scale_subresource: false,
    definition: "io.k8s.cni.cncf.v1.NetworkAttachmentDefinition",
    create_only: false,
};

/// Launcher pods, on a Kubernetes cluster only: the embedded API does not serve Pods (it is not
/// in [`ALL`]), the controllers read and write them through a kube-apiserver.
pub static POD: ResourceKind = ResourceKind {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    short_names: &["po"],
    namespaced: true,
    categories: &["all"],
    status_subresource: true,
    scale_subresource: false,
    definition: "io.k8s.api.core.v1.Pod",
    create_only: false,
};

pub static ALL: &[&ResourceKind] = &[
    &NAMESPACE,
    &NODE,
    &SECRET,
    &CONFIG_MAP,
    &EVENT,
    &PERSISTENT_VOLUME_CLAIM,
    &PERSISTENT_VOLUME,
    &VIRTUAL_MACHINE,
    &VIRTUAL_MACHINE_INSTANCE,
    &VIRTUAL_MACHINE_INSTANCE_REPLICA_SET,
    &VIRTUAL_MACHINE_INSTANCE_PRESET,
    &VIRTUAL_MACHINE_INSTANCE_MIGRATION,
    &INSTANCETYPE,
    &CLUSTER_INSTANCETYPE,
    &PREFERENCE,
    &CLUSTER_PREFERENCE,
    &CONTROLLER_REVISION,
    &STORAGE_CLASS,
    &DATA_VOLUME,
    &DATA_SOURCE,
    &STORAGE_PROFILE,
    &UPLOAD_TOKEN_REQUEST,
    &SERVICE,
    &ENDPOINTS,
    &ENDPOINT_SLICE,
    &NETWORK_ATTACHMENT_DEFINITION,
    &MIGRATION_POLICY,
];

/// Whether the kind's CRD on a Kubernetes cluster has a status subresource: as the kind table
/// says, except VMIs — KubeVirt's VMI CRD has none (its webhook turns back others' status
/// changes instead), while the embedded API serves `/status` for them.
pub fn crd_status_subresource(kind: &ResourceKind) -> bool {
    kind.status_subresource && !std::ptr::eq(kind, &VIRTUAL_MACHINE_INSTANCE)
}

/// The kind served at `group/version` under `plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceKind> {
    ALL.iter().copied().find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Every kind served at `group/version`.
pub fn served_at(group: &str, version: &str) -> Vec<&'static ResourceKind> {
    ALL.iter().copied().filter(|k| k.group == group && k.version == version).collect()
}

/// Look a kind up by its store key.
pub fn by_store_key(key: &str) -> Option<&'static ResourceKind> {
    ALL.iter().copied().find(|k| k.store_key() == key)
}

/// Group/versions served, in discovery order, groups first-seen.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = vec![];
    for k in ALL {
        if !out.contains(&(k.group, k.version)) {
            out.push((k.group, k.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_are_unique_within_a_group_version() {
        for a in ALL {
            let same = ALL.iter().filter(|b| b.group == a.group && b.version == a.version && b.plural == a.plural);
            assert_eq!(same.count(), 1, "{}", a.plural);
        }
    }

    #[test]
    fn short_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in ALL {
            for s in k.short_names {
                assert!(seen.insert(*s), "{s}");
            }
        }
    }

    #[test]
    fn lookups_agree() {
        assert_eq!(by_plural("kubevirt.io", "v1", "virtualmachines"), Some(&VIRTUAL_MACHINE));
        assert_eq!(by_store_key("core/namespaces"), Some(&NAMESPACE));
        assert_eq!(
            group_versions(),
            vec![
                ("", "v1"),
                ("kubevirt.io", "v1"),
                ("instancetype.kubevirt.io", "v1beta1"),
                ("apps", "v1"),
                ("storage.k8s.io", "v1"),
                ("cdi.kubevirt.io", "v1beta1"),
                ("upload.cdi.kubevirt.io", "v1beta1"),
                ("discovery.k8s.io", "v1"),
                ("k8s.cni.cncf.io", "v1"),
                ("migrations.kubevirt.io", "v1alpha1"),
            ]
        );
    }
}
