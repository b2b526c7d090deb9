//! Picks a node for a VMI: resources requested, nodeSelector, required node affinity, taints and
//! tolerations, and the KVM device unless the node may emulate. Pure: nodes and their current
//! load come in, a node name or the scheduler's message comes out.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::launcher::spec::VmiSpec;
use crate::quantity;

/// The extended resource a VMI needs unless software emulation is allowed, as in KubeVirt.
pub const KVM_RESOURCE: &str = "devices.kubevirt.io/kvm";
/// Label a node agent sets when it runs guests under TCG because KVM is unusable.
pub const EMULATION_LABEL: &str = "converge.dev/software-emulation";

#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub name: String,
    pub labels: Map<String, Value>,
    pub taints: Vec<Value>,
    pub unschedulable: bool,
    pub ready: bool,
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub kvm_devices: u64,
    pub emulation_allowed: bool,
}

impl NodeView {
    pub fn from_node(node: &Value) -> NodeView {
        let alloc = |key: &str| {
            node.pointer("/status/allocatable").and_then(|a| a.get(key)).and_then(|q| quantity::parse_value(q).ok())
        };
        NodeView {
            name: crate::meta::name(node).to_string(),
            labels: crate::meta::labels(node),
            taints: node.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default(),
            unschedulable: node.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false),
            ready: super::status::condition_true(node, "Ready"),
            cpu_milli: alloc("cpu").map(|c| (c * 1000.0) as u64).unwrap_or(0),
            memory_bytes: alloc("memory").map(|m| m as u64).unwrap_or(0),
            kvm_devices: alloc(KVM_RESOURCE).map(|k| k as u64).unwrap_or(0),
            emulation_allowed: crate::meta::labels(node).get(EMULATION_LABEL).and_then(Value::as_str) == Some("true"),
        }
    }
}

/// What a VMI asks of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub cpu_milli: u64,
    pub memory_bytes: u64,
}

pub fn request_of(vmi: &Value) -> Request {
    let Ok(spec) = VmiSpec::from_vmi(vmi) else { return Request::default() };
    let cpu = spec
        .domain
        .resources
        .requests
        .get("cpu")
        .and_then(|q| quantity::parse_value(q).ok())
        .map(|c| (c * 1000.0) as u64)
        .unwrap_or(0);
    Request { cpu_milli: cpu, memory_bytes: spec.guest_memory_bytes().unwrap_or(0) }
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    let key = taint.get("key").and_then(Value::as_str).unwrap_or("");
    let value = taint.get("value").and_then(Value::as_str).unwrap_or("");
    let effect = taint.get("effect").and_then(Value::as_str).unwrap_or("");
    tolerations.iter().any(|t| {
        let t_key = t.get("key").and_then(Value::as_str).unwrap_or("");
        let t_effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
        let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
        let key_ok = t_key.is_empty() && op == "Exists" || t_key == key;
        let value_ok = op == "Exists" || t.get("value").and_then(Value::as_str).unwrap_or("") == value;
        let effect_ok = t_effect.is_empty() || t_effect == effect;
        key_ok && value_ok && effect_ok
    })
}

fn expression_matches(labels: &Map<String, Value>, expr: &Value) -> bool {
    let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
    let values: Vec<&str> = expr
        .get("values")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let actual = labels.get(key).and_then(Value::as_str);
    match expr.get("operator").and_then(Value::as_str).unwrap_or("") {
        "In" => actual.is_some_and(|a| values.contains(&a)),
        "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        _ => false,
    }
}

/// requiredDuringSchedulingIgnoredDuringExecution: any term may match; within one, all must.
fn affinity_matches(labels: &Map<String, Value>, affinity: Option<&Value>) -> bool {
    let Some(terms) = affinity
        .and_then(|a| a.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"))
        .and_then(Value::as_array)
    else {
        return true;
    };
    terms.iter().any(|term| {
        term.get("matchExpressions")
            .and_then(Value::as_array)
            .map(|exprs| exprs.iter().all(|e| expression_matches(labels, e)))
            .unwrap_or(true)
    })
}

/// Whether `labels` satisfy node selector terms (any term; within one, every expression).
fn terms_match(labels: &Map<String, Value>, terms: &Value) -> bool {
    terms.as_array().is_some_and(|terms| {
        terms.iter().any(|term| {
            term.get("matchExpressions")
                .and_then(Value::as_array)
                .map(|exprs| exprs.iter().all(|e| expression_matches(labels, e)))
                .unwrap_or(true)
        })
    })
}

/// The node for `vmi`, or the message KubeVirt users know from an unschedulable launcher pod.
/// `volumes` holds the node selector terms of the VMI's volumes (`volume_binding`): a node must
/// meet them all.
pub fn schedule(
    vmi: &Value,
    nodes: &[NodeView],
    used: &BTreeMap<String, Request>,
    volumes: &[Value],
) -> Result<String, String> {
    let spec = VmiSpec::from_vmi(vmi).unwrap_or_default();
    let want = request_of(vmi);
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best: Option<(&NodeView, u64)> = None;
    for node in nodes {
        let load = used.get(&node.name).copied().unwrap_or_default();
        let reason = if !node.ready {
            Some("node(s) were not ready")
        } else if node.unschedulable {
            Some("node(s) were unschedulable")
        } else if !spec.node_selector.iter().all(|(k, v)| node.labels.get(k).and_then(Value::as_str) == Some(v))
            || !affinity_matches(&node.labels, spec.affinity.as_ref())
        {
            Some("node(s) didn't match Pod's node affinity/selector")
        } else if !volumes.iter().all(|terms| terms_match(&node.labels, terms)) {
            Some("node(s) had volume node affinity conflict")
        } else if node.taints.iter().any(|t| {
            matches!(t.get("effect").and_then(Value::as_str), Some("NoSchedule" | "NoExecute"))
                && !tolerates(&spec.tolerations, t)
        }) {
            Some("node(s) had untolerated taint")
        } else if node.kvm_devices == 0 && !node.emulation_allowed {
            Some("Insufficient devices.kubevirt.io/kvm")
        } else if load.memory_bytes + want.memory_bytes > node.memory_bytes {
            Some("Insufficient memory")
        } else if want.cpu_milli > 0 && load.cpu_milli + want.cpu_milli > node.cpu_milli {
            Some("Insufficient cpu")
        } else {
            None
        };
        match reason {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                let free = node.memory_bytes - load.memory_bytes - want.memory_bytes;
                if best.is_none_or(|(_, f)| free > f) {
                    best = Some((node, free));
                }
            }
        }
    }
    if let Some((node, _)) = best {
        return Ok(node.name.clone());
    }
    let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    Err(format!("0/{} nodes are available: {}.", nodes.len(), detail.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            cpu_milli: 2000,
            memory_bytes: 1 << 30,
            kvm_devices: 1000,
            labels: json!({"kubernetes.io/hostname": name}).as_object().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn vmi(extra: Value) -> Value {
        let mut v = json!({"spec": {"domain": {"resources": {"requests": {"memory": "256Mi"}}}}});
        if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        v
    }

    #[test]
    fn fits_and_spreads_by_free_memory() {
        let used = BTreeMap::from([("a".to_string(), Request { cpu_milli: 0, memory_bytes: 512 << 20 })]);
        assert_eq!(schedule(&vmi(json!({})), &[node("a"), node("b")], &used, &[]), Ok("b".into()));
    }

    #[test]
    fn memory_cpu_and_kvm_are_resources() {
        let used = BTreeMap::from([("a".to_string(), Request { cpu_milli: 0, memory_bytes: 900 << 20 })]);
        assert_eq!(
            schedule(&vmi(json!({})), &[node("a")], &used, &[]),
            Err("0/1 nodes are available: 1 Insufficient memory.".into())
        );
        let no_kvm = NodeView { kvm_devices: 0, ..node("a") };
        assert_eq!(
            schedule(&vmi(json!({})), std::slice::from_ref(&no_kvm), &BTreeMap::new(), &[]),
            Err("0/1 nodes are available: 1 Insufficient devices.kubevirt.io/kvm.".into())
        );
        let emulating = NodeView { emulation_allowed: true, ..no_kvm };
        assert_eq!(schedule(&vmi(json!({})), &[emulating], &BTreeMap::new(), &[]), Ok("a".into()));
        let mut big = vmi(json!({}));
        big["spec"]["domain"]["resources"]["requests"]["cpu"] = json!("3");
        assert!(schedule(&big, &[node("a")], &BTreeMap::new(), &[]).unwrap_err().contains("Insufficient cpu"));
    }

    #[test]
    fn selectors_affinity_and_taints() {
        let sel = vmi(json!({"nodeSelector": {"kubernetes.io/hostname": "b"}}));
        assert_eq!(schedule(&sel, &[node("a"), node("b")], &BTreeMap::new(), &[]), Ok("b".into()));
        let aff = vmi(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["a"]}]}]}}}}));
        assert_eq!(schedule(&aff, &[node("a"), node("b")], &BTreeMap::new(), &[]), Ok("b".into()));
        let tainted =
            NodeView { taints: vec![json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"})], ..node("a") };
        assert!(schedule(&vmi(json!({})), std::slice::from_ref(&tainted), &BTreeMap::new(), &[])
            .unwrap_err()
            .contains("untolerated taint"));
        let tolerant = vmi(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert_eq!(schedule(&tolerant, std::slice::from_ref(&tainted), &BTreeMap::new(), &[]), Ok("a".into()));
        let exists = vmi(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(schedule(&exists, &[tainted], &BTreeMap::new(), &[]), Ok("a".into()));
        let cordoned = NodeView { unschedulable: true, ..node("a") };
        assert!(schedule(&vmi(json!({})), &[cordoned], &BTreeMap::new(), &[]).unwrap_err().contains("unschedulable"));
    }

    #[test]
    fn a_guest_goes_where_its_volumes_are() {
        let pinned_to_b = crate::storage::placement::node_affinity("b")["required"]["nodeSelectorTerms"].clone();
        let nodes = [node("a"), node("b")];
        assert_eq!(
            schedule(&vmi(json!({})), &nodes, &BTreeMap::new(), std::slice::from_ref(&pinned_to_b)),
            Ok("b".into())
        );
        let elsewhere = vmi(json!({"nodeSelector": {"kubernetes.io/hostname": "a"}}));
        assert_eq!(
            schedule(&elsewhere, &nodes, &BTreeMap::new(), std::slice::from_ref(&pinned_to_b)),
            Err("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume node affinity conflict.".into())
        );
        let pinned_to_a = crate::storage::placement::node_affinity("a")["required"]["nodeSelectorTerms"].clone();
        assert!(schedule(&vmi(json!({})), &nodes, &BTreeMap::new(), &[pinned_to_a, pinned_to_b])
            .unwrap_err()
            .contains("2 node(s) had volume node affinity conflict"));
    }
}
