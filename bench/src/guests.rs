//! Guest benchmarks against a `converge serve` process (release build) on this machine's
//! libvirt, each beside a baseline measured in the same run:
//!   P1  create → Running for N VMIs created 100 ms apart, vs `virsh create` of the same domain
//!       XMLs on the same schedule (guests are a boot sector that halts: no CPU once up);
//!   P2  RSS of the converge process per running VM (QEMU excluded) at 0, 10 and 50 VMs;
//!   P3  one VM, API create → marker on its serial console, vs `virsh create` → same marker;
//!   and kill -9 of QEMU → VMI Failed, as seen by a watch.
//! Usage: bench/run (everything), or cargo build --release && cargo run --release -p converge-bench --bin guest-bench

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

#[path = "report.rs"]
mod report;
use report::{Figure, Goal, Report};

#[derive(Parser)]
struct Args {
    /// VMI counts of the P1 ramps (P2 samples RSS during them at 10 and 50 running).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    counts: Vec<usize>,
    /// Milliseconds between creates.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// The converge binary to measure.
    #[arg(long, default_value = "target/release/converge")]
    converge: PathBuf,
    /// Test guests (scripts/guest/build.sh output).
    #[arg(long, env = "CONVERGE_GUEST_DIR", default_value = "target/guest")]
    guests: PathBuf,
    /// P3 repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    boots: usize,
    /// Write the figures here (bench/report.py reads them).
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
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

fn vmis(ns: &str) -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances")
}

fn halt_vmi(name: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 0, "domain": {"resources": {"requests": {"memory": "32Mi"}},
                    "devices": {"disks": [{"name": "boot", "disk": {"bus": "sata"}}], "autoattachGraphicsDevice": false,
                                "autoattachPodInterface": false, "autoattachMemBalloon": false}},
                    "volumes": [{"name": "boot", "containerDisk": {"image": "converge.dev/test/halt:v1"}}]}})
}

fn kernel_vmi(name: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 0, "domain": {
               "firmware": {"kernelBoot": {"kernelArgs": "console=ttyS0 quiet", "container": {
                   "image": "converge.dev/test/guest-kernel:v1", "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initramfs.gz"}}},
               "resources": {"requests": {"memory": "128Mi"}},
               "devices": {"autoattachGraphicsDevice": false, "autoattachPodInterface": false}}}})
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

use report::quantile as pct;

/// Phase transitions seen by one watch: name → (phase → when).
type Seen = Arc<Mutex<HashMap<String, HashMap<String, Instant>>>>;

async fn watch(api: Arc<Api>, ns: String, seen: Seen) -> Result<()> {
    let resp = api.http.get(format!("{}{}?watch=true", api.base, vmis(&ns))).bearer_auth(&api.token).send().await?;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
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
    Ok(())
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

fn virsh(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("virsh").args(["-c", "qemu:///system"]).args(args).output()?;
    if !out.status.success() {
        bail!("virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A copy of a Converge domain XML that runs on its own: new name, no uuid, its own directory
/// (overlay, sockets, log) under `dir`.
fn baseline_xml(xml: &str, converge_dir: &str, dir: &Path, name: &str) -> String {
    let mut out = String::new();
    for line in xml.lines() {
        let t = line.trim();
        if t.starts_with("<uuid>") || t.starts_with("<name>") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out = out.replacen("<domain type='qemu'", &format!("<domain type='qemu'><name>{name}</name>"), 1);
    out = out.replacen("<domain type=\"qemu\"", &format!("<domain type=\"qemu\"><name>{name}</name>"), 1);
    out.replace(converge_dir, &dir.display().to_string())
}

fn prepare_dir(dir: &Path, qemu: Option<(u32, u32)>) -> Result<()> {
    std::fs::create_dir_all(dir.join("disks"))?;
    if let Some((u, g)) = qemu {
        std::os::unix::fs::chown(dir, Some(u), Some(g))?;
    }
    Ok(())
}

fn qemu_owner() -> Option<(u32, u32)> {
    let out = std::process::Command::new("id").args(["-u", "libvirt-qemu"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = std::process::Command::new("id").args(["-g", "libvirt-qemu"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

fn seen_at(seen: &Seen, name: &str, phase: &str) -> Option<Instant> {
    seen.lock().ok()?.get(name)?.get(phase).copied()
}

/// What the benchmark works on: the server, its data, the watch's view, a scratch dir.
struct Bench {
    api: Arc<Api>,
    ns: String,
    data: PathBuf,
    node_dir: PathBuf,
    work: PathBuf,
    seen: Seen,
    qemu: Option<(u32, u32)>,
    pid: u32,
}

fn has_marker(log: &Path) -> bool {
    std::fs::read(log).map(|b| b.windows(20).any(|w| w == b"CONVERGE-GUEST-READY")).unwrap_or(false)
}

/// P3: one guest to its serial marker, Converge then virsh, alternating; seconds each.
async fn boot_to_marker(b: &Bench, boots: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut converge, mut virsh_times) = (vec![], vec![]);
    for round in 0..boots {
        let name = format!("boot-{round}");
        quiesce(&b.ns).await;
        let t0 = Instant::now();
        let (code, body) = b.api.send(reqwest::Method::POST, &vmis(&b.ns), Some(&kernel_vmi(&name))).await?;
        anyhow::ensure!(code == 201, "create: {body}");
        let uid = body["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let log = b.node_dir.join(&uid).join("serial0.log");
        anyhow::ensure!(wait_for(Duration::from_secs(120), || has_marker(&log)).await, "P3: no marker from {name}");
        converge.push(t0.elapsed().as_secs_f64());
        let xml = virsh(&["dumpxml", &format!("{}_{name}", b.ns)])?;
        b.api.send(reqwest::Method::DELETE, &format!("{}/{name}", vmis(&b.ns)), None).await?;
        let dir = b.work.join(format!("virsh-{name}"));
        prepare_dir(&dir, b.qemu)?;
        let file = b.work.join(format!("{name}.xml"));
        let domain = format!("{}-virsh-{name}", b.ns);
        std::fs::write(&file, baseline_xml(&xml, &b.node_dir.join(&uid).display().to_string(), &dir, &domain))?;
        quiesce(&b.ns).await;
        let t0 = Instant::now();
        virsh(&["create", &file.display().to_string()])?;
        let log = dir.join("serial0.log");
        anyhow::ensure!(wait_for(Duration::from_secs(120), || has_marker(&log)).await, "P3 baseline: no marker");
        virsh_times.push(t0.elapsed().as_secs_f64());
        let _ = virsh(&["destroy", &domain]);
    }
    Ok((converge, virsh_times))
}

/// Waits until no guest of this run is left and the machine has had a moment to settle: under
/// TCG a guest being torn down or booting takes CPU from whatever is measured next.
async fn quiesce(ns: &str) {
    wait_for(Duration::from_secs(120), || virsh(&["list", "--name"]).map(|l| !l.contains(ns)).unwrap_or(false)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
}

struct Ramp {
    converge: Vec<f64>,
    virsh: Vec<f64>,
    /// (VMs running, converge RSS KiB) sampled on the way up.
    rss: Vec<(usize, u64)>,
    /// kill -9 of QEMU → VMI Failed seen by the watch, seconds.
    kills: Vec<f64>,
}

/// P1 (and P2 on the way): `count` VMIs created `interval` apart, each timed to Running as the
/// watch sees it; then the same domain XMLs through `virsh create` on the same schedule.
async fn ramp(b: &Bench, tag: &str, count: usize, interval: Duration, kills: usize) -> Result<Ramp> {
    let name_of = |j: usize| format!("{tag}-{j:03}");
    quiesce(&b.ns).await;
    let running = |upto: usize| (0..upto).filter(|j| seen_at(&b.seen, &name_of(*j), "Running").is_some()).count();
    let mut created_at = vec![];
    let mut rss = vec![];
    let start = Instant::now();
    for i in 0..count {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let (api, path, name) = (Arc::clone(&b.api), vmis(&b.ns), name_of(i));
        created_at.push(Instant::now());
        tokio::spawn(async move { api.send(reqwest::Method::POST, &path, Some(&halt_vmi(&name))).await });
        for mark in [10, 50] {
            if running(i + 1) >= mark && !rss.iter().any(|(n, _)| *n == mark) {
                rss.push((mark, rss_kib(b.pid)));
            }
        }
    }
    let all_up = wait_for(Duration::from_secs(300), || running(count) == count).await;
    anyhow::ensure!(all_up, "P1: not every VMI of {tag} reached Running");
    for mark in [10, 50] {
        if mark <= count && !rss.iter().any(|(n, _)| *n == mark) {
            rss.push((mark, rss_kib(b.pid)));
        }
    }
    rss.push((count, rss_kib(b.pid)));
    let converge: Vec<f64> = (0..count)
        .filter_map(|j| Some(seen_at(&b.seen, &name_of(j), "Running")?.duration_since(created_at[j]).as_secs_f64()))
        .collect();

    let mut kill_times = vec![];
    for j in 0..kills.min(count) {
        let pid_file = format!("/run/libvirt/qemu/{}_{}.pid", b.ns, name_of(j));
        let qpid = std::fs::read_to_string(&pid_file)?.trim().to_string();
        let t0 = Instant::now();
        std::process::Command::new("kill").args(["-9", &qpid]).status()?;
        let name = name_of(j);
        if wait_for(Duration::from_secs(30), || seen_at(&b.seen, &name, "Failed").is_some()).await {
            kill_times.push(
                seen_at(&b.seen, &name, "Failed").map(|t| t.duration_since(t0).as_secs_f64()).unwrap_or(f64::NAN),
            );
        }
    }

    // The same domain XMLs through virsh, on the same schedule.
    let base = std::fs::read_dir(b.data.join("node/images"))?
        .flatten()
        .map(|e| e.path().join("rootfs/disk/halt.img"))
        .find(|p| p.exists())
        .context("halt image")?;
    let mut files = vec![];
    for j in 0..count {
        let name = name_of(j);
        let Ok(xml) = virsh(&["dumpxml", &format!("{}_{name}", b.ns)]) else { continue };
        let (_, body) = b.api.send(reqwest::Method::GET, &format!("{}/{name}", vmis(&b.ns)), None).await?;
        let uid = body["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let dir = b.work.join(format!("virsh-{name}"));
        prepare_dir(&dir, b.qemu)?;
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(dir.join("disks/boot.qcow2"))
            .status()?;
        let file = b.work.join(format!("{name}.xml"));
        let domain = format!("{}-virsh-{name}", b.ns);
        std::fs::write(&file, baseline_xml(&xml, &b.node_dir.join(&uid).display().to_string(), &dir, &domain))?;
        files.push((domain, file));
    }
    for j in 0..count {
        b.api.send(reqwest::Method::DELETE, &format!("{}/{}", vmis(&b.ns), name_of(j)), None).await?;
    }
    quiesce(&b.ns).await;
    let start = Instant::now();
    let mut handles = vec![];
    for (i, (_, file)) in files.iter().enumerate() {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let file = file.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let st = tokio::process::Command::new("virsh")
                .args(["-c", "qemu:///system", "create"])
                .arg(&file)
                .stdout(Stdio::null())
                .status()
                .await;
            st.ok().filter(|s| s.success()).map(|_| t.elapsed().as_secs_f64())
        }));
    }
    let mut virsh_times = vec![];
    for h in handles {
        if let Ok(Some(t)) = h.await {
            virsh_times.push(t);
        }
    }
    for (domain, _) in &files {
        let _ = virsh(&["destroy", domain]);
    }
    Ok(Ramp { converge, virsh: virsh_times, rss, kills: kill_times })
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let converge = std::fs::canonicalize(&args.converge).context("build it first: cargo build --release")?;
    let guests = std::fs::canonicalize(&args.guests).context("build the guests: scripts/guest/build.sh")?;
    let work = tempfile::Builder::new().prefix("converge-bench").tempdir_in("/var/tmp")?;
    let data = work.path().join("data");
    for image in ["oci-halt", "oci-kernel"] {
        let st = std::process::Command::new(&converge)
            .args(["image", "import"])
            .arg(guests.join(image))
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "image import");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut serve = tokio::process::Command::new(&converge)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--node-name", "bench-node"])
        .args(["--pod-network", "none"])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = serve.id().context("serve pid")?;
    let ca_path = data.join("ca.crt");
    let token_path = data.join("admin.token");
    anyhow::ensure!(wait_for(Duration::from_secs(30), || token_path.exists() && ca_path.exists()).await, "server up");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ca = std::fs::read(&ca_path)?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let api = Arc::new(Api {
        http,
        base: format!("https://127.0.0.1:{port}"),
        token: std::fs::read_to_string(&token_path)?.trim().into(),
    });
    let ns = format!("bench-{}", std::process::id());
    api.send(reqwest::Method::POST, "/api/v1/namespaces", Some(&json!({"metadata": {"name": ns}}))).await?;
    let qemu = qemu_owner();
    anyhow::ensure!(qemu.is_some(), "no libvirt-qemu user: install libvirt-daemon-system");
    let seen: Seen = Arc::default();
    tokio::spawn(watch(Arc::clone(&api), ns.clone(), Arc::clone(&seen)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = Bench {
        api,
        node_dir: data.join("node").join("vmis"),
        data,
        work: work.path().to_path_buf(),
        seen,
        qemu,
        pid,
        ns: ns.clone(),
    };
    let idle_rss = rss_kib(pid);
    let mut report = Report::default();
    report
        .notes
        .push("guests under TCG (KVM unusable here); halt guests for P1/P2, the busybox kernel guest for P3".into());

    let (p3, p3_virsh) = boot_to_marker(&b, args.boots).await?;
    report.push(
        Figure::new("P3", format!("create → serial marker, median of {}", args.boots), "s", pct(&p3, 0.5))
            .against("virsh create → marker", pct(&p3_virsh, 0.5))
            .goal(Goal::RatioAtMost(1.15)),
    );
    report.series("P3.converge", json!(p3));
    report.series("P3.virsh", json!(p3_virsh));

    let interval = Duration::from_millis(args.interval_ms);
    let mut rss_points: Vec<(usize, u64)> = vec![(0, idle_rss)];
    let mut kills = vec![];
    for (i, &count) in args.counts.iter().enumerate() {
        let r = ramp(&b, &format!("r{count}"), count, interval, if i == 0 { 5 } else { 0 }).await?;
        for (q, label) in [(0.5, "p50"), (0.95, "p95"), (1.0, "max")] {
            report.push(
                Figure::new(
                    format!("P1.{count}.{label}"),
                    format!("create → Running, {count} VMIs {} ms apart, {label}", args.interval_ms),
                    "s",
                    pct(&r.converge, q),
                )
                .against("virsh create, same XMLs and schedule", pct(&r.virsh, q))
                .goal(Goal::RatioAtMost(1.2)),
            );
        }
        report.series(&format!("P1.{count}.converge"), json!(r.converge));
        report.series(&format!("P1.{count}.virsh"), json!(r.virsh));
        for (n, kib) in r.rss {
            if !rss_points.iter().any(|(m, _)| *m == n) {
                rss_points.push((n, kib));
            }
        }
        kills.extend(r.kills);
    }
    rss_points.sort();
    for (n, kib) in &rss_points {
        let mib = *kib as f64 / 1024.0;
        if *n == 0 {
            report.push(Figure::new("P2.0", "converge RSS, no VMs running", "MiB", mib));
            continue;
        }
        let per = (*kib as f64 - idle_rss as f64) / *n as f64 / 1024.0;
        report.push(
            Figure::new(
                format!("P2.{n}"),
                format!("converge RSS per running VM over idle, {n} VMs ({mib:.1} MiB in all)"),
                "MiB",
                per,
            )
            .goal(Goal::AtMost(2.0)),
        );
    }
    report.series("P2.rss_kib", json!(rss_points));
    report.push(Figure::new(
        "kill.qemu",
        format!("kill -9 of QEMU → VMI Failed (watch), max of {}", kills.len()),
        "s",
        pct(&kills, 1.0),
    ));
    b.api.send(reqwest::Method::DELETE, &format!("/api/v1/namespaces/{ns}"), None).await?;
    let _ = serve.kill().await;
    report.finish("guest-bench", args.json.as_deref())
}
