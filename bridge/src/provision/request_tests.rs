use super::*;

fn request(body: Value) -> HostRequest {
    decode(body.to_string().as_bytes()).expect("decodes")
}

fn base() -> Value {
    json!({"name": "web", "memory": "256Mi", "disks": [
        {"name": "root", "size": "1Gi", "source": {"url": "http://127.0.0.1:8000/disk.qcow2"}},
        {"size": "2Gi", "storageClass": "fast", "source": {"blank": {}}}]})
}

fn error_of(body: Value) -> BridgeError {
    let r = decode(body.to_string().as_bytes());
    match r {
        Err(e) => e,
        Ok(r) => validate(&r).expect_err("invalid"),
    }
}

#[test]
fn a_request_plans_secret_disks_then_the_vm() {
    let mut body = base();
    body["sshKeys"] = json!(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv7 me"]);
    body["nics"] =
        json!([{"network": "pod"}, {"network": "lab/vlan10", "pxe": true, "macAddress": "02:AA:00:00:00:01"}]);
    let r = request(body);
    assert_eq!(validate(&r), Ok(()));
    let p = plan("id-1", &r);
    let names: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["secret", "disk/root", "disk/disk1", "vm"]);
    assert_eq!(p.steps[1].object_name(), "web-root");
    assert_eq!(p.steps[1].object["spec"]["source"]["http"]["url"], "http://127.0.0.1:8000/disk.qcow2");
    assert_eq!(p.steps[1].prechecks, vec![Precheck::StorageClass(None)]);
    assert_eq!(p.steps[2].object["spec"]["storage"]["storageClassName"], "fast");
    for s in &p.steps {
        assert_eq!(s.object["metadata"]["labels"][HOST_ID_LABEL], "id-1");
        assert_eq!(s.object["metadata"]["namespace"], "default");
    }
    let vm = &p.steps[3].object;
    assert_eq!(vm["spec"]["runStrategy"], "Always");
    let spec = &vm["spec"]["template"]["spec"];
    // The PXE interface boots first, then the disks in order; the cloud-init disk never boots.
    assert_eq!(spec["domain"]["devices"]["interfaces"][1]["bootOrder"], 1);
    assert_eq!(spec["domain"]["devices"]["interfaces"][1]["macAddress"], "02:aa:00:00:00:01");
    assert_eq!(spec["domain"]["devices"]["disks"][0]["bootOrder"], 2);
    assert_eq!(spec["domain"]["devices"]["disks"][2], json!({"name": "cloudinit", "disk": {"bus": "virtio"}}));
    assert_eq!(spec["volumes"][2]["cloudInitNoCloud"]["secretRef"]["name"], "web-cloudinit");
    assert_eq!(spec["networks"][1]["multus"]["networkName"], "lab/vlan10");
    assert_eq!(spec["domain"]["cpu"]["cores"], 1);
    assert_eq!(
        p.steps[3].prechecks,
        vec![Precheck::Networks(vec![("lab".into(), "vlan10".into(), "nics[1].network".into())])]
    );
}

#[test]
fn defaults_one_pod_nic_and_no_secret() {
    let r = request(json!({"name": "a", "memory": "1Gi", "start": false}));
    let p = plan("x", &r);
    assert_eq!(p.steps.len(), 1);
    let spec = &p.steps[0].object["spec"];
    assert_eq!(spec["runStrategy"], "Halted");
    assert_eq!(spec["template"]["spec"]["networks"], json!([{"name": "nic0", "pod": {}}]));
    let none = request(json!({"name": "a", "memory": "1Gi", "nics": []}));
    assert_eq!(
        plan("x", &none).steps[0].object["spec"]["template"]["spec"]["domain"]["devices"]["autoattachPodInterface"],
        false
    );
}

#[test]
fn clones_and_flavors_are_checked_where_they_are_made() {
    let r = request(json!({"name": "a", "flavor": "small", "disks": [
        {"size": "1Gi", "source": {"dataSource": {"name": "debian", "namespace": "images"}}},
        {"size": "1Gi", "source": {"pvc": {"name": "golden"}}},
        {"size": "1Gi", "source": {"registry": "127.0.0.1:5000/disk:v1"}}]}));
    assert_eq!(validate(&r), Ok(()));
    let p = plan("x", &r);
    assert_eq!(
        p.steps[0].object["spec"]["sourceRef"],
        json!({"kind": "DataSource", "name": "debian", "namespace": "images"})
    );
    assert_eq!(p.steps[0].prechecks[1], Precheck::DataSource { namespace: "images".into(), name: "debian".into() });
    assert_eq!(p.steps[1].object["spec"]["source"]["pvc"], json!({"name": "golden", "namespace": "default"}));
    assert_eq!(p.steps[2].object["spec"]["source"]["registry"]["url"], "docker://127.0.0.1:5000/disk:v1");
    let vm = &p.steps[3].object["spec"];
    assert_eq!(vm["instancetype"]["name"], "small");
    assert!(vm["template"]["spec"]["domain"].get("resources").is_none());
    assert_eq!(p.steps[3].prechecks, vec![Precheck::Flavor("small".into())]);
}

#[test]
fn bad_requests_name_their_field() {
    let cases = [
        (json!({"name": "Web", "memory": "1Gi"}), "name"),
        (json!({"name": "w", "memory": "lots"}), "memory"),
        (json!({"name": "w"}), "memory"),
        (json!({"name": "w", "memory": "1Gi", "flavor": "small"}), "flavor"),
        (json!({"name": "w", "memory": "1Gi", "cpu": 0}), "cpu"),
        (
            json!({"name": "w", "memory": "1Gi", "disks": [{"size": "1Gi", "source": {"url": "ftp://x/y"}}]}),
            "disks[0].source.url",
        ),
        (json!({"name": "w", "memory": "1Gi", "disks": [{"size": "1", "source": {"blank": {}}}]}), "disks[0].size"),
        (
            json!({"name": "w", "memory": "1Gi", "disks": [{"name": "cloudinit", "size": "1Gi", "source": {"blank": {}}}]}),
            "disks[0].name",
        ),
        (json!({"name": "w", "memory": "1Gi", "nics": [{"network": "pod"}, {}]}), "nics"),
        (json!({"name": "w", "memory": "1Gi", "nics": [{"network": "Bad Net"}]}), "nics[0].network"),
        (json!({"name": "w", "memory": "1Gi", "nics": [{"macAddress": "02:00"}]}), "nics[0].macAddress"),
        (json!({"name": "w", "memory": "1Gi", "sshKeys": ["nope"]}), "sshKeys[0]"),
        (json!({"name": "w", "memory": "1Gi", "gracePeriodSeconds": 7200}), "gracePeriodSeconds"),
    ];
    for (body, field) in cases {
        let e = error_of(body.clone());
        assert_eq!(e.field.as_deref(), Some(field), "{body}: {e:?}");
        assert_eq!(e.code, ErrorCode::FieldInvalid, "{body}");
    }
}

#[test]
fn shape_errors_name_their_field_too() {
    let e = error_of(json!({"name": "w", "memory": "1Gi", "disks": [{"size": "1Gi", "source": {"floppy": {}}}]}));
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidRequest, Some("disks[0].source")));
    let e = error_of(json!({"name": "w", "memory": "1Gi", "colour": "blue"}));
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("colour"), "{}", e.message);
    let e = decode(b"not json").expect_err("not json");
    assert_eq!((e.code, e.field), (ErrorCode::InvalidRequest, None));
}
