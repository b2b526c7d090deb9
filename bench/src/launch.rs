//! The P1 baselines: the same domain XMLs Converge made, started on the same schedule by the
//! best direct uses of libvirt we know, each with the qcow2 overlay made inside its timer:
//!   (a) a process and a connection per VM: `qemu-img create && virsh create`, as a script would;
//!   (b) one process with a bounded pool of workers, either sharing one connection or each with
//!       its own, starting transient domains (`virDomainCreateXML`, one call), each worker
//!       writing the overlay as Converge's node does (`converge_engine::node::qcow2`, in
//!       process: the same bytes as `qemu-img create`, without its process).
//! Every sample must succeed: a failed launch fails the run rather than leaving the sample out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use virt::connect::Connect;

const URI: &str = "qemu:///system";

/// One guest of a baseline: its name, XML file (and text), and the overlay to make on its base.
#[derive(Clone)]
pub struct Launch {
    pub domain: String,
    pub xml_file: PathBuf,
    pub xml: String,
    pub base: PathBuf,
    pub overlay: PathBuf,
}

/// A baseline's samples: release → started (what is compared), and each start call's own
/// duration (`virsh create`, or the libvirt call(s)), to set beside the node agent's `start` phase.
pub struct Times {
    pub latency: Vec<f64>,
    pub calls: Vec<f64>,
}

/// How the pool of workers reaches libvirt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Connections {
    Shared,
    PerWorker,
}

/// How a worker starts a domain: transient (`virDomainCreateXML`, one call, as `virsh create`)
/// or persistent (`virDomainDefineXML` then `virDomainCreate`, as Converge did before it
/// started transient domains and defined them after).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Start {
    Transient,
    DefineAndStart,
}

fn overlay_command(l: &Launch) -> std::process::Command {
    let mut cmd = std::process::Command::new("qemu-img");
    // The overlay Converge's node writes (engine/src/node/qcow2.rs), as a script makes it.
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&l.base).arg(&l.overlay);
    cmd.stdout(Stdio::null());
    cmd
}

/// The overlay as Converge's node writes it (the base is a raw image).
fn write_overlay(l: &Launch) -> Result<(), String> {
    let size = std::fs::metadata(&l.base).map_err(|e| format!("{}: {e}", l.base.display()))?.len();
    converge_engine::node::qcow2::write_overlay(&l.overlay, &l.base, "raw", size)
        .map_err(|e| format!("overlay for {}: {e}", l.domain))
}

/// (a): each guest is its own `qemu-img create` and `virsh create` process pair, released every
/// `interval`; seconds from release to `virsh create` returning.
pub async fn per_process(launches: &[Launch], interval: Duration) -> Result<Times> {
    let start = Instant::now();
    let mut handles = vec![];
    for (i, l) in launches.iter().enumerate() {
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        let l = l.clone();
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let st = tokio::process::Command::from(overlay_command(&l)).status().await?;
            anyhow::ensure!(st.success(), "qemu-img create for {}", l.domain);
            let call = Instant::now();
            let out = tokio::process::Command::new("virsh")
                .args(["-c", URI, "create"])
                .arg(&l.xml_file)
                .stdout(Stdio::null())
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "virsh create {}: {}",
                l.domain,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok((t.elapsed().as_secs_f64(), call.elapsed().as_secs_f64()))
        }));
    }
    let mut times = Times { latency: vec![], calls: vec![] };
    for h in handles {
        let (latency, call) = h.await.context("baseline task")??;
        times.latency.push(latency);
        times.calls.push(call);
    }
    Ok(times)
}

fn open() -> Result<Connect> {
    Connect::open(Some(URI)).map_err(|e| anyhow::anyhow!("libvirt: {e}"))
}

/// (b): `workers` threads in this process take guests released every `interval` from one queue;
/// seconds from release to `virDomainCreateXML` returning (time waiting for a worker counts, as
/// it does for Converge's workers).
pub fn pool(launches: &[Launch], interval: Duration, workers: usize, conns: Connections, how: Start) -> Result<Times> {
    let shared = if conns == Connections::Shared { Some(open()?) } else { None };
    let (tx, rx) = mpsc::channel::<(usize, Launch, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let results = Arc::new(Mutex::new(vec![None::<Result<(f64, f64), String>>; launches.len()]));
    let mut threads = vec![];
    for _ in 0..workers {
        let rx = Arc::clone(&rx);
        let results = Arc::clone(&results);
        let conn = match &shared {
            Some(c) => c.clone(),
            None => open()?,
        };
        threads.push(std::thread::spawn(move || loop {
            let job = rx.lock().ok().and_then(|r| r.recv().ok());
            let Some((i, l, released)) = job else { break };
            let outcome = (|| -> Result<(f64, f64), String> {
                write_overlay(&l)?;
                let call = Instant::now();
                match how {
                    Start::Transient => {
                        conn.create_domain_xml(&l.xml, 0).map_err(|e| format!("create {}: {e}", l.domain))?;
                    }
                    Start::DefineAndStart => {
                        let dom = conn.define_domain_xml(&l.xml).map_err(|e| format!("define {}: {e}", l.domain))?;
                        dom.create().map_err(|e| format!("start {}: {e}", l.domain))?;
                    }
                }
                Ok((released.elapsed().as_secs_f64(), call.elapsed().as_secs_f64()))
            })();
            if let Ok(mut r) = results.lock() {
                r[i] = Some(outcome);
            }
        }));
    }
    let start = Instant::now();
    for (i, l) in launches.iter().enumerate() {
        let at = start + interval * i as u32;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        tx.send((i, l.clone(), Instant::now())).context("pool gone")?;
    }
    drop(tx);
    for t in threads {
        let _ = t.join();
    }
    drop(shared);
    let results = results.lock().map_err(|_| anyhow::anyhow!("results lock"))?.clone();
    let mut times = Times { latency: vec![], calls: vec![] };
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok((latency, call))) => {
                times.latency.push(latency);
                times.calls.push(call);
            }
            Some(Err(e)) => bail!("baseline launch {i}: {e}"),
            None => bail!("baseline launch {i} never ran"),
        }
    }
    Ok(times)
}

/// Destroys (and undefines, if persistent) every domain of `launches`, eight at a time, each
/// thread on its own connection: a destroy waits for QEMU's exit (1.8 s each on this machine
/// before libvirtd had its own subreaper), and one at a time made the teardown of a 100-guest
/// baseline longer than the baseline itself.
/// A domain already gone is fine.
pub fn destroy_all(launches: &[Launch]) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<()> {
        let mut threads = vec![];
        for _ in 0..8 {
            let conn = open()?;
            let next = &next;
            threads.push(scope.spawn(move || {
                while let Some(l) = launches.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Ok(dom) = conn.lookup_domain_by_name(&l.domain) {
                        let _ = dom.destroy();
                        let _ = dom.undefine();
                    }
                }
            }));
        }
        for t in threads {
            t.join().map_err(|_| anyhow::anyhow!("a teardown thread panicked"))?;
        }
        Ok(())
    })
}

/// Destroys (and undefines) every domain whose name starts with `prefix`: what a failed run left.
pub fn destroy_prefixed(prefix: &str) -> Result<()> {
    let conn = open()?;
    let domains = conn.list_all_domains(0).map_err(|e| anyhow::anyhow!("libvirt: {e}"))?;
    for dom in domains {
        if dom.name().is_ok_and(|n| n.starts_with(prefix)) {
            let _ = dom.destroy();
            let _ = dom.undefine();
        }
    }
    Ok(())
}

/// A copy of a Converge domain XML that runs on its own: new name, no uuid, its own directory
/// (overlay, sockets, log) under `dir`.
pub fn baseline_xml(xml: &str, converge_dir: &str, dir: &Path, name: &str) -> String {
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

pub fn prepare_dir(dir: &Path, qemu: Option<(u32, u32)>) -> Result<()> {
    std::fs::create_dir_all(dir.join("disks"))?;
    if let Some((u, g)) = qemu {
        std::os::unix::fs::chown(dir, Some(u), Some(g))?;
    }
    Ok(())
}

pub fn qemu_owner() -> Option<(u32, u32)> {
    let out = std::process::Command::new("id").args(["-u", "libvirt-qemu"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = std::process::Command::new("id").args(["-g", "libvirt-qemu"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}
