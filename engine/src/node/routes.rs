//! Routes to other nodes' pods, as flannel's host-gw backend makes them: for every other Node
//! with a pod range and an InternalIP, the host routes that range via that address. Nodes that
//! share this host's address (several `converge node` on one machine) need none: each routes
//! its own range into its own namespace on the shared host. The machines must share an L2
//! segment (or route those ranges themselves), as host-gw requires.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Shared;
use crate::kinds;
use crate::meta;
use crate::network::host::Step;
use crate::network::Cidr;

/// The routing protocol number Converge's routes carry (`ip route … proto 77`), so they are
/// told apart from everything else in the host's table and can be swept.
pub const ROUTE_PROTOCOL: u8 = 77;

fn internal_ip(node: &Value) -> Option<Ipv4Addr> {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)?
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .and_then(|a| a.parse().ok())
}

/// Pure: the routes this host needs — (another node's pod range, that node's address) — for
/// node `me` at `my_ip`, inside the cluster range only.
pub fn wanted(me: &str, my_ip: Option<Ipv4Addr>, cluster: Cidr, nodes: &[Value]) -> BTreeSet<(String, Ipv4Addr)> {
    nodes
        .iter()
        .filter(|n| meta::name(n) != me)
        .filter_map(|n| {
            let range = Cidr::parse(n.pointer("/spec/podCIDR").and_then(Value::as_str)?).ok()?;
            let via = internal_ip(n)?;
            (cluster.covers(&range) && Some(via) != my_ip && !via.is_loopback() && !via.is_unspecified())
                .then(|| (range.to_string(), via))
        })
        .collect()
}

/// The steps from `applied` to `wanted`.
pub fn changes(applied: &BTreeSet<(String, Ipv4Addr)>, wanted: &BTreeSet<(String, Ipv4Addr)>) -> Vec<Step> {
    let gone = applied
        .difference(wanted)
        .map(|(range, via)| Step::ip(None, &format!("route del {range} via {via} proto {ROUTE_PROTOCOL}")).tolerated());
    let new = wanted
        .difference(applied)
        .map(|(range, via)| Step::ip(None, &format!("route replace {range} via {via} proto {ROUTE_PROTOCOL}")));
    gone.chain(new).collect()
}

/// Keeps the host's routes to other nodes' pod ranges in step with the Nodes.
pub(super) async fn run(s: Arc<Shared>) {
    let Some(net) = s.net.clone() else { return };
    let my_ip = super::host::gather().internal_ip;
    let mut rx = s.cluster.watch(&[&kinds::NODE]);
    // Routes a previous run left for nodes since gone: swept once, then tracked.
    let sweep = vec![Step::ip(None, &format!("route flush proto {ROUTE_PROTOCOL}")).tolerated()];
    if let Err(e) = super::network::run_steps(&net.host, sweep).await {
        tracing::warn!(error = %e, "routes to other nodes not swept");
    }
    let mut applied = BTreeSet::new();
    let mut resync = tokio::time::interval(s.config.resync.max(Duration::from_secs(1)));
    while crate::cluster::changed_or_tick(&mut rx, &kinds::NODE, &mut resync).await {
        let Ok(nodes) = s.cluster.list(&kinds::NODE, None).await else { continue };
        let want = wanted(&s.config.name, my_ip, net.config.cluster_cidr, &nodes);
        let steps = changes(&applied, &want);
        if steps.is_empty() {
            continue;
        }
        match super::network::run_steps(&net.host, steps).await {
            Ok(()) => applied = want,
            Err(e) => tracing::warn!(error = %e, "routes to other nodes' pods not applied; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, range: Option<&str>, ip: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"podCIDR": range},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}})
    }

    #[test]
    fn other_machines_ranges_are_routed_via_their_addresses() {
        let cluster = Cidr::parse("10.244.0.0/16").unwrap_or(Cidr::ZERO);
        let me: Ipv4Addr = "192.0.2.1".parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let nodes = [
            node("a", Some("10.244.0.0/24"), "192.0.2.1"),
            node("b", Some("10.244.1.0/24"), "192.0.2.2"),
            node("c", Some("10.244.2.0/24"), "192.0.2.1"), // another agent on this machine
            node("d", None, "192.0.2.4"),                  // no range yet
            node("e", Some("10.99.0.0/24"), "192.0.2.5"),  // outside the cluster range
            node("f", Some("10.244.5.0/24"), "127.0.0.1"),
        ];
        let want = wanted("a", Some(me), cluster, &nodes);
        assert_eq!(want, BTreeSet::from([("10.244.1.0/24".to_string(), "192.0.2.2".parse().unwrap_or(me))]));
        let lines: Vec<String> = changes(&BTreeSet::new(), &want).iter().map(|s| s.argv.join(" ")).collect();
        assert_eq!(lines, ["ip route replace 10.244.1.0/24 via 192.0.2.2 proto 77"]);
        let lines: Vec<String> = changes(&want, &BTreeSet::new()).iter().map(|s| s.argv.join(" ")).collect();
        assert_eq!(lines, ["ip route del 10.244.1.0/24 via 192.0.2.2 proto 77"], "a node gone takes its route");
        assert!(changes(&want, &want).is_empty());
    }
}
