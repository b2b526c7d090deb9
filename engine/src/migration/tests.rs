use serde_json::json;

use super::*;

#[test]
fn every_pair_of_phases_follows_the_table() {
    use Phase::*;
    for from in PHASES {
        for to in PHASES {
            let expected = match (from, to) {
                (Succeeded | Failed, _) => false,
                (_, Failed) => true,
                (Running, Succeeded) => true,
                (_, Succeeded) => false,
                _ => to > from,
            };
            assert_eq!(from.may_become(to), expected, "{from:?} -> {to:?}");
        }
    }
    // The ones that matter, spelled out.
    assert!(Pending.may_become(Scheduled));
    assert!(TargetReady.may_become(Running));
    assert!(!Running.may_become(TargetReady), "never backwards");
    assert!(!TargetReady.may_become(Succeeded), "only a running migration completes");
    assert!(!Failed.may_become(Running) && !Succeeded.may_become(Failed));
    for p in PHASES {
        assert_eq!(Phase::parse(p.as_str()), Some(p));
    }
}

#[test]
fn the_phase_follows_the_vmis_migration_state() {
    let base = json!({"migrationUid": "m", "sourceNode": "a"});
    let with = |fields: serde_json::Value| {
        let mut s = base.clone();
        s.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
        phase_from_state(&s)
    };
    assert_eq!(phase_from_state(&base), Phase::Scheduling);
    assert_eq!(with(json!({"targetNode": "b"})), Phase::PreparingTarget);
    assert_eq!(with(json!({"targetNode": "b", "targetNodeDomainReadyTimestamp": "t"})), Phase::TargetReady);
    assert_eq!(with(json!({"targetNode": "b", "startTimestamp": "t"})), Phase::Running);
    assert_eq!(with(json!({"startTimestamp": "t", "completed": true})), Phase::Succeeded);
    assert_eq!(with(json!({"startTimestamp": "t", "failed": true})), Phase::Failed);
    let vmi = json!({"status": {"migrationState": base}});
    assert!(state_for(&vmi, "m").is_some() && state_for(&vmi, "other").is_none());
    assert!(in_flight(&vmi).is_some());
}

fn vmi(interfaces: serde_json::Value, annotations: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"annotations": annotations}, "spec": {
        "domain": {"devices": {"interfaces": interfaces}},
        "networks": [{"name": "default", "pod": {}}]}})
}

#[test]
fn kubevirts_rules_for_what_may_migrate() {
    let masq = vmi(json!([{"name": "default", "masquerade": {}}]), json!({}));
    let bridge = vmi(json!([{"name": "default", "bridge": {}}]), json!({}));
    let allowed = vmi(json!([{"name": "default", "bridge": {}}]), json!({ALLOW_POD_BRIDGE_ANNOTATION: "true"}));
    let none = json!({"spec": {"domain": {"devices": {}}}});
    let made = [VolumeKind::NodeMade];
    assert_eq!(migratable(&none, &made), Ok(()));
    assert_eq!(migratable(&masq, &made), Ok(()), "masquerade keeps the guest's side of the pod as it was");
    let refused = migratable(&bridge, &made).unwrap_err();
    assert_eq!(refused.reason, "InterfaceNotLiveMigratable");
    assert_eq!(migratable(&allowed, &made), Ok(()));
    let sriov = vmi(json!([{"name": "default", "masquerade": {}}, {"name": "vf", "sriov": {}}]), json!({}));
    assert!(migratable(&sriov, &made).unwrap_err().message.contains("SR-IOV"));
    let rwo = [VolumeKind::Claim { name: "data".into(), shared: false }];
    let refused = migratable(&none, &rwo).unwrap_err();
    assert_eq!(refused.reason, "DisksNotLiveMigratable");
    assert!(refused.message.contains("PVC data is not shared"));
    let rwx = [VolumeKind::Claim { name: "data".into(), shared: true }];
    assert_eq!(migratable(&none, &rwx), Ok(()));
    assert!(!needs_block_migration(&rwx) && needs_block_migration(&made));
    assert!(!needs_block_migration(&[VolumeKind::NodeMadeReadOnly]), "a cloud-init disk is made again, not copied");
    let loop_block = [VolumeKind::LoopBlock { name: "b".into() }];
    assert!(migratable(&none, &loop_block).unwrap_err().message.contains("loop device"));
    let host = [VolumeKind::HostDisk { name: "h".into() }];
    assert_eq!(migratable(&none, &host).unwrap_err().reason, "DisksNotLiveMigratable");
}
