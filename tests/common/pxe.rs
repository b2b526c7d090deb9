//! A PXE boot server on a bridge the test makes: dnsmasq in the test's own namespace, on a veth
//! into the bridge, answering DHCP and serving an iPXE script, the test kernel and initramfs
//! over TFTP. The firmware's iPXE ROM (Debian's ipxe-qemu) fetches and boots them. Everything it
//! made goes when it is dropped.

use super::guests::guest_dir;
use std::process::Command;

/// Deletes a link when dropped.
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

pub struct PxeServer {
    /// The bridge a NAD of type `bridge` names; guests on it PXE boot.
    pub bridge: String,
    pub tftp: tempfile::TempDir,
    // Dropped in declaration order: dnsmasq first, then its namespace and links.
    _dnsmasq: tokio::process::Child,
    _netns: NetnsGuard,
    _outer: LinkGuard,
    _bridge: LinkGuard,
}

pub fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

impl PxeServer {
    /// `tag` (a few characters) keeps link names apart between tests; `subnet` picks
    /// 192.168.`subnet`.0/24 for the DHCP range.
    pub fn start(tag: &str, subnet: u8) -> PxeServer {
        let id = std::process::id() % 100_000;
        let bridge = format!("cvx{tag}{id}");
        let (outer, netns) = (format!("cvv{tag}{id}"), format!("cvpxe{tag}{id}"));
        let bridge_guard = LinkGuard(bridge.clone());
        let outer_guard = LinkGuard(outer.clone());
        let netns_guard = NetnsGuard(netns.clone());
        ip(&format!("link add {bridge} type bridge"));
        ip(&format!("link set {bridge} up"));
        ip(&format!("netns add {netns}"));
        ip(&format!("link add {outer} type veth peer name eth0 netns {netns}"));
        ip(&format!("link set {outer} master {bridge} up"));
        ip(&format!("-n {netns} addr add 192.168.{subnet}.1/24 dev eth0"));
        ip(&format!("-n {netns} link set eth0 up"));
        ip(&format!("-n {netns} link set lo up"));

        let tftp = tempfile::tempdir().expect("tftp root");
        let guests = guest_dir();
        std::fs::copy(guests.join("vmlinuz"), tftp.path().join("vmlinuz")).expect("kernel");
        std::fs::copy(guests.join("initramfs.gz"), tftp.path().join("initramfs.gz")).expect("initramfs");
        std::fs::write(
            tftp.path().join("boot.ipxe"),
            "#!ipxe\nkernel vmlinuz console=ttyS0 quiet\ninitrd initramfs.gz\nboot\n",
        )
        .expect("script");
        let root = tftp.path().display().to_string();
        let dnsmasq = tokio::process::Command::new("ip")
            .args(["netns", "exec", &netns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0"])
            .args(["--interface=eth0", "--bind-interfaces"])
            .arg(format!("--dhcp-range=192.168.{subnet}.50,192.168.{subnet}.99,255.255.255.0,1h"))
            .args(["--dhcp-boot=boot.ipxe", "--enable-tftp", "--user=root", "--log-dhcp"])
            .arg(format!("--tftp-root={root}"))
            .arg(format!("--dhcp-leasefile={root}/leases"))
            .arg(format!("--pid-file={root}/dnsmasq.pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq");
        PxeServer { bridge, tftp, _dnsmasq: dnsmasq, _netns: netns_guard, _outer: outer_guard, _bridge: bridge_guard }
    }

    /// dnsmasq's lease file: which MACs it gave addresses to.
    pub fn leases(&self) -> String {
        std::fs::read_to_string(self.tftp.path().join("leases")).unwrap_or_default()
    }
}
