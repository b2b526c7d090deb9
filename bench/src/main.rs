//! API benchmark: a server started in this process on port 0, and a load client sharing the
//! same cores, over HTTPS with a bearer token and keep-alive. Prints figures, each beside a
//! baseline measured the same way in the same run (`/healthz` through the same client: TLS and
//! HTTP without auth, admission or the store).

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod bridge;
mod cold;
#[path = "report.rs"]
mod report;
use report::{Figure, Goal, Report};

#[derive(Parser)]
struct Args {
    /// postgres://… to measure PostgreSQL; default SQLite in a temp dir.
    #[arg(long)]
    database: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per GET measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// VMs in the big list.
    #[arg(long, default_value_t = 100_000)]
    list_size: usize,
    /// Open watches for the fan-out measurement.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// The converge binary whose cold start is timed (skipped when absent).
    #[arg(long, default_value = "target/release/converge")]
    converge: std::path::PathBuf,
    /// Objects in the store for the second cold start.
    #[arg(long, default_value_t = 10_000)]
    cold_objects: usize,
    /// Hosts made through /bridge/v1 (and, for the baseline, through the Kubernetes API).
    #[arg(long, default_value_t = 200)]
    hosts: usize,
    /// Write the figures here (bench/report.py reads them).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

fn vm(name: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {}}], "interfaces": [{"name": "default", "masquerade": {}}]},
                       "resources": {"requests": {"memory": "128Mi"}}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": "registry.local/busybox"}}]}}}
    })
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn get(&self, path: &str) -> Result<u16> {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        let s = r.status().as_u16();
        r.bytes().await?;
        Ok(s)
    }
    async fn post(&self, path: &str, body: &Value) -> Result<u16> {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body).send().await?;
        let s = r.status().as_u16();
        r.bytes().await?;
        Ok(s)
    }
}

/// Requests per second of `op` at `concurrency` for `seconds`.
async fn rate<F, Fut>(concurrency: usize, seconds: u64, op: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u16>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..concurrency {
        let (op, done) = (Arc::clone(&op), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < end {
                let s = op(i).await?;
                anyhow::ensure!((200..300).contains(&s), "status {s}");
                done.fetch_add(1, Ordering::Relaxed);
                i += concurrency;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Create `count` VMs named prefix-N at `concurrency`; creates per second.
async fn create_many(client: &Arc<Client>, prefix: &str, count: usize, concurrency: usize) -> Result<f64> {
    let started = Instant::now();
    let results: Vec<Result<u16>> = futures::stream::iter(0..count)
        .map(|i| {
            let client = Arc::clone(client);
            let name = format!("{prefix}-{i:05}");
            async move { client.post(VMS, &vm(&name)).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in results {
        anyhow::ensure!(r? == 201, "create failed");
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut config = converge_api::ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".into();
    config.database_url = args.database.clone();
    let server = converge_api::start(config).await.context("starting the server")?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(server.ca_pem.as_bytes())?)
        .pool_max_idle_per_host(args.concurrency * 2)
        // Well inside the server's keep-alive (90 s), so that the client, not the server, drops
        // an idle connection and none is closed under a request.
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    let client = Arc::new(Client { http, base: server.base_url.clone(), token: server.admin_token.clone() });
    let c = args.concurrency;

    let warm = Arc::clone(&client);
    rate(c, 1, move |_| {
        let w = Arc::clone(&warm);
        async move { w.get("/healthz").await }
    })
    .await?;
    let base_client = Arc::clone(&client);
    let healthz = rate(c, args.seconds, move |_| {
        let b = Arc::clone(&base_client);
        async move { b.get("/healthz").await }
    })
    .await?;

    let creates = create_many(&client, "c", 2000, c).await?;
    let get_client = Arc::clone(&client);
    let gets = rate(c, args.seconds, move |i| {
        let g = Arc::clone(&get_client);
        async move { g.get(&format!("{VMS}/c-{:05}", i % 2000)).await }
    })
    .await?;
    let fill = create_many(&client, "f", args.list_size.saturating_sub(2000), c).await?;

    let mut list_ms = vec![];
    let mut table_ms = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let body =
            client.http.get(format!("{}{VMS}", client.base)).bearer_auth(&client.token).send().await?.bytes().await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let items = serde_json::from_slice::<Value>(&body)?["items"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(items == args.list_size.max(2000), "listed {items}");
        let t = Instant::now();
        client
            .http
            .get(format!("{}{VMS}", client.base))
            .bearer_auth(&client.token)
            .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .send()
            .await?
            .bytes()
            .await?;
        table_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // Fan-out: one change, measured until every open watch has it — on a quiet server. The
    // controllers are still writing the status of the VMs just created (printableStatus), and
    // each of those writes reaches every watch too: wait until the store has not moved for 2 s.
    let settling = Instant::now();
    let mut rv = server.store.current_rv().await.map_err(|e| anyhow::anyhow!(e.message))?;
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(2) {
        anyhow::ensure!(settling.elapsed() < Duration::from_secs(600), "the store never went quiet");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.store.current_rv().await.map_err(|e| anyhow::anyhow!(e.message))?;
        if now != rv {
            (rv, still_since) = (now, Instant::now());
        }
    }
    let settled_note = format!(
        "P5.watch: the controllers' writes after the creates settled {:.1} s after the LISTs; the fan-out ran on a quiet store",
        settling.elapsed().as_secs_f64() - 2.0
    );
    let mut watches = vec![];
    for _ in 0..args.watchers {
        let url = format!(
            "{}{VMS}?watch=true&resourceVersion={}&fieldSelector=metadata.name%3Dc-00000",
            client.base,
            server.store.current_rv().await.map_err(|e| anyhow::anyhow!(e.message))?
        );
        // A pooled connection the server's keep-alive closes just as it is reused fails the
        // send with "peer closed connection" (seen once on a slow machine): open it again.
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            match client.http.get(&url).bearer_auth(&client.token).send().await {
                Err(e) if attempt < 3 && (e.is_request() || e.is_connect()) => continue,
                other => break other?,
            }
        };
        watches.push(resp);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (i, mut resp) in watches.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(chunk)) = resp.chunk().await {
                for _ in chunk.iter().filter(|b| **b == b'\n') {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fanout_ms = vec![];
    let mut patch_ms = vec![];
    for round in 0..10 {
        let t = Instant::now();
        let patch = json!({"metadata": {"labels": {"round": round.to_string()}}});
        let r = client
            .http
            .patch(format!("{}{VMS}/c-00000", client.base))
            .bearer_auth(&client.token)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "patch {}", r.status());
        patch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let mut got = 0;
        let mut last = t;
        while got < args.watchers {
            let (_, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("watch ended")?;
            got += 1;
            last = at;
        }
        fanout_ms.push(last.duration_since(t).as_secs_f64() * 1000.0);
    }

    // The LIST's baseline: the same rows by the fastest in-process path, one scan with the
    // stored text spliced into a list (what the API does, without HTTP, TLS and auth).
    let mut store_ms = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        let opts = converge_engine::store::ListOptions::default();
        let page = server
            .store
            .list(&converge_engine::kinds::VIRTUAL_MACHINE, Some("default"), &opts)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let mut body = String::with_capacity(page.items.iter().map(|i| i.len() + 1).sum::<usize>() + 128);
        body.push_str(r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineList","metadata":{"resourceVersion":""#);
        body.push_str(&page.resource_version.to_string());
        body.push_str(r#""},"items":["#);
        for (k, item) in page.items.iter().enumerate() {
            if k > 0 {
                body.push(',');
            }
            body.push_str(item);
        }
        body.push_str("]}");
        anyhow::ensure!(page.items.len() == args.list_size.max(2000) && !body.is_empty());
        store_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (bridge_hosts, k8s_hosts) = bridge::hosts_per_second(&client, args.hosts, c).await?;
    let cold = cold::starts(&args.converge, args.cold_objects).await?;
    let mut report = Report::default();
    report.notes.push(format!(
        "{} on {} cores, concurrency {c}, HTTPS + bearer + keep-alive, load client in the same process",
        if args.database.is_some() { "PostgreSQL" } else { "SQLite" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    report.notes.push(format!(
        "P5: GET /healthz through the same client, TLS and keep-alive (no auth, no store) answers {healthz:.0} req/s: \
         the ceiling of this client and server on these cores, not a baseline for the rows below"
    ));
    report.notes.push(settled_note);
    let ceiling = "the absolute goal is the measure; GET /healthz (see notes) bounds what any handler can do here";
    report.push(Figure::new("P5.get", "GET one VM", "req/s", gets).no_baseline(ceiling).goal(Goal::AtLeast(15_000.0)));
    report.push(
        Figure::new("P5.create", "create VM (admission, MAC pool, store), first 2000", "req/s", creates)
            .no_baseline(ceiling)
            .goal(Goal::AtLeast(1500.0)),
    );
    report.push(
        Figure::new("P5.create.sustained", format!("create VM, sustained to {} stored", args.list_size), "req/s", fill)
            .no_baseline(ceiling),
    );
    report.push(
        Figure::new(
            "P5.list",
            format!("LIST {} VMs (JSON), median of 5", args.list_size),
            "ms",
            report::quantile(&list_ms, 0.5),
        )
        .against("the same rows in-process: one scan, stored text spliced, no HTTP", report::quantile(&store_ms, 0.5))
        .goal(Goal::AtMost(1000.0)),
    );
    report.push(
        Figure::new(
            "P5.list.table",
            format!("LIST {} VMs as a Table (kubectl get)", args.list_size),
            "ms",
            report::quantile(&table_ms, 0.5),
        )
        .against("the same rows as JSON (P5.list)", report::quantile(&list_ms, 0.5)),
    );
    report.push(
        Figure::new(
            "P5.watch",
            format!("one change → all {} watches, median of 10", args.watchers),
            "ms",
            report::quantile(&fanout_ms, 0.5),
        )
        .against("the PATCH's own round trip", report::quantile(&patch_ms, 0.5))
        .goal(Goal::AtMost(50.0)),
    );
    report.push(
        Figure::new(
            "P5.bridge",
            "POST /bridge/v1/hosts (record + Secret + DataVolume + VM, the view)",
            "hosts/s",
            bridge_hosts,
        )
        .against("the same three objects POSTed through the Kubernetes API", k8s_hosts),
    );
    for (label, ms) in &cold {
        report.push(
            Figure::new(format!("P5.cold.{label}"), format!("converge serve start → /readyz 200, {label}"), "ms", *ms)
                .no_baseline("nothing else serves this API here to start beside it"),
        );
    }
    report.series("P5.list_ms", json!(list_ms));
    report.series("P5.cold_ms", json!(cold));
    report.series("P5.watch_ms", json!(fanout_ms));
    server.stop().await;
    report.finish("api-bench", args.json.as_deref())
}
