//! IPv4 prefixes: parsing, membership, and the n-th address.

use std::fmt;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub const ZERO: Cidr = Cidr { base: 0, prefix: 32 };

    /// `10.244.0.0/16`; host bits must be zero.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 =
            prefix.parse().ok().filter(|p| *p <= 30).ok_or_else(|| format!("prefix in {text:?} must be 0-30"))?;
        let base = u32::from(addr);
        let cidr = Cidr { base, prefix };
        if base & !cidr.mask() != 0 {
            return Err(format!("{text:?} has host bits set"));
        }
        Ok(cidr)
    }
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    /// Addresses in the prefix, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }
    pub fn nth(&self, n: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(n as u32))
    }
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == self.base
    }
    /// Offset of `addr` inside the prefix.
    pub fn offset(&self, addr: Ipv4Addr) -> Option<u64> {
        self.contains(addr).then(|| u64::from(u32::from(addr) - self.base))
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.nth(0)) || other.contains(self.nth(0))
    }
    /// Whether `other` lies wholly inside this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.nth(0))
    }
    /// The `n`-th prefix of length `prefix` inside this one (`None` past the end, or when
    /// `prefix` is shorter than this one's or longer than 30).
    pub fn subnet(&self, prefix: u8, n: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 30 || n >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        Some(Cidr { base: self.base + ((n as u32) << (32 - prefix)), prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_address() {
        let c = Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(c.size(), 65536);
        assert!(c.contains(Ipv4Addr::new(10, 244, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert_eq!(c.offset(Ipv4Addr::new(10, 244, 1, 2)), Some(258));
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!(Cidr::parse("10.244.0.1/16").is_err());
        assert!(Cidr::parse("10.244.0.0").is_err());
        assert!(Cidr::parse("10.244.0.0/31").is_err());
        assert!(c.overlaps(&Cidr::parse("10.244.3.0/24").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.96.0.0/12").unwrap()));
        assert_eq!(c.subnet(24, 3).map(|s| s.to_string()), Some("10.244.3.0/24".into()));
        assert_eq!(c.subnet(24, 255).map(|s| s.to_string()), Some("10.244.255.0/24".into()));
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        assert!(c.covers(&Cidr::parse("10.244.3.0/24").unwrap()));
        assert!(!Cidr::parse("10.244.3.0/24").unwrap().covers(&c));
    }
}
