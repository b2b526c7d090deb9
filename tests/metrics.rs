//! `/metrics` scraped by a real Prometheus (Debian's, started here on loopback with the shipped
//! rules file): a server running two guests on a pod network, and the series KubeVirt's
//! dashboards read, queried through Prometheus' own HTTP API. And who may read them.

mod common;

use common::guests::{kernel_vm, within};
use common::netapp::spawn_net_app_with;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A Prometheus of its own on a free loopback port, killed with the test.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: &str, token: &str, ca_pem: &str) -> Prometheus {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), token).expect("token");
    std::fs::write(dir.path().join("ca.crt"), ca_pem).expect("ca");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus/rules.yml");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [{rules}]\n\
         scrape_configs:\n\
         - job_name: converge\n\
         \x20 scheme: https\n\
         \x20 authorization: {{credentials_file: {token}}}\n\
         \x20 tls_config: {{ca_file: {ca}}}\n\
         \x20 static_configs: [{{targets: ['{target}']}}]\n",
        rules = rules.display(),
        token = dir.path().join("token").display(),
        ca = dir.path().join("ca.crt").display(),
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let port = common::servers::free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian's package; scripts/setup.sh installs it)");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
}

impl Prometheus {
    /// The instant vector of `query`, empty while Prometheus is not up or has nothing.
    async fn query(&self, query: &str) -> Vec<Value> {
        let answer =
            reqwest::Client::new().get(format!("{}/api/v1/query", self.url)).query(&[("query", query)]).send().await;
        let Ok(answer) = answer else { return Vec::new() };
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        body.pointer("/data/result").and_then(Value::as_array).cloned().unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

fn value(sample: &Value) -> f64 {
    sample.pointer("/value/1").and_then(Value::as_str).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_kubevirts_series_for_two_guests_and_the_control_plane() {
    within(Duration::from_secs(300), async {
        let net = spawn_net_app_with(41, |_| {}).await;
        let app = &net.g.app;
        for name in ["alpha", "beta"] {
            // A disk beside the kernel boot, which the guest's kernel reads as it probes it.
            let mut vm = kernel_vm(name, "Always");
            let spec = &mut vm["spec"]["template"]["spec"];
            spec["domain"]["devices"]["disks"] = json!([{"name": "data", "disk": {"bus": "virtio"}}]);
            spec["volumes"] = json!([{"name": "data", "containerDisk": {"image": common::guests::HALT_IMAGE}}]);
            assert_eq!(app.post(VMS_DEFAULT, &vm).await.0, 201);
        }
        // An import (blank: CDI's importer fills it too), for CDI's progress series.
        let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "scratch"},
                        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "16Mi"}}}}});
        let (code, created) = app.post("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes", &dv).await;
        assert_eq!(code, 201, "{created}");
        let dv_uid = created["metadata"]["uid"].as_str().expect("uid").to_string();
        for name in ["alpha", "beta"] {
            assert!(net.g.wait_phase(name, "Running", Duration::from_secs(120)).await, "{name} runs");
        }
        let ca = std::fs::read_to_string(app.dir.path().join("ca.crt")).expect("ca");
        let target = app.base_url.trim_start_matches("https://").to_string();
        let prometheus = start_prometheus(&target, &app.token, &ca);
        let up = wait_until(Duration::from_secs(60), || async {
            prometheus.query("up{job=\"converge\"} == 1").await.len() == 1
        })
        .await;
        assert!(up, "Prometheus scrapes the server:\n{}", prometheus.log());
        // Both guests, with KubeVirt's labels, and the recording rule built on them.
        let both = wait_until(Duration::from_secs(60), || async {
            prometheus.query("kubevirt_vmi_info{phase=\"running\",node=\"node-1\"}").await.len() == 2
                && prometheus.query("node:kubevirt_vmi_phase:sum{phase=\"running\"}").await.first().map(value)
                    == Some(2.0)
        })
        .await;
        assert!(both, "{:?}", prometheus.query("kubevirt_vmi_info").await);
        // Each guest's figures from libvirt; those that count traffic have counted some.
        let nonzero = [
            "kubevirt_vmi_memory_resident_bytes",
            "kubevirt_vmi_cpu_usage_seconds_total",
            "kubevirt_vmi_vcpu_seconds_total",
            "kubevirt_vmi_network_receive_bytes_total",
            "kubevirt_vmi_network_transmit_bytes_total",
            "kubevirt_vmi_storage_read_traffic_bytes_total",
            "kubevirt_vmi_storage_iops_read_total",
        ];
        for series in nonzero {
            let ok = wait_until(Duration::from_secs(30), || async {
                let found = prometheus.query(&format!("{series} > 0")).await;
                ["alpha", "beta"].iter().all(|n| found.iter().any(|s| s.pointer("/metric/name") == Some(&json!(n))))
            })
            .await;
            assert!(ok, "{series} for both guests: {:?}", prometheus.query(series).await);
        }
        let interfaces = prometheus.query("kubevirt_vmi_network_receive_bytes_total{name=\"alpha\"}").await;
        assert_eq!(interfaces[0].pointer("/metric/interface"), Some(&json!("default")), "the VMI's name for its NIC");
        let drives = prometheus.query("kubevirt_vmi_storage_read_traffic_bytes_total{name=\"alpha\"}").await;
        assert_eq!(drives[0].pointer("/metric/drive"), Some(&json!("data")), "the VMI's name for its disk");
        let imported = format!("kubevirt_cdi_import_progress_total{{ownerUID=\"{dv_uid}\"}}");
        let done = wait_until(Duration::from_secs(60), || async {
            prometheus.query(&imported).await.first().map(value) == Some(100.0)
        })
        .await;
        assert!(done, "{imported}: {:?}", prometheus.query("kubevirt_cdi_import_progress_total").await);
        for series in ["kubevirt_vmi_storage_write_traffic_bytes_total", "kubevirt_vmi_migrations_in_running_phase"] {
            assert!(!prometheus.query(series).await.is_empty(), "{series}");
        }
        // The control plane's own.
        let created =
            "apiserver_request_total{verb=\"POST\",resource=\"virtualmachines\",group=\"kubevirt.io\",code=\"201\"}";
        assert_eq!(prometheus.query(created).await.first().map(value), Some(2.0));
        let gets = "apiserver_request_duration_seconds_count{verb=\"GET\",resource=\"virtualmachineinstances\",scope=\"resource\"}";
        assert!(!prometheus.query(gets).await.is_empty(), "{gets}");
        for series in [
            "kubevirt_workqueue_depth{name=\"virtualmachine\"}",
            "kubevirt_workqueue_work_duration_seconds_count{name=\"virtualmachineinstance\"} > 0",
            "kubevirt_workqueue_queue_duration_seconds_bucket",
            "converge_store_transaction_duration_seconds_count{operation=\"create\"} > 0",
            "converge_store_watchers > 0",
        ] {
            assert!(!prometheus.query(series).await.is_empty(), "{series}");
        }
        // A watch held open shows as a long-running request.
        let watch = app.http.get(app.url(&format!("{VMS_DEFAULT}?watch=true"))).bearer_auth(&app.token).send().await;
        assert!(watch.is_ok());
        let held = "apiserver_longrunning_requests{verb=\"WATCH\",resource=\"virtualmachines\"} >= 1";
        assert!(
            wait_until(Duration::from_secs(20), || async { !prometheus.query(held).await.is_empty() }).await,
            "{held}"
        );
        drop(watch);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_cluster_wide_token_reads_metrics_and_the_open_listener_serves_them() {
    let app = spawn_app_with(None, |c| c.metrics_listen = Some("127.0.0.1:0".into())).await;
    let app = &app;
    let get = |token: Option<String>| async move {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    let token = |body: Value| async move {
        let (code, record) = app.post("/converge/v1/tokens", &body).await;
        assert_eq!(code, 201, "{record}");
        record["token"].as_str().expect("token").to_string()
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some(token(json!({"role": "view", "ttlSeconds": 600})).await)).await, 200);
    // A tenant confined to its namespace, even its admin, reads no one else's guests.
    let tenant = token(json!({"role": "admin", "namespaces": ["team-a"], "ttlSeconds": 600})).await;
    assert_eq!(get(Some(tenant)).await, 403);
    let node = token(json!({"role": "node", "node": "node-9", "ttlSeconds": 600})).await;
    assert_eq!(get(Some(node)).await, 403);
    // The open listener: plain HTTP, no token, the same text.
    let addr = app.server.as_ref().and_then(|s| s.metrics_addr).expect("metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("get").text().await.expect("text");
    assert!(text.contains("# TYPE apiserver_request_total counter"), "{text}");
    assert!(text.contains("# TYPE kubevirt_workqueue_depth gauge"), "{text}");
    // Nothing else is served there.
    let other = reqwest::get(format!("http://{addr}/api/v1/namespaces")).await.expect("get").status();
    assert_eq!(other.as_u16(), 404);
}

const VMS_DEFAULT: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
