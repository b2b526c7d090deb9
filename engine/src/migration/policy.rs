//! MigrationPolicies (`migrations.kubevirt.io/v1alpha1`): which one applies to a VMI, as
//! KubeVirt picks it, and the options a migration then runs with — KubeVirt's cluster defaults
//! where the policy is silent. The controller writes them into the VMI's migrationState
//! (`migrationConfiguration`); the source agent parses them back, bounded, before it acts.

use serde_json::{json, Map, Value};

/// KubeVirt's defaults (its KubeVirt CR's `migrations`).
pub const DEFAULT_COMPLETION_TIMEOUT_PER_GIB: u64 = 150;
pub const DEFAULT_PROGRESS_TIMEOUT: u64 = 150;
/// Bounds on what a policy may ask: a day per GiB, and a bandwidth libvirt can hold.
const MAX_SECONDS: u64 = 86_400;
const MAX_BANDWIDTH_MIB: u64 = 1 << 30;

fn selector_matches(selector: Option<&Value>, labels: &Map<String, Value>) -> Option<usize> {
    let Some(wanted) = selector.and_then(Value::as_object) else { return Some(0) };
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v)).then_some(wanted.len())
}

/// The policy for a VMI: every one whose selectors all match the VMI's and its namespace's
/// labels; of those the one matching the most labels, then the first by name (KubeVirt's
/// precedence).
pub fn pick<'a>(policies: &'a [Value], vmi: &Value, namespace: Option<&Value>) -> Option<&'a Value> {
    let vmi_labels = crate::meta::labels(vmi);
    let ns_labels = namespace.map(crate::meta::labels).unwrap_or_default();
    let mut best: Option<(usize, &str, &Value)> = None;
    for p in policies {
        let selectors = p.pointer("/spec/selectors");
        let by_vmi = selector_matches(selectors.and_then(|s| s.get("virtualMachineInstanceSelector")), &vmi_labels);
        let by_ns = selector_matches(selectors.and_then(|s| s.get("namespaceSelector")), &ns_labels);
        let (Some(a), Some(b)) = (by_vmi, by_ns) else { continue };
        let (score, name) = (a + b, crate::meta::name(p));
        if score == 0 {
            // A policy that selects nothing applies to nothing.
            continue;
        }
        if best.is_none_or(|(s, n, _)| score > s || (score == s && name < n)) {
            best = Some((score, name, p));
        }
    }
    best.map(|(_, _, p)| p)
}

/// The `migrationConfiguration` a migration runs with under `policy`.
pub fn configuration(policy: Option<&Value>) -> Value {
    let spec = policy.and_then(|p| p.get("spec"));
    let get = |f: &str| spec.and_then(|s| s.get(f)).cloned();
    let mut c = json!({
        "allowAutoConverge": get("allowAutoConverge").unwrap_or(json!(false)),
        "allowPostCopy": get("allowPostCopy").unwrap_or(json!(false)),
        "completionTimeoutPerGiB": get("completionTimeoutPerGiB").unwrap_or(json!(DEFAULT_COMPLETION_TIMEOUT_PER_GIB)),
        "progressTimeout": DEFAULT_PROGRESS_TIMEOUT,
        "bandwidthPerMigration": get("bandwidthPerMigration").unwrap_or(json!("0")),
    });
    if let Some(d) = get("maxDowntimeMs") {
        c["maxDowntimeMs"] = d;
    }
    c
}

/// What the source does with a migration's configuration, parsed and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// MiB/s; `None`: unlimited.
    pub bandwidth_mib: Option<u64>,
    pub auto_converge: bool,
    pub post_copy: bool,
    pub completion_timeout_per_gib: u64,
    pub progress_timeout: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bandwidth_mib: None,
            auto_converge: false,
            post_copy: false,
            completion_timeout_per_gib: DEFAULT_COMPLETION_TIMEOUT_PER_GIB,
            progress_timeout: DEFAULT_PROGRESS_TIMEOUT,
        }
    }
}

fn seconds(v: Option<&Value>, default: u64) -> u64 {
    v.and_then(Value::as_u64).filter(|s| *s > 0).unwrap_or(default).min(MAX_SECONDS)
}

pub fn options(configuration: Option<&Value>) -> Options {
    let Some(c) = configuration else { return Options::default() };
    let bytes = c.get("bandwidthPerMigration").and_then(|q| crate::quantity::parse_value(q).ok()).unwrap_or(0.0);
    let bandwidth_mib = (bytes.is_finite() && bytes > 0.0)
        .then(|| ((bytes / (1u64 << 20) as f64).ceil() as u64).clamp(1, MAX_BANDWIDTH_MIB));
    Options {
        bandwidth_mib,
        auto_converge: c.get("allowAutoConverge").and_then(Value::as_bool).unwrap_or(false),
        post_copy: c.get("allowPostCopy").and_then(Value::as_bool).unwrap_or(false),
        completion_timeout_per_gib: seconds(c.get("completionTimeoutPerGiB"), DEFAULT_COMPLETION_TIMEOUT_PER_GIB),
        progress_timeout: seconds(c.get("progressTimeout"), DEFAULT_PROGRESS_TIMEOUT),
    }
}

/// How long a migration of `data_bytes` may take (KubeVirt: completionTimeoutPerGiB times the
/// GiB to move, memory and copied disks, rounded up).
pub fn completion_limit(o: &Options, data_bytes: u64) -> std::time::Duration {
    let gib = data_bytes.div_ceil(1 << 30).max(1);
    std::time::Duration::from_secs(o.completion_timeout_per_gib.saturating_mul(gib))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, vmi_sel: Value, ns_sel: Value, spec: Value) -> Value {
        let mut s = spec;
        s["selectors"] = json!({});
        if !vmi_sel.is_null() {
            s["selectors"]["virtualMachineInstanceSelector"] = vmi_sel;
        }
        if !ns_sel.is_null() {
            s["selectors"]["namespaceSelector"] = ns_sel;
        }
        json!({"metadata": {"name": name}, "spec": s})
    }

    #[test]
    fn the_policy_matching_most_labels_wins_then_the_first_name() {
        let vmi = json!({"metadata": {"labels": {"tier": "db", "zone": "a"}}});
        let ns = json!({"metadata": {"labels": {"team": "x"}}});
        let policies = vec![
            policy("b-tier", json!({"tier": "db"}), Value::Null, json!({})),
            policy("a-tier", json!({"tier": "db"}), Value::Null, json!({})),
            policy("both", json!({"tier": "db"}), json!({"team": "x"}), json!({})),
            policy("other", json!({"tier": "web"}), Value::Null, json!({})),
            policy("empty", Value::Null, Value::Null, json!({})),
        ];
        assert_eq!(pick(&policies, &vmi, Some(&ns)).map(crate::meta::name), Some("both"));
        assert_eq!(pick(&policies[..2], &vmi, Some(&ns)).map(crate::meta::name), Some("a-tier"));
        assert_eq!(pick(&policies[3..], &vmi, Some(&ns)), None);
        assert_eq!(pick(&policies[2..3], &vmi, None), None, "a namespace selector needs the namespace's labels");
    }

    #[test]
    fn a_policys_options_reach_the_source_bounded() {
        let p = policy(
            "p",
            json!({"a": "b"}),
            Value::Null,
            json!({"bandwidthPerMigration": "64Mi", "allowPostCopy": true, "completionTimeoutPerGiB": 10}),
        );
        let o = options(Some(&configuration(Some(&p))));
        assert_eq!(o.bandwidth_mib, Some(64));
        assert!(o.post_copy && !o.auto_converge);
        assert_eq!(completion_limit(&o, 128 << 20), std::time::Duration::from_secs(10));
        assert_eq!(completion_limit(&o, (3 << 30) + 1), std::time::Duration::from_secs(40));
        let d = options(Some(&configuration(None)));
        assert_eq!(d, Options::default());
        let wild = json!({"bandwidthPerMigration": "1e30", "completionTimeoutPerGiB": u64::MAX});
        let o = options(Some(&wild));
        assert_eq!(o.bandwidth_mib, Some(MAX_BANDWIDTH_MIB));
        assert_eq!(o.completion_timeout_per_gib, MAX_SECONDS);
        assert!(completion_limit(&o, u64::MAX).as_secs() >= MAX_SECONDS, "the largest figures do not overflow");
        let tiny = options(Some(&json!({"bandwidthPerMigration": "1"})));
        assert_eq!(tiny.bandwidth_mib, Some(1));
    }
}
