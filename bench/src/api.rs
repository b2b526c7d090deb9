#![allow(dead_code)] // each bench binary uses its own part of this module
//! The server as the guest benchmarks speak to it: an admin client, the VMI collection, and the
//! guest every ramp creates (a boot sector that halts: no CPU once up).

use anyhow::Result;
use serde_json::{json, Value};

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

pub fn vmis(ns: &str) -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances")
}

pub fn halt_vmi(name: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 0, "domain": {"resources": {"requests": {"memory": "32Mi"}},
                    "devices": {"disks": [{"name": "boot", "disk": {"bus": "sata"}}], "autoattachGraphicsDevice": false,
                                "autoattachPodInterface": false, "autoattachMemBalloon": false}},
                    "volumes": [{"name": "boot", "containerDisk": {"image": "converge.dev/test/halt:v1"}}]}})
}
