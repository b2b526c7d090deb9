//! Printer columns of the network kinds, as the apiserver prints Services, Endpoints and
//! EndpointSlices.

use super::{Cell, Column, AGE, NAME};
use converge_engine::kinds::{self, ResourceKind};
use serde_json::{json, Value};

const fn col(name: &'static str, description: &'static str, priority: i64, cell: fn(&Value) -> Value) -> Column {
    Column { name, kind: "string", format: "", priority, description, cell: Cell::Computed(cell) }
}

fn items<'a>(o: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    o.pointer(pointer).and_then(Value::as_array).into_iter().flatten()
}

/// `80:30080/TCP,53/UDP`.
fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = items(o, "/spec/ports")
        .map(|p| {
            let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_u64) {
                Some(n) => format!("{port}:{n}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    json!(if ports.is_empty() { "<none>".to_string() } else { ports.join(",") })
}

fn selector(o: &Value) -> Value {
    let pairs: Vec<String> = o
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    json!(if pairs.is_empty() { "<none>".to_string() } else { pairs.join(",") })
}

/// `10.244.0.5:8080,10.244.0.6:8080`, as kubectl shows endpoints.
fn endpoint_addresses(o: &Value) -> Value {
    let mut out = vec![];
    for subset in items(o, "/subsets") {
        let ports: Vec<u64> = items(subset, "/ports").filter_map(|p| p.get("port").and_then(Value::as_u64)).collect();
        for a in items(subset, "/addresses").filter_map(|a| a.get("ip").and_then(Value::as_str)) {
            if ports.is_empty() {
                out.push(a.to_string());
            }
            out.extend(ports.iter().map(|p| format!("{a}:{p}")));
        }
    }
    json!(if out.is_empty() { "<none>".to_string() } else { out.join(",") })
}

fn slice_ports(o: &Value) -> Value {
    let ports: Vec<String> =
        items(o, "/ports").filter_map(|p| p.get("port").and_then(Value::as_u64)).map(|p| p.to_string()).collect();
    json!(if ports.is_empty() { "<unset>".to_string() } else { ports.join(",") })
}

fn slice_endpoints(o: &Value) -> Value {
    let addrs: Vec<&str> =
        items(o, "/endpoints").flat_map(|e| items(e, "/addresses")).filter_map(Value::as_str).collect();
    json!(if addrs.is_empty() { "<unset>".to_string() } else { addrs.join(",") })
}

/// Kinds whose rows read fields outside `status` and are not core (parsed whole).
pub(super) fn prints(kind: &ResourceKind) -> bool {
    std::ptr::eq(kind, &kinds::ENDPOINT_SLICE)
}

pub(super) fn columns(kind: &ResourceKind) -> Option<Vec<Column>> {
    let columns = if std::ptr::eq(kind, &kinds::SERVICE) {
        vec![
            NAME,
            col("Type", "The type of the service", 0, |o| {
                o.pointer("/spec/type").cloned().unwrap_or(json!("ClusterIP"))
            }),
            col("Cluster-IP", "The cluster IP of the service", 0, |o| {
                o.pointer("/spec/clusterIP").cloned().unwrap_or(json!("<none>"))
            }),
            col("External-IP", "External addresses of the service", 0, |_| json!("<none>")),
            col("Port(s)", "The ports of the service", 0, service_ports),
            AGE,
            col("Selector", "The label selector of the service", 1, selector),
        ]
    } else if std::ptr::eq(kind, &kinds::ENDPOINTS) {
        vec![NAME, col("Endpoints", "The addresses behind the service", 0, endpoint_addresses), AGE]
    } else if std::ptr::eq(kind, &kinds::ENDPOINT_SLICE) {
        vec![
            NAME,
            col("AddressType", "The type of the addresses", 0, |o| {
                o.get("addressType").cloned().unwrap_or(Value::Null)
            }),
            col("Ports", "The ports of the endpoints", 0, slice_ports),
            col("Endpoints", "The addresses of the endpoints", 0, slice_endpoints),
            AGE,
        ]
    } else {
        return None;
    };
    Some(columns)
}
