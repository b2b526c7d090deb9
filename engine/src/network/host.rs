//! The OS boundary of networking: commands (`ip`, `bridge`, `nft`, sysctl writes) run in the
//! host's or a named network namespace. Plans are lists of [`Step`]s; a [`NetworkHost`] runs them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::NetworkError;

/// One command, in a network namespace or the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub netns: Option<String>,
    pub argv: Vec<String>,
    /// Fed to the command's standard input (an nft script).
    pub stdin: Option<String>,
    /// A failure is expected when the thing is already there or already gone.
    pub tolerate: bool,
}

impl Step {
    pub fn new(netns: Option<&str>, argv: &[&str]) -> Step {
        Step {
            netns: netns.map(str::to_string),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: None,
            tolerate: false,
        }
    }
    /// `ip ARGS…` (the words of `line`, split on whitespace).
    pub fn ip(netns: Option<&str>, line: &str) -> Step {
        let mut argv = vec!["ip"];
        argv.extend(line.split_whitespace());
        Step::new(netns, &argv)
    }
    pub fn bridge(netns: Option<&str>, line: &str) -> Step {
        let mut argv = vec!["bridge"];
        argv.extend(line.split_whitespace());
        Step::new(netns, &argv)
    }
    /// An nftables script, applied atomically.
    pub fn nft(netns: Option<&str>, script: String) -> Step {
        Step { stdin: Some(script), ..Step::new(netns, &["nft", "-f", "-"]) }
    }
    /// A sysctl under /proc/sys, e.g. `net/ipv4/ip_forward`.
    pub fn sysctl(netns: Option<&str>, key: &str, value: &str) -> Step {
        Step::new(netns, &["sysctl-write", key, value])
    }
    pub fn tolerated(mut self) -> Step {
        self.tolerate = true;
        self
    }
    /// How a person would type it.
    pub fn display(&self) -> String {
        let prefix = self.netns.as_ref().map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
        format!("{prefix}{}", self.argv.join(" "))
    }
}

pub trait NetworkHost: Send + Sync {
    /// Runs the steps in order; the first failure that is not tolerated stops them.
    fn run(&self, steps: &[Step]) -> Result<(), NetworkError>;
    /// Names of the network namespaces (`ip netns list`).
    fn namespaces(&self) -> Vec<String>;
    /// Link names in a namespace or the host's.
    fn links(&self, netns: Option<&str>) -> Vec<String>;
    /// A UDP socket on port 67 inside `netns`, bound to `device` there (a DHCP responder's).
    fn dhcp_socket(&self, netns: &str, device: &str) -> Result<std::net::UdpSocket, NetworkError>;
    /// True when the PCI device (`0000:03:02.1`) is here and is an SR-IOV virtual function.
    fn is_sriov_vf(&self, pci_address: &str) -> bool;
}

/// The machine's own tools.
pub struct SystemNetworkHost;

impl SystemNetworkHost {
    fn command(step: &Step) -> Command {
        let (program, args): (&str, Vec<String>) = match step.argv.first().map(String::as_str) {
            // sysctls are per namespace: written from a shell that runs inside it.
            Some("sysctl-write") => {
                let key = step.argv.get(1).cloned().unwrap_or_default();
                let value = step.argv.get(2).cloned().unwrap_or_default();
                ("sh", vec!["-c".into(), format!("echo {value} > /proc/sys/{key}")])
            }
            Some(p) => (p, step.argv[1..].to_vec()),
            None => ("true", vec![]),
        };
        match &step.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]).args(args);
                c
            }
            None => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        }
    }
}

impl NetworkHost for SystemNetworkHost {
    fn run(&self, steps: &[Step]) -> Result<(), NetworkError> {
        for step in steps {
            let failed = |message: String| NetworkError::Command { command: step.display(), message };
            let mut command = Self::command(step);
            command.stdin(if step.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
            if let (Some(text), Some(mut input)) = (&step.stdin, child.stdin.take()) {
                input.write_all(text.as_bytes()).map_err(|e| failed(e.to_string()))?;
            }
            let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
            if !out.status.success() && !step.tolerate {
                return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
            }
        }
        Ok(())
    }

    fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect())
            .unwrap_or_default()
    }

    fn links(&self, netns: Option<&str>) -> Vec<String> {
        let mut c = Command::new("ip");
        if let Some(ns) = netns {
            c.args(["-n", ns]);
        }
        let Ok(out) = c.args(["-o", "link", "show"]).output() else { return vec![] };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    fn dhcp_socket(&self, netns: &str, device: &str) -> Result<std::net::UdpSocket, NetworkError> {
        super::dhcp::socket_in(netns, device)
    }

    fn is_sriov_vf(&self, pci_address: &str) -> bool {
        std::path::Path::new("/sys/bus/pci/devices").join(pci_address).join("physfn").exists()
    }
}

/// A test double: records every step, creates nothing.
#[derive(Default)]
pub struct RecordingNetworkHost {
    pub steps: Mutex<Vec<Step>>,
}

impl RecordingNetworkHost {
    pub fn lines(&self) -> Vec<String> {
        self.steps.lock().map(|s| s.iter().map(Step::display).collect()).unwrap_or_default()
    }
}

impl NetworkHost for RecordingNetworkHost {
    fn run(&self, steps: &[Step]) -> Result<(), NetworkError> {
        if let Ok(mut s) = self.steps.lock() {
            s.extend(steps.iter().cloned());
        }
        Ok(())
    }
    fn namespaces(&self) -> Vec<String> {
        vec![]
    }
    fn links(&self, _netns: Option<&str>) -> Vec<String> {
        vec![]
    }
    /// A loopback socket no DHCP client will ever reach.
    fn dhcp_socket(&self, netns: &str, device: &str) -> Result<std::net::UdpSocket, NetworkError> {
        if let Ok(mut s) = self.steps.lock() {
            s.push(Step::new(Some(netns), &["dhcp-responder", device]));
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| NetworkError::Dhcp(e.to_string()))?;
        socket.set_nonblocking(true).map_err(|e| NetworkError::Dhcp(e.to_string()))?;
        Ok(socket)
    }
    /// The recording host has no PCI devices.
    fn is_sriov_vf(&self, _pci_address: &str) -> bool {
        false
    }
}
