#![allow(dead_code)] // each bench binary uses its own part of this module
//! What the host did during a part of the benchmark: CPU time of a process, of the libvirt
//! daemons and of the whole machine (busy, idle, stolen by the hypervisor), and memory.

/// CPU seconds per column of /proc/stat's first line (all CPUs): user nice system idle iowait
/// irq softirq steal …, in USER_HZ (100 on Linux, as in /proc/PID/stat).
fn host_columns() -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse::<f64>().ok()).map(|t| t / 100.0).collect())
        .unwrap_or_default()
}

/// CPU time the hypervisor gave to other guests while this machine wanted it (all CPUs, the
/// `steal` column of /proc/stat), seconds: noise that neither side of a comparison controls.
pub fn steal_seconds() -> f64 {
    host_columns().get(7).copied().unwrap_or(0.0)
}

/// CPU seconds of the whole host so far, all CPUs: (busy, idle): where a round's CPU went, and
/// whether it left some unused (a launch path that leaves cores idle has room to start more).
pub fn host_cpu() -> (f64, f64) {
    let f = host_columns();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // Idle and iowait are unused time; steal is neither.
    (at(0) + at(1) + at(2) + at(5) + at(6), at(3) + at(4))
}

/// The libvirt daemons that serve every guest (monolithic libvirtd or the modular ones).
pub fn daemon_pids() -> Vec<u32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if matches!(comm.trim(), "libvirtd" | "virtlogd" | "virtqemud" | "virtlockd") {
            pids.push(pid);
        }
    }
    pids
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis, the state (a letter) first: utime and
    // stime are the 12th and 13th. (Skipping what doesn't parse shifted them onto stime and
    // the reaped children's utime: the CPU of Converge's qemu-img runs was read as its own.)
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    ticks as f64 / 100.0
}

/// "host busy B s, idle I s" since `before` (a `host_cpu()` reading).
pub fn host_cpu_since(before: (f64, f64)) -> String {
    let (busy, idle) = host_cpu();
    format!("host busy {:.1} s, idle {:.1} s", busy - before.0, idle - before.1)
}

/// Steal since `steal_before` as a share of the host's busy time since `host_before`.
pub fn stolen_share(steal_before: f64, host_before: (f64, f64)) -> f64 {
    (steal_seconds() - steal_before) / (host_cpu().0 - host_before.0).max(0.01)
}

pub fn daemons_cpu() -> f64 {
    daemon_pids().into_iter().map(cpu_seconds).sum()
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
