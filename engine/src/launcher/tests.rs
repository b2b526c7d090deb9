use std::path::PathBuf;

use serde_json::json;

use super::build::*;

fn ctx(accel: Accel) -> NodeContext {
    NodeContext {
        accel,
        vmi_dir: PathBuf::from("/run/converge/vmis/u1"),
        tb_cache_mib: 32,
        ovmf: None,
        node_uid: "n1".into(),
        domain_prefix: String::new(),
        nics: None,
    }
}

fn vmi() -> serde_json::Value {
    json!({
        "metadata": {"name": "testvm", "namespace": "default", "uid": "u1"},
        "spec": {
            "domain": {
                "cpu": {"cores": 2},
                "resources": {"requests": {"memory": "128Mi"}},
                "machine": {"type": "q35"},
                "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223",
                             "kernelBoot": {"kernelArgs": "console=ttyS0"}},
                "devices": {
                    "disks": [
                        {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
                        {"name": "seed", "cdrom": {"bus": "sata"}},
                        {"name": "data", "lun": {"bus": "scsi"}, "serial": "D1"}
                    ],
                    "interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}],
                    "rng": {}
                }
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": []
        }
    })
}

fn prepared() -> Prepared {
    let vol = |p: &str, format: &str| PreparedVolume {
        path: p.into(),
        format: format.into(),
        block_device: false,
        readonly: false,
    };
    let mut prepared = Prepared::default();
    prepared.volumes.insert("root".into(), vol("/d/root.qcow2", "qcow2"));
    prepared.volumes.insert("seed".into(), PreparedVolume { readonly: true, ..vol("/d/seed.iso", "raw") });
    prepared.volumes.insert("data".into(), PreparedVolume { block_device: true, ..vol("/dev/loop7", "raw") });
    prepared.kernel = Some(("/i/vmlinuz".into(), Some("/i/initrd".into())));
    prepared
}

const EXPECTED_TCG: &str = r#"<domain type="qemu">
  <name>default_testvm</name>
  <uuid>5d307ca9-b3ef-428c-8861-06e72d69f223</uuid>
  <metadata>
    <converge:vmi xmlns:converge="https://converge.dev/xmlns/domain/1" namespace="default" name="testvm" uid="u1" node="n1"/>
  </metadata>
  <memory unit="KiB">131072</memory>
  <currentMemory unit="KiB">131072</currentMemory>
  <vcpu>2</vcpu>
  <os>
    <type arch="x86_64" machine="q35">hvm</type>
    <kernel>/i/vmlinuz</kernel>
    <initrd>/i/initrd</initrd>
    <cmdline>console=ttyS0</cmdline>
    <bios useserial="yes"/>
  </os>
  <features>
    <acpi/>
    <apic/>
    <tcg>
      <tb-cache unit="MiB">32</tb-cache>
    </tcg>
  </features>
  <cpu mode="custom">
    <model fallback="allow">qemu64</model>
    <topology sockets="1" cores="2" threads="1"/>
  </cpu>
  <clock offset="utc"/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" cache="none"/>
      <source file="/d/root.qcow2"/>
      <target dev="vda" bus="virtio"/>
      <boot order="1"/>
      <alias name="ua-root"/>
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw"/>
      <source file="/d/seed.iso"/>
      <target dev="sda" bus="sata"/>
      <readonly/>
      <alias name="ua-seed"/>
    </disk>
    <disk type="block" device="lun">
      <driver name="qemu" type="raw" cache="none"/>
      <source dev="/dev/loop7"/>
      <target dev="sdb" bus="scsi"/>
      <serial>D1</serial>
      <alias name="ua-data"/>
    </disk>
    <controller type="scsi" index="0" model="virtio-scsi"/>
    <interface type="user">
      <mac address="02:00:00:00:00:01"/>
      <model type="virtio"/>
      <alias name="ua-default"/>
    </interface>
    <serial type="unix">
      <source mode="bind" path="/run/converge/vmis/u1/serial0.sock"/>
      <log file="/run/converge/vmis/u1/serial0.log" append="on"/>
      <target port="0"/>
      <alias name="serial0"/>
    </serial>
    <console type="unix">
      <source mode="bind" path="/run/converge/vmis/u1/serial0.sock"/>
      <target type="serial" port="0"/>
    </console>
    <graphics type="vnc" socket="/run/converge/vmis/u1/vnc.sock"/>
    <video>
      <model type="vga" heads="1"/>
    </video>
    <memballoon model="virtio"/>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
    </rng>
  </devices>
</domain>"#;

#[test]
fn whole_domain_under_tcg() {
    let xml = build_domain(&vmi(), &ctx(Accel::Tcg), &prepared()).unwrap().to_xml().unwrap();
    assert_eq!(xml, EXPECTED_TCG, "\n{xml}");
}

#[test]
fn kvm_uses_host_model_and_no_tcg_cache() {
    let d = build_domain(&vmi(), &ctx(Accel::Kvm), &prepared()).unwrap();
    assert_eq!(d.domain_type, "kvm");
    assert_eq!(d.cpu.mode, "host-model");
    assert!(d.features.tcg.is_none());
}

#[test]
fn missing_pieces_are_named() {
    let mut v = vmi();
    v["spec"]["domain"]["resources"] = json!({});
    assert_eq!(build_domain(&v, &ctx(Accel::Tcg), &prepared()), Err(BuildError::NoMemory));
    let mut p = prepared();
    p.volumes.remove("data");
    assert_eq!(build_domain(&vmi(), &ctx(Accel::Tcg), &p), Err(BuildError::VolumeNotPrepared("data".into())));
    let mut v = vmi();
    v["spec"]["domain"]["firmware"]["bootloader"] = json!({"efi": {}});
    assert_eq!(build_domain(&v, &ctx(Accel::Tcg), &prepared()), Err(BuildError::NoOvmf));
    let mut v = vmi();
    v["spec"]["networks"][0] = json!({"name": "default", "multus": {"networkName": "x"}});
    assert!(matches!(build_domain(&v, &ctx(Accel::Tcg), &prepared()), Err(BuildError::Interface(..))));
}

#[test]
fn a_stored_firmware_uuid_is_parsed_before_it_names_a_domain() {
    let mut v = vmi();
    v["spec"]["domain"]["firmware"]["uuid"] = json!("</uuid><devices/><uuid>");
    assert!(matches!(build_domain(&v, &ctx(Accel::Tcg), &prepared()), Err(BuildError::Spec(..))));
    v["spec"]["domain"]["firmware"]["uuid"] = json!("{5D307CA9-B3EF-428C-8861-06E72D69F223}");
    let domain = build_domain(&v, &ctx(Accel::Tcg), &prepared()).expect("a braced, upper-case UUID is a UUID");
    assert_eq!(domain.uuid, "5d307ca9-b3ef-428c-8861-06e72d69f223");
}

#[test]
fn efi_uses_ovmf_with_secure_boot_by_default() {
    let mut c = ctx(Accel::Tcg);
    c.ovmf = Some(Ovmf {
        code: "/o/CODE.fd".into(),
        vars: "/o/VARS.fd".into(),
        secure_code: "/o/CODE.secboot.fd".into(),
        secure_vars: "/o/VARS.ms.fd".into(),
    });
    let mut v = vmi();
    v["spec"]["domain"]["firmware"]["bootloader"] = json!({"efi": {}});
    let xml = build_domain(&v, &c, &prepared()).unwrap().to_xml().unwrap();
    assert!(xml.contains(r#"<loader readonly="yes" secure="yes" type="pflash">/o/CODE.secboot.fd</loader>"#), "{xml}");
    assert!(xml.contains(r#"<nvram template="/o/VARS.ms.fd">/run/converge/vmis/u1/nvram.fd</nvram>"#), "{xml}");
    assert!(xml.contains(r#"<smm state="on"/>"#));
    assert!(!xml.contains("<bios"));
    v["spec"]["domain"]["firmware"]["bootloader"] = json!({"efi": {"secureBoot": false}});
    let xml = build_domain(&v, &c, &prepared()).unwrap().to_xml().unwrap();
    assert!(xml.contains(r#"secure="no" type="pflash">/o/CODE.fd</loader>"#) && !xml.contains("smm"));
}

#[test]
fn device_names_roll_over_like_libvirt() {
    assert_eq!(device_name_for_test("vd", 0), "vda");
    assert_eq!(device_name_for_test("vd", 25), "vdz");
    assert_eq!(device_name_for_test("vd", 26), "vdaa");
}

fn device_name_for_test(prefix: &str, i: usize) -> String {
    super::build::device_name(prefix, i)
}

#[test]
fn nics_from_the_node_plan_become_taps_and_hostdevs() {
    use crate::network::nad::SriovNetwork;
    use crate::network::plan::{Attachment, Nic};
    let mut v = vmi();
    v["spec"]["domain"]["devices"]["interfaces"] = json!([
        {"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01", "pciAddress": "0000:02:01.0"},
        {"name": "vf", "sriov": {}, "macAddress": "02:00:00:00:00:02", "bootOrder": 3}
    ]);
    v["spec"]["networks"] = json!([{"name": "default", "pod": {}}, {"name": "vf", "multus": {"networkName": "sriov"}}]);
    let mut c = ctx(Accel::Tcg);
    let nic = |name: &str, tap: &str, attachment| Nic { name: name.into(), mac: None, tap: tap.into(), attachment };
    let vf = SriovNetwork { device_id: "0000:03:02.1".into(), vlan: Some(7) };
    c.nics = Some(vec![
        nic("default", "t1234000aaaaaaaaa", Attachment::PodMasquerade { ports: vec![] }),
        nic("vf", "t1234100aaaaaaaaa", Attachment::Sriov(vf)),
    ]);
    let xml = build_domain(&v, &c, &prepared()).unwrap().to_xml().unwrap();
    let xml: String = xml.lines().map(str::trim).collect();
    assert!(
        xml.contains(r#"<interface type="ethernet"><mac address="02:00:00:00:00:01"/><target dev="t1234000aaaaaaaaa" managed="no"/><model type="virtio"/><alias name="ua-default"/><address type="pci" domain="0x0000" bus="0x02" slot="0x01" function="0x0"/></interface>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<interface type="hostdev" managed="yes"><mac address="02:00:00:00:00:02"/><source><address type="pci" domain="0x0000" bus="0x03" slot="0x02" function="0x1"/></source><vlan><tag id="7"/></vlan><boot order="3"/><alias name="ua-vf"/></interface>"#),
        "{xml}"
    );
    // Without the node's pod network, secondary networks are refused with the interface named.
    let e = build_domain(&v, &ctx(Accel::Tcg), &prepared()).unwrap_err().to_string();
    assert!(e.contains("\"vf\"") && e.contains("pod network"), "{e}");
}
