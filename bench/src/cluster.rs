//! P1 across two nodes: N VMIs created 100 ms apart against `converge serve --no-node` with two
//! `converge node` agents joined over HTTPS (node tokens, this machine's libvirt), beside the
//! same ramp against one `converge serve` running its own node — both in this run, rounds
//! alternating which goes first. Also the resident memory of a joined agent, beside the whole
//! single-process server's, with the same guests running.
//!
//! P1 on a real Kubernetes control plane (with `--kubernetes`, when `scripts/kubernetes.sh` has
//! built it): the same ramp against kube-apiserver with Converge's CRDs and webhooks, `converge
//! controllers --kubernetes` placing each VMI through a launcher pod that kube-scheduler binds,
//! and one `converge node --kubernetes` agent on a Node the bench plays the kubelet for.
//! Usage: bench/run (everything), or cargo run --release -p converge-bench --bin cluster-bench

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};

mod host;
#[path = "../../tests/common/kubelet.rs"]
mod kubelet;
mod vmi_watch;
use host::rss_kib;
use vmi_watch::{seen_at, watch, Seen};
#[path = "report.rs"]
mod report;
use report::{quantile as pct, Figure, Report};

#[derive(Parser)]
struct Args {
    /// VMIs per ramp.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Rounds of each layout (alternating which goes first); samples are pooled.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Milliseconds between creates.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    #[arg(long, default_value = "target/release/converge")]
    converge: PathBuf,
    #[arg(long, env = "CONVERGE_GUEST_DIR", default_value = "target/guest")]
    guests: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also ramp on a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
    /// kube-scheduler, etcd from `scripts/kubernetes.sh build`).
    #[arg(long)]
    kubernetes: bool,
}

mod api;
pub use api::{halt_vmi, vmis, Api};

fn say(line: &str) {
    static BEGAN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let began = BEGAN.get_or_init(Instant::now);
    println!("[{:>5.0} s] {line}", began.elapsed().as_secs_f64());
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn converge_cmd(bin: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin);
    c.kill_on_drop(true);
    c
}

async fn import_halt(bin: &Path, guests: &Path, data: &Path) -> Result<()> {
    let st = converge_cmd(bin)
        .args(["image", "import"])
        .arg(guests.join("oci-halt"))
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(st.success(), "image import into {}", data.display());
    Ok(())
}

/// One layout running: the server, its agents (none when it runs its own node), their pids.
struct Layout {
    api: Arc<Api>,
    server: tokio::process::Child,
    agents: Vec<tokio::process::Child>,
    /// On Kubernetes: the control plane's supervisor (it stops the cluster when its stdin
    /// closes) and the kubelet stand-in.
    cluster: Option<(tokio::process::Child, kubelet::KubeletStandIn)>,
    _work: tempfile::TempDir,
}

impl Layout {
    fn server_pid(&self) -> u32 {
        self.server.id().unwrap_or(0)
    }
    fn agent_pids(&self) -> Vec<u32> {
        self.agents.iter().filter_map(tokio::process::Child::id).collect()
    }
}

/// `converge serve` (with its own node, or `--no-node` and `agents` nodes joined over HTTPS).
async fn start(args: &Args, agents: usize, prefix: &str) -> Result<Layout> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut serve = converge_cmd(&args.converge);
    serve.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--pod-network", "none"]);
    serve
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(work.path().join("serve.log"))?);
    if agents == 0 {
        import_halt(&args.converge, &args.guests, &data).await?;
        serve.args(["--node-name", &format!("{prefix}one"), "--domain-prefix", prefix]);
    } else {
        serve.arg("--no-node");
    }
    let server = serve.spawn()?;
    let (ca_path, token_path) = (data.join("ca.crt"), data.join("admin.token"));
    anyhow::ensure!(wait_for(Duration::from_secs(30), || token_path.exists() && ca_path.exists()).await, "server up");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_path)?)?)
        .build()?;
    let base = format!("https://127.0.0.1:{port}");
    let api = Arc::new(Api { http, base: base.clone(), token: std::fs::read_to_string(&token_path)?.trim().into() });
    let mut children = vec![];
    for i in 0..agents {
        let name = format!("{prefix}n{i}");
        let dir = work.path().join(&name);
        import_halt(&args.converge, &args.guests, &dir).await?;
        let kubeconfig = dir.join("kubeconfig");
        let out = converge_cmd(&args.converge)
            .args(["token", "create", "--role", "node", "--node", &name, "--ttl", "1h", "--write-kubeconfig"])
            .arg(&kubeconfig)
            .args(["--server", &base, "--kubeconfig"])
            .arg(data.join("kubeconfig"))
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let child = converge_cmd(&args.converge)
            .args(["node", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--node-name", &name, "--domain-prefix", &format!("{prefix}{i}-")])
            .args(["--listen", "127.0.0.1:0", "--pod-network", "none"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("node.log"))?)
            .spawn()?;
        children.push(child);
    }
    let ready = |node: Value| {
        node["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    let want = agents.max(1);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, nodes) = api.send(reqwest::Method::GET, "/api/v1/nodes", None).await?;
        let up = nodes["items"].as_array().map_or(0, |items| items.iter().filter(|n| ready((*n).clone())).count());
        if up >= want {
            break;
        }
        anyhow::ensure!(Instant::now() < end, "{want} nodes Ready within 60 s (saw {up})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Layout { api, server, agents: children, cluster: None, _work: work })
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// kube-apiserver and friends (`scripts/kubernetes.sh run`), Converge installed by its
/// manifests, `converge controllers --kubernetes` and one `converge node --kubernetes` agent on a
/// Node declared big enough for every launcher pod (each asks ~300 MiB: the guest's 32 MiB plus
/// KubeVirt's overhead estimate), with the bench as its kubelet.
async fn start_kubernetes(args: &Args, prefix: &str, ns: &str) -> Result<Layout> {
    let work = tempfile::tempdir()?;
    let dir = work.path().join("cluster");
    std::fs::create_dir_all(&dir)?;
    let apiserver = free_port()?;
    let supervisor = tokio::process::Command::new("scripts/kubernetes.sh")
        .arg("run")
        .arg(&dir)
        .env("CONVERGE_ETCD_PORT", free_port()?.to_string())
        .env("CONVERGE_ETCD_PEER_PORT", free_port()?.to_string())
        .env("CONVERGE_APISERVER_PORT", apiserver.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("cluster.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let ready = dir.join("ready");
    anyhow::ensure!(wait_for(Duration::from_secs(120), || ready.exists()).await, "the control plane was not ready");
    let kubeconfig = dir.join("admin.kubeconfig");
    let tokens = std::fs::read_to_string(dir.join("tokens.csv"))?;
    let token = tokens.lines().next().and_then(|l| l.split(',').next()).unwrap_or_default().to_string();
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.crt"))?)?)
        .build()?;
    let base = format!("https://127.0.0.1:{apiserver}");
    let api = Arc::new(Api { http: http.clone(), base: base.clone(), token: token.clone() });
    let webhooks = free_port()?;
    let manifests = converge_cmd(&args.converge)
        .args(["manifests", "--webhook-url", &format!("https://127.0.0.1:{webhooks}")])
        .output()
        .await?;
    anyhow::ensure!(manifests.status.success(), "converge manifests");
    let kubectl = |args: Vec<String>, input: Option<Vec<u8>>| {
        let kubeconfig = kubeconfig.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = tokio::process::Command::new("kubectl")
                .args(&args)
                .env("KUBECONFIG", &kubeconfig)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), input) {
                pipe.write_all(&bytes).await?;
            }
            let out = child.wait_with_output().await?;
            anyhow::ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            Ok::<(), anyhow::Error>(())
        }
    };
    kubectl(vec!["apply".into(), "-f".into(), "-".into()], Some(manifests.stdout)).await?;
    let wait =
        ["wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/part-of=converge", "--timeout=60s"];
    kubectl(wait.iter().map(|s| s.to_string()).collect(), None).await?;
    let node = format!("{prefix}k8s");
    let admin = kubelet::Admin { http, token, server: base };
    let stand_in = kubelet::stand_in(admin, &[(&node, "64", "128Gi")]).await;
    let server = converge_cmd(&args.converge)
        .args(["controllers", "--kubernetes", "--use-emulation", "--tls-san", "127.0.0.1"])
        .args(["--webhook-listen", &format!("127.0.0.1:{webhooks}")])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("controllers.log"))?)
        .spawn()?;
    let data = work.path().join("node");
    import_halt(&args.converge, &args.guests, &data).await?;
    let agent = converge_cmd(&args.converge)
        .args(["node", "--kubernetes", "--node-name", &node, "--domain-prefix", prefix, "--pod-network", "none"])
        // It serves the controllers on the stand-in Node's InternalIP (127.0.0.1), any free port.
        .args(["--listen", "127.0.0.1:0"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("node.log"))?)
        .spawn()?;
    // The ramp's namespace with its default service account (pods wait for it), and the
    // webhooks answering (their CA written into the configurations).
    api.send(reqwest::Method::POST, "/api/v1/namespaces", Some(&json!({"metadata": {"name": ns}}))).await?;
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        let (sa, _) =
            api.send(reqwest::Method::GET, &format!("/api/v1/namespaces/{ns}/serviceaccounts/default"), None).await?;
        let probe = format!("{}?dryRun=All", vmis(ns));
        let (admitted, _) = api.send(reqwest::Method::POST, &probe, Some(&halt_vmi("probe"))).await?;
        let (_, n) = api.send(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None).await?;
        let joined = n.pointer("/metadata/labels/kubevirt.io~1schedulable") == Some(&json!("true"));
        if sa == 200 && admitted == 201 && joined {
            break;
        }
        anyhow::ensure!(
            Instant::now() < end,
            "Kubernetes layout not ready in 90 s (sa {sa}, webhook {admitted}, node {joined})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(Layout { api, server, agents: vec![agent], cluster: Some((supervisor, stand_in)), _work: work })
}

/// A ramp: create → Running per VMI, seconds; memory (KiB) of the server and of each agent with
/// every guest running.
struct Ramp {
    times: Vec<f64>,
    /// create → first seen Scheduled (placement: Converge's scheduler, or a launcher pod bound
    /// by kube-scheduler), per VMI, seconds.
    placed: Vec<f64>,
    server_kib: u64,
    agent_kib: Vec<u64>,
}

async fn ramp(layout: &Layout, count: usize, interval: Duration, ns: &str) -> Result<Ramp> {
    let api = Arc::clone(&layout.api);
    api.send(reqwest::Method::POST, "/api/v1/namespaces", Some(&json!({"metadata": {"name": ns}}))).await?;
    let seen: Seen = Arc::default();
    let watcher = tokio::spawn(watch(Arc::clone(&api), ns.to_string(), Arc::clone(&seen)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let name_of = |j: usize| format!("g-{j:03}");
    let start = Instant::now();
    let mut created = vec![];
    let mut posts = vec![];
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (api, path, name) = (Arc::clone(&api), vmis(ns), name_of(i));
        created.push(Instant::now());
        posts.push(tokio::spawn(async move { api.send(reqwest::Method::POST, &path, Some(&halt_vmi(&name))).await }));
    }
    for p in posts {
        let (code, body) = p.await??;
        anyhow::ensure!(code == 201, "create answered {code}: {body}");
    }
    let running = || (0..count).filter(|j| seen_at(&seen, &name_of(*j), "Running").is_some()).count();
    let all = wait_for(Duration::from_secs(300), || running() == count).await;
    anyhow::ensure!(all, "{} of {count} VMIs Running within 300 s", running());
    let times = (0..count)
        .map(|j| {
            let at = seen_at(&seen, &name_of(j), "Running").context("never Running")?;
            Ok(at.duration_since(created[j]).as_secs_f64())
        })
        .collect::<Result<Vec<_>>>()?;
    let placed = (0..count)
        .filter_map(|j| seen_at(&seen, &name_of(j), "Scheduled").map(|at| at.duration_since(created[j]).as_secs_f64()))
        .collect();
    let out = Ramp {
        times,
        placed,
        server_kib: rss_kib(layout.server_pid()),
        agent_kib: layout.agent_pids().into_iter().map(rss_kib).collect(),
    };
    watcher.abort();
    let (code, body) = api.send(reqwest::Method::DELETE, &vmis(ns), None).await?;
    anyhow::ensure!(code == 200, "delete the VMIs: {code} {body}");
    let left = || async {
        let (_, list) = api.send(reqwest::Method::GET, &vmis(ns), None).await.unwrap_or_default();
        list["items"].as_array().map_or(0, Vec::len)
    };
    let end = Instant::now() + Duration::from_secs(180);
    while left().await > 0 {
        anyhow::ensure!(Instant::now() < end, "VMIs of {ns} still there after 180 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(out)
}

async fn stop(mut layout: Layout, prefix: &str) -> Result<()> {
    for a in &mut layout.agents {
        let _ = a.kill().await;
    }
    let _ = layout.server.kill().await;
    if let Some((mut supervisor, stand_in)) = layout.cluster.take() {
        drop(stand_in);
        // Its stdin closing stops the control plane.
        drop(supervisor.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(20), supervisor.wait()).await;
    }
    // Nothing of this layout may stay defined for the next one to pay for.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let out =
            std::process::Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]).output()?;
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect();
        if ours.is_empty() {
            break;
        }
        for d in &ours {
            let _ = std::process::Command::new("virsh").args(["-c", "qemu:///system", "destroy", d]).output();
            let _ = std::process::Command::new("virsh").args(["-c", "qemu:///system", "undefine", d]).output();
        }
        anyhow::ensure!(Instant::now() < end, "domains {ours:?} left");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    virt::error::clear_error_callback();
    let args = Args::parse();
    let interval = Duration::from_millis(args.interval_ms);
    let (mut one, mut two) = (vec![], vec![]);
    let (mut one_kib, mut agent_kib, mut server_kib) = (vec![], vec![], vec![]);
    let (mut on_kubernetes, mut controllers_kib) = (vec![], vec![]);
    for round in 0..args.rounds {
        if args.kubernetes {
            let prefix = format!("cb{}r{round}k-", std::process::id() % 10_000);
            let ns = format!("cb-{round}-k");
            let layout = start_kubernetes(&args, &prefix, &ns).await?;
            let r = ramp(&layout, args.count, interval, &ns).await;
            stop(layout, &prefix).await?;
            let r = r?;
            say(&format!(
                "round {round}, Kubernetes: p50 {:.3} s, p95 {:.3} s (placed p50 {:.3} s), controllers {} MiB, agent {:?} MiB",
                pct(&r.times, 0.5),
                pct(&r.times, 0.95),
                pct(&r.placed, 0.5),
                r.server_kib / 1024,
                r.agent_kib.iter().map(|k| k / 1024).collect::<Vec<_>>()
            ));
            on_kubernetes.extend(r.times);
            controllers_kib.push(r.server_kib as f64);
        }
        // Alternate which layout goes first: the machine warms up over a run.
        let order: [usize; 2] = if round % 2 == 0 { [0, 2] } else { [2, 0] };
        for agents in order {
            let prefix = format!("cb{}r{round}a{agents}-", std::process::id() % 10_000);
            let layout = start(&args, agents, &prefix).await?;
            let ns = format!("cb-{round}-{agents}");
            let r = ramp(&layout, args.count, interval, &ns).await;
            stop(layout, &prefix).await?;
            let r = r?;
            say(&format!(
                "round {round}, {}: p50 {:.3} s, p95 {:.3} s (placed p50 {:.3} s), server {} MiB, agents {:?} MiB",
                if agents == 0 { "one process" } else { "two nodes" },
                pct(&r.times, 0.5),
                pct(&r.times, 0.95),
                pct(&r.placed, 0.5),
                r.server_kib / 1024,
                r.agent_kib.iter().map(|k| k / 1024).collect::<Vec<_>>()
            ));
            if agents == 0 {
                one.extend(r.times);
                one_kib.push(r.server_kib as f64);
            } else {
                two.extend(r.times);
                agent_kib.extend(r.agent_kib.iter().map(|k| *k as f64));
                server_kib.push(r.server_kib as f64);
            }
        }
    }
    let n = args.count;
    let mut report = Report::default();
    for (p, label) in [(0.5, "p50"), (0.95, "p95")] {
        report.push(
            Figure::new(
                format!("P1.{n}.two-nodes.{label}"),
                format!("create → Running {label}, {n} VMIs {} ms apart, two joined nodes", args.interval_ms),
                "s",
                pct(&two, p),
            )
            .against(format!("one converge serve with its own node, same run ({label})"), pct(&one, p)),
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    report.push(
        Figure::new(
            format!("P1.{n}.agent-rss"),
            format!("RSS of one joined node agent with {} guests running on it", n / 2),
            "MiB",
            mean(&agent_kib) / 1024.0,
        )
        .against(format!("the whole converge serve (API, controllers, node) with {n} guests"), mean(&one_kib) / 1024.0),
    );
    report.push(
        Figure::new(
            format!("P1.{n}.no-node-server-rss"),
            format!("RSS of converge serve --no-node (API, controllers) with {n} guests on two nodes"),
            "MiB",
            mean(&server_kib) / 1024.0,
        )
        .against(format!("the whole converge serve with {n} guests"), mean(&one_kib) / 1024.0),
    );
    if args.kubernetes {
        for (p, label) in [(0.5, "p50"), (0.95, "p95")] {
            report.push(
                Figure::new(
                    format!("P1.{n}.kubernetes.{label}"),
                    format!(
                        "create → Running {label}, {n} VMIs {} ms apart, on kube-apiserver: launcher pods bound by kube-scheduler, one node agent",
                        args.interval_ms
                    ),
                    "s",
                    pct(&on_kubernetes, p),
                )
                .against(format!("one converge serve with its own node, same run ({label})"), pct(&one, p)),
            );
        }
        report.push(
            Figure::new(
                format!("P1.{n}.kubernetes-controllers-rss"),
                format!("RSS of converge controllers --kubernetes (controllers, webhooks) with {n} guests"),
                "MiB",
                mean(&controllers_kib) / 1024.0,
            )
            .against(format!("the whole converge serve with {n} guests"), mean(&one_kib) / 1024.0),
        );
        report.series(&format!("P1.{n}.kubernetes"), json!(on_kubernetes));
    }
    report.series(&format!("P1.{n}.two-nodes"), json!(two));
    report.series(&format!("P1.{n}.one-process"), json!(one));
    report.finish("cluster-bench", args.json.as_deref())
}
