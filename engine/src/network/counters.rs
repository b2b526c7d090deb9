//! Traffic counters of links inside a network namespace. A pod guest's tap lives in its pod's
//! namespace once QEMU has opened it, where libvirt (in the host's) no longer sees it: its
//! figures are read from the pod's own `/proc/net/dev`, by a thread that enters the namespace.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;

/// A link's counters as the link itself counts them (its receive is what was sent into it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Parses `/proc/net/dev`.
pub fn parse_proc_net_dev(text: &str) -> BTreeMap<String, LinkCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            if n.len() < 16 {
                return None;
            }
            let counters = LinkCounters {
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            };
            Some((name.trim().to_string(), counters))
        })
        .collect()
}

/// Every link's counters in the named namespace (`/run/netns/NAME`).
pub fn in_namespace(netns: &str) -> Result<BTreeMap<String, LinkCounters>, String> {
    let target = File::open(format!("/run/netns/{netns}")).map_err(|e| format!("{netns}: {e}"))?;
    // setns changes only the calling thread: a thread of its own enters the pod and ends there.
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| e.to_string())?;
        Ok(parse_proc_net_dev(&text))
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_dev_is_read_per_link() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n\
                    t1a2b0c3d4e5f6: 1180      4    0    1    0     0          0         0     2360       8    0    0    0     0       0          0\n";
        let links = parse_proc_net_dev(text);
        let tap = links["t1a2b0c3d4e5f6"];
        assert_eq!((tap.rx_bytes, tap.rx_packets, tap.rx_dropped, tap.tx_bytes, tap.tx_packets), (1180, 4, 1, 2360, 8));
        assert_eq!(links.len(), 2);
        assert!(parse_proc_net_dev("garbage\n\nx: 1 2\n").is_empty());
    }

    #[test]
    fn this_namespace_has_loopback() {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").expect("proc");
        assert!(parse_proc_net_dev(&text).contains_key("lo"));
    }
}
