//! Foreman's KubeVirt compute resource, as the Ruby flow (`tests/foreman/fog_flow.rb`) drives
//! it: the connection form and one phase of the flow.

use serde_json::Value;

/// The connection form of Foreman's KubeVirt compute resource.
pub struct Form {
    pub env: Vec<(String, String)>,
    /// The CA file the form names, kept while the form is.
    pub ca: tempfile::NamedTempFile,
}

/// One phase of the Ruby flow; its JSON report.
pub async fn fog(form: &Form, phase: &str, extra: &[(&str, &str)]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/foreman/fog_flow.rb");
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new("ruby")
        .arg(script)
        .arg(phase)
        .envs(form.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .output()
        .await
        .expect("ruby runs (ruby-kubeclient is installed by scripts/setup.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fog_flow.rb {phase}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    // Figures for the record (what a Foreman user waits), not assertions.
    eprintln!("fog_flow.rb {phase}: {} ms", started.elapsed().as_millis());
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON report")
}
