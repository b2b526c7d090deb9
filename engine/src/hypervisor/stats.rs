//! Guests' statistics as libvirt keeps them (`virConnectGetAllDomainStats`: one call for every
//! domain), read into plain numbers. The `virt` crate returns the records without a way to read
//! them (and without freeing them), so the call and the typed parameters are read here; turning
//! parameters into `DomainStats` is pure and tested alone.

use super::{HvResult, HypervisorError};
use std::collections::BTreeMap;
use std::ffi::CStr;
use virt::connect::Connect;
use virt::sys;

/// One typed parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    UInt(u64),
    Double(f64),
    Bool(bool),
    Text(String),
}

impl Param {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Param::Int(v) => u64::try_from(*v).ok(),
            Param::UInt(v) => Some(*v),
            Param::Double(v) if *v >= 0.0 => Some(*v as u64),
            _ => None,
        }
    }
    fn as_text(&self) -> Option<&str> {
        match self {
            Param::Text(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NicStats {
    /// The host side's device (the tap), as libvirt names it.
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockStats {
    /// The guest's target device (vda, sda).
    pub name: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flush_requests: u64,
    /// Total time spent, in nanoseconds.
    pub read_time_ns: u64,
    pub write_time_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainStats {
    pub name: String,
    /// The whole QEMU process's CPU time.
    pub cpu_time_ns: Option<u64>,
    /// Each vCPU: its number, its state (0 offline, 1 running, 2 blocked) and its time.
    pub vcpus: Vec<(u32, u32, u64)>,
    /// Memory the guest is given (the balloon's current size).
    pub memory_current_bytes: Option<u64>,
    /// QEMU's resident set.
    pub memory_rss_bytes: Option<u64>,
    /// What the guest's balloon driver reports as its usable total; absent without one.
    pub memory_available_bytes: Option<u64>,
    pub memory_unused_bytes: Option<u64>,
    pub memory_usable_bytes: Option<u64>,
    pub interfaces: Vec<NicStats>,
    pub disks: Vec<BlockStats>,
}

const KIB: u64 = 1024;

/// Reads one domain's parameters (`cpu.time`, `vcpu.0.time`, `net.1.rx.bytes`, …).
pub fn from_params(name: &str, params: &[(String, Param)]) -> DomainStats {
    let map: BTreeMap<&str, &Param> = params.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let num = |key: &str| map.get(key).and_then(|p| p.as_u64());
    let count = |key: &str| num(key).unwrap_or(0).min(4096);
    let kib = |key: &str| num(key).and_then(|v| v.checked_mul(KIB));
    let vcpus = (0..count("vcpu.current"))
        .filter_map(|i| {
            let state = num(&format!("vcpu.{i}.state")).unwrap_or(1).min(2) as u32;
            Some((i as u32, state, num(&format!("vcpu.{i}.time"))?))
        })
        .collect();
    let interfaces = (0..count("net.count"))
        .map(|i| {
            let get = |what: &str| num(&format!("net.{i}.{what}")).unwrap_or(0);
            NicStats {
                name: map.get(format!("net.{i}.name").as_str()).and_then(|p| p.as_text()).unwrap_or("").to_string(),
                rx_bytes: get("rx.bytes"),
                tx_bytes: get("tx.bytes"),
                rx_packets: get("rx.pkts"),
                tx_packets: get("tx.pkts"),
                rx_errors: get("rx.errs"),
                tx_errors: get("tx.errs"),
                rx_dropped: get("rx.drop"),
                tx_dropped: get("tx.drop"),
            }
        })
        .collect();
    let disks = (0..count("block.count"))
        .map(|i| {
            let get = |what: &str| num(&format!("block.{i}.{what}")).unwrap_or(0);
            BlockStats {
                name: map.get(format!("block.{i}.name").as_str()).and_then(|p| p.as_text()).unwrap_or("").to_string(),
                read_bytes: get("rd.bytes"),
                write_bytes: get("wr.bytes"),
                read_requests: get("rd.reqs"),
                write_requests: get("wr.reqs"),
                flush_requests: get("fl.reqs"),
                read_time_ns: get("rd.times"),
                write_time_ns: get("wr.times"),
            }
        })
        // A backing-chain entry repeats its disk's name: the top of each chain counts.
        .fold(Vec::<BlockStats>::new(), |mut seen, disk| {
            if !seen.iter().any(|d| d.name == disk.name) {
                seen.push(disk);
            }
            seen
        });
    DomainStats {
        name: name.to_string(),
        cpu_time_ns: num("cpu.time"),
        vcpus,
        memory_current_bytes: kib("balloon.current"),
        memory_rss_bytes: kib("balloon.rss"),
        memory_available_bytes: kib("balloon.available"),
        memory_unused_bytes: kib("balloon.unused"),
        memory_usable_bytes: kib("balloon.usable"),
        interfaces,
        disks,
    }
}

/// The VMI's names of a domain's disks and NICs, by their host-side device (a disk's target,
/// `vda`; a NIC's tap): Converge gives each device the user alias `ua-<name>`.
pub fn device_names(xml: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for element in ["disk", "interface"] {
        let open = format!("<{element} ");
        let close = format!("</{element}>");
        for block in xml.split(open.as_str()).skip(1) {
            let block = block.split(close.as_str()).next().unwrap_or("");
            let dev = attribute(block, "<target", "dev");
            let alias = attribute(block, "<alias", "name");
            if let (Some(dev), Some(name)) = (dev, alias.and_then(|a| a.strip_prefix("ua-"))) {
                names.insert(dev.to_string(), name.to_string());
            }
        }
    }
    names
}

/// The value of `attr` in the first `tag` element of `text`, in either quote.
fn attribute<'t>(text: &'t str, tag: &str, attr: &str) -> Option<&'t str> {
    let element = text.split(tag).nth(1)?.split('>').next()?;
    let at = element.find(&format!("{attr}="))? + attr.len() + 1;
    let rest = &element[at..];
    let quote = rest.chars().next().filter(|q| *q == '\'' || *q == '"')?;
    rest[1..].split(quote).next()
}

/// Renames a domain's disks and NICs to the VMI's names for them, where the XML gives them.
pub fn name_devices(stats: &mut DomainStats, xml: &str) {
    let names = device_names(xml);
    for nic in &mut stats.interfaces {
        if let Some(name) = names.get(&nic.name) {
            nic.name = name.clone();
        }
    }
    for disk in &mut stats.disks {
        if let Some(name) = names.get(&disk.name) {
            disk.name = name.clone();
        }
    }
}

/// Every domain's statistics, in one libvirt call.
pub fn read_all(conn: &Connect) -> HvResult<Vec<DomainStats>> {
    let wanted = sys::VIR_DOMAIN_STATS_STATE
        | sys::VIR_DOMAIN_STATS_CPU_TOTAL
        | sys::VIR_DOMAIN_STATS_BALLOON
        | sys::VIR_DOMAIN_STATS_VCPU
        | sys::VIR_DOMAIN_STATS_INTERFACE
        | sys::VIR_DOMAIN_STATS_BLOCK;
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is open for the call; libvirt fills `records` with a NULL-terminated array
    // of `count` records, which is freed below with the function libvirt gives for it, after every
    // borrowed string has been copied out.
    let count = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), wanted, &mut records, 0) };
    if count < 0 {
        let error = virt::error::Error::last_error();
        return Err(HypervisorError::Libvirt(error.to_string()));
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        // SAFETY: i < count, the array's length; each record and its params live until the free.
        let record = unsafe { &**records.add(i) };
        let name = unsafe { CStr::from_ptr(sys::virDomainGetName(record.dom)) }.to_string_lossy().into_owned();
        let params = (0..record.nparams.max(0) as usize)
            // SAFETY: j < nparams, the params array's length.
            .map(|j| unsafe { read_param(&*record.params.add(j)) })
            .collect::<Vec<_>>();
        out.push(from_params(&name, &params));
    }
    if !records.is_null() {
        // SAFETY: the array libvirt returned, freed once.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

/// SAFETY: `param` must be a parameter libvirt filled, its `type_` naming the union's member.
unsafe fn read_param(param: &sys::virTypedParameter) -> (String, Param) {
    let field = CStr::from_ptr(param.field.as_ptr()).to_string_lossy().into_owned();
    let value = match param.type_ as u32 {
        sys::VIR_TYPED_PARAM_INT => Param::Int(param.value.i as i64),
        sys::VIR_TYPED_PARAM_UINT => Param::UInt(param.value.ui as u64),
        sys::VIR_TYPED_PARAM_LLONG => Param::Int(param.value.l),
        sys::VIR_TYPED_PARAM_ULLONG => Param::UInt(param.value.ul),
        sys::VIR_TYPED_PARAM_DOUBLE => Param::Double(param.value.d),
        sys::VIR_TYPED_PARAM_BOOLEAN => Param::Bool(param.value.b != 0),
        sys::VIR_TYPED_PARAM_STRING if !param.value.s.is_null() => {
            Param::Text(CStr::from_ptr(param.value.s).to_string_lossy().into_owned())
        }
        _ => Param::Text(String::new()),
    };
    (field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, value: Param) -> (String, Param) {
        (key.to_string(), value)
    }

    #[test]
    fn parameters_become_numbers_per_vcpu_nic_and_disk() {
        let params = vec![
            p("state.state", Param::Int(1)),
            p("cpu.time", Param::UInt(5_000_000_000)),
            p("balloon.current", Param::UInt(131_072)),
            p("balloon.rss", Param::UInt(90_000)),
            p("vcpu.current", Param::UInt(2)),
            p("vcpu.0.time", Param::UInt(1_000)),
            p("vcpu.1.time", Param::UInt(2_000)),
            p("net.count", Param::UInt(1)),
            p("net.0.name", Param::Text("tp1".into())),
            p("net.0.rx.bytes", Param::UInt(10)),
            p("net.0.tx.bytes", Param::UInt(20)),
            p("block.count", Param::UInt(3)),
            p("block.0.name", Param::Text("vda".into())),
            p("block.0.rd.bytes", Param::UInt(4096)),
            p("block.0.rd.reqs", Param::UInt(1)),
            p("block.1.name", Param::Text("vda".into())),
            p("block.1.rd.bytes", Param::UInt(1)),
            p("block.2.name", Param::Text("vdb".into())),
            p("block.2.wr.bytes", Param::UInt(512)),
        ];
        let stats = from_params("ns_vm", &params);
        assert_eq!(stats.cpu_time_ns, Some(5_000_000_000));
        assert_eq!(stats.vcpus, vec![(0, 1, 1_000), (1, 1, 2_000)]);
        assert_eq!(stats.memory_current_bytes, Some(128 << 20));
        assert_eq!(stats.memory_rss_bytes, Some(90_000 * 1024));
        assert_eq!(stats.memory_available_bytes, None, "no balloon driver, no figure");
        assert_eq!(stats.interfaces.len(), 1);
        assert_eq!((stats.interfaces[0].rx_bytes, stats.interfaces[0].tx_bytes), (10, 20));
        let names: Vec<&str> = stats.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vdb"], "a backing chain's entries are not disks of their own");
        assert_eq!((stats.disks[0].read_bytes, stats.disks[1].write_bytes), (4096, 512));
    }

    #[test]
    fn devices_take_the_vmis_names_from_their_user_aliases() {
        let xml = "<domain><devices><disk type='file' device='disk'><source file='/x'/><target dev='vda' bus='virtio'/>\
                   <alias name='ua-root'/></disk><disk type=\"file\"><target dev=\"sda\"/><alias name=\"sata0-0-0\"/></disk>\
                   <interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='tp12ab' managed='no'/>\
                   <alias name='ua-default'/></interface></devices></domain>";
        let names = device_names(xml);
        assert_eq!(names.get("vda").map(String::as_str), Some("root"));
        assert_eq!(names.get("tp12ab").map(String::as_str), Some("default"));
        assert!(!names.contains_key("sda"), "only user aliases name devices");
    }

    #[test]
    fn hostile_counts_and_types_are_bounded() {
        let params = vec![
            p("vcpu.current", Param::UInt(u64::MAX)),
            p("net.count", Param::Int(-5)),
            p("cpu.time", Param::Text("lots".into())),
            p("balloon.rss", Param::UInt(u64::MAX)),
        ];
        let stats = from_params("x", &params);
        assert!(stats.vcpus.is_empty() && stats.interfaces.is_empty());
        assert_eq!((stats.cpu_time_ns, stats.memory_rss_bytes), (None, None));
    }
}
