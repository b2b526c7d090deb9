//! P4: a DataVolume import of a ≥ 1 GiB qcow2 over HTTP from loopback into a raw volume,
//! beside what a user would do by hand in the same run: `curl -o tmp URL && qemu-img convert
//! -O raw tmp disk` (through a temp file). Same file, same HTTP server, same disk.
//! Usage: cargo run --release -p converge-bench --bin import-bench [-- --gib 1.25 --rounds 2]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};

#[path = "report.rs"]
mod report;
use report::{Figure, Goal, Report};

#[derive(Parser)]
struct Args {
    /// Size of the random data in the image, GiB (the qcow2 file is about this big).
    #[arg(long, default_value_t = 1.25)]
    gib: f64,
    /// Rounds of each (alternating); the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the image, the pool and the baseline's files live (the same disk for both).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Write the figures here (bench/report.py reads them).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn sh(cmd: &str) -> Result<()> {
    let status = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !status.success() {
        bail!("{cmd} failed");
    }
    Ok(())
}

/// Each side starts from the same state: nothing dirty left by the other (it would be written
/// back during the next run), and a cold page cache where the machine lets us (root).
fn settle() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// One DataVolume import, create → Succeeded, in seconds.
async fn import(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    url: &str,
    round: usize,
    virtual_mib: u64,
) -> Result<f64> {
    let name = format!("p4-{round}");
    let dvs = format!("{base}/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes");
    let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": {"http": {"url": url}}, "storage": {"resources": {"requests": {"storage": format!("{}Mi", virtual_mib + 64)}}}}});
    let started = Instant::now();
    let r = http.post(&dvs).bearer_auth(token).json(&dv).send().await?;
    if !r.status().is_success() {
        bail!("create: {}", r.text().await?);
    }
    loop {
        let dv: Value = http.get(format!("{dvs}/{name}")).bearer_auth(token).send().await?.json().await?;
        match dv.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => break,
            Some("Failed") => bail!("import failed: {dv}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let took = started.elapsed().as_secs_f64();
    http.delete(format!("{dvs}/{name}")).bearer_auth(token).send().await?;
    Ok(took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,converge_engine::storage::importer=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let work = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(std::env::current_dir()?)?,
    };
    let w = work.path().display().to_string();
    let mib = (args.gib * 1024.0) as u64;
    println!("converge import-bench (P4): building a qcow2 with {mib} MiB of random data in {w}");
    sh(&format!("head -c {}M /dev/urandom > {w}/src.raw && truncate -s {}M {w}/src.raw", mib, mib + 256))?;
    sh(&format!("qemu-img convert -q -f raw -O qcow2 {w}/src.raw {w}/image.qcow2 && rm {w}/src.raw"))?;
    let image = work.path().join("image.qcow2");
    let size = std::fs::metadata(&image)?.len();
    let virtual_mib = mib + 256;
    println!("image: {:.2} GiB qcow2 file, {virtual_mib} MiB virtual", size as f64 / (1u64 << 30) as f64);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut web = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", &w])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("python3 -m http.server")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/image.qcow2");

    let data = work.path().join("converge");
    let mut config = converge_api::ServerConfig::new(&data);
    config.listen = "127.0.0.1:0".into();
    config.storage.allow_private_imports = true;
    let server = converge_api::start(config).await.context("starting the server")?;
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(server.ca_pem.as_bytes())?)
        .build()?;
    let base = server.base_url.clone();
    let token = server.admin_token.clone();

    let mut ours = vec![];
    let mut theirs = vec![];
    for round in 0..args.rounds {
        // Alternate which side goes first, so neither always inherits the other's aftermath.
        for side in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            settle();
            if side == 0 {
                // Baseline: download to a temp file, then convert, as a user would.
                let started = Instant::now();
                sh(&format!(
                    "curl -sf -o {w}/download.qcow2 {url} && qemu-img convert -q -f qcow2 -O raw {w}/download.qcow2 {w}/baseline.raw"
                ))?;
                theirs.push(started.elapsed().as_secs_f64());
                sh(&format!("rm -f {w}/download.qcow2 {w}/baseline.raw"))?;
            } else {
                ours.push(import(&http, &base, &token, &url, round, virtual_mib).await?);
            }
        }
        println!(
            "round {}: DataVolume {:.2} s, curl + qemu-img convert {:.2} s",
            round + 1,
            ours[round],
            theirs[round]
        );
    }
    let (o, t) = (report::quantile(&ours, 0.5), report::quantile(&theirs, 0.5));
    let gib = size as f64 / (1u64 << 30) as f64;
    let mib = size as f64 / (1 << 20) as f64;
    let mut report = Report::default();
    report.notes.push(format!(
        "P4: a {gib:.2} GiB qcow2 over HTTP (loopback) into a raw volume, median of {}; ours is on disk when \
         Succeeded (qemu-img convert -t none, fsync), the baseline leaves its output in the page cache",
        args.rounds
    ));
    report.push(
        Figure::new("P4", "DataVolume import throughput (create → Succeeded)", "MiB/s", mib / o)
            .against("curl -o tmp && qemu-img convert", mib / t)
            .goal(Goal::RatioAtLeast(0.9)),
    );
    report.series("P4.seconds", json!({"converge": ours, "baseline": theirs}));
    let _ = web.kill();
    server.stop().await;
    report.finish("import-bench", args.json.as_deref())
}
