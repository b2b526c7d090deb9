use super::*;
use serde_json::json;

fn vm(spec_extra: Value) -> Value {
    let mut vm = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "web01.example.com", "namespace": "default"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}, "resources": {"requests": {"memory": "128Mi"}}},
            "volumes": [{"name": "root", "containerDisk": {"image": "busybox"}}]
        }}}
    });
    json_patch::merge(&mut vm, &spec_extra);
    vm
}

fn fields(result: ApiResult<()>) -> Vec<String> {
    match result {
        Ok(()) => vec![],
        Err(e) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.causes().iter().map(|c| c.field.clone()).collect()
        }
    }
}

fn admit_vm(mut v: Value) -> (Value, Vec<String>) {
    let r = admit(&kinds::VIRTUAL_MACHINE, Operation::Create, &mut v, &Context::default());
    (v, fields(r))
}

#[test]
fn a_good_vm_gets_machine_type_and_firmware_uuid() {
    let (v, errs) = admit_vm(vm(json!({})));
    assert!(errs.is_empty(), "{errs:?}");
    let domain = &v["spec"]["template"]["spec"]["domain"];
    assert_eq!(domain["machine"]["type"], "q35");
    assert!(domain["firmware"]["uuid"].as_str().is_some_and(|u| u.len() == 36));
}

#[test]
fn firmware_uuid_survives_an_update_that_omits_it() {
    let (old, _) = admit_vm(vm(json!({})));
    let mut new = vm(json!({}));
    let ctx = Context { old: Some(&old), ..Context::default() };
    assert!(admit(&kinds::VIRTUAL_MACHINE, Operation::Update, &mut new, &ctx).is_ok());
    let path = |v: &Value| v["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"].clone();
    assert_eq!(path(&new), path(&old));
}

#[test]
fn disk_without_volume_names_the_field() {
    let (_, errs) = admit_vm(vm(json!({"spec": {"template": {"spec": {"volumes": []}}}})));
    assert_eq!(errs, vec!["spec.template.spec.domain.devices.disks[0].name"]);
}

#[test]
fn a_volume_without_a_disk_gets_a_default_disk_in_the_vmi() {
    let extra = json!({"spec": {"template": {"spec": {"volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "spare", "emptyDisk": {"capacity": "1Gi"}}]}}}});
    let (vm, errs) = admit_vm(vm(extra));
    assert!(errs.is_empty(), "{errs:?}");
    let mut spec = vm["spec"]["template"]["spec"].clone();
    super::spec::mutate_vmi_spec(&mut spec);
    assert_eq!(spec["domain"]["devices"]["disks"][1], json!({"name": "spare", "disk": {"bus": "virtio"}}));
}

#[test]
fn bad_memory_quantity() {
    let extra = json!({"spec": {"template": {"spec": {"domain": {"resources": {"requests": {"memory": "lots"}}}}}}});
    assert_eq!(admit_vm(vm(extra)).1, vec!["spec.template.spec.domain.resources.requests.memory"]);
}

#[test]
fn missing_memory_is_refused() {
    let extra = json!({"spec": {"template": {"spec": {"domain": {"resources": null}}}}});
    assert_eq!(admit_vm(vm(extra)).1, vec!["spec.template.spec.domain.resources.requests.memory"]);
}

#[test]
fn run_strategy_rules() {
    assert_eq!(admit_vm(vm(json!({"spec": {"runStrategy": "Sometimes"}}))).1, vec!["spec.runStrategy"]);
    assert_eq!(admit_vm(vm(json!({"spec": {"running": true}}))).1, vec!["spec.running"]);
    assert!(admit_vm(vm(json!({"spec": {"running": true, "runStrategy": null}}))).1.is_empty());
}

#[test]
fn names_must_be_subdomains() {
    assert_eq!(admit_vm(vm(json!({"metadata": {"name": "Web_01"}}))).1, vec!["metadata.name"]);
}

#[test]
fn interfaces_and_networks_pair_up() {
    let extra = json!({"spec": {"template": {"spec": {
        "domain": {"devices": {"interfaces": [{"name": "a", "bridge": {}}, {"name": "b", "bridge": {}, "masquerade": {}}]}},
        "networks": [{"name": "a", "pod": {}}, {"name": "c", "multus": {"networkName": "x"}}]
    }}}});
    let errs = admit_vm(vm(extra)).1;
    assert_eq!(
        errs,
        vec![
            "spec.template.spec.networks[1].name",
            "spec.template.spec.domain.devices.interfaces[1].name",
            "spec.template.spec.domain.devices.interfaces[1]",
        ]
    );
}

fn vmi(labels: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi", "namespace": "default", "labels": labels},
        "spec": {"domain": {"devices": {"disks": [{"name": "root"}, {"name": "cd", "cdrom": {}}]}, "resources": {"requests": {"memory": "64Mi"}}},
                 "volumes": [{"name": "root", "containerDisk": {"image": "a"}}, {"name": "cd", "containerDisk": {"image": "b"}}]}
    })
}

#[test]
fn vmi_defaults_disk_buses_and_pod_network() {
    let mut v = vmi(json!({}));
    assert!(admit(&kinds::VIRTUAL_MACHINE_INSTANCE, Operation::Create, &mut v, &Context::default()).is_ok());
    assert_eq!(v["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"], "virtio");
    assert_eq!(v["spec"]["domain"]["devices"]["disks"][1]["cdrom"]["bus"], "sata");
    assert_eq!(v["spec"]["domain"]["devices"]["interfaces"], json!([{"name": "default", "bridge": {}}]));
    assert_eq!(v["spec"]["networks"], json!([{"name": "default", "pod": {}}]));
}

#[test]
fn presets_fill_matching_vmis_and_conflicts_refuse() {
    let preset = json!({"metadata": {"name": "small"}, "spec": {"selector": {"matchLabels": {"size": "small"}}, "domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "64Mi"}}}}});
    let presets = [preset];
    let mut v = vmi(json!({"size": "small"}));
    let ctx = Context { old: None, presets: &presets, ..Context::default() };
    assert!(admit(&kinds::VIRTUAL_MACHINE_INSTANCE, Operation::Create, &mut v, &ctx).is_ok());
    assert_eq!(v["spec"]["domain"]["cpu"]["cores"], 2);
    assert_eq!(v["metadata"]["annotations"]["virtualmachinepreset.kubevirt.io/small"], "kubevirt.io/v1");
    let mut unmatched = vmi(json!({}));
    assert!(admit(&kinds::VIRTUAL_MACHINE_INSTANCE, Operation::Create, &mut unmatched, &ctx).is_ok());
    assert!(unmatched["spec"]["domain"].get("cpu").is_none());
    let mut conflicting = vmi(json!({"size": "small"}));
    conflicting["spec"]["domain"]["cpu"] = json!({"cores": 4});
    let errs = fields(admit(&kinds::VIRTUAL_MACHINE_INSTANCE, Operation::Create, &mut conflicting, &ctx));
    assert_eq!(errs, vec!["spec.domain.cpu.cores"]);
}

#[test]
fn secrets_take_string_data_and_check_base64() {
    let mut s = json!({"metadata": {"name": "s"}, "stringData": {"user": "admin"}, "data": {"bad": "!!"}});
    let errs = fields(admit(&kinds::SECRET, Operation::Create, &mut s, &Context::default()));
    assert_eq!(errs, vec!["data[bad]"]);
    assert_eq!(s["data"]["user"], "YWRtaW4=");
    assert!(s.get("stringData").is_none());
}

#[test]
fn replica_set_selector_must_match_template() {
    let mut rs = json!({"metadata": {"name": "rs"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "1"}},
        "template": {"metadata": {"labels": {"a": "2"}}, "spec": vmi(json!({}))["spec"].clone()}}});
    let errs =
        fields(admit(&kinds::VIRTUAL_MACHINE_INSTANCE_REPLICA_SET, Operation::Create, &mut rs, &Context::default()));
    assert_eq!(errs, vec!["spec.selector"]);
}

#[test]
fn updates_keep_assigned_macs_by_interface_name() {
    let extra = json!({"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}, "macAddress": "02:00:00:00:00:07"}]}}, "networks": [{"name": "default", "pod": {}}]}}}});
    let (old, _) = admit_vm(vm(extra));
    let mut new = vm(
        json!({"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}}]}}, "networks": [{"name": "default", "pod": {}}]}}}}),
    );
    let ctx = Context { old: Some(&old), ..Context::default() };
    assert!(admit(&kinds::VIRTUAL_MACHINE, Operation::Update, &mut new, &ctx).is_ok());
    assert_eq!(
        new["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"],
        "02:00:00:00:00:07"
    );
}

#[test]
fn interface_options_are_checked() {
    let spec = json!({"spec": {"template": {"spec": {
        "domain": {"devices": {"interfaces": [
            {"name": "default", "masquerade": {}, "model": "vmxnet9", "pciAddress": "0000:81:01",
             "ports": [{"port": 0}, {"port": 22, "protocol": "SCTP"}]},
            {"name": "vf", "sriov": {}, "model": "e1000e", "pciAddress": "0000:02:01.0"}
        ]}},
        "networks": [{"name": "default", "pod": {}}, {"name": "vf", "multus": {"networkName": "sriov-net"}}]
    }}}});
    let (_, errs) = admit_vm(vm(spec));
    let base = "spec.template.spec.domain.devices.interfaces[0]";
    for field in ["model", "pciAddress", "ports[0].port", "ports[1].protocol"] {
        assert!(errs.contains(&format!("{base}.{field}")), "{field}: {errs:?}");
    }
    assert!(!errs.iter().any(|e| e.contains("interfaces[1]")), "{errs:?}");
    let on_pod = json!({"spec": {"template": {"spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "sriov": {}}]}},
        "networks": [{"name": "default", "pod": {}}]
    }}}});
    assert!(admit_vm(vm(on_pod)).1.contains(&format!("{base}.sriov")));
}

/// What fog-kubevirt's recordings showed a KubeVirt cluster doing, beyond the VM itself.
#[test]
fn cluster_defaults_foreman_relies_on() {
    let mut spec = json!({"domain": {"resources": {"requests": {"memory": "1Gi"}}}, "volumes": []});
    spec::mutate_vmi_spec(&mut spec);
    assert_eq!(spec["domain"]["memory"]["guest"], "1Gi");

    let mut sc = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "s"}, "provisioner": "x"});
    assert!(fields(admit(&kinds::STORAGE_CLASS, Operation::Create, &mut sc, &Context::default())).is_empty());
    assert_eq!((sc["reclaimPolicy"].as_str(), sc["volumeBindingMode"].as_str()), (Some("Delete"), Some("Immediate")));

    // Stored as Multus's CRD stores it; the client is told.
    let mut nad = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "ovs-red", "namespace": "default"}, "spec": {"config": "{ cni_version: \"0.3.1\", type: \"ovs\" }"}});
    assert!(fields(admit(&kinds::NETWORK_ATTACHMENT_DEFINITION, Operation::Create, &mut nad, &Context::default()))
        .is_empty());
    assert!(warnings(&kinds::NETWORK_ATTACHMENT_DEFINITION, &nad)[0].contains("not JSON"));
}

#[test]
fn update_defaults_are_what_admission_puts_back() {
    let old = json!({"spec": {"template": {"spec": {"domain": {"machine": {"type": "q35"}, "firmware": {"uuid": "u-1"},
        "devices": {"interfaces": [{"name": "default", "masquerade": {}, "macAddress": "02:00:00:00:00:01"}]}}}}}});
    let mut new = json!({"spec": {"template": {"metadata": {"creationTimestamp": null}, "spec": {"domain": {"machine": {"type": ""},
        "devices": {"interfaces": [{"name": "default", "masquerade": {}}]}}}}}});
    default_update(&kinds::VIRTUAL_MACHINE, &mut new, &old);
    assert_eq!(new["spec"]["template"]["metadata"], json!({}));
    let domain = &new["spec"]["template"]["spec"]["domain"];
    assert_eq!((&domain["machine"]["type"], &domain["firmware"]["uuid"]), (&json!("q35"), &json!("u-1")));
    assert_eq!(domain["devices"]["interfaces"][0]["macAddress"], "02:00:00:00:00:01");
}
