//! Services over VMIs: which ready VMIs back a Service (Endpoints and EndpointSlice, as the
//! endpoints controllers write them), and the node's nftables rules that carry cluster IPs and
//! node ports to them. Pure: objects in, objects and rule text out.

use serde_json::{json, Value};
use std::net::Ipv4Addr;

use super::{names, NetworkConfig};
use crate::meta;
use crate::selector::{LabelSelector, Requirement};

/// A ready backend: the VMI's pod address.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Parsed: status is read back from the store, and this goes into nft rule text.
    pub ip: Ipv4Addr,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node: String,
}

/// VMIs the Service selects that are Running and Ready with a pod address.
pub fn backends(service: &Value, vmis: &[Value]) -> Vec<Backend> {
    let Some(selector) = service.pointer("/spec/selector").and_then(Value::as_object).filter(|s| !s.is_empty()) else {
        return vec![];
    };
    let selector = LabelSelector(
        selector
            .iter()
            .map(|(k, v)| Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    );
    let mut out: Vec<Backend> = vmis
        .iter()
        .filter(|v| meta::namespace(v) == meta::namespace(service) && !meta::is_deleting(v))
        .filter(|v| selector.matches(&meta::labels(v)))
        .filter(|v| v.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
        .filter(|v| {
            crate::controllers::status::condition(v, "Ready").and_then(|c| c.get("status")) == Some(&json!("True"))
        })
        .filter_map(|v| {
            let ip = pod_ip(v)?;
            Some(Backend {
                ip,
                name: meta::name(v).to_string(),
                namespace: meta::namespace(v).to_string(),
                uid: meta::uid(v).to_string(),
                node: v.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default().to_string(),
            })
        })
        .collect();
    out.sort_by_key(|b| b.ip);
    out
}

/// The VMI's pod network address, as the node reported it (the interface with a
/// `podInterfaceName`); anything that is not an IPv4 address is no address at all.
pub fn pod_ip(vmi: &Value) -> Option<Ipv4Addr> {
    vmi.pointer("/status/interfaces")
        .and_then(Value::as_array)?
        .iter()
        .find(|i| i.get("podInterfaceName").is_some())
        .and_then(|i| i.get("ipAddress"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// A Service port's protocol, as nft spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn parse(text: &str) -> Option<Protocol> {
        match text {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
    pub fn as_nft(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port of the Service resolved to a number on the backends.
fn target_port(port: &Value) -> Option<u16> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Some(Value::String(s)) => s.parse().ok(),
        _ => port.get("port").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()),
    }
}

fn ports_of(service: &Value) -> Vec<Value> {
    service.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The Endpoints object for a Service and its backends.
pub fn endpoints(service: &Value, backends: &[Backend]) -> Value {
    let ports: Vec<Value> = ports_of(service)
        .iter()
        .filter_map(|p| {
            let mut out =
                json!({"port": target_port(p)?, "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
            if let Some(name) = p.get("name").filter(|n| n.as_str().is_some_and(|n| !n.is_empty())) {
                out["name"] = name.clone();
            }
            Some(out)
        })
        .collect();
    let addresses: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({"ip": b.ip, "nodeName": b.node, "targetRef": {
                "kind": "VirtualMachineInstance", "namespace": b.namespace, "name": b.name, "uid": b.uid}})
        })
        .collect();
    let subsets = if addresses.is_empty() { json!([]) } else { json!([{"addresses": addresses, "ports": ports}]) };
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": meta::name(service), "namespace": meta::namespace(service),
                     "labels": meta::labels(service)},
        "subsets": subsets,
    })
}

/// The EndpointSlice (discovery.k8s.io/v1) for the same.
pub fn endpoint_slice(service: &Value, backends: &[Backend]) -> Value {
    let ports: Vec<Value> = ports_of(service)
        .iter()
        .filter_map(|p| {
            Some(json!({"name": p.get("name").cloned().unwrap_or(json!("")), "port": target_port(p)?,
                        "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))}))
        })
        .collect();
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({"addresses": [b.ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": b.node, "targetRef": {"kind": "VirtualMachineInstance", "namespace": b.namespace,
                   "name": b.name, "uid": b.uid}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": meta::name(service), "namespace": meta::namespace(service),
                     "labels": {"kubernetes.io/service-name": meta::name(service),
                                "endpointslice.kubernetes.io/managed-by": "endpoints.converge.dev"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// One forwarding: a Service port with its backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub cluster_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub target_port: u16,
    pub backends: Vec<Ipv4Addr>,
}

/// Every forwarding of a Service (none without a cluster IP, as for headless Services).
pub fn forwards(service: &Value, backends: &[Backend]) -> Vec<Forward> {
    let Some(cluster_ip) = service.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|ip| ip.parse().ok())
    else {
        return vec![];
    };
    ports_of(service)
        .iter()
        .filter_map(|p| {
            Some(Forward {
                cluster_ip,
                protocol: Protocol::parse(p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))?,
                port: p.get("port").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok())?,
                node_port: p.get("nodePort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()),
                target_port: target_port(p)?,
                backends: backends.iter().map(|b| b.ip).collect(),
            })
        })
        .collect()
}

/// The node namespace's table: each cluster IP port spread over its backends. Redirected traffic
/// to a backend on this node's bridge leaves masqueraded, so a backend answering a neighbour on
/// its own bridge answers through the node (hairpin); to a backend on another node it keeps a pod
/// source (routable back here), and traffic that came from outside the pods (a node port) takes
/// the pods' gateway address as its source, which routes back to this node from any other.
pub fn node_rules(cfg: &NetworkConfig, forwards: &[Forward]) -> String {
    let mut s = String::from("table ip converge\ndelete table ip converge\ntable ip converge {\n");
    s.push_str("  chain services {\n");
    for f in forwards.iter().filter(|f| !f.backends.is_empty()) {
        let target = if f.backends.len() == 1 {
            f.backends[0].to_string()
        } else {
            let map: Vec<String> = f.backends.iter().enumerate().map(|(i, ip)| format!("{i} : {ip}")).collect();
            format!("numgen random mod {} map {{ {} }}", f.backends.len(), map.join(", "))
        };
        s.push_str(&format!(
            "    ip daddr {} {} dport {} dnat to {target}:{}\n",
            f.cluster_ip,
            f.protocol.as_nft(),
            f.port,
            f.target_port
        ));
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n",
    );
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n");
    s.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    s.push_str(&format!("    oifname \"{}\" ct status dnat masquerade\n", names::NODE_BRIDGE));
    s.push_str(&format!(
        "    ip saddr != {} oifname != \"{}\" ct status dnat snat to {}\n",
        cfg.cluster_cidr,
        names::NODE_BRIDGE,
        cfg.gateway()
    ));
    s.push_str("  }\n}\n");
    s
}

/// The host's table: node ports on the host's own addresses (loopback included) go to the
/// cluster IP, which routes into the node namespace; with egress, pods leave masqueraded.
pub fn host_rules(cfg: &NetworkConfig, forwards: &[Forward]) -> String {
    let table = names::host_table(&cfg.node_namespace);
    let (host_link, _) = names::transit_links(&cfg.node_namespace);
    let mut s = format!("table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n  chain node_ports {{\n");
    for f in forwards {
        if let Some(node_port) = f.node_port {
            s.push_str(&format!(
                "    fib daddr type local {} dport {node_port} dnat to {}:{}\n",
                f.protocol.as_nft(),
                f.cluster_ip,
                f.port
            ));
        }
    }
    s.push_str("  }\n");
    s.push_str("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump node_ports\n  }\n");
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n    jump node_ports\n  }\n");
    s.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    s.push_str(&format!("    oifname \"{host_link}\" ct status dnat masquerade\n"));
    if cfg.egress {
        // Pods leave masqueraded, except towards other nodes' pods (routed, sources kept).
        s.push_str(&format!(
            "    ip saddr {} ip daddr != {} oifname != \"{host_link}\" masquerade\n",
            cfg.pod_cidr, cfg.cluster_cidr
        ));
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": "web"}},
               "status": {"phase": "Running", "nodeName": "node-1",
                "interfaces": [{"name": "default", "ipAddress": ip, "podInterfaceName": "eth0"}],
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    fn service() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "type": "NodePort",
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}]}})
    }

    #[test]
    fn ready_selected_vmis_back_the_service() {
        let vmis = [vmi("a", "10.244.0.6", true), vmi("b", "10.244.0.5", true), vmi("c", "10.244.0.7", false)];
        let b = backends(&service(), &vmis);
        assert_eq!(b.iter().map(|b| b.ip.to_string()).collect::<Vec<_>>(), ["10.244.0.5", "10.244.0.6"]);
        let ep = endpoints(&service(), &b);
        assert_eq!(ep["subsets"][0]["ports"][0], json!({"name": "http", "port": 8080, "protocol": "TCP"}));
        assert_eq!(ep["subsets"][0]["addresses"][1]["targetRef"]["name"], "a");
        let slice = endpoint_slice(&service(), &b);
        assert_eq!(slice["endpoints"].as_array().map(Vec::len), Some(2));
        assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert!(endpoints(&service(), &[])["subsets"].as_array().is_some_and(Vec::is_empty));
    }

    #[test]
    fn rules_spread_over_backends_and_map_node_ports() {
        let b = backends(&service(), &[vmi("a", "10.244.0.6", true), vmi("b", "10.244.0.5", true)]);
        let f = forwards(&service(), &b);
        let node = node_rules(&NetworkConfig::default(), &f);
        assert!(
            node.contains("ip daddr 10.96.0.10 tcp dport 80 dnat to numgen random mod 2 map { 0 : 10.244.0.5, 1 : 10.244.0.6 }:8080"),
            "{node}"
        );
        let host = host_rules(&NetworkConfig { egress: false, ..NetworkConfig::default() }, &f);
        assert!(host.contains("fib daddr type local tcp dport 30080 dnat to 10.96.0.10:80"), "{host}");
        assert!(!host.contains("oifname != "), "no egress rule without egress");
        let egress = host_rules(&NetworkConfig::default(), &f);
        assert!(
            egress.contains("ip saddr 10.244.0.0/24 ip daddr != 10.244.0.0/16 oifname != "),
            "pods leave masqueraded, but not towards other nodes' pods: {egress}"
        );
        assert!(node.contains("oifname \"cvbr0\" ct status dnat masquerade"), "hairpin: {node}");
        assert!(
            node.contains("ip saddr != 10.244.0.0/16 oifname != \"cvbr0\" ct status dnat snat to 10.244.0.1"),
            "{node}"
        );
        let none = node_rules(&NetworkConfig::default(), &forwards(&service(), &[]));
        // A status a tenant wrote, with nft syntax in it, is no address: no rule comes of it.
        let injected = "10.244.0.9 }\n  chain x { type filter hook forward priority -400; policy drop; }\n";
        let hostile = backends(&service(), &[vmi("h", injected, true)]);
        assert!(hostile.is_empty());
        let mut odd = service();
        odd["spec"]["ports"][0]["protocol"] = json!("tcp dport 1 drop;");
        odd["spec"]["clusterIP"] = json!("10.96.0.10; flush ruleset");
        assert!(forwards(&odd, &b).is_empty());
        assert!(!none.contains("10.96.0.10"), "no backends, no rule: the cluster IP stays unreachable");
    }
}
