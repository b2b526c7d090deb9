//! P6, live migration: two `converge node` agents on this machine, each with a libvirtd of its
//! own (`scripts/node-libvirtd.sh`), joined to `converge serve --no-node`. A kernel guest of 128
//! and one of 512 MiB (a quarter of their memory filled with random bytes) migrate back and forth
//! through VirtualMachineInstanceMigrations; beside each, a copy of the same domain (same XML,
//! its own name, UUID and console) migrates between the same two libvirtds with `virsh migrate
//! --live --p2p` and the same flags, rounds alternating which goes first. Figures: the total
//! time (Converge's: migration created → Succeeded; virsh's: the command) and the guest's
//! downtime as libvirt reports it on the target (`domjobinfo --completed`). Each twice: between
//! libvirtds on their local sockets with the stream in the clear, and between libvirtds that
//! reach each other over TLS with the stream over TLS too (`P6.tls.*`; virsh with `--tls`).
//! Also the time to drain a node of 4 guests.
//! Usage: bench/run, or cargo run --release -p converge-bench --bin migration-bench

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};

mod api;
use api::Api;
#[path = "report.rs"]
mod report;
use report::{quantile, Figure, Goal, Report};

#[derive(Parser)]
struct Args {
    /// Guest memory sizes (MiB).
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    sizes: Vec<u64>,
    /// Migrations of each guest and of its copy (alternating direction and which goes first).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Transports: `plain` (local sockets, the stream in the clear) and `tls`.
    #[arg(long, value_delimiter = ',', default_value = "plain,tls")]
    modes: Vec<String>,
    #[arg(long, default_value = "target/release/converge")]
    converge: PathBuf,
    #[arg(long, env = "CONVERGE_GUEST_DIR", default_value = "target/guest")]
    guests: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn say(line: &str) {
    static BEGAN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let began = BEGAN.get_or_init(Instant::now);
    println!("[{:>5.0} s] {line}", began.elapsed().as_secs_f64());
}

fn cmd(bin: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin);
    c.kill_on_drop(true);
    c
}

async fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program).args(args).output().await?;
    anyhow::ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A node's own libvirtd, stopped when dropped.
struct Libvirtd {
    name: String,
    uri: String,
    /// How its peers reach it: its socket, or TLS.
    peer_uri: String,
}

impl Libvirtd {
    async fn start(name: &str, tls_ca: Option<&Path>) -> Result<Libvirtd> {
        let mut script = tokio::process::Command::new("scripts/node-libvirtd.sh");
        script.args(["start", name]);
        if let Some(ca) = tls_ca {
            script.env("TLS_CA", ca);
        }
        let out = script.output().await?;
        anyhow::ensure!(out.status.success(), "node-libvirtd {name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().map(|l| l.trim().to_string());
        let uri = lines.next().unwrap_or_default();
        let peer_uri = lines.next().filter(|_| tls_ca.is_some()).unwrap_or_else(|| uri.clone());
        Ok(Libvirtd { name: name.into(), uri, peer_uri })
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        // Its QEMUs outlive libvirtd: they go first.
        let virsh = |args: &[&str]| std::process::Command::new("virsh").arg("-c").arg(&self.uri).args(args).output();
        let names = virsh(&["list", "--all", "--name"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        for domain in names.unwrap_or_default().lines().map(str::trim).filter(|l| !l.is_empty()) {
            let _ = virsh(&["destroy", domain]);
            let _ = virsh(&["undefine", domain]);
        }
        let _ = std::process::Command::new("scripts/node-libvirtd.sh").args(["stop", &self.name]).status();
    }
}

struct Cluster {
    api: Arc<Api>,
    _server: tokio::process::Child,
    _agents: Vec<tokio::process::Child>,
    libvirtds: Vec<Libvirtd>,
    data: Vec<PathBuf>,
    kubeconfig: PathBuf,
    prefix: String,
    tls: bool,
    _work: tempfile::TempDir,
}

async fn start(args: &Args, tls: bool) -> Result<Cluster> {
    let work = tempfile::tempdir()?;
    let tag = format!("{:05x}{}", std::process::id() % 0xfffff, if tls { "t" } else { "p" });
    let prefix = format!("p6{tag}-");
    let libvirt_ca = work.path().join("libvirt-ca");
    let data = work.path().join("server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server = cmd(&args.converge)
        .args(["serve", "--no-node", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(work.path().join("serve.log"))?)
        .spawn()?;
    let (ca, token) = (data.join("ca.crt"), data.join("admin.token"));
    let end = Instant::now() + Duration::from_secs(30);
    while !(ca.exists() && token.exists()) {
        anyhow::ensure!(Instant::now() < end, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?)
        .build()?;
    let base = format!("https://127.0.0.1:{port}");
    let api = Arc::new(Api { http, base: base.clone(), token: std::fs::read_to_string(&token)?.trim().into() });
    let (mut agents, mut libvirtds, mut dirs) = (vec![], vec![], vec![]);
    for name in ["a", "b"] {
        let libvirtd = Libvirtd::start(&format!("p6{tag}{name}"), tls.then_some(libvirt_ca.as_path())).await?;
        let node = format!("node-{name}");
        let dir = work.path().join(&node);
        for image in ["oci-kernel", "oci-halt"] {
            let st = cmd(&args.converge)
                .args(["image", "import"])
                .arg(args.guests.join(image))
                .arg("--data-dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .status()
                .await?;
            anyhow::ensure!(st.success(), "image import");
        }
        let kubeconfig = dir.join("kubeconfig");
        let out = cmd(&args.converge)
            .args(["token", "create", "--role", "node", "--node", &node, "--ttl", "2h", "--write-kubeconfig"])
            .arg(&kubeconfig)
            .args(["--server", &base, "--kubeconfig"])
            .arg(data.join("kubeconfig"))
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let agent = cmd(&args.converge)
            .args(["node", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--data-dir")
            .arg(&dir)
            .args(["--node-name", &node, "--domain-prefix", &format!("{prefix}{name}-")])
            .args(["--listen", "127.0.0.1:0", "--pod-network", "none"])
            .args([
                "--libvirt-uri",
                &libvirtd.uri,
                "--migration-uri",
                &libvirtd.peer_uri,
                "--migration-address",
                "127.0.0.1",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("node.log"))?)
            .spawn()?;
        agents.push(agent);
        libvirtds.push(libvirtd);
        dirs.push(dir);
    }
    let cluster = Cluster {
        api,
        _server: server,
        _agents: agents,
        libvirtds,
        data: dirs,
        kubeconfig: data.join("kubeconfig"),
        prefix,
        tls,
        _work: work,
    };
    let ready = wait(Duration::from_secs(60), || async {
        let (_, nodes) = cluster.api.send(reqwest::Method::GET, "/api/v1/nodes", None).await.unwrap_or_default();
        let up = nodes["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        });
        up == 2
    })
    .await;
    anyhow::ensure!(ready, "two nodes Ready");
    Ok(cluster)
}

async fn wait<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

const NS: &str = "default";

fn vms() -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines")
}

async fn get(api: &Api, path: &str) -> Value {
    api.send(reqwest::Method::GET, path, None).await.map(|(_, v)| v).unwrap_or_default()
}

async fn vmi(api: &Api, name: &str) -> Value {
    get(api, &format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/{name}")).await
}

async fn cordon(api: &Api, node: &str, on: bool) -> Result<()> {
    let (code, body) = api.send(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None).await?;
    anyhow::ensure!(code == 200, "{body}");
    let mut n = body;
    n["spec"]["unschedulable"] = json!(on);
    let (code, body) = api.send(reqwest::Method::PUT, &format!("/api/v1/nodes/{node}"), Some(&n)).await?;
    anyhow::ensure!(code == 200, "cordon {node}: {body}");
    Ok(())
}

fn kernel_vm(name: &str, mib: u64) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "terminationGracePeriodSeconds": 0,
            "evictionStrategy": "LiveMigrate",
            "domain": {
                "firmware": {"kernelBoot": {"kernelArgs": "console=ttyS0 quiet", "container": {
                    "image": "converge.dev/test/guest-kernel:v1", "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initramfs.gz"}}},
                "resources": {"requests": {"memory": format!("{mib}Mi")}},
                "devices": {"autoattachGraphicsDevice": false, "interfaces": [{"name": "default", "masquerade": {}}]}},
            "networks": [{"name": "default", "pod": {}}]}}}})
}

/// Types into a guest's serial console socket and waits for `marker` in its console log.
async fn type_into(socket: &Path, log: &Path, line: &str, marker: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::UnixStream::connect(socket).await.with_context(|| format!("{}", socket.display()))?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let seen =
        wait(Duration::from_secs(120), || async { std::fs::read_to_string(log).is_ok_and(|t| t.contains(marker)) })
            .await;
    anyhow::ensure!(seen, "{marker} in {}", log.display());
    Ok(())
}

/// Fills a quarter of the guest's memory with random bytes (a guest with data to move).
fn fill_line(mib: u64) -> String {
    format!("dd if=/dev/urandom of=/fill bs=1M count={} 2>/dev/null; echo filled-$((6*7))", mib / 4)
}

/// libvirt's figures for the last migration into `domain` on `uri`: (total ms, downtime ms).
async fn completed_job(uri: &str, domain: &str) -> Result<(f64, f64)> {
    let text = run("virsh", &["-c", uri, "domjobinfo", "--completed", domain]).await?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Ok((field("Time elapsed").unwrap_or(f64::NAN), field("Total downtime").unwrap_or(f64::NAN)))
}

/// One Converge migration of `name`: wall time from the create to Succeeded, and libvirt's
/// downtime on the target.
async fn converge_migration(c: &Cluster, name: &str, round: usize) -> Result<(f64, f64, f64)> {
    let vmim = format!("{name}-r{round}");
    let body = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": vmim}, "spec": {"vmiName": name}});
    let path = format!("/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstancemigrations");
    let t0 = Instant::now();
    let (code, created) = c.api.send(reqwest::Method::POST, &path, Some(&body)).await?;
    anyhow::ensure!(code == 201, "{created}");
    let phase = || async { get(&c.api, &format!("{path}/{vmim}")).await["status"]["phase"].clone() };
    let done =
        wait(Duration::from_secs(600), || async { phase().await == "Succeeded" || phase().await == "Failed" }).await;
    let took = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        done && phase().await == "Succeeded",
        "migration {vmim}: {}",
        get(&c.api, &format!("{path}/{vmim}")).await
    );
    let v = vmi(&c.api, name).await;
    let node = v["status"]["nodeName"].as_str().unwrap_or("");
    let (i, letter) = if node == "node-a" { (0, "a") } else { (1, "b") };
    let domain = format!("{}{letter}-{NS}_{name}", c.prefix);
    let (job_ms, downtime) = completed_job(&c.libvirtds[i].uri, &domain).await?;
    Ok((took, downtime, job_ms / 1000.0))
}

/// The copy: the guest's domain XML under another name and UUID, its files in `dir`, no
/// Converge metadata (no agent adopts it), started on node-a's libvirtd.
async fn start_copy(c: &Cluster, guest: &Value, dir: &Path, copy: &str) -> Result<(PathBuf, PathBuf)> {
    let name = guest["metadata"]["name"].as_str().unwrap_or("");
    let domain = format!("{}a-{NS}_{name}", c.prefix);
    let xml = run("virsh", &["-c", &c.libvirtds[0].uri, "dumpxml", "--migratable", &domain]).await?;
    let uid = guest["metadata"]["uid"].as_str().unwrap_or("");
    let vmi_dir = c.data[0].join("node/vmis").join(uid);
    std::fs::create_dir_all(dir)?;
    let _ = std::process::Command::new("chmod").args(["0777"]).arg(dir).status();
    let mut x = xml.replace(&format!("<name>{domain}</name>"), &format!("<name>{copy}</name>"));
    x = x.replace(&vmi_dir.display().to_string(), &dir.display().to_string());
    let uuid_start = x.find("<uuid>").context("uuid")?;
    let uuid_end = x[uuid_start..].find("</uuid>").context("uuid")? + uuid_start;
    x.replace_range(uuid_start + 6..uuid_end, &uuid_v4()?);
    if let (Some(a), Some(b)) = (x.find("<metadata>"), x.find("</metadata>")) {
        x.replace_range(a..b + "</metadata>".len(), "");
    }
    let file = dir.join("domain.xml");
    std::fs::write(&file, &x)?;
    run("virsh", &["-c", &c.libvirtds[0].uri, "create", &file.display().to_string()]).await?;
    Ok((dir.join("serial0.sock"), dir.join("serial0.log")))
}

fn uuid_v4() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{}-4{}-8{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32]))
}

/// One `virsh migrate --live --p2p` of the copy with Converge's flags: the same libvirtds, the
/// same address, persistent on the target and undefined here.
async fn virsh_migration(c: &Cluster, copy: &str, from: usize) -> Result<(f64, f64, f64)> {
    let (src, dst) = (&c.libvirtds[from].uri, &c.libvirtds[1 - from].peer_uri);
    let mut flags =
        vec!["-c", src, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--abort-on-error"];
    if c.tls {
        flags.push("--tls");
    }
    flags.extend(["--migrateuri", "tcp://127.0.0.1", "--listen-address", "127.0.0.1", copy, dst]);
    let t0 = Instant::now();
    run("virsh", &flags).await?;
    let took = t0.elapsed().as_secs_f64();
    let (job_ms, downtime) = completed_job(&c.libvirtds[1 - from].uri, copy).await?;
    Ok((took, downtime, job_ms / 1000.0))
}

async fn guest(c: &Cluster, args: &Args, mib: u64, report: &mut Report, work: &Path) -> Result<()> {
    let name = format!("g{mib}");
    cordon(&c.api, "node-b", true).await?;
    let (code, body) = c.api.send(reqwest::Method::POST, &vms(), Some(&kernel_vm(&name, mib))).await?;
    anyhow::ensure!(code == 201, "{body}");
    let up = wait(Duration::from_secs(120), || async {
        let v = vmi(&c.api, &name).await;
        v["status"]["phase"] == "Running" && v["status"]["nodeName"] == "node-a"
    })
    .await;
    anyhow::ensure!(up, "{name} runs on node-a: {}", vmi(&c.api, &name).await);
    cordon(&c.api, "node-b", false).await?;
    let g = vmi(&c.api, &name).await;
    let dir = c.data[0].join("node/vmis").join(g["metadata"]["uid"].as_str().unwrap_or(""));
    let booted = wait(Duration::from_secs(120), || async {
        std::fs::read_to_string(dir.join("serial0.log")).is_ok_and(|t| t.contains("CONVERGE-GUEST-READY"))
    })
    .await;
    anyhow::ensure!(booted, "{name} boots");
    tokio::time::sleep(Duration::from_secs(2)).await;
    type_into(&dir.join("serial0.sock"), &dir.join("serial0.log"), &fill_line(mib), "filled-42").await?;
    let copy = format!("{}copy-{name}", c.prefix);
    let (sock, log) = start_copy(c, &g, &work.join(&copy), &copy).await?;
    let booted = wait(Duration::from_secs(120), || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("CONVERGE-GUEST-READY"))
    })
    .await;
    anyhow::ensure!(booted, "{copy} boots");
    tokio::time::sleep(Duration::from_secs(2)).await;
    type_into(&sock, &log, &fill_line(mib), "filled-42").await?;

    let (mut ours, mut theirs) = ((vec![], vec![], vec![]), (vec![], vec![], vec![]));
    for round in 0..args.rounds {
        // Both guests sit on the same node at the start of a round; the direction alternates.
        let from = round % 2;
        let converge_first = round % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == converge_first {
                let (t, d, job) = converge_migration(c, &name, round).await?;
                say(&format!("{name} round {round}: Converge {t:.2} s (libvirt's job {job:.2} s), downtime {d} ms"));
                ours.0.push(t);
                ours.1.push(d);
                ours.2.push(job);
            } else {
                let (t, d, job) = virsh_migration(c, &copy, from).await?;
                say(&format!("{name} round {round}: virsh {t:.2} s (libvirt's job {job:.2} s), downtime {d} ms"));
                theirs.0.push(t);
                theirs.1.push(d);
                theirs.2.push(job);
            }
        }
    }
    let med = |v: &[f64]| quantile(v, 0.5);
    let (id, over, virsh) = match c.tls {
        true => (format!("P6.tls.{mib}"), " over TLS", "virsh migrate --live --p2p --tls, same flags"),
        false => (format!("P6.{mib}"), "", "virsh migrate --live --p2p, same flags"),
    };
    report.push(
        Figure::new(format!("{id}.time"), format!("live migration of a {mib} MiB guest{over}, p50"), "s", med(&ours.0))
            .against(virsh, med(&theirs.0))
            .goal(Goal::RatioAtMost(1.1)),
    );
    report.push(
        Figure::new(format!("{id}.downtime"), format!("guest downtime, {mib} MiB{over}, p50"), "ms", med(&ours.1))
            .against(virsh, med(&theirs.1))
            .goal(Goal::RatioAtMost(1.2)),
    );
    report.push(
        Figure::new(
            format!("{id}.job"),
            format!("libvirt's own migration job, {mib} MiB{over}, p50"),
            "s",
            med(&ours.2),
        )
        .against(format!("the same, {virsh}"), med(&theirs.2)),
    );
    report.series(&format!("{id}.converge_s"), json!(ours.0));
    report.series(&format!("{id}.virsh_s"), json!(theirs.0));
    report.series(&format!("{id}.converge_downtime_ms"), json!(ours.1));
    report.series(&format!("{id}.virsh_downtime_ms"), json!(theirs.1));
    let _ = run("virsh", &["-c", &c.libvirtds[args.rounds % 2].uri, "destroy", &copy]).await;
    let (code, body) = c.api.send(reqwest::Method::DELETE, &format!("{}/{name}", vms()), None).await?;
    anyhow::ensure!(code == 200 || code == 202, "{body}");
    let gone =
        wait(Duration::from_secs(120), || async { vmi(&c.api, &name).await["kind"] != "VirtualMachineInstance" }).await;
    anyhow::ensure!(gone, "{name} stopped");
    Ok(())
}

/// Four halting guests (containerDisks: block migration) drained from node-a.
async fn drain(c: &Cluster, args: &Args, report: &mut Report) -> Result<()> {
    cordon(&c.api, "node-b", true).await?;
    cordon(&c.api, "node-a", false).await?;
    for i in 0..4 {
        let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": format!("d{i}")},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "evictionStrategy": "LiveMigrate", "terminationGracePeriodSeconds": 0,
                "domain": {"resources": {"requests": {"memory": "32Mi"}},
                    "devices": {"disks": [{"name": "boot", "disk": {"bus": "sata"}}], "autoattachGraphicsDevice": false,
                                "autoattachPodInterface": false, "autoattachMemBalloon": false}},
                "volumes": [{"name": "boot", "containerDisk": {"image": "converge.dev/test/halt:v1"}}]}}}});
        let (code, body) = c.api.send(reqwest::Method::POST, &vms(), Some(&vm)).await?;
        anyhow::ensure!(code == 201, "{body}");
    }
    let up = wait(Duration::from_secs(120), || async {
        let mut all = true;
        for i in 0..4 {
            let v = vmi(&c.api, &format!("d{i}")).await;
            all &= v["status"]["phase"] == "Running" && v["status"]["nodeName"] == "node-a";
        }
        all
    })
    .await;
    anyhow::ensure!(up, "four guests on node-a");
    cordon(&c.api, "node-b", false).await?;
    let t0 = Instant::now();
    let out = cmd(&args.converge).args(["node", "drain", "node-a", "--kubeconfig"]).arg(&c.kubeconfig).output().await?;
    let took = t0.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    say(&format!("drained 4 guests in {took:.2} s"));
    report.push(
        Figure::new("P6.drain4", "drain a node of 4 guests (live migrations, 2 at a time)", "s", took)
            .no_baseline("libvirt has no drain; the migrations' own cost is P6.128.time beside virsh"),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let mut report = Report::default();
    for mode in &args.modes {
        let tls = match mode.as_str() {
            "plain" => false,
            "tls" => true,
            other => anyhow::bail!("--modes: plain or tls, not {other}"),
        };
        let c = start(&args, tls).await?;
        say(&format!("two nodes with their own libvirtds are up ({mode})"));
        for &mib in &args.sizes {
            guest(&c, &args, mib, &mut report, work.path()).await?;
        }
        if !tls {
            drain(&c, &args, &mut report).await?;
        }
    }
    report.notes.push(format!(
        "P6: {} rounds per size, directions alternating; Converge's time runs from the migration's create to Succeeded (controller, target preparation, libvirt); virsh's is the command alone; downtime is libvirt's on the target",
        args.rounds
    ));
    report.finish("migration-bench", args.json.as_deref())
}
