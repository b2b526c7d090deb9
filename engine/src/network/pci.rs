//! PCI addresses as KubeVirt and sriov-cni write them: `DDDD:BB:SS.F`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl PciAddress {
    /// `0000:81:01.0`: four, two and two hex digits, a slot up to 1f and a function up to 7.
    pub fn parse(text: &str) -> Result<PciAddress, String> {
        let bad = || format!("{text:?} is not a PCI address (DDDD:BB:SS.F)");
        let (head, function) = text.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let [domain, bus, slot] = parts[..] else { return Err(bad()) };
        let hex = |s: &str, digits: usize, max: u32| {
            (s.len() == digits && s.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
                .filter(|v| *v <= max)
                .ok_or_else(bad)
        };
        Ok(PciAddress {
            domain: hex(domain, 4, 0xffff)? as u16,
            bus: hex(bus, 2, 0xff)? as u8,
            slot: hex(slot, 2, 0x1f)? as u8,
            function: hex(function, 1, 7)? as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.slot, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let a = PciAddress::parse("0000:3B:02.1").unwrap();
        assert_eq!(a, PciAddress { domain: 0, bus: 0x3b, slot: 2, function: 1 });
        assert_eq!(a.to_string(), "0000:3b:02.1");
        for bad in ["0000:81:01", "81:01.0", "0000:81:20.0", "0000:81:01.8", "000g:81:01.0", "0000:081:01.0"] {
            assert!(PciAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
