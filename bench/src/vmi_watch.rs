//! P1's view of the VMIs: one watch, followed for the whole run, recording when each VMI was
//! first seen in each phase.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use serde_json::Value;

use super::{vmis, Api};

/// Phase transitions seen by one watch: name → (phase → when).
pub type Seen = Arc<Mutex<HashMap<String, HashMap<String, Instant>>>>;

/// Follows the namespace's VMIs for the whole run, recording when each was first seen in each
/// phase. The server ends a watch after 30 minutes (`timeoutSeconds`' default, as
/// kube-apiserver's): like any client, this one watches again from the last resourceVersion it
/// saw — a full run with rounds run again outlasts one watch.
pub async fn watch(api: Arc<Api>, ns: String, seen: Seen) -> Result<()> {
    let mut last_rv = String::new();
    loop {
        let mut url = format!("{}{}?watch=true", api.base, vmis(&ns));
        if !last_rv.is_empty() {
            url.push_str(&format!("&resourceVersion={last_rv}"));
        }
        // A dropped connection is watched again too (the server may be on its way down at the
        // end of the run: nothing is waiting for events then).
        let Ok(resp) = api.http.get(url).bearer_auth(&api.token).send().await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        anyhow::ensure!(resp.status().is_success(), "watch of {ns}: {}", resp.status());
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                anyhow::ensure!(ev["type"] != "ERROR", "watch of {ns} ended: {}", ev["object"]);
                if let Some(rv) = ev.pointer("/object/metadata/resourceVersion").and_then(Value::as_str) {
                    last_rv = rv.to_string();
                }
                let name = ev.pointer("/object/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                let phase = ev.pointer("/object/status/phase").and_then(Value::as_str).unwrap_or("").to_string();
                let uid = ev.pointer("/object/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
                if let Ok(mut s) = seen.lock() {
                    let entry = s.entry(name).or_default();
                    entry.entry(phase).or_insert_with(Instant::now);
                    entry.entry(format!("uid:{uid}")).or_insert_with(Instant::now);
                }
            }
        }
    }
}

pub fn seen_at(seen: &Seen, name: &str, phase: &str) -> Option<Instant> {
    seen.lock().ok()?.get(name)?.get(phase).copied()
}
