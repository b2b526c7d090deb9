//! Node IPAM, as kube-controller-manager's range allocator does it (`--allocate-node-cidrs`):
//! every Node gets its own slice of the cluster's pod range in `spec.podCIDR(s)`, and its agent
//! gives pod addresses from that slice alone — so no two nodes ever give the same address, and
//! each node's range can be routed to it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::kinds;
use crate::meta;
use crate::network::Cidr;
use crate::store::UpdateMode;

/// What the allocator hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRanges {
    /// The cluster's pod range.
    pub cluster: Cidr,
    /// The prefix length of each node's slice (kube-controller-manager's
    /// `--node-cidr-mask-size`, 24 by default: 254 pods per node).
    pub node_prefix: u8,
}

impl Default for PodRanges {
    fn default() -> Self {
        PodRanges { cluster: Cidr::parse("10.244.0.0/16").unwrap_or(Cidr::ZERO), node_prefix: 24 }
    }
}

fn pod_cidr(node: &Value) -> Option<Cidr> {
    node.pointer("/spec/podCIDR").and_then(Value::as_str).and_then(|c| Cidr::parse(c).ok())
}

/// Pure: the Nodes without a pod range and the range each gets — the lowest slice of the cluster
/// range that overlaps no Node's range — oldest Node first. Nodes left over when the range is
/// full are not in the answer.
pub fn allocate(nodes: &[Value], ranges: PodRanges) -> Vec<(String, Cidr)> {
    let mut taken: Vec<Cidr> = nodes.iter().filter_map(pod_cidr).collect();
    let mut waiting: Vec<&Value> = nodes.iter().filter(|n| pod_cidr(n).is_none()).collect();
    waiting.sort_by_key(|n| (meta::creation_timestamp(n).to_string(), meta::name(n).to_string()));
    let slices = ranges.node_prefix.checked_sub(ranges.cluster.prefix()).map_or(0, |bits| 1u64 << bits.min(20));
    let mut next = 0;
    let mut out = vec![];
    for node in waiting {
        let free = (next..slices)
            .filter_map(|n| ranges.cluster.subnet(ranges.node_prefix, n).map(|c| (n, c)))
            .find(|(_, c)| !taken.iter().any(|t| t.overlaps(c)));
        let Some((n, cidr)) = free else { break };
        next = n + 1;
        taken.push(cidr);
        out.push((meta::name(node).to_string(), cidr));
    }
    out
}

/// Gives every Node without a pod range one, woken by Node changes and every 30 s.
pub async fn run(cluster: Arc<dyn Cluster>, ranges: PodRanges) {
    let mut rx = cluster.watch(&[&kinds::NODE]);
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    while crate::cluster::changed_or_tick(&mut rx, &kinds::NODE, &mut tick).await {
        if let Err(e) = assign(cluster.as_ref(), ranges).await {
            if e.code != 409 {
                tracing::warn!(error = %e.message, "node pod ranges not assigned; retrying");
            }
        }
    }
}

async fn assign(cluster: &dyn Cluster, ranges: PodRanges) -> crate::ApiResult<()> {
    let nodes = cluster.list(&kinds::NODE, None).await?;
    let given = allocate(&nodes, ranges);
    let short = nodes.iter().filter(|n| pod_cidr(n).is_none()).count() - given.len();
    if short > 0 {
        tracing::warn!(nodes = short, cluster = %ranges.cluster, "the pod range is full: nodes wait for a slice");
    }
    for (name, cidr) in given {
        let Some(mut node) = nodes.iter().find(|n| meta::name(n) == name).cloned() else { continue };
        node["spec"]["podCIDR"] = json!(cidr.to_string());
        node["spec"]["podCIDRs"] = json!([cidr.to_string()]);
        cluster.update(&kinds::NODE, node, UpdateMode::Main).await?;
        tracing::info!(node = %name, range = %cidr, "node given its pod range");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, created: &str, cidr: Option<&str>) -> Value {
        let mut n = json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        n
    }

    #[test]
    fn each_node_gets_the_lowest_free_slice_oldest_first() {
        let nodes = [
            node("b", "2026-01-02T00:00:00Z", None),
            node("a", "2026-01-01T00:00:00Z", Some("10.244.0.0/24")),
            node("c", "2026-01-01T00:00:00Z", None),
            node("d", "2026-01-03T00:00:00Z", Some("10.244.2.0/24")),
        ];
        let got: Vec<(String, String)> =
            allocate(&nodes, PodRanges::default()).into_iter().map(|(n, c)| (n, c.to_string())).collect();
        assert_eq!(got, [("c".to_string(), "10.244.1.0/24".to_string()), ("b".into(), "10.244.3.0/24".into())]);
    }

    #[test]
    fn a_full_range_leaves_nodes_waiting_and_a_wide_old_range_is_respected() {
        let ranges = PodRanges { cluster: Cidr::parse("10.0.0.0/23").unwrap_or(Cidr::ZERO), node_prefix: 24 };
        let nodes = [node("a", "1", None), node("b", "2", None), node("c", "3", None)];
        assert_eq!(allocate(&nodes, ranges).len(), 2, "two /24s in a /23");
        // A node registered before ranges were sliced holds the whole range: nothing overlaps it.
        let old = [node("old", "1", Some("10.244.0.0/16")), node("new", "2", None)];
        assert!(allocate(&old, PodRanges::default()).is_empty());
        let garbage = [node("x", "1", Some("not a range"))];
        assert_eq!(allocate(&garbage, PodRanges::default()).len(), 1, "an unreadable range is replaced");
        let inverted = PodRanges { cluster: Cidr::parse("10.0.0.0/24").unwrap_or(Cidr::ZERO), node_prefix: 16 };
        assert!(allocate(&nodes, inverted).is_empty(), "a node slice wider than the cluster: nothing");
    }
}
