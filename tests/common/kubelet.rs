//! The kubelet's part that tests and benchmarks on a real control plane need, for Nodes no
//! kubelet runs on. Shared by `tests/kubernetes.rs` and `bench/src/cluster.rs` (which includes
//! this file), so it depends on nothing of either.
#![allow(dead_code)]

use std::time::Duration;

/// What a kubelet does that the tests need, for Nodes no kubelet runs on: registers the Node
/// with its capacity, posts `Ready` and renews the Node's Lease every few seconds (else
/// kube-controller-manager taints it and kube-scheduler binds nothing there), and finishes the
/// deletion of pods bound to it (a kubelet confirms a pod's end; without one it stays
/// Terminating). Never the node agent's job on a real cluster.
pub struct KubeletStandIn {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The apiserver as its admin, over HTTPS.
#[derive(Clone)]
pub struct Admin {
    pub http: reqwest::Client,
    pub token: String,
    pub server: String,
}

impl Admin {
    /// (status code, body); a request that never got an answer is (0, why).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> (u16, String) {
        let answer = self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .body(body.to_string())
            .send()
            .await;
        match answer {
            Ok(a) => {
                let code = a.status().as_u16();
                (code, a.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let answer = self.http.get(format!("{}{path}", self.server)).bearer_auth(&self.token).send().await;
        match answer {
            Ok(a) => a.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }
}

/// Registers Nodes (name, cpu, memory) as kubelets would, and keeps them Ready until the
/// stand-in is dropped.
pub async fn stand_in(admin: Admin, nodes: &[(&str, &str, &str)]) -> KubeletStandIn {
    let apply = "application/apply-patch+yaml";
    for (name, cpu, memory) in nodes {
        let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}});
        let (code, text) = admin.send(reqwest::Method::POST, "/api/v1/nodes", "application/json", &node).await;
        assert!(code == 201 || code == 409, "registering {name}: {code} {text}");
        let status = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
                       "nodeInfo": {"kubeletVersion": "v1.34.4-stand-in", "operatingSystem": "linux", "architecture": "amd64"}}});
        let path = format!("/api/v1/nodes/{name}/status?fieldManager=kubelet-capacity&force=true");
        let (code, text) = admin.send(reqwest::Method::PATCH, &path, apply, &status).await;
        assert_eq!(code, 200, "{name}'s capacity: {text}");
    }
    let names: Vec<String> = nodes.iter().map(|(n, _, _)| n.to_string()).collect();
    beat(&admin, &names).await;
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            beat(&admin, &names).await;
        }
    });
    KubeletStandIn { task }
}

/// One round of the stand-in's work.
async fn beat(admin: &Admin, nodes: &[String]) {
    let apply = "application/apply-patch+yaml";
    let now = chrono::Utc::now();
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let micro = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for name in nodes {
        let ready = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "the tests' kubelet stand-in", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]}});
        let path = format!("/api/v1/nodes/{name}/status?fieldManager=kubelet-ready&force=true");
        admin.send(reqwest::Method::PATCH, &path, apply, &ready).await;
        let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro}});
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}?fieldManager=kubelet&force=true"
        );
        admin.send(reqwest::Method::PATCH, &path, apply, &lease).await;
    }
    // Pods bound here and being deleted: a kubelet would stop their containers and confirm.
    let pods = admin.get("/api/v1/pods").await;
    for pod in pods["items"].as_array().into_iter().flatten() {
        let node = pod.pointer("/spec/nodeName").and_then(serde_json::Value::as_str).unwrap_or("");
        if nodes.iter().any(|n| n == node) && pod.pointer("/metadata/deletionTimestamp").is_some() {
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
            let name = pod["metadata"]["name"].as_str().unwrap_or("");
            let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
            let body = serde_json::json!({"gracePeriodSeconds": 0});
            admin.send(reqwest::Method::DELETE, &path, "application/json", &body).await;
        }
    }
}
