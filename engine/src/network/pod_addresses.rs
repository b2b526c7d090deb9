//! Pod addresses as the node hands them out, the way CNI's host-local plugin does: one file per
//! leased address in the node's state directory, named by the address and holding its owner
//! (the VMI's `namespace/name`). A node needs nothing but its pod CIDR — its own slice of the
//! cluster range — to give addresses, so a node joined over the API never asks the store for one,
//! and a restart finds every lease again.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum PodAddressError {
    #[error("no free pod address left in {0}")]
    Exhausted(Cidr),
    #[error("pod address leases in {0}: {1}")]
    Io(String, std::io::Error),
    #[error("pod address leases: a lock was poisoned")]
    Poisoned,
}

#[derive(Default)]
struct Leases {
    by_address: BTreeMap<Ipv4Addr, String>,
    by_owner: HashMap<String, Ipv4Addr>,
}

pub struct PodAddresses {
    dir: PathBuf,
    leases: Mutex<Leases>,
}

pub fn owner_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl PodAddresses {
    /// Opens (or makes) the lease directory and reads the leases in it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<PodAddresses, PodAddressError> {
        let dir = dir.into();
        let io = |e| PodAddressError::Io(dir.display().to_string(), e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut leases = Leases::default();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            // Anything not named by an address (a write cut short) is not a lease.
            let Some(address) = entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else { continue };
            let owner = std::fs::read_to_string(entry.path()).map_err(io)?.trim().to_string();
            if owner.is_empty() || leases.by_owner.contains_key(&owner) {
                continue;
            }
            leases.by_owner.insert(owner.clone(), address);
            leases.by_address.insert(address, owner);
        }
        Ok(PodAddresses { dir, leases: Mutex::new(leases) })
    }

    fn write(&self, address: Ipv4Addr, owner: &str) -> Result<(), PodAddressError> {
        let io = |e| PodAddressError::Io(self.dir.display().to_string(), e);
        let temporary = self.dir.join(format!(".{address}.new"));
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(owner.as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
        std::fs::rename(&temporary, self.dir.join(address.to_string())).map_err(io)
    }

    /// The address `owner` holds, else the lowest free one of `cidr` (past the network and
    /// gateway addresses, short of broadcast, none of `reserved`).
    pub fn lease(&self, cidr: &Cidr, reserved: &[Ipv4Addr], owner: &str) -> Result<Ipv4Addr, PodAddressError> {
        let mut leases = self.leases.lock().map_err(|_| PodAddressError::Poisoned)?;
        if let Some(address) = leases.by_owner.get(owner).filter(|a| cidr.contains(**a)) {
            return Ok(*address);
        }
        let free = (2..cidr.size().saturating_sub(1))
            .map(|n| cidr.nth(n))
            .find(|a| !reserved.contains(a) && !leases.by_address.contains_key(a))
            .ok_or(PodAddressError::Exhausted(*cidr))?;
        self.write(free, owner)?;
        if let Some(old) = leases.by_owner.insert(owner.to_string(), free) {
            // Held outside today's range (the node's CIDR changed): that one goes.
            leases.by_address.remove(&old);
            let _ = std::fs::remove_file(self.dir.join(old.to_string()));
        }
        leases.by_address.insert(free, owner.to_string());
        Ok(free)
    }

    /// Records that `owner` uses `address` (a running guest found at start whose lease was lost);
    /// false when another owner holds it.
    pub fn adopt(&self, address: Ipv4Addr, owner: &str) -> Result<bool, PodAddressError> {
        let mut leases = self.leases.lock().map_err(|_| PodAddressError::Poisoned)?;
        match leases.by_address.get(&address) {
            Some(held) => return Ok(held == owner),
            None if leases.by_owner.contains_key(owner) => return Ok(false),
            None => {}
        }
        self.write(address, owner)?;
        leases.by_owner.insert(owner.to_string(), address);
        leases.by_address.insert(address, owner.to_string());
        Ok(true)
    }

    /// Gives back what `owner` holds.
    pub fn release(&self, owner: &str) -> Result<(), PodAddressError> {
        let mut leases = self.leases.lock().map_err(|_| PodAddressError::Poisoned)?;
        if let Some(address) = leases.by_owner.remove(owner) {
            leases.by_address.remove(&address);
            remove(&self.dir, address)?;
        }
        Ok(())
    }

    /// Releases every lease whose owner `live` does not accept (guests gone while the node was down).
    pub fn retain(&self, live: impl Fn(&str) -> bool) -> Result<(), PodAddressError> {
        let gone: Vec<String> = self.leases().into_iter().map(|(_, o)| o).filter(|o| !live(o)).collect();
        gone.iter().try_for_each(|owner| self.release(owner))
    }

    /// Every lease: (address, owner).
    pub fn leases(&self) -> Vec<(Ipv4Addr, String)> {
        self.leases.lock().map(|l| l.by_address.iter().map(|(a, o)| (*a, o.clone())).collect()).unwrap_or_default()
    }
}

fn remove(dir: &Path, address: Ipv4Addr) -> Result<(), PodAddressError> {
    match std::fs::remove_file(dir.join(address.to_string())) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PodAddressError::Io(dir.display().to_string(), e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).expect("cidr")
    }

    #[test]
    fn leases_are_kept_per_owner_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = cidr("10.244.1.0/24");
        let gateway = net.nth(1);
        let pool = PodAddresses::open(dir.path()).expect("open");
        let a = pool.lease(&net, &[gateway], "ns/a").expect("a");
        let b = pool.lease(&net, &[gateway], "ns/b").expect("b");
        assert_eq!((a, b), (net.nth(2), net.nth(3)));
        assert_eq!(pool.lease(&net, &[gateway], "ns/a").expect("again"), a, "an owner keeps its address");
        let reopened = PodAddresses::open(dir.path()).expect("reopen");
        assert_eq!(reopened.leases(), vec![(a, "ns/a".to_string()), (b, "ns/b".to_string())]);
        reopened.release("ns/a").expect("release");
        assert_eq!(reopened.lease(&net, &[gateway], "ns/c").expect("c"), a, "a released address is given again");
        assert!(!dir.path().join(b.to_string()).with_extension("new").exists());
    }

    #[test]
    fn a_small_range_runs_out_and_reserved_addresses_are_never_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = cidr("10.0.0.0/29"); // .2 to .6 usable, .3 reserved
        let pool = PodAddresses::open(dir.path()).expect("open");
        let given: Vec<Ipv4Addr> =
            (0..4).map(|i| pool.lease(&net, &[net.nth(3)], &format!("ns/{i}")).expect("lease")).collect();
        assert!(!given.contains(&net.nth(3)));
        assert!(matches!(pool.lease(&net, &[net.nth(3)], "ns/x"), Err(PodAddressError::Exhausted(_))));
    }

    #[test]
    fn adoption_and_sweeping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = cidr("10.244.0.0/24");
        let pool = PodAddresses::open(dir.path()).expect("open");
        assert!(pool.adopt(net.nth(9), "ns/run").expect("adopt"));
        assert!(pool.adopt(net.nth(9), "ns/run").expect("again"), "its own address");
        assert!(!pool.adopt(net.nth(9), "ns/other").expect("taken"), "someone else's");
        assert_eq!(pool.lease(&net, &[], "ns/run").expect("lease"), net.nth(9));
        pool.lease(&net, &[], "ns/gone").expect("lease");
        pool.retain(|owner| owner == "ns/run").expect("retain");
        assert_eq!(pool.leases(), vec![(net.nth(9), "ns/run".to_string())]);
        std::fs::write(dir.path().join("not-an-address"), "x").expect("junk");
        assert_eq!(PodAddresses::open(dir.path()).expect("reopen").leases().len(), 1);
    }

    #[test]
    fn a_lease_outside_a_changed_range_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = PodAddresses::open(dir.path()).expect("open");
        let old = pool.lease(&cidr("10.244.0.0/24"), &[], "ns/a").expect("old");
        let new = pool.lease(&cidr("10.244.7.0/24"), &[], "ns/a").expect("new");
        assert_ne!(old, new);
        assert_eq!(pool.leases(), vec![(new, "ns/a".to_string())]);
        assert!(!dir.path().join(old.to_string()).exists());
    }
}
