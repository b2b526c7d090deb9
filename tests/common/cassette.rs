//! fog-kubevirt's recorded traffic (VCR cassettes) replayed against Converge: loading, the
//! objects a recording assumes exist, the rewrites that make a recording from another cluster
//! fit this one, and the comparison of each answer with the recorded one over the fields
//! fog-kubevirt reads. Every departure from the recording is a named `Quirk`, never a silent skip.

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const RECORDED_HOST: &str = "https://10.8.254.82:8443";

/// One request and the answer a real KubeVirt cluster gave it.
#[derive(Debug, Clone)]
pub struct Interaction {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<String>,
    pub code: u16,
    pub response: Value,
}

pub fn cassette_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/foreman/cassettes"))
}

/// Every cassette, by file stem, in a stable order.
pub fn all_cassettes() -> Vec<(String, PathBuf)> {
    let mut out = vec![];
    for dir in std::fs::read_dir(cassette_dir()).expect("cassette dir").flatten().filter(|d| d.path().is_dir()) {
        for file in std::fs::read_dir(dir.path()).expect("cassette subdir").flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "yml") {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                out.push((stem, path));
            }
        }
    }
    out.sort();
    out
}

pub fn load(file: &Path) -> Vec<Interaction> {
    let text = std::fs::read_to_string(file).expect("cassette");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("cassette YAML");
    let doc: Value = serde_json::to_value(doc).expect("cassette as JSON");
    let mut out = vec![];
    for i in doc["http_interactions"].as_array().expect("interactions") {
        let req = &i["request"];
        let uri = req["uri"].as_str().unwrap_or_default();
        let body = req["body"]["string"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let content_type = req["headers"]["Content-Type"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_string);
        let text = i["response"]["body"]["string"].as_str().unwrap_or_default();
        out.push(Interaction {
            method: req["method"].as_str().unwrap_or("get").to_uppercase(),
            path: uri.strip_prefix(RECORDED_HOST).unwrap_or(uri).to_string(),
            content_type,
            body,
            code: i["response"]["status"]["code"].as_u64().unwrap_or(0) as u16,
            response: serde_json::from_str(text.trim()).unwrap_or(Value::Null),
        });
    }
    out
}

/// How one cassette is fitted to this server.
#[derive(Debug, Clone)]
pub struct Fit {
    /// The namespace that stands in for the recording's `default`: one per cassette, so every
    /// recorded name is unique on the shared server.
    pub namespace: String,
    /// Appended to PersistentVolume names a claim asks for (cluster-scoped, shared by recordings).
    pub volume_suffix: String,
    /// (recorded containerDisk image, the image in the test's registry).
    pub images: Vec<(String, String)>,
}

/// Machine types of RHEL's QEMU; Debian's QEMU has only the upstream ones.
const RHEL_MACHINE: &str = "pc-q35-rhel";

impl Fit {
    pub fn path(&self, recorded: &str) -> String {
        recorded.replace("/namespaces/default/", &format!("/namespaces/{}/", self.namespace))
    }

    /// Rewrite a recorded object (request or answer alike) into this server's terms.
    pub fn adapt(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, val) in m.iter_mut() {
                    match (k.as_str(), val.as_str()) {
                        ("namespace", Some("default")) => *val = json!(self.namespace),
                        ("networkName", Some(n)) if n.starts_with("default/") => {
                            *val = json!(format!("{}/{}", self.namespace, &n["default/".len()..]))
                        }
                        ("volumeName", Some(n)) if !n.is_empty() => *val = json!(format!("{n}{}", self.volume_suffix)),
                        ("type", Some(t)) if t.starts_with(RHEL_MACHINE) => *val = json!("q35"),
                        ("image", Some(i)) => {
                            if let Some((_, to)) = self.images.iter().find(|(from, _)| from == i) {
                                *val = json!(to);
                            }
                        }
                        _ => self.adapt(val),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.adapt(x)),
            _ => {}
        }
    }
}

/// Departures from a recording that the replay accepts, each for a stated reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// The recording caught a VMI mid-deletion (200 with a deletionTimestamp); with
    /// terminationGracePeriodSeconds 0 Converge has already removed it (404).
    VmiAlreadyGone,
    /// KubeVirt reads a secondary (Multus) interface's address from the guest agent; Converge's
    /// test guests run no agent, so only the pod network's address (which Converge leases) is
    /// checked.
    NoGuestAgent,
    /// A PUT lost a race with a controller's status write (409) and was sent again on the
    /// object as re-read.
    PutConflictRetried,
    /// The recorded DELETE answered with the object, still held by KubeVirt's
    /// `kubevirt.io/virtualMachineControllerFinalize`; Converge's VMs need no finalizer and go at
    /// once (200, Status Success). fog-kubevirt reads neither.
    DeletedAtOnce,
}

/// Server-written annotations of the recorded clusters (kubemacpool, virt-controller, the PV
/// binder), not of KubeVirt's API: not compared.
fn server_written_annotation(key: &str) -> bool {
    key.starts_with("kubemacpool.io/")
        || key.starts_with("pv.kubernetes.io/")
        || key.starts_with("volume.")
        || matches!(
            key,
            "kubevirt.io/latest-observed-api-version"
                | "kubevirt.io/storage-observed-api-version"
                | "kubevirt.io/vm-generation"
                | "kubevirt.io/cluster-instancetype-name"
                | "kubevirt.io/cluster-preference-name"
                | "vm.kubevirt.io/os"
        )
}

/// Labels whose values name the recorded cluster's nodes: present, any value.
fn node_label(key: &str) -> bool {
    key == "kubevirt.io/nodeName"
}

/// Kinds fog-kubevirt uses; discovery entries for others (KubeVirt's CR, migrations, presets as
/// a cluster lists them) are not its concern.
const FOG_KINDS: &[&str] = &[
    "VirtualMachine",
    "VirtualMachineInstance",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "Service",
    "Node",
    "Namespace",
    "Secret",
    "StorageClass",
    "NetworkAttachmentDefinition",
];

/// Whether `ours` holds everything `recorded` holds, with the same values: objects key by key,
/// arrays element by element. Nulls in the recording say nothing.
pub fn contains(recorded: &Value, ours: &Value) -> bool {
    match (recorded, ours) {
        (Value::Null, _) => true,
        (Value::Object(r), Value::Object(o)) => {
            r.iter().all(|(k, rv)| rv.is_null() || o.get(k).is_some_and(|ov| contains(rv, ov)))
        }
        (Value::Array(r), Value::Array(o)) => r.len() == o.len() && r.iter().zip(o).all(|(a, b)| contains(a, b)),
        _ => recorded == ours,
    }
}

fn keep(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| keys.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect(),
        ),
        other => other.clone(),
    }
}

fn each_kept(v: Option<&Value>, keys: &[&str]) -> Option<Value> {
    v.and_then(Value::as_array).map(|a| Value::Array(a.iter().map(|x| keep(x, keys)).collect()))
}

struct Check<'a> {
    problems: Vec<String>,
    rec: &'a Value,
    ours: &'a Value,
}

impl Check<'_> {
    fn eq(&mut self, pointer: &str) {
        if let Some(r) = self.rec.pointer(pointer).filter(|r| !r.is_null()) {
            match self.ours.pointer(pointer) {
                Some(o) if contains(r, o) => {}
                o => self.problems.push(format!("{pointer}: recorded {r}, got {}", o.cloned().unwrap_or(Value::Null))),
            }
        }
    }
    fn eq_value(&mut self, what: &str, r: Option<Value>, o: Option<Value>) {
        if let Some(r) = r {
            if !o.as_ref().is_some_and(|o| contains(&r, o)) {
                self.problems.push(format!("{what}: recorded {r}, got {}", o.unwrap_or(Value::Null)));
            }
        }
    }
    fn present(&mut self, pointer: &str) {
        let empty = |v: &Value| v.is_null() || v.as_str() == Some("");
        if self.rec.pointer(pointer).is_some_and(|r| !empty(r)) && self.ours.pointer(pointer).is_none_or(empty) {
            self.problems.push(format!("{pointer}: recorded a value, got none"));
        }
    }
}

/// The domain fields fog-kubevirt's VM parser reads, under `base` (`/spec/template/spec` or `/spec`).
fn domain_fields(c: &mut Check, base: &str) {
    for f in ["/domain/cpu/cores", "/domain/resources/requests/memory", "/domain/memory/guest"] {
        c.eq(&format!("{base}{f}"));
    }
    // KubeVirt of 2019 kept an empty machine type; Converge (and KubeVirt since) fills the default.
    let machine = format!("{base}/domain/machine/type");
    if c.rec.pointer(&machine).and_then(Value::as_str) != Some("") {
        c.eq(&machine);
    }
    let disks = format!("{base}/domain/devices/disks");
    let disk_keys = ["name", "bootOrder", "disk", "cdrom", "lun", "floppy"];
    c.eq_value(&disks, each_kept(c.rec.pointer(&disks), &disk_keys), each_kept(c.ours.pointer(&disks), &disk_keys));
    let nics = format!("{base}/domain/devices/interfaces");
    let nic_keys = ["name", "macAddress", "bridge", "masquerade", "slirp", "bootOrder"];
    c.eq_value(&nics, each_kept(c.rec.pointer(&nics), &nic_keys), each_kept(c.ours.pointer(&nics), &nic_keys));
    c.eq(&format!("{base}/networks"));
    c.eq(&format!("{base}/volumes"));
}

fn metadata(c: &mut Check) {
    c.eq("/metadata/name");
    c.eq("/metadata/namespace");
    c.present("/metadata/uid");
    c.present("/metadata/resourceVersion");
    let labels = c.rec.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
    for (k, v) in labels {
        let ours = c.ours.pointer("/metadata/labels").and_then(|l| l.get(&k));
        if ours.is_none() || (!node_label(&k) && ours != Some(&v)) {
            c.problems.push(format!("label {k}: recorded {v}, got {}", ours.cloned().unwrap_or(Value::Null)));
        }
    }
    let annotations = c.rec.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
    for (k, v) in annotations.into_iter().filter(|(k, _)| !server_written_annotation(k)) {
        let ours = c.ours.pointer("/metadata/annotations").and_then(|a| a.get(&k));
        if ours != Some(&v) {
            c.problems.push(format!("annotation {k}: recorded {v}, got {}", ours.cloned().unwrap_or(Value::Null)));
        }
    }
    let refs = ["kind", "name", "controller"];
    c.eq_value(
        "/metadata/ownerReferences",
        each_kept(c.rec.pointer("/metadata/ownerReferences"), &refs),
        each_kept(c.ours.pointer("/metadata/ownerReferences"), &refs),
    );
}

/// Problems with `ours` as an answer in place of `recorded`, over what fog-kubevirt reads. A
/// write's answer shows the status as the write found it: status is compared on reads only.
pub fn compare(recorded: &Value, ours: &Value, read: bool) -> Vec<String> {
    let mut c = Check { problems: vec![], rec: recorded, ours };
    let kind = recorded["kind"].as_str().unwrap_or_default();
    match kind {
        "" => {}
        "APIVersions" => {
            if !ours["versions"].as_array().is_some_and(|v| v.contains(&json!("v1"))) {
                c.problems.push(format!("APIVersions without v1: {ours}"));
            }
        }
        "APIGroup" => {
            // The recording's preferred version must be served; Converge prefers kubevirt.io/v1
            // where 2019's KubeVirt preferred v1alpha3, which it still lists.
            c.eq("/name");
            let wanted = &recorded["preferredVersion"]["groupVersion"];
            let served: Vec<&Value> =
                ours["versions"].as_array().into_iter().flatten().map(|v| &v["groupVersion"]).collect();
            if !served.contains(&wanted) {
                c.problems.push(format!("group version {wanted} not served: {ours}"));
            }
        }
        "APIResourceList" => {
            c.eq("/groupVersion");
            for r in recorded["resources"].as_array().into_iter().flatten() {
                let name = r["name"].as_str().unwrap_or_default();
                if name.contains('/') || !FOG_KINDS.contains(&r["kind"].as_str().unwrap_or_default()) {
                    continue;
                }
                let found = ours["resources"].as_array().into_iter().flatten().find(|o| o["name"] == r["name"]);
                let verbs: BTreeSet<&str> =
                    found.and_then(|f| f["verbs"].as_array()).into_iter().flatten().filter_map(Value::as_str).collect();
                let needed: BTreeSet<&str> =
                    r["verbs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                match found {
                    Some(f)
                        if f["kind"] == r["kind"] && f["namespaced"] == r["namespaced"] && needed.is_subset(&verbs) => {
                    }
                    _ => c
                        .problems
                        .push(format!("resource {name}: recorded {r}, got {}", found.cloned().unwrap_or(Value::Null))),
                }
            }
        }
        "Status" => {
            c.eq("/status");
            c.eq("/reason");
            c.eq("/code");
        }
        k if k.ends_with("List") => {
            for item in recorded["items"].as_array().into_iter().flatten() {
                let name = &item["metadata"]["name"];
                let found = ours["items"].as_array().into_iter().flatten().find(|o| &o["metadata"]["name"] == name);
                let mut item = item.clone();
                item["kind"] = json!(k.trim_end_matches("List"));
                match found {
                    Some(o) => {
                        c.problems.extend(compare(&item, o, read).into_iter().map(|p| format!("item {name}: {p}")))
                    }
                    None => c.problems.push(format!("item {name} missing from the list")),
                }
            }
        }
        _ => {
            if ours["kind"] != recorded["kind"] {
                c.problems.push(format!("kind: recorded {kind}, got {}", ours["kind"]));
                return c.problems;
            }
            metadata(&mut c);
            object_fields(&mut c, kind, read);
        }
    }
    c.problems
}

fn object_fields(c: &mut Check, kind: &str, read: bool) {
    match kind {
        "VirtualMachine" => {
            c.eq("/spec/running");
            c.eq("/spec/runStrategy");
            domain_fields(c, "/spec/template/spec");
            let dvt = ["metadata", "spec"];
            let templates = |v: &Value| {
                each_kept(v.pointer("/spec/dataVolumeTemplates"), &dvt).map(|a| {
                    Value::Array(a.as_array().into_iter().flatten().map(|t| json!({"name": t["metadata"]["name"], "sourceRef": t["spec"]["sourceRef"], "source": t["spec"]["source"]})).collect())
                })
            };
            c.eq_value("/spec/dataVolumeTemplates", templates(c.rec), templates(c.ours));
            if read {
                c.eq("/status/printableStatus");
            }
        }
        "VirtualMachineInstance" => {
            domain_fields(c, "/spec");
            if read {
                c.eq("/status/phase");
                c.present("/status/nodeName");
                for (i, iface) in c
                    .rec
                    .pointer("/status/interfaces")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    let ours = c
                        .ours
                        .pointer("/status/interfaces")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|o| o["name"] == iface["name"]))
                        .cloned();
                    let Some(ours) = ours else {
                        c.problems.push(format!("/status/interfaces/{i}: recorded {iface}, got none by that name"));
                        continue;
                    };
                    // Addresses on secondary networks come from the guest agent in KubeVirt; the
                    // test guests run none (Quirk::NoGuestAgent). Pod addresses Converge leases.
                    let on_pod_network = c
                        .rec
                        .pointer("/spec/networks")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .any(|n| n["name"] == iface["name"] && n.get("pod").is_some());
                    let fields: &[&str] = if on_pod_network { &["ipAddress", "mac"] } else { &["mac"] };
                    for field in fields {
                        if iface.get(*field).is_some() && ours[*field].as_str().is_none_or(str::is_empty) {
                            c.problems.push(format!("/status/interfaces/{i}/{field}: recorded a value, got none"));
                        }
                    }
                }
            }
        }
        "PersistentVolumeClaim" => {
            for f in ["accessModes", "resources", "storageClassName", "volumeName", "volumeMode", "selector"] {
                c.eq(&format!("/spec/{f}"));
            }
            if read {
                c.eq("/status/phase");
            }
        }
        "PersistentVolume" => {
            for f in [
                "capacity",
                "accessModes",
                "hostPath",
                "storageClassName",
                "persistentVolumeReclaimPolicy",
                "volumeMode",
            ] {
                c.eq(&format!("/spec/{f}"));
            }
            if read {
                c.eq("/status/phase");
            }
        }
        "Service" => {
            for f in ["ports", "selector", "type"] {
                c.eq(&format!("/spec/{f}"));
            }
            c.present("/spec/clusterIP");
        }
        "NetworkAttachmentDefinition" => c.eq("/spec/config"),
        "StorageClass" => {
            for f in ["/provisioner", "/parameters", "/reclaimPolicy", "/volumeBindingMode"] {
                c.eq(f);
            }
        }
        "Node" => {
            c.present("/status/nodeInfo");
            c.present("/status/addresses");
        }
        _ => {}
    }
}

/// A recorded object as something to create: what the server assigns, and nulls, removed.
pub fn as_fixture(recorded: &Value) -> Value {
    let mut obj = strip_nulls(recorded.clone());
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
            "selfLink",
            "finalizers",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "generateName",
        ] {
            m.remove(k);
        }
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.retain(|k, _| !server_written_annotation(k));
        }
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
    obj
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect::<Map<_, _>>(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Where an object of a recorded answer lives: its collection path (with namespace) and name.
pub fn object_key(collection: &str, obj: &Value) -> (String, String) {
    (collection.to_string(), obj["metadata"]["name"].as_str().unwrap_or_default().to_string())
}

/// `/api/v1/namespaces/ns/pvcs/name` → (`/api/v1/namespaces/ns/pvcs`, `name`).
pub fn split_object_path(path: &str) -> Option<(String, String)> {
    let path = path.split('?').next().unwrap_or(path);
    let (collection, name) = path.rsplit_once('/')?;
    Some((collection.to_string(), name.to_string()))
}

/// The objects `interactions` read before (or without) creating them: what the recorded
/// cluster already held. Single GETs before any POST of that object, and list items the
/// cassette never creates.
pub fn assumed_objects(interactions: &[Interaction]) -> Vec<(String, Value)> {
    let posted: BTreeSet<(String, String)> = interactions
        .iter()
        .filter(|i| i.method == "POST")
        .filter_map(|i| {
            i.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()).map(|b| object_key(&i.path, &b))
        })
        .collect();
    let mut seen_posts = BTreeSet::new();
    let mut out: Vec<(String, Value)> = vec![];
    let add = |collection: String, obj: Value, out: &mut Vec<(String, Value)>| {
        let key = object_key(&collection, &obj);
        if !out.iter().any(|(c, o)| object_key(c, o) == key) {
            out.push((collection, obj));
        }
    };
    for i in interactions {
        if i.method == "POST" {
            if let Some(b) = i.body.as_deref().and_then(|b| serde_json::from_str::<Value>(b).ok()) {
                seen_posts.insert(object_key(&i.path, &b));
            }
            continue;
        }
        if i.method != "GET" || i.code != 200 {
            continue;
        }
        let kind = i.response["kind"].as_str().unwrap_or_default();
        if kind.ends_with("List") && kind != "APIResourceList" && kind != "APIGroupList" {
            let collection = i.path.split('?').next().unwrap_or(&i.path).to_string();
            for item in i.response["items"].as_array().into_iter().flatten() {
                let mut item = item.clone();
                item["kind"] = json!(kind.trim_end_matches("List"));
                if item.get("apiVersion").is_none() {
                    item["apiVersion"] = i.response["apiVersion"].clone();
                }
                if !posted.contains(&object_key(&collection, &item)) {
                    add(collection.clone(), item, &mut out);
                }
            }
        } else if i.response["metadata"]["name"].is_string() && !kind.is_empty() {
            if let Some((collection, _)) = split_object_path(&i.path) {
                if !seen_posts.contains(&object_key(&collection, &i.response)) {
                    add(collection, i.response.clone(), &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_ignores_extras_and_nulls() {
        assert!(contains(&json!({"a": 1, "b": null}), &json!({"a": 1, "c": 2})));
        assert!(!contains(&json!({"a": [1, 2]}), &json!({"a": [1]})));
        assert!(!contains(&json!({"a": "x"}), &json!({"a": "y"})));
    }
}
