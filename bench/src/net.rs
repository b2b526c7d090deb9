//! Pod network plumbing, measured on this machine's kernel, beside a baseline in the same run:
//!   N4  per pod: make (namespace, veth on the node bridge, pod bridge, tap moved in) and remove,
//!       as the node agent does it (`network::setup` steps through `SystemNetworkHost`), vs the
//!       same kernel objects made by one `ip -batch` per pod and removed by one `ip netns del`.
//! Everything lives in a node namespace of the benchmark's own; nothing leaves the machine.
//! Usage: cargo run --release -p converge-bench --bin net-bench [-- --pods 50]  (as root)

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use converge_engine::network::host::{NetworkHost, SystemNetworkHost};
use converge_engine::network::plan::{Attachment, Nic, PodPlan};
use converge_engine::network::{names, setup, Cidr, NetworkConfig};

#[derive(Parser)]
struct Args {
    /// Pods made and removed per side.
    #[arg(long, default_value_t = 50)]
    pods: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let (p50, p95) = (percentile(&samples, 0.5), percentile(&samples, 0.95));
    println!("  {label:<34} p50 {:>7.1} ms   p95 {:>7.1} ms", p50.as_secs_f64() * 1e3, p95.as_secs_f64() * 1e3);
    p50
}

/// One `ip [-n NS] -batch -` process: the fewest processes iproute2 needs for these lines.
fn ip_batch(netns: Option<&str>, lines: &str) -> Result<()> {
    use std::io::Write;
    let mut command = Command::new("ip");
    if let Some(ns) = netns {
        command.args(["-n", ns]);
    }
    let mut child = command.args(["-batch", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().map(|mut i| i.write_all(lines.as_bytes())).transpose()?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pods = Cidr::parse("10.250.0.0/16").map_err(anyhow::Error::msg)?;
    let cfg = NetworkConfig {
        cluster_cidr: pods,
        pod_cidr: pods,
        service_cidr: Cidr::parse("10.251.0.0/16").map_err(anyhow::Error::msg)?,
        transit: Cidr::parse("169.254.250.0/30").map_err(anyhow::Error::msg)?,
        node_namespace: format!("cvbench{}", std::process::id() % 10_000),
        egress: false,
    };
    let host = SystemNetworkHost;
    host.run(&setup::node_remove(&cfg))?;
    host.run(&setup::node_create(&cfg))?;
    let result = measure(&args, &cfg, &host);
    host.run(&setup::node_remove(&cfg))?;
    result
}

fn measure(args: &Args, cfg: &NetworkConfig, host: &SystemNetworkHost) -> Result<()> {
    println!("N4 pod network plumbing, {} pods (bridge binding), kernel {}", args.pods, kernel());
    let (mut make, mut remove) = (vec![], vec![]);
    for i in 0..args.pods {
        let uid = format!("bench-{i}");
        let plan = PodPlan {
            vmi_uid: uid.clone(),
            netns: names::pod_namespace(&cfg.node_namespace, &uid),
            veth: names::pod_veth(&uid),
            pod_ip: Some(cfg.pod_cidr.nth(10 + i as u64)),
            nics: vec![Nic {
                name: "default".into(),
                mac: Some(format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256)),
                tap: names::tap(&cfg.node_namespace, &uid, 0),
                attachment: Attachment::PodBridge,
            }],
        };
        let t = Instant::now();
        host.run(&setup::pod_before_start(cfg, &plan, true))?;
        host.run(&setup::pod_after_start(&plan))?;
        make.push(t.elapsed());
        let t = Instant::now();
        host.run(&setup::pod_remove(&cfg.node_namespace, &plan, &[]))?;
        remove.push(t.elapsed());
    }
    let (mut base_make, mut base_remove) = (vec![], vec![]);
    for i in 0..args.pods {
        let (ns, veth, tap) = (format!("cvbase{i}"), format!("vb{i}"), format!("tb{i}"));
        let node = &cfg.node_namespace;
        let t = Instant::now();
        ip_batch(None, &format!("netns add {ns}\ntuntap add dev {tap} mode tap\n"))?;
        ip_batch(
            Some(node),
            &format!(
                "link add {veth} type veth peer name eth0 netns {ns}\nlink set {veth} master {} up\n",
                names::NODE_BRIDGE
            ),
        )?;
        ip_batch(None, &format!("link set {tap} netns {ns}\n"))?;
        ip_batch(
            Some(&ns),
            &format!(
                "link set lo up\nlink add k6t-eth0 type bridge\nlink set eth0 master k6t-eth0 up\n\
                 addr add {}/32 dev k6t-eth0\nlink set k6t-eth0 up\nlink set {tap} master k6t-eth0 up\n",
                Ipv4Addr::new(169, 254, 75, 10)
            ),
        )?;
        base_make.push(t.elapsed());
        let t = Instant::now();
        ip_batch(Some(node), &format!("link del {veth}\n"))?;
        ip_batch(None, &format!("netns del {ns}\n"))?;
        base_remove.push(t.elapsed());
    }
    let m = report("converge: make a pod", make);
    let bm = report("baseline ip -batch: make a pod", base_make);
    let r = report("converge: remove a pod", remove);
    let br = report("baseline ip -batch: remove a pod", base_remove);
    println!(
        "  ratio make {:.2}x, remove {:.2}x (converge / baseline, p50)",
        m.as_secs_f64() / bm.as_secs_f64(),
        r.as_secs_f64() / br.as_secs_f64()
    );
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
