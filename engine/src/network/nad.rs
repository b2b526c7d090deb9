//! NetworkAttachmentDefinitions (`k8s.cni.cncf.io/v1`): `spec.config` is a CNI configuration as
//! a JSON string. The node understands bridge-CNI configurations: a host Linux bridge, created
//! when missing, and an optional VLAN the guest's port is an untagged member of.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    pub bridge: String,
    pub vlan: Option<u16>,
}

/// An SR-IOV virtual function, named as sriov-cni names it (`deviceID`, a PCI address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovNetwork {
    pub device_id: String,
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NadNetwork {
    Bridge(BridgeNetwork),
    Sriov(SriovNetwork),
}

/// What a NAD's `spec.config` asks for: a bridge, or an SR-IOV virtual function.
pub fn network_of(nad: &Value) -> Result<NadNetwork, String> {
    let plugin = plugin_of(nad)?;
    match plugin.get("type").and_then(Value::as_str) {
        Some("sriov") => {
            let id = plugin.get("deviceID").and_then(Value::as_str).unwrap_or_default();
            let device_id = normalize_pci(id).ok_or_else(|| {
                format!("deviceID {id:?} is not a PCI address (DDDD:BB:SS.F): name the virtual function")
            })?;
            Ok(NadNetwork::Sriov(SriovNetwork { device_id, vlan: vlan_of(&plugin)? }))
        }
        _ => bridge_of(nad).map(NadNetwork::Bridge),
    }
}

/// Whether the admin lets guests onto what `network` names: a host bridge from `--nad-bridge`,
/// an SR-IOV function from `--sriov-device`. A tenant's NAD could otherwise plug a guest into
/// any bridge of the host (and turn on VLAN filtering there) or take any PCI device.
pub fn allowed_by(network: &NadNetwork, host: &crate::host_access::HostAccess) -> Result<(), String> {
    match network {
        NadNetwork::Bridge(b) if !host.bridge_allowed(&b.bridge) => {
            Err(format!("bridge {:?} is not one the admin allowed for NADs (converge serve --nad-bridge)", b.bridge))
        }
        NadNetwork::Sriov(v) if !host.sriov_allowed(&v.device_id) => {
            Err(format!("SR-IOV function {} is not one the admin allowed (converge serve --sriov-device)", v.device_id))
        }
        _ => Ok(()),
    }
}

/// `0000:03:02.1`, lower case, from `03:02.1` or `0000:03:02.1` (sriov-cni takes both).
fn normalize_pci(text: &str) -> Option<String> {
    let full = if text.matches(':').count() == 1 { format!("0000:{text}") } else { text.to_string() };
    super::pci::PciAddress::parse(&full).ok().map(|a| a.to_string())
}

fn plugin_of(nad: &Value) -> Result<Value, String> {
    let text = nad.pointer("/spec/config").and_then(Value::as_str).unwrap_or_default();
    if text.trim().is_empty() {
        return Err("spec.config is empty: the network has no CNI configuration".into());
    }
    let config: Value = serde_json::from_str(text).map_err(|e| format!("spec.config is not JSON: {e}"))?;
    Ok(match config.get("plugins").and_then(Value::as_array) {
        Some(plugins) => plugins
            .iter()
            .find(|p| matches!(p.get("type").and_then(Value::as_str), Some("bridge" | "sriov")))
            .or_else(|| plugins.first())
            .cloned()
            .unwrap_or(Value::Null),
        None => config,
    })
}

fn vlan_of(plugin: &Value) -> Result<Option<u16>, String> {
    match plugin.get("vlan") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(None),
            Some(id @ 1..=4094) => Ok(Some(id as u16)),
            _ => Err(format!("vlan {v} is not a VLAN id (1-4094)")),
        },
    }
}

/// The bridge configuration in a NAD's `spec.config` (a single plugin or a `plugins` list).
fn bridge_of(nad: &Value) -> Result<BridgeNetwork, String> {
    let plugin = plugin_of(nad)?;
    let kind = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "bridge" {
        return Err(format!("CNI type {kind:?} is not supported on this node (only \"bridge\" and \"sriov\")"));
    }
    let bridge = plugin.get("bridge").and_then(Value::as_str).unwrap_or("cni0").to_string();
    if bridge.is_empty() || bridge.len() > 15 || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("bridge name {bridge:?} is not a valid link name (1-15 of [A-Za-z0-9._-])"));
    }
    let vlan = vlan_of(&plugin)?;
    Ok(BridgeNetwork { bridge, vlan })
}

/// Validation at admission: the config must be JSON naming a CNI type.
pub fn validate_config(nad: &Value) -> Result<(), String> {
    let Some(text) = nad.pointer("/spec/config").and_then(Value::as_str) else { return Ok(()) };
    if text.trim().is_empty() {
        return Ok(());
    }
    let config: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if config.get("type").is_none() && config.get("plugins").is_none() {
        return Err("a CNI configuration names a \"type\" or a \"plugins\" list".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nad(config: &str) -> Value {
        json!({"spec": {"config": config}})
    }

    #[test]
    fn bridge_configs() {
        let n = nad(r#"{"cniVersion":"0.3.1","type":"bridge","bridge":"br1","vlan":100}"#);
        assert_eq!(bridge_of(&n), Ok(BridgeNetwork { bridge: "br1".into(), vlan: Some(100) }));
        let n = nad(r#"{"cniVersion":"0.3.1","plugins":[{"type":"bridge","bridge":"br2"},{"type":"tuning"}]}"#);
        assert_eq!(bridge_of(&n), Ok(BridgeNetwork { bridge: "br2".into(), vlan: None }));
        assert!(bridge_of(&nad(r#"{"type":"ovs","bridge":"br1"}"#)).unwrap_err().contains("not supported"));
        assert!(bridge_of(&nad(r#"{"type":"bridge","bridge":"br1","vlan":5000}"#)).is_err());
        assert!(bridge_of(&nad(r#"{"type":"bridge","bridge":"a-name-far-too-long"}"#)).is_err());
        assert!(bridge_of(&nad("{")).is_err());
        assert!(validate_config(&nad("{")).is_err());
        assert!(validate_config(&nad(r#"{"cniVersion":"0.3.1"}"#)).is_err());
        assert!(validate_config(&nad(r#"{"type":"bridge"}"#)).is_ok());
        assert_eq!(
            network_of(&nad(r#"{"type":"sriov","deviceID":"03:02.1","vlan":5}"#)),
            Ok(NadNetwork::Sriov(SriovNetwork { device_id: "0000:03:02.1".into(), vlan: Some(5) }))
        );
        assert!(network_of(&nad(r#"{"type":"sriov"}"#)).unwrap_err().contains("deviceID"));
        assert!(matches!(network_of(&nad(r#"{"type":"bridge","bridge":"b"}"#)), Ok(NadNetwork::Bridge(_))));
    }
}
