//! P4: a DataVolume import of a ≥ 1 GiB qcow2 over HTTP from loopback into a raw volume,
//! beside what a user would do by hand in the same run: `curl -o tmp URL && qemu-img convert
//! -O raw tmp disk` (through a temp file), once with the flags Converge's importer gives
//! qemu-img (`-t none`: O_DIRECT, the fair baseline) and once with qemu-img's defaults (the
//! output left in the page cache). Each is also timed to durable: a `sync` right after it.
//! Same file, same HTTP server, same disk.
//! Usage: cargo run --release -p converge-bench --bin import-bench [-- --gib 1.25 --rounds 3]

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
    /// Runs of each side after the warm-up, rounded up to a multiple of 3 (the order's cycle
    /// has three of each); the median is reported.
    #[arg(long, default_value_t = 6)]
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
/// back during the next run), a cold page cache where the machine lets us (root), and a disk
/// at rest. The last matters where the file system discards freed blocks (`-o discard`, as
/// here): deleting the last side's 2.7 GiB kept the disk busy into the next side's import, and
/// whoever went first in a round paid for it (Converge's first import: 2.3–3.2 s, later 1.2).
fn settle(dir: &std::path::Path) {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let Some(stat) = block_stat_path(dir) else { return };
    let counters = || std::fs::read_to_string(&stat).unwrap_or_default();
    let limit = Instant::now() + Duration::from_secs(15);
    let mut last = counters();
    let mut quiet_since = Instant::now();
    while Instant::now() < limit && quiet_since.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
        let now = counters();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

/// The I/O counters of the block device holding `dir` (the whole disk's, for a partition).
fn block_stat_path(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    // The kernel's device number encoding (major in bits 8–19 and above 32, minor in the rest).
    let (major, minor) = ((dev >> 8) & 0xfff | (dev >> 32) & !0xfff, (dev & 0xff) | (dev >> 12) & !0xff);
    let path = std::path::PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    path.exists().then_some(path)
}

/// The sides (0 Converge, 1 same flags, 2 defaults) in an order where each of the nine
/// ordered pairs of consecutive runs occurs once, the wrap from the end to the start included.
fn de_bruijn_order() -> [usize; 9] {
    [0, 0, 1, 1, 2, 2, 0, 2, 1]
}

/// One DataVolume import, create → Succeeded, in seconds.
async fn import(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    url: &str,
    run: usize,
    virtual_mib: u64,
) -> Result<f64> {
    let name = format!("p4-{run}");
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
    Ok(started.elapsed().as_secs_f64())
}

/// Deletes the run's DataVolume and waits until its claim is gone too (the volume's file is
/// removed with it), so the deletion isn't left running into the next side's import.
async fn delete(http: &reqwest::Client, base: &str, token: &str, run: usize) -> Result<()> {
    let dvs = format!("{base}/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes");
    let pvcs = format!("{base}/api/v1/namespaces/default/persistentvolumeclaims");
    http.delete(format!("{dvs}/p4-{run}")).bearer_auth(token).send().await?;
    let limit = Instant::now() + Duration::from_secs(60);
    while Instant::now() < limit {
        let dv = http.get(format!("{dvs}/p4-{run}")).bearer_auth(token).send().await?.status();
        let pvc = http.get(format!("{pvcs}/p4-{run}")).bearer_auth(token).send().await?.status();
        if dv == reqwest::StatusCode::NOT_FOUND && pvc == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("DataVolume p4-{run} or its claim still there 60 s after the delete")
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
    // The source stands for a remote server's file: served from memory (/dev/shm), so that
    // reading it shares neither the disk being measured nor the page cache `settle` drops.
    // Read from this disk, after each drop of the caches, it was 1.25 GiB of reads beside
    // the import's writes.
    let served = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm")?,
        false => tempfile::tempdir_in(work.path())?,
    };
    let s = served.path().display().to_string();
    sh(&format!("head -c {}M /dev/urandom > {w}/src.raw && truncate -s {}M {w}/src.raw", mib, mib + 256))?;
    sh(&format!("qemu-img convert -q -f raw -O qcow2 {w}/src.raw {s}/image.qcow2 && rm {w}/src.raw"))?;
    let image = served.path().join("image.qcow2");
    let size = std::fs::metadata(&image)?.len();
    let virtual_mib = mib + 256;
    println!("image: {:.2} GiB qcow2 file, {virtual_mib} MiB virtual", size as f64 / (1u64 << 30) as f64);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut web = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", &s])
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

    // Seconds per side and run: (the operation, the `sync` after it).
    let sides = ["converge", "same flags", "defaults"];
    let mut times: Vec<Vec<(f64, f64)>> = vec![vec![]; sides.len()];
    // On this disk a run is slower after some runs than after others: whatever follows the
    // same-flags baseline writes slower (Converge's receive 1.6 → 3.0–3.7 s), while that
    // baseline was never measured after itself. So the runs follow a de Bruijn order in which
    // every side follows every side, itself included, equally often. The untimed warm-up (one
    // run of each) pays for building the image and ends as the order's cycle does.
    let warm_up = [0, 2, 1];
    let cycle = de_bruijn_order();
    let timed = cycle.iter().copied().cycle().take(cycle.len() * args.rounds.div_ceil(3));
    for (run, side) in warm_up.into_iter().chain(timed).enumerate() {
        let counted = run >= warm_up.len();
        settle(work.path());
        let started = Instant::now();
        match side {
            0 => {
                import(&http, &base, &token, &url, run, virtual_mib).await?;
            }
            _ => {
                // As a user would: download to a temp file, then convert.
                let flags = if side == 1 { "-t none " } else { "" };
                sh(&format!(
                    "curl -sf -o {w}/download.qcow2 {url} && qemu-img convert -q {flags}-f qcow2 -O raw {w}/download.qcow2 {w}/baseline.raw"
                ))?;
            }
        }
        let op = started.elapsed().as_secs_f64();
        let synced = Instant::now();
        sh("sync")?;
        let sync = synced.elapsed().as_secs_f64();
        if counted {
            times[side].push((op, sync));
        }
        if side == 0 {
            delete(&http, &base, &token, run).await?;
        } else {
            sh(&format!("rm -f {w}/download.qcow2 {w}/baseline.raw"))?;
        }
        let label = if counted { format!("run {}", run - warm_up.len() + 1) } else { "warm-up".into() };
        println!("{label}: {} {op:.2} s (+ sync {sync:.2} s)", sides[side]);
    }
    let median = |side: usize, durable: bool| {
        let v: Vec<f64> = times[side].iter().map(|(op, sync)| if durable { op + sync } else { *op }).collect();
        report::quantile(&v, 0.5)
    };
    let gib = size as f64 / (1u64 << 30) as f64;
    let mib = size as f64 / (1 << 20) as f64;
    let mut report = Report::default();
    report.notes.push(format!(
        "P4: a {gib:.2} GiB qcow2 over HTTP (loopback) into a raw volume, median of {} runs of each after an untimed warm-up, in an \
         order where each side follows each side, itself included, equally often; Converge's importer decodes the qcow2 into the raw volume while it arrives \
         (qemu-img still checks the whole image) and fsyncs before Succeeded; the fair baseline downloads, then converts with \
         qemu-img convert -t none, the flag Converge uses where it converts after the transfer; the defaults baseline leaves \
         its output in the page cache; the durable rows add a sync right after",
        times[0].len()
    ));
    let baseline = "curl -o tmp && qemu-img convert";
    report.push(
        Figure::new("P4", "DataVolume import throughput (create → Succeeded)", "MiB/s", mib / median(0, false))
            .against(format!("{baseline} -t none (the same flags)"), mib / median(1, false))
            .goal(Goal::RatioAtLeast(0.95)),
    );
    report.push(
        Figure::new(
            "P4.defaults",
            "DataVolume import throughput, against qemu-img's defaults",
            "MiB/s",
            mib / median(0, false),
        )
        .against(format!("{baseline} (default cache: output in the page cache)"), mib / median(2, false)),
    );
    report.push(
        Figure::new("P4.durable", "DataVolume import throughput to durable (+ sync)", "MiB/s", mib / median(0, true))
            .against(
                format!("{baseline} + sync, the faster of same flags and defaults"),
                mib / median(1, true).min(median(2, true)),
            )
            .goal(Goal::RatioAtLeast(0.95)),
    );
    report.series(
        "P4.seconds",
        json!(sides
            .iter()
            .zip(&times)
            .map(|(name, t)| (name.to_string(), json!(t)))
            .collect::<serde_json::Map<_, _>>()),
    );
    let _ = web.kill();
    server.stop().await;
    report.finish("import-bench", args.json.as_deref())
}
