//! The target's domain XML, from the source's migratable XML: the same guest (libvirt checks its
//! ABI is unchanged, its name included: the target's name is given to libvirt apart, as the
//! migration's `dname`), owned by the target's Node, with every file
//! the source node made re-rooted from the source's state directory to the target's — where the
//! target agent made the same files (`node::migration`). Files outside the state directory
//! (shared volumes) keep their paths: every node reaches them there.

use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("the domain XML has no <name>")]
    NoName,
    #[error("the domain XML names no owning node {0}")]
    NoOwner(String),
    #[error("the guest's interfaces are taps on a pod network, and the target node has none")]
    NoPodNetwork,
}

/// Where a domain lives on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement<'a> {
    pub state_dir: &'a Path,
    pub node_uid: &'a str,
    /// The node namespace of the node's pod network, which names the guest's taps there.
    pub network_namespace: Option<&'a str>,
}

/// `source_xml` (of the domain `domain` of the VMI `vmi_uid` on the node `from`) as the node
/// `to` runs it.
pub fn for_target(
    source_xml: &str,
    domain: &str,
    vmi_uid: &str,
    from: &Placement,
    to: &Placement,
) -> Result<String, XmlError> {
    let old_name = format!("<name>{domain}</name>");
    if !source_xml.contains(&old_name) {
        return Err(XmlError::NoName);
    }
    let old_owner = format!("node=\"{}\"", from.node_uid);
    let old_owner_single = format!("node='{}'", from.node_uid);
    if !source_xml.contains(&old_owner) && !source_xml.contains(&old_owner_single) {
        return Err(XmlError::NoOwner(from.node_uid.to_string()));
    }
    let mut xml = source_xml.replace(&old_owner, &format!("node=\"{}\"", to.node_uid));
    xml = xml.replace(&old_owner_single, &format!("node='{}'", to.node_uid));
    let (from_dir, to_dir) = (from.state_dir.display().to_string(), to.state_dir.display().to_string());
    for quote in ['\'', '"'] {
        // Only attribute values (and kernel/initrd elements) that start with the directory.
        xml = xml.replace(&format!("{quote}{from_dir}/"), &format!("{quote}{to_dir}/"));
    }
    for element in ["kernel", "initrd", "loader", "nvram"] {
        xml = xml.replace(&format!("<{element}>{from_dir}/"), &format!("<{element}>{to_dir}/"));
    }
    rename_taps(&xml, vmi_uid, from.network_namespace, to.network_namespace)
}

/// The guest's taps under the target's names: the target made its own (named from its node
/// namespace), which its incoming QEMU opens.
fn rename_taps(xml: &str, vmi_uid: &str, from: Option<&str>, to: Option<&str>) -> Result<String, XmlError> {
    use crate::network::names::tap;
    let Some(from) = from else { return Ok(xml.to_string()) };
    let mut out = xml.to_string();
    for index in 0..16 {
        let old = tap(from, vmi_uid, index);
        for quote in ['\'', '"'] {
            let quoted = format!("dev={quote}{old}{quote}");
            if out.contains(&quoted) {
                let new = tap(to.ok_or(XmlError::NoPodNetwork)?, vmi_uid, index);
                out = out.replace(&quoted, &format!("dev={quote}{new}{quote}"));
            }
        }
    }
    Ok(out)
}

/// The target devices of the writable disks whose files the node made (under `state_dir`):
/// what a migration copies. Shared volumes and read-only disks stay where they are.
pub fn node_made_disks(source_xml: &str, state_dir: &Path) -> Vec<String> {
    use quick_xml::events::Event;
    let dir = format!("{}/", state_dir.display());
    let mut reader = quick_xml::Reader::from_str(source_xml);
    let (mut out, mut in_disk) = (vec![], false);
    let (mut source, mut target, mut readonly) = (None::<String>, None::<String>, false);
    let attr = |e: &quick_xml::events::BytesStart, name: &[u8]| {
        e.attributes()
            .flatten()
            .find(|a| a.key.as_ref() == name)
            .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
    };
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == b"disk" => {
                in_disk = true;
                (source, target, readonly) = (None, None, false);
            }
            Ok(Event::Start(e) | Event::Empty(e)) if in_disk => match e.name().as_ref() {
                b"source" => source = attr(&e, b"file").or_else(|| attr(&e, b"dev")),
                b"target" => target = attr(&e, b"dev"),
                b"readonly" => readonly = true,
                _ => {}
            },
            Ok(Event::End(e)) if e.name().as_ref() == b"disk" => {
                in_disk = false;
                if let (Some(src), Some(dev), false) = (&source, &target, readonly) {
                    if src.starts_with(&dir) {
                        out.push(dev.clone());
                    }
                }
            }
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> String {
        SOURCE_TEMPLATE.replace("TAP0", &crate::network::names::tap("cva", "u1", 0))
    }

    const SOURCE_TEMPLATE: &str = r#"<domain type='qemu'>
  <name>a-default_vm</name>
  <uuid>5e1c0f3a-0000-4000-8000-000000000001</uuid>
  <metadata><converge:vmi xmlns:converge="https://converge.dev/vmi" uid="u1" node="node-a-uid"/></metadata>
  <os><kernel>/data/a/images/k/boot/vmlinuz</kernel></os>
  <devices>
    <disk type='file' device='disk'><source file='/data/a/vmis/u1/disks/root.qcow2'/></disk>
    <disk type='file' device='disk'><source file='/shared/pool/pvc-1/disk.img'/></disk>
    <disk type='file' device='disk'><source file='/data/ab/vmis/u1/x.qcow2'/></disk>
    <serial type='unix'><source mode='bind' path='/data/a/vmis/u1/serial.sock'/></serial>
    <interface type='ethernet'><mac address='02:00:00:00:00:01'/><target dev='TAP0' managed='no'/></interface>
  </devices>
</domain>"#;

    fn placements() -> (Placement<'static>, Placement<'static>) {
        (
            Placement { state_dir: Path::new("/data/a"), node_uid: "node-a-uid", network_namespace: Some("cva") },
            Placement { state_dir: Path::new("/data/b"), node_uid: "node-b-uid", network_namespace: Some("cvb") },
        )
    }

    #[test]
    fn the_targets_files_name_and_owner_replace_the_sources() {
        let (a, b) = placements();
        let xml = for_target(&source(), "a-default_vm", "u1", &a, &b).unwrap();
        assert!(xml.contains("<name>a-default_vm</name>"), "renamed by libvirt, not in the XML");
        assert!(xml.contains(r#"node="node-b-uid""#));
        assert!(xml.contains("'/data/b/vmis/u1/disks/root.qcow2'"));
        assert!(xml.contains("'/data/b/vmis/u1/serial.sock'"));
        assert!(xml.contains("<kernel>/data/b/images/k/boot/vmlinuz</kernel>"));
        assert!(xml.contains("'/shared/pool/pvc-1/disk.img'"), "shared volumes keep their path");
        assert!(xml.contains("'/data/ab/vmis/u1/x.qcow2'"), "a directory that only starts alike is not ours");
        assert!(!xml.contains("/data/a/"));
        assert!(xml.contains("5e1c0f3a-0000-4000-8000-000000000001"), "the same guest");
        let tap = crate::network::names::tap("cvb", "u1", 0);
        assert!(xml.contains(&format!("<target dev='{tap}' managed='no'/>")), "the target's tap: {xml}");
        assert!(xml.contains("02:00:00:00:00:01"), "the same MAC");
    }

    #[test]
    fn a_guest_on_a_pod_network_goes_only_where_there_is_one() {
        let (a, mut b) = placements();
        b.network_namespace = None;
        assert_eq!(for_target(&source(), "a-default_vm", "u1", &a, &b), Err(XmlError::NoPodNetwork));
        let user_network = SOURCE_TEMPLATE.replace("<interface type='ethernet'>", "<interface type='user'>");
        let user_network = user_network.replace("<target dev='TAP0' managed='no'/>", "");
        assert!(for_target(&user_network, "a-default_vm", "u1", &a, &b).is_ok());
    }

    #[test]
    fn only_writable_disks_the_node_made_are_copied() {
        let xml = r#"<domain><devices>
          <disk type='file' device='disk'><source file='/data/a/vmis/u1/disks/root.qcow2'/><target dev='vda' bus='virtio'/></disk>
          <disk type='file' device='disk'><source file='/shared/pool/pvc-1/disk.img'/><target dev='vdb' bus='virtio'/></disk>
          <disk type='file' device='cdrom'><source file='/data/a/vmis/u1/disks/ci.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
          <disk type='block' device='disk'><source dev='/dev/loop7'/><target dev='vdc' bus='virtio'/></disk>
        </devices></domain>"#;
        assert_eq!(node_made_disks(xml, Path::new("/data/a")), vec!["vda".to_string()]);
        assert!(node_made_disks(xml, Path::new("/data/b")).is_empty());
    }

    #[test]
    fn a_domain_not_made_by_the_source_is_refused() {
        let (a, b) = placements();
        let other = Placement { node_uid: "someone-else", ..a.clone() };
        assert_eq!(
            for_target(&source(), "a-default_vm", "u1", &other, &b),
            Err(XmlError::NoOwner("someone-else".into()))
        );
        assert_eq!(for_target(&source(), "x", "u1", &a, &b), Err(XmlError::NoName));
    }
}
