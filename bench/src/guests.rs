//! Guest benchmarks against a `converge serve` process (release build) on this machine's
//! libvirt, each beside a baseline measured in the same run:
//!   P1  create → Running for N VMIs created 100 ms apart, vs `virsh create` of the same domain
//!       XMLs on the same schedule (guests are a boot sector that halts: no CPU once up);
//!   P2  RSS of the converge process per running VM (QEMU excluded) at 0, 10 and 50 VMs;
//!   P3  one VM, API create → marker on its serial console, vs `virsh create` → same marker;
//!   and kill -9 of QEMU → VMI Failed, as seen by a watch.
//! Usage: cargo build --release && cargo run --release -p converge-bench --bin guest-bench

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// VMIs in the P1 ramp.
    #[arg(long, default_value_t = 100)]
    count: usize,
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

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

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
    let node_dir = data.join("node").join("vmis");
    let qemu = qemu_owner();
    anyhow::ensure!(qemu.is_some(), "no libvirt-qemu user: install libvirt-daemon-system");
    let seen: Seen = Arc::default();
    tokio::spawn(watch(Arc::clone(&api), ns.clone(), Arc::clone(&seen)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(pid);

    // P3: one guest to its serial marker, Converge then virsh, alternating.
    let (mut p3_converge, mut p3_virsh) = (vec![], vec![]);
    for round in 0..args.boots {
        let name = format!("boot-{round}");
        let t0 = Instant::now();
        let (code, body) = api.send(reqwest::Method::POST, &vmis(&ns), Some(&kernel_vmi(&name))).await?;
        anyhow::ensure!(code == 201, "create: {body}");
        let uid = body["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let log = node_dir.join(&uid).join("serial0.log");
        let ok = wait_for(Duration::from_secs(120), || {
            std::fs::read(&log).map(|b| b.windows(20).any(|w| w == b"CONVERGE-GUEST-READY")).unwrap_or(false)
        })
        .await;
        anyhow::ensure!(ok, "P3: no marker from {name}");
        p3_converge.push(t0.elapsed().as_secs_f64());
        let xml = virsh(&["dumpxml", &format!("{ns}_{name}")])?;
        api.send(reqwest::Method::DELETE, &format!("{}/{name}", vmis(&ns)), None).await?;
        let dir = work.path().join(format!("virsh-{name}"));
        prepare_dir(&dir, qemu)?;
        let file = work.path().join(format!("{name}.xml"));
        std::fs::write(
            &file,
            baseline_xml(&xml, &node_dir.join(&uid).display().to_string(), &dir, &format!("{ns}-virsh-{name}")),
        )?;
        let t0 = Instant::now();
        virsh(&["create", &file.display().to_string()])?;
        let log = dir.join("serial0.log");
        let ok = wait_for(Duration::from_secs(120), || {
            std::fs::read(&log).map(|b| b.windows(20).any(|w| w == b"CONVERGE-GUEST-READY")).unwrap_or(false)
        })
        .await;
        anyhow::ensure!(ok, "P3 baseline: no marker");
        p3_virsh.push(t0.elapsed().as_secs_f64());
        let _ = virsh(&["destroy", &format!("{ns}-virsh-{name}")]);
    }

    // P1: the ramp, with RSS samples at 10 and 50 running.
    let count = args.count;
    let interval = Duration::from_millis(args.interval_ms);
    let mut created_at = vec![];
    let mut rss_at: Vec<(usize, u64)> = vec![(0, idle_rss)];
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let name = format!("ramp-{i:03}");
        let t = Instant::now();
        let api2 = Arc::clone(&api);
        let path = vmis(&ns);
        tokio::spawn(async move { api2.send(reqwest::Method::POST, &path, Some(&halt_vmi(&name))).await });
        created_at.push(t);
        for mark in [10, 50] {
            let running = (0..=i).filter(|j| seen_at(&seen, &format!("ramp-{j:03}"), "Running").is_some()).count();
            if running >= mark && !rss_at.iter().any(|(n, _)| *n == mark) {
                rss_at.push((mark, rss_kib(pid)));
            }
        }
    }
    let all_up = wait_for(Duration::from_secs(300), || {
        (0..count).all(|j| seen_at(&seen, &format!("ramp-{j:03}"), "Running").is_some())
    })
    .await;
    anyhow::ensure!(all_up, "P1: not every VMI reached Running");
    for mark in [10, 50] {
        if mark <= count && !rss_at.iter().any(|(n, _)| *n == mark) {
            rss_at.push((mark, rss_kib(pid)));
        }
    }
    rss_at.push((count, rss_kib(pid)));
    let p1: Vec<f64> = (0..count)
        .filter_map(|j| {
            Some(seen_at(&seen, &format!("ramp-{j:03}"), "Running")?.duration_since(created_at[j]).as_secs_f64())
        })
        .collect();

    // kill -9 → Failed.
    let mut kill = vec![];
    for j in 0..5.min(count) {
        let name = format!("ramp-{j:03}");
        let pid_file = format!("/run/libvirt/qemu/{ns}_{name}.pid");
        let qpid = std::fs::read_to_string(&pid_file)?.trim().to_string();
        let t0 = Instant::now();
        std::process::Command::new("kill").args(["-9", &qpid]).status()?;
        if wait_for(Duration::from_secs(30), || seen_at(&seen, &name, "Failed").is_some()).await {
            kill.push(seen_at(&seen, &name, "Failed").map(|t| t.duration_since(t0).as_secs_f64()).unwrap_or(f64::NAN));
        }
    }

    // The same domain XMLs through virsh, on the same schedule.
    let mut files = vec![];
    for j in 0..count {
        let name = format!("ramp-{j:03}");
        let Ok(xml) = virsh(&["dumpxml", &format!("{ns}_{name}")]) else { continue };
        let (_, body) = api.send(reqwest::Method::GET, &format!("{}/{name}", vmis(&ns)), None).await?;
        let uid = body["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let dir = work.path().join(format!("virsh-{name}"));
        prepare_dir(&dir, qemu)?;
        let overlay = dir.join("disks/boot.qcow2");
        let base = std::fs::read_dir(data.join("node/images"))?
            .flatten()
            .map(|e| e.path().join("rootfs/disk/halt.img"))
            .find(|p| p.exists())
            .context("halt image")?;
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&overlay)
            .status()?;
        let file = work.path().join(format!("{name}.xml"));
        std::fs::write(
            &file,
            baseline_xml(&xml, &node_dir.join(&uid).display().to_string(), &dir, &format!("{ns}-virsh-{name}")),
        )?;
        files.push((format!("{ns}-virsh-{name}"), file));
    }
    api.send(reqwest::Method::DELETE, &format!("/api/v1/namespaces/{ns}"), None).await?;
    wait_for(Duration::from_secs(120), || {
        virsh(&["list", "--name"]).map(|l| !l.contains(&format!("{ns}_"))).unwrap_or(false)
    })
    .await;
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
    let mut p1_virsh = vec![];
    for h in handles {
        if let Ok(Some(t)) = h.await {
            p1_virsh.push(t);
        }
    }
    for (name, _) in &files {
        let _ = virsh(&["destroy", name]);
    }
    let _ = serve.kill().await;

    println!("guest benchmarks on qemu:///system (TCG where KVM is unusable):");
    println!(
        "P1 create→Running, {count} VMIs {} ms apart: p50 {:.3}s p95 {:.3}s max {:.3}s | virsh create same XMLs: p50 {:.3}s p95 {:.3}s max {:.3}s | ratio p50 {:.2}x p95 {:.2}x (goal ≤ 1.2x)",
        args.interval_ms,
        pct(&p1, 0.5), pct(&p1, 0.95), pct(&p1, 1.0),
        pct(&p1_virsh, 0.5), pct(&p1_virsh, 0.95), pct(&p1_virsh, 1.0),
        pct(&p1, 0.5) / pct(&p1_virsh, 0.5), pct(&p1, 0.95) / pct(&p1_virsh, 0.95),
    );
    for (n, kib) in &rss_at {
        let per = if *n == 0 { 0.0 } else { (*kib as f64 - idle_rss as f64) / *n as f64 / 1024.0 };
        println!(
            "P2 converge RSS at {n:>3} running VMs: {:.1} MiB ({per:.2} MiB per VM over idle; goal ≤ 2 MiB)",
            *kib as f64 / 1024.0
        );
    }
    println!(
        "P3 create→serial marker (median of {}): converge {:.2}s | virsh create {:.2}s | ratio {:.2}x (goal ≤ 1.15x)",
        args.boots,
        pct(&p3_converge, 0.5),
        pct(&p3_virsh, 0.5),
        pct(&p3_converge, 0.5) / pct(&p3_virsh, 0.5)
    );
    println!(
        "kill -9 of QEMU → VMI Failed (watch): p50 {:.3}s max {:.3}s over {} kills",
        pct(&kill, 0.5),
        pct(&kill, 1.0),
        kill.len()
    );
    Ok(())
}
