//! The API server's request metrics under kube-apiserver's names and labels:
//! `apiserver_request_total` (verb, group, version, resource, subresource, scope, component,
//! code), `apiserver_request_duration_seconds` (the same without code; long-running requests —
//! WATCH and CONNECT — are left out, as the apiserver leaves them out) and
//! `apiserver_longrunning_requests`, the watches and consoles open now.
//!
//! A request is classified from its method, path, query and Content-Type alone (`classify`,
//! pure): every label comes from a fixed set or from the kind table, never from the path's own
//! text, so a client cannot grow the label space.

use converge_engine::kinds;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;
use std::time::Duration;

const LABELS: &[&str] = &["verb", "group", "version", "resource", "subresource", "scope", "component"];

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    let _ = prometheus::register(Box::new(collector.clone()));
    collector
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let labels: Vec<&str> = LABELS.iter().copied().chain(["code"]).collect();
    let opts = Opts::new(
        "apiserver_request_total",
        "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
    );
    register(IntCounterVec::new(opts, &labels).expect("metric"))
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    // kube-apiserver's buckets.
    let buckets = vec![
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0,
        30.0, 45.0, 60.0,
    ];
    let opts = HistogramOpts::new(
        "apiserver_request_duration_seconds",
        "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
    )
    .buckets(buckets);
    register(HistogramVec::new(opts, LABELS).expect("metric"))
});

static LONG_RUNNING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "apiserver_longrunning_requests",
        "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.",
    );
    register(IntGaugeVec::new(opts, LABELS).expect("metric"))
});

/// What a request was, as kube-apiserver labels it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub scope: &'static str,
}

impl RequestLabels {
    fn values(&self) -> [&str; 7] {
        [self.verb, self.group, self.version, self.resource, self.subresource, self.scope, "apiserver"]
    }

    fn long_running(&self) -> bool {
        matches!(self.verb, "WATCH" | "CONNECT")
    }
}

/// Versions a path may name; anything else is labelled as no version.
const VERSIONS: &[&str] = &["v1", "v1alpha1", "v1alpha2", "v1alpha3", "v1beta1", "v1beta2"];
const SUBRESOURCES: &[&str] = &[
    "status",
    "scale",
    "start",
    "stop",
    "restart",
    "migrate",
    "pause",
    "unpause",
    "softreboot",
    "console",
    "vnc",
    "domain",
    "log",
    "consolelog",
    "servingcertificate",
];

fn known(set: &[&'static str], text: &str) -> &'static str {
    set.iter().find(|s| **s == text).copied().unwrap_or("")
}

/// The labels of a request: its verb (kube-apiserver's LIST, WATCH, GET, POST, PUT, PATCH,
/// APPLY, DELETE, CONNECT), and the resource it addressed when it addressed one.
pub fn classify(method: &str, path: &str, query: &str, content_type: &str) -> RequestLabels {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/…, /apis/GROUP/VERSION/…, /apis/subresources.kubevirt.io/VERSION/…
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => ("", "", &[][..]),
    };
    let group_label = kinds::ALL.iter().map(|k| k.group).chain(["subresources.kubevirt.io"]).find(|g| *g == group);
    let rest = rest.strip_prefix(&["watch"][..]).unwrap_or(rest);
    let (namespaced, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(*ns), tail),
        tail => (None, tail),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, ""),
        [resource, name] => (*resource, Some(*name), ""),
        [resource, name, sub, ..] => (*resource, Some(*name), known(SUBRESOURCES, sub)),
        _ => ("", None, ""),
    };
    let resource_label = kinds::ALL.iter().map(|k| k.plural).find(|p| *p == resource);
    let Some(resource) = resource_label.filter(|_| group_label.is_some() || group.is_empty()) else {
        return RequestLabels { verb: plain_verb(method), ..Default::default() };
    };
    let watch = path.contains("/watch/") || query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let verb = match method {
        _ if subresource == "console" || subresource == "vnc" => "CONNECT",
        "GET" if watch => "WATCH",
        "GET" if name.is_none() => "LIST",
        "PATCH" if content_type.starts_with("application/apply-patch") => "APPLY",
        other => plain_verb(other),
    };
    let scope = match (name, namespaced) {
        (Some(_), _) => "resource",
        (None, Some(_)) => "namespace",
        (None, None) => "cluster",
    };
    RequestLabels {
        verb,
        group: group_label.unwrap_or(""),
        version: known(VERSIONS, version),
        resource,
        subresource,
        scope,
    }
}

fn plain_verb(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Counts an answered request, and its latency unless it is long-running.
pub fn observe(labels: &RequestLabels, code: u16, elapsed: Duration) {
    let values = labels.values();
    let mut with_code: Vec<&str> = values.to_vec();
    let code = code.to_string();
    with_code.push(&code);
    REQUESTS.with_label_values(&with_code).inc();
    if !labels.long_running() {
        DURATION.with_label_values(&values).observe(elapsed.as_secs_f64());
    }
}

/// Counts a long-running request (a watch, a console) while it is held.
pub struct LongRunning(prometheus::IntGauge);

impl LongRunning {
    pub fn start(labels: &RequestLabels) -> LongRunning {
        let gauge = LONG_RUNNING.with_label_values(&labels.values());
        gauge.inc();
        LongRunning(gauge)
    }
}

impl Drop for LongRunning {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str, query: &str) -> RequestLabels {
        classify(method, path, query, "application/json")
    }

    #[test]
    fn requests_get_kube_apiservers_verbs_and_scopes() {
        let list = c("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines", "");
        assert_eq!(
            list,
            RequestLabels {
                verb: "LIST",
                group: "kubevirt.io",
                version: "v1",
                resource: "virtualmachines",
                subresource: "",
                scope: "namespace"
            }
        );
        assert_eq!(c("GET", "/apis/kubevirt.io/v1/virtualmachines", "watch=true").verb, "WATCH");
        assert_eq!(c("GET", "/apis/kubevirt.io/v1/virtualmachines", "").scope, "cluster");
        let get = c("GET", "/api/v1/namespaces/a/configmaps/x", "");
        assert_eq!((get.verb, get.resource, get.scope, get.group), ("GET", "configmaps", "resource", ""));
        assert_eq!(c("GET", "/api/v1/namespaces/a", "").resource, "namespaces");
        let apply = classify("PATCH", "/api/v1/namespaces/a/configmaps/x", "", "application/apply-patch+yaml");
        assert_eq!(apply.verb, "APPLY");
        let status = c("PUT", "/apis/kubevirt.io/v1/namespaces/a/virtualmachineinstances/v/status", "");
        assert_eq!((status.verb, status.subresource), ("PUT", "status"));
        let console = c("GET", "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachineinstances/v/console", "");
        assert_eq!(
            (console.verb, console.group, console.subresource),
            ("CONNECT", "subresources.kubevirt.io", "console")
        );
        assert!(console.long_running());
        let start = c("PUT", "/apis/subresources.kubevirt.io/v1/namespaces/a/virtualmachines/v/start", "");
        assert_eq!((start.verb, start.resource, start.subresource), ("PUT", "virtualmachines", "start"));
    }

    #[test]
    fn paths_a_client_makes_up_add_no_label_values() {
        for path in
            ["/apis/evil.io/v9/namespaces/x/widgets", "/healthz", "/api/v1/namespaces/a/secrets/s/../../x", "/x"]
        {
            let labels = c("GET", path, "");
            assert!(["", "secrets"].contains(&labels.resource), "{path}: {labels:?}");
        }
        let odd = c("BREW", "/apis/kubevirt.io/v99/namespaces/a/virtualmachines/v/exfiltrate", "");
        assert_eq!((odd.verb, odd.version, odd.subresource), ("OTHER", "", ""));
        assert_eq!(c("GET", "/metrics", "").verb, "GET");
    }
}
