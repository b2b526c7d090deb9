//! `meta.k8s.io/v1` Tables for `kubectl get`, with KubeVirt's printer columns.

use crate::request::IncludeObject;
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::meta;
use serde_json::{json, Value};

#[path = "table_network.rs"]
mod network;
#[path = "table_storage.rs"]
mod storage;

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: i64,
    description: &'static str,
    cell: Cell,
}

/// What a column shows. The kinds served as CRDs on a real cluster use only the forms a CRD's
/// `additionalPrinterColumns` can say as a JSONPath, so `kubectl get` reads alike in both modes.
#[derive(Clone, Copy)]
pub(crate) enum Cell {
    Name,
    Age,
    /// A JSON pointer.
    Field(&'static str),
    /// `status` of the condition of this type.
    Condition(&'static str),
    Computed(fn(&Value) -> Value),
}

impl Cell {
    fn value(&self, o: &Value) -> Value {
        match self {
            Cell::Name => json!(meta::name(o)),
            Cell::Age => age(o),
            Cell::Field(pointer) => text(o, pointer),
            Cell::Condition(kind) => condition_status(o, kind),
            Cell::Computed(f) => f(o),
        }
    }

    /// The column as a JSONPath of `additionalPrinterColumns`; `None` for Name (a CRD's first
    /// column always) and for computed cells.
    fn json_path(&self) -> Option<String> {
        match self {
            Cell::Name | Cell::Computed(_) => None,
            Cell::Age => Some(".metadata.creationTimestamp".into()),
            Cell::Field(pointer) => Some(pointer.split('/').skip(1).fold(String::new(), |mut path, part| {
                if part.bytes().all(|b| b.is_ascii_digit()) {
                    path.push_str(&format!("[{part}]"));
                } else {
                    path.push('.');
                    path.push_str(part);
                }
                path
            })),
            Cell::Condition(kind) => Some(format!(".status.conditions[?(@.type=='{kind}')].status")),
        }
    }
}

/// A CRD's `additionalPrinterColumns` for `kind`: the columns `kubectl get` shows from the
/// embedded API, Name left out (a CRD always shows it first). `None` when a column has no JSONPath.
pub fn printer_columns(kind: &ResourceKind) -> Option<Vec<Value>> {
    let mut out = vec![];
    for c in columns(kind) {
        if matches!(c.cell, Cell::Name) {
            continue;
        }
        let path = c.cell.json_path()?;
        let kind = if matches!(c.cell, Cell::Age) { "date" } else { c.kind };
        let mut column = json!({"name": c.name, "type": kind, "jsonPath": path});
        if c.priority != 0 {
            column["priority"] = json!(c.priority);
        }
        if !c.format.is_empty() && c.format != "name" {
            column["format"] = json!(c.format);
        }
        out.push(column);
    }
    Some(out)
}

fn condition_status(obj: &Value, condition: &str) -> Value {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(condition)))
        .and_then(|c| c.get("status"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn text(obj: &Value, pointer: &str) -> Value {
    obj.pointer(pointer).cloned().unwrap_or(Value::Null)
}

fn age(obj: &Value) -> Value {
    match meta::meta_str(obj, "creationTimestamp").and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => json!(human_duration(chrono::Utc::now().signed_duration_since(t).num_seconds())),
        None => json!("<unknown>"),
    }
}

/// Kubernetes' `duration.HumanDuration`, so ages read as kubectl users expect.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
    cell: Cell::Name,
};
const AGE: Column = Column {
    name: "Age",
    kind: "date",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    cell: Cell::Age,
};

fn count_keys(o: &Value, fields: &[&str]) -> Value {
    json!(fields.iter().map(|f| o.get(*f).and_then(Value::as_object).map_or(0, |m| m.len())).sum::<usize>())
}

fn columns(kind: &ResourceKind) -> Vec<Column> {
    if let Some(columns) = storage::columns(kind).or_else(|| network::columns(kind)) {
        columns
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE) {
        vec![
            NAME,
            AGE,
            Column {
                name: "Status",
                kind: "string",
                format: "",
                priority: 0,
                description: "Human Readable Status",
                cell: Cell::Field("/status/printableStatus"),
            },
            Column {
                name: "Ready",
                kind: "string",
                format: "",
                priority: 0,
                description: "Ready",
                cell: Cell::Condition("Ready"),
            },
        ]
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE) {
        vec![
            NAME,
            AGE,
            Column {
                name: "Phase",
                kind: "string",
                format: "",
                priority: 0,
                description: "Phase",
                cell: Cell::Field("/status/phase"),
            },
            Column {
                name: "IP",
                kind: "string",
                format: "",
                priority: 0,
                description: "IP",
                cell: Cell::Field("/status/interfaces/0/ipAddress"),
            },
            Column {
                name: "NodeName",
                kind: "string",
                format: "",
                priority: 0,
                description: "NodeName",
                cell: Cell::Field("/status/nodeName"),
            },
            Column {
                name: "Ready",
                kind: "string",
                format: "",
                priority: 0,
                description: "Ready",
                cell: Cell::Condition("Ready"),
            },
            Column {
                name: "Live-Migratable",
                kind: "string",
                format: "",
                priority: 1,
                description: "Live-Migratable",
                cell: Cell::Condition("LiveMigratable"),
            },
            Column {
                name: "Paused",
                kind: "string",
                format: "",
                priority: 1,
                description: "Paused",
                cell: Cell::Condition("Paused"),
            },
        ]
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE_MIGRATION) {
        // KubeVirt's printer columns for migrations: no age.
        vec![
            NAME,
            Column {
                name: "Phase",
                kind: "string",
                format: "",
                priority: 0,
                description: "The migration phase",
                cell: Cell::Field("/status/phase"),
            },
            Column {
                name: "VMI",
                kind: "string",
                format: "",
                priority: 0,
                description: "The name of the VMI to perform the migration on",
                cell: Cell::Field("/spec/vmiName"),
            },
        ]
    } else if std::ptr::eq(kind, &kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET) {
        vec![
            NAME,
            Column {
                name: "Desired",
                kind: "integer",
                format: "",
                priority: 0,
                description: "Number of desired VirtualMachineInstances",
                cell: Cell::Field("/spec/replicas"),
            },
            Column {
                name: "Current",
                kind: "integer",
                format: "",
                priority: 0,
                description: "Number of managed and not final or deleted VirtualMachineInstances",
                cell: Cell::Field("/status/replicas"),
            },
            Column {
                name: "Ready",
                kind: "integer",
                format: "",
                priority: 0,
                description: "Number of managed VirtualMachineInstances which are ready to receive traffic",
                cell: Cell::Field("/status/readyReplicas"),
            },
            AGE,
        ]
    } else if std::ptr::eq(kind, &kinds::NAMESPACE) {
        vec![
            NAME,
            Column {
                name: "Status",
                kind: "string",
                format: "",
                priority: 0,
                description: "The status of the namespace",
                cell: Cell::Field("/status/phase"),
            },
            AGE,
        ]
    } else if std::ptr::eq(kind, &kinds::NODE) {
        vec![
            NAME,
            Column {
                name: "Status",
                kind: "string",
                format: "",
                priority: 0,
                description: "Ready, NotReady, plus SchedulingDisabled when cordoned",
                cell: Cell::Computed(|o| {
                    let ready = condition_status(o, "Ready") == Value::String("True".into());
                    let mut s = if ready { "Ready" } else { "NotReady" }.to_string();
                    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                        s.push_str(",SchedulingDisabled");
                    }
                    Value::String(s)
                }),
            },
            Column {
                name: "Roles",
                kind: "string",
                format: "",
                priority: 0,
                description: "The roles of the node",
                cell: Cell::Computed(|_| Value::String("<none>".into())),
            },
            AGE,
            Column {
                name: "Version",
                kind: "string",
                format: "",
                priority: 0,
                description: "The node agent's version",
                cell: Cell::Field("/status/nodeInfo/kubeletVersion"),
            },
        ]
    } else if std::ptr::eq(kind, &kinds::SECRET) {
        vec![
            NAME,
            Column {
                name: "Type",
                kind: "string",
                format: "",
                priority: 0,
                description: "The type of the secret",
                cell: Cell::Field("/type"),
            },
            Column {
                name: "Data",
                kind: "string",
                format: "",
                priority: 0,
                description: "The number of entries in the secret",
                cell: Cell::Computed(|o| count_keys(o, &["data"])),
            },
            AGE,
        ]
    } else if std::ptr::eq(kind, &kinds::CONFIG_MAP) {
        vec![
            NAME,
            Column {
                name: "Data",
                kind: "string",
                format: "",
                priority: 0,
                description: "The number of entries",
                cell: Cell::Computed(|o| count_keys(o, &["data", "binaryData"])),
            },
            AGE,
        ]
    } else if std::ptr::eq(kind, &kinds::EVENT) {
        vec![
            Column {
                name: "Last Seen",
                kind: "string",
                format: "",
                priority: 0,
                description: "Time since the event was last seen",
                cell: Cell::Computed(|o| {
                    let t = o
                        .get("lastTimestamp")
                        .or_else(|| o.get("eventTime"))
                        .and_then(Value::as_str)
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                    t.map(|t| json!(human_duration(chrono::Utc::now().signed_duration_since(t).num_seconds())))
                        .unwrap_or_else(|| age(o))
                }),
            },
            Column {
                name: "Type",
                kind: "string",
                format: "",
                priority: 0,
                description: "Type of this event",
                cell: Cell::Field("/type"),
            },
            Column {
                name: "Reason",
                kind: "string",
                format: "",
                priority: 0,
                description: "Reason for the transition",
                cell: Cell::Field("/reason"),
            },
            Column {
                name: "Object",
                kind: "string",
                format: "",
                priority: 0,
                description: "The object this event is about",
                cell: Cell::Computed(|o| {
                    let kind = o.pointer("/involvedObject/kind").and_then(Value::as_str).unwrap_or("").to_lowercase();
                    let name = o.pointer("/involvedObject/name").and_then(Value::as_str).unwrap_or("");
                    json!(format!("{kind}/{name}"))
                }),
            },
            Column {
                name: "Message",
                kind: "string",
                format: "",
                priority: 0,
                description: "A human-readable description",
                cell: Cell::Field("/message"),
            },
        ]
    } else {
        vec![NAME, AGE]
    }
}

fn row_object(obj: &Value, include: IncludeObject) -> Value {
    match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
    }
}

/// What a KubeVirt kind's row needs: metadata, status and `spec.replicas`. The rest of the spec
/// (the VMI template: most of the bytes) is skipped while parsing.
#[derive(serde::Deserialize)]
struct RowSource {
    metadata: RowMetadata,
    #[serde(default)]
    spec: RowSpec,
    #[serde(default)]
    status: Value,
}

/// A row's metadata without `managedFields`: kubectl's tables never show them, and read into
/// every row of a large list they tripled its time (54 → 143 ms for 3,000 VMs).
#[derive(serde::Deserialize)]
struct RowMetadata {
    #[serde(rename = "managedFields", default)]
    _managed_fields: serde::de::IgnoredAny,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

#[derive(serde::Deserialize, Default)]
struct RowSpec {
    #[serde(default)]
    replicas: Option<Value>,
}

/// Parse a stored object for a Table row, only as far as the row needs.
pub fn parse_row_source(kind: &ResourceKind, raw: &str, include: IncludeObject) -> serde_json::Result<Value> {
    // The slim parse serves the big custom kinds; storage rows read fields outside status.
    if kind.is_core() || include == IncludeObject::Object || storage::prints(kind) || network::prints(kind) {
        return serde_json::from_str(raw);
    }
    let row: RowSource = serde_json::from_str(raw)?;
    let mut out = serde_json::Map::new();
    out.insert("metadata".into(), Value::Object(row.metadata.rest));
    if let Some(replicas) = row.spec.replicas {
        out.insert("spec".into(), json!({"replicas": replicas}));
    }
    if !row.status.is_null() {
        out.insert("status".into(), row.status);
    }
    Ok(Value::Object(out))
}

/// A Table of `objects`, with the list metadata given.
pub fn table(kind: &ResourceKind, objects: &[Value], list_meta: Value, include: IncludeObject) -> Value {
    let cols = columns(kind);
    let definitions: Vec<Value> = cols
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| c.cell.value(o)).collect();
            json!({"cells": cells, "object": row_object(o, include)})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400, "3d"),
            (3 * 86400 + 7200, "3d2h"),
            (400 * 86400, "400d"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human_duration(s), want);
        }
    }

    #[test]
    fn slim_rows_read_what_the_columns_need() {
        let raw = json!({"metadata": {"name": "rs"}, "spec": {"replicas": 3, "template": {"spec": {"big": true}}}, "status": {"replicas": 1}}).to_string();
        let slim = parse_row_source(&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, &raw, IncludeObject::Metadata)
            .unwrap_or_default();
        assert_eq!(slim, json!({"metadata": {"name": "rs"}, "spec": {"replicas": 3}, "status": {"replicas": 1}}));
        let full = parse_row_source(&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, &raw, IncludeObject::Object)
            .unwrap_or_default();
        assert_eq!(full["spec"]["template"]["spec"]["big"], true);
    }

    #[test]
    fn vm_columns() {
        let vm = json!({"metadata": {"name": "a", "creationTimestamp": meta::now_rfc3339()}, "status": {"printableStatus": "Stopped", "conditions": [{"type": "Ready", "status": "False"}]}});
        let t = table(&kinds::VIRTUAL_MACHINE, &[vm], json!({}), IncludeObject::Metadata);
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, vec!["Name", "Age", "Status", "Ready"]);
        assert_eq!(t["rows"][0]["cells"], json!(["a", "0s", "Stopped", "False"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
