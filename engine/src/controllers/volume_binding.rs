//! A guest's claims in its placement, as kube-scheduler's volume binding does: a bound claim's
//! volume puts its node affinity on the guest; a claim whose first guest already picked a node
//! keeps the next guests there; a claim waiting for its first consumer (a
//! `WaitForFirstConsumer` class) is told the node the guest was placed on, and that node's agent
//! makes its volume (`storage::placement`). Pure: the claims, their volumes and the classes come
//! in.

use serde_json::{json, Value};

use crate::storage::placement::{self, HOSTNAME_LABEL};
use crate::storage::provisioner;

/// One claim of the guest as the store has it.
pub struct ClaimView<'a> {
    pub pvc: Option<&'a Value>,
    /// The volume the claim is bound to, if any.
    pub pv: Option<&'a Value>,
}

/// What the claims ask of placement.
#[derive(Debug, Default, PartialEq)]
pub struct VolumeBinding {
    /// Node selector terms a node must meet, one entry per constrained claim.
    pub terms: Vec<Value>,
    /// Indexes of the claims to mark with the chosen node.
    pub to_select: Vec<usize>,
}

pub fn binding(claims: &[ClaimView], classes: &[Value]) -> VolumeBinding {
    let mut out = VolumeBinding::default();
    for (i, claim) in claims.iter().enumerate() {
        let Some(pvc) = claim.pvc else { continue };
        if let Some(pv) = claim.pv.filter(|pv| provisioner::bound_to(pv, pvc)) {
            if let Some(terms) = placement::required_terms(pv) {
                out.terms.push(terms.clone());
            }
            continue;
        }
        if let Some(node) = placement::selected_node(pvc) {
            out.terms
                .push(json!([{"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]}]));
            continue;
        }
        let class = provisioner::class_for(pvc.pointer("/spec/storageClassName").and_then(Value::as_str), classes);
        let unbound = pvc.pointer("/spec/volumeName").and_then(Value::as_str).is_none_or(str::is_empty);
        if unbound && class.is_some_and(provisioner::waits_for_consumer) {
            out.to_select.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, mode: &str) -> Value {
        json!({"metadata": {"name": name}, "provisioner": crate::storage::PROVISIONER, "volumeBindingMode": mode})
    }

    #[test]
    fn claims_constrain_or_wait_for_the_guests_node() {
        let classes = [class("wffc", "WaitForFirstConsumer"), class("now", "Immediate")];
        let pvc = |name: &str, class: &str| json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}")}, "spec": {"storageClassName": class}});
        let bound = {
            let mut p = pvc("bound", "wffc");
            p["spec"]["volumeName"] = json!("pv-1");
            p
        };
        let pv = json!({"metadata": {"name": "pv-1"}, "spec": {"nodeAffinity": placement::node_affinity("n2"),
            "claimRef": {"namespace": "ns", "name": "bound", "uid": "u-bound"}}});
        let mut selected = pvc("selected", "wffc");
        selected["metadata"]["annotations"] = json!({placement::SELECTED_NODE: "n1"});
        let fresh = pvc("fresh", "wffc");
        let immediate = pvc("now", "now");
        let claims = [
            ClaimView { pvc: Some(&bound), pv: Some(&pv) },
            ClaimView { pvc: Some(&selected), pv: None },
            ClaimView { pvc: Some(&fresh), pv: None },
            ClaimView { pvc: Some(&immediate), pv: None },
            ClaimView { pvc: None, pv: None },
        ];
        let b = binding(&claims, &classes);
        assert_eq!(b.terms.len(), 2);
        assert_eq!(b.terms[0], pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]);
        assert_eq!(b.terms[1][0]["matchExpressions"][0]["values"], json!(["n1"]));
        assert_eq!(b.to_select, vec![2], "only the unbound claim waiting for its first consumer");
        // A volume that names another claim puts nothing on this guest.
        let mut stolen = pv.clone();
        stolen["spec"]["claimRef"]["uid"] = json!("u-other");
        let b = binding(&[ClaimView { pvc: Some(&bound), pv: Some(&stolen) }], &classes);
        assert!(b.terms.is_empty() && b.to_select.is_empty());
    }
}
