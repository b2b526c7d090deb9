//! The signer `converge.dev/node-serving`: node agents' serving certificates on a Kubernetes
//! cluster, approved and signed by the controllers (which alone hold Converge's CA), as
//! kube-controller-manager signs kubelets'. A request is approved when its asker may change the
//! Node it names — who may rewrite a Node's addresses already decides where its traffic goes —
//! and, when the asker's token is bound to a pod's node, only for that node. The CA the agents
//! must trust is published in a ConfigMap of Converge's namespace.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use converge_engine::cluster::kube::KubeCluster;
use converge_engine::ApiError;
use serde_json::{json, Value};

use crate::nodes::csr::{self, NodeRequest, CA_CONFIG_MAP, SIGNER};
use crate::pki::Authority;

const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
/// How often pending requests are looked for: an agent waits at most this long at its start.
const POLL: Duration = Duration::from_secs(1);

/// What becomes of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Sign(NodeRequest),
    Deny(String),
}

/// What can be decided from the request alone: its PKCS#10 content, the usages it asks for,
/// the node its asker's token is bound to. Whether the asker may change that Node is asked of
/// the apiserver after.
pub fn judge(csr: &Value) -> Decision {
    let b64 = csr.pointer("/spec/request").and_then(Value::as_str).unwrap_or("");
    let pem = match base64::engine::general_purpose::STANDARD.decode(b64).map(String::from_utf8) {
        Ok(Ok(pem)) => pem,
        _ => return Decision::Deny("spec.request is not a base64 PEM request".into()),
    };
    let request = match csr::parse_request(&pem) {
        Ok(r) => r,
        Err(e) => return Decision::Deny(e.to_string()),
    };
    let usages: Vec<&str> =
        csr.pointer("/spec/usages").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if let Some(other) =
        usages.iter().find(|u| !matches!(**u, "digital signature" | "server auth" | "key encipherment"))
    {
        return Decision::Deny(format!("a node serving certificate is for serving alone, not {other:?}"));
    }
    if let Some(bound) = csr::bound_node(csr) {
        if bound != [request.node.clone()] {
            return Decision::Deny(format!(
                "the asker's token belongs to a pod on node {:?}: it may not ask for node {:?}",
                bound.join(","),
                request.node
            ));
        }
    }
    Decision::Sign(request)
}

/// Asks the apiserver whether the CSR's asker may update Node `node`.
async fn may_change_node(cluster: &KubeCluster, csr: &Value, node: &str) -> Result<bool, ApiError> {
    let spec = csr.get("spec").cloned().unwrap_or_default();
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": spec.get("username").cloned().unwrap_or_default(),
            "uid": spec.get("uid").cloned().unwrap_or_default(),
            "groups": spec.get("groups").cloned().unwrap_or(json!([])),
            "extra": spec.get("extra").cloned().unwrap_or(json!({})),
            "resourceAttributes": {"verb": "update", "group": "", "resource": "nodes", "name": node},
        },
    });
    let answer = cluster.raw_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &review).await?;
    Ok(answer.pointer("/status/allowed").and_then(Value::as_bool) == Some(true))
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": "True", "reason": reason, "message": message,
           "lastUpdateTime": converge_engine::meta::now_rfc3339()})
}

/// Adds `condition` to the CSR through its approval subresource; the CSR as it then is.
async fn settle(cluster: &KubeCluster, csr: &Value, condition: Value) -> Result<Value, ApiError> {
    let name = csr.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let mut next = csr.clone();
    let conditions = converge_engine::meta::at_mut(&mut next, &["status", "conditions"]);
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Some(list) = conditions.as_array_mut() {
        list.push(condition);
    }
    cluster.raw_put(&format!("{CSRS}/{name}/approval"), &next).await
}

/// Decides and answers one pending request.
async fn answer(cluster: &KubeCluster, authority: &Authority, csr: &Value) -> Result<(), ApiError> {
    let name = csr.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let decision = match judge(csr) {
        Decision::Sign(request) => match cluster.raw_get(&format!("/api/v1/nodes/{}", request.node)).await {
            Err(e) if e.code == 404 => Decision::Deny(format!("there is no Node {:?}", request.node)),
            Err(e) => return Err(e),
            Ok(_) if !may_change_node(cluster, csr, &request.node).await? => Decision::Deny(format!(
                "{:?} may not update Node {:?}, so it may not have its serving certificate",
                csr.pointer("/spec/username").and_then(Value::as_str).unwrap_or(""),
                request.node
            )),
            Ok(_) => Decision::Sign(request),
        },
        deny => deny,
    };
    match decision {
        Decision::Deny(why) => {
            tracing::warn!(csr = %name, %why, "denied a node serving certificate");
            settle(cluster, csr, condition("Denied", "ConvergeNodeServingDenied", &why)).await?;
        }
        Decision::Sign(request) => {
            let mut current = csr.clone();
            if !csr::approved(csr) {
                let why = format!("the agent of node {} may serve it", request.node);
                current = settle(cluster, csr, condition("Approved", "ConvergeNodeServing", &why)).await?;
            }
            let pem = authority
                .node_serving_certificate(&request.node, &request.public_key)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            current["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
            cluster.raw_put(&format!("{CSRS}/{name}/status"), &current).await?;
            tracing::info!(csr = %name, node = %request.node, "signed a node serving certificate");
        }
    }
    Ok(())
}

/// Writes the CA's certificate where node agents read it.
pub async fn publish_ca(cluster: &KubeCluster, namespace: &str, ca_pem: &str) -> Result<(), ApiError> {
    let path = format!("/api/v1/namespaces/{namespace}/configmaps");
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CA_CONFIG_MAP, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "converge"}},
        "data": {"ca.crt": ca_pem},
    });
    match cluster.raw_get(&format!("{path}/{CA_CONFIG_MAP}")).await {
        Ok(existing) if existing.pointer("/data/ca.crt").and_then(Value::as_str) == Some(ca_pem) => Ok(()),
        Ok(mut existing) => {
            existing["data"] = config_map["data"].clone();
            cluster.raw_put(&format!("{path}/{CA_CONFIG_MAP}"), &existing).await.map(|_| ())
        }
        Err(e) if e.code == 404 => cluster.raw_post(&path, &config_map).await.map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Answers pending requests for `converge.dev/node-serving`, for as long as it runs.
pub async fn run(cluster: Arc<KubeCluster>, authority: Arc<Authority>) {
    let list = format!("{CSRS}?fieldSelector=spec.signerName%3D{}", SIGNER.replace('/', "%2F"));
    loop {
        match cluster.raw_get(&list).await {
            Ok(found) => {
                for csr in found["items"].as_array().into_iter().flatten().filter(|c| csr::pending(c)) {
                    if let Err(e) = answer(&cluster, &authority, csr).await {
                        tracing::warn!(error = %e.message, "answering a node's certificate request");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e.message, "listing certificate requests"),
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::server::ServingKey;

    fn csr_for(node: &str, usages: &[&str], extra: Value) -> Value {
        let key = ServingKey::generate().expect("key");
        let pem = csr::request_pem(&key, node).expect("request");
        json!({"metadata": {"name": "c1"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": SIGNER, "usages": usages, "username": "system:serviceaccount:converge-system:converge-node",
            "extra": extra}})
    }

    #[test]
    fn a_nodes_request_is_signed_for_that_node_only() {
        let serving = ["digital signature", "server auth"];
        assert!(matches!(judge(&csr_for("node-a", &serving, json!({}))), Decision::Sign(r) if r.node == "node-a"));
        let bound = json!({csr::NODE_NAME_EXTRA: ["node-a"]});
        assert!(matches!(judge(&csr_for("node-a", &serving, bound.clone())), Decision::Sign(_)));
        assert!(matches!(judge(&csr_for("node-b", &serving, bound)), Decision::Deny(_)), "a pod on a asks for b");
        assert!(matches!(judge(&csr_for("node-a", &["client auth"], json!({}))), Decision::Deny(_)));
        let mut garbage = csr_for("node-a", &serving, json!({}));
        garbage["spec"]["request"] = json!("not base64!");
        assert!(matches!(judge(&garbage), Decision::Deny(_)));
    }
}
