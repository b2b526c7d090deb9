//! The DHCP responder KubeVirt's launcher runs for a guest: one per pod, answering only the
//! guest's MAC with the one address planned for it, on the pod's bridge. The socket is made
//! inside the pod's network namespace, so it hears and speaks only there.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::task::JoinHandle;

use super::NetworkError;

/// What the guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    /// The responder's own address (the server identifier).
    pub server: Ipv4Addr,
    pub hostname: String,
}

/// The answer to one request, or `None` when it is not ours to answer.
pub fn respond(request: &[u8], lease: &Lease) -> Option<Vec<u8>> {
    let msg = v4::Message::decode(&mut Decoder::new(request)).ok()?;
    if msg.opcode() != v4::Opcode::BootRequest || msg.chaddr().get(..6) != Some(&lease.mac[..]) {
        return None;
    }
    let kind = match msg.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(MessageType::Discover)) => MessageType::Offer,
        Some(DhcpOption::MessageType(MessageType::Request)) => {
            let asked = match msg.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
                _ => Some(msg.ciaddr()).filter(|ip| !ip.is_unspecified()),
            };
            if asked.is_some_and(|ip| ip != lease.address) {
                MessageType::Nak
            } else {
                MessageType::Ack
            }
        }
        _ => return None,
    };
    let mut reply = v4::Message::default();
    reply
        .set_opcode(v4::Opcode::BootReply)
        .set_xid(msg.xid())
        .set_flags(msg.flags())
        .set_giaddr(msg.giaddr())
        .set_chaddr(msg.chaddr());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.server));
    if kind != MessageType::Nak {
        reply.set_yiaddr(lease.address).set_siaddr(Ipv4Addr::UNSPECIFIED);
        let opts = reply.opts_mut();
        let mask = if lease.prefix == 0 { 0 } else { u32::MAX << (32 - lease.prefix) };
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::from(mask)));
        if let Some(router) = lease.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        // The address is the pod's for the pod's life: an infinite lease, as KubeVirt gives.
        opts.insert(DhcpOption::AddressLeaseTime(u32::MAX));
        if !lease.hostname.is_empty() {
            opts.insert(DhcpOption::Hostname(lease.hostname.clone()));
        }
    }
    let mut out = Vec::new();
    reply.encode(&mut Encoder::new(&mut out)).ok()?;
    Some(out)
}

/// A UDP socket on port 67 made inside `netns` and bound to `device` there.
pub fn socket_in(netns: &str, device: &str) -> Result<UdpSocket, NetworkError> {
    let err = |m: String| NetworkError::Dhcp(format!("{netns}/{device}: {m}"));
    let target = File::open(format!("/run/netns/{netns}")).map_err(|e| err(e.to_string()))?;
    let device = device.to_string();
    // setns changes only the calling thread: a thread of its own enters the pod and ends there.
    let made = std::thread::spawn(move || -> Result<UdpSocket, String> {
        // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)).map_err(|e| e.to_string())?;
        socket.set_broadcast(true).map_err(|e| e.to_string())?;
        let name = device.as_bytes();
        // SAFETY: the option value is the device name's bytes, with its length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("SO_BINDTODEVICE: {}", std::io::Error::last_os_error()));
        }
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(socket)
    })
    .join()
    .map_err(|_| err("the namespace thread panicked".into()))?;
    made.map_err(err)
}

/// Answers until aborted.
async fn serve(socket: tokio::net::UdpSocket, lease: Lease) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else { continue };
        if let Some(reply) = respond(&buf[..n], &lease) {
            let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
            if let Err(e) = socket.send_to(&reply, to).await {
                tracing::warn!(error = %e, "DHCP reply not sent");
            }
        }
    }
}

/// The responders of this node, one per VMI uid.
#[derive(Default)]
pub struct Responders {
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Responders {
    /// Starts (or restarts) the responder of a VMI on `socket` (from [`socket_in`]).
    pub fn start(&self, vmi_uid: &str, socket: UdpSocket, lease: Lease) -> Result<(), NetworkError> {
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(|e| NetworkError::Dhcp(e.to_string()))?;
        let task = tokio::spawn(serve(socket, lease));
        if let Ok(mut tasks) = self.tasks.lock() {
            if let Some(old) = tasks.insert(vmi_uid.to_string(), task) {
                old.abort();
            }
        }
        Ok(())
    }
    pub fn running(&self, vmi_uid: &str) -> bool {
        self.tasks.lock().map(|t| t.get(vmi_uid).is_some_and(|h| !h.is_finished())).unwrap_or(false)
    }
    pub fn stop(&self, vmi_uid: &str) {
        if let Some(task) = self.tasks.lock().ok().and_then(|mut t| t.remove(vmi_uid)) {
            task.abort();
        }
    }
    pub fn count(&self) -> usize {
        self.tasks.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// The responders go with the node agent that started them (their sockets with them).
impl Drop for Responders {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.values().for_each(JoinHandle::abort);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut m = v4::Message::default();
        m.set_opcode(v4::Opcode::BootRequest).set_xid(42).set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(ip) = requested {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        }
        let mut out = vec![];
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    fn lease() -> Lease {
        Lease {
            mac: [2, 0, 0, 0, 0, 1],
            address: Ipv4Addr::new(10, 244, 0, 5),
            prefix: 16,
            router: Some(Ipv4Addr::new(10, 244, 0, 1)),
            server: Ipv4Addr::new(169, 254, 75, 10),
            hostname: "vm1".into(),
        }
    }

    fn decode(bytes: &[u8]) -> v4::Message {
        v4::Message::decode(&mut Decoder::new(bytes)).unwrap()
    }

    #[test]
    fn offers_and_acks_the_planned_address_to_the_guest_only() {
        let offer = decode(&respond(&request(MessageType::Discover, lease().mac, None), &lease()).unwrap());
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 244, 0, 5));
        assert_eq!(offer.xid(), 42);
        assert_eq!(offer.opts().get(OptionCode::MessageType), Some(&DhcpOption::MessageType(MessageType::Offer)));
        assert_eq!(
            offer.opts().get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)))
        );
        let ack =
            decode(&respond(&request(MessageType::Request, lease().mac, Some(lease().address)), &lease()).unwrap());
        assert_eq!(ack.opts().get(OptionCode::MessageType), Some(&DhcpOption::MessageType(MessageType::Ack)));
        let nak = decode(
            &respond(&request(MessageType::Request, lease().mac, Some(Ipv4Addr::new(1, 2, 3, 4))), &lease()).unwrap(),
        );
        assert_eq!(nak.opts().get(OptionCode::MessageType), Some(&DhcpOption::MessageType(MessageType::Nak)));
        assert!(respond(&request(MessageType::Discover, [2, 0, 0, 0, 0, 9], None), &lease()).is_none());
        assert!(respond(b"not dhcp", &lease()).is_none());
    }
}
