//! The VM controller's loop body: reads a VM and its VMI, asks `vm::reconcile` what to do, and
//! does it through the cluster — revisions, DataVolumes, the VMI, events, the VM's status.

use std::time::Duration;

use super::{vm, Key, COMPONENT};
use crate::cluster::{delete_uid, write_status, Cluster};
use crate::error::ApiResult;
use crate::events;
use crate::kinds;
use crate::meta;
use crate::store::UpdateMode;
use crate::worker::Action;

pub(super) async fn sync(cluster: &dyn Cluster, (ns, name): Key) -> ApiResult<Action> {
    let mut action = Action::AwaitChange;
    let Some(vm_obj) = cluster.get(&kinds::VIRTUAL_MACHINE, &ns, &name).await? else { return Ok(Action::AwaitChange) };
    let vmi_obj = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, &ns, &name).await?;
    let mut plan = vm::reconcile(&vm_obj, vmi_obj.as_ref(), chrono::Utc::now());
    if plan.run_always {
        // The update wakes this VM again, and the next pass acts on the request (revisions and
        // DataVolumes included: nothing else is done on this one).
        let mut turned = vm_obj.clone();
        match turned.pointer("/spec/running").filter(|r| !r.is_null()) {
            Some(_) => turned["spec"]["running"] = true.into(),
            None => turned["spec"]["runStrategy"] = vm::RUN_ALWAYS.into(),
        }
        cluster.update(&kinds::VIRTUAL_MACHINE, turned, UpdateMode::Main).await?;
        return Ok(Action::AwaitChange);
    }
    let frozen = super::revisions::freeze(cluster, &vm_obj).await?;
    let volumes = super::datavolumes::ensure(cluster, &vm_obj).await?;
    if let Some(printable) = volumes.printable() {
        // The VM waits for its DataVolumes: no VMI yet, and its status says why.
        if vmi_obj.is_none() {
            if plan.create_vmi.take().is_some() {
                action = action.sooner(Action::requeue(Duration::from_secs(2)));
            }
            plan.status["printableStatus"] = printable.into();
        }
        if let super::datavolumes::VolumesState::Error(message) = &volumes {
            let mut holder = serde_json::json!({"status": plan.status});
            super::status::set_condition(
                &mut holder,
                "Failure",
                true,
                "DataVolumeError",
                message,
                &meta::now_rfc3339(),
            );
            plan.status = holder["status"].take();
        }
    }
    if let (Some(uid), Some(_)) = (&plan.delete_vmi, &vmi_obj) {
        delete_uid(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, &ns, &name, uid).await?;
        crate::failpoint::hit(crate::failpoint::VM_AFTER_VMI_DELETE);
        let message = format!("Stopped the virtual machine by deleting the virtual machine instance {uid}");
        events::record(
            cluster,
            &kinds::VIRTUAL_MACHINE,
            &vm_obj,
            events::NORMAL,
            "SuccessfulDelete",
            &message,
            COMPONENT,
        )
        .await;
    }
    let mut status = plan.status;
    frozen.write_refs(&mut status);
    let mut create = plan.create_vmi;
    if let (true, Err(why)) = (create.is_some(), frozen.shape_ready()) {
        let mut holder = serde_json::json!({"status": status});
        super::status::set_condition(&mut holder, "Failure", true, "FailedCreate", &why, &meta::now_rfc3339());
        status = holder["status"].take();
        create = None;
        action = action.sooner(Action::requeue(Duration::from_secs(10)));
    }
    if let Some(mut new_vmi) = create {
        frozen.shape(&mut new_vmi["spec"]);
        match cluster.create(&kinds::VIRTUAL_MACHINE_INSTANCE, new_vmi).await {
            Ok(created) => {
                crate::failpoint::hit(crate::failpoint::VM_AFTER_VMI_CREATE);
                let message = format!(
                    "Started the virtual machine by creating the new virtual machine instance {}",
                    meta::name(&created)
                );
                events::record(
                    cluster,
                    &kinds::VIRTUAL_MACHINE,
                    &vm_obj,
                    events::NORMAL,
                    "SuccessfulCreate",
                    &message,
                    COMPONENT,
                )
                .await;
            }
            Err(e) if e.code == 409 => {}
            Err(e) => {
                events::record(
                    cluster,
                    &kinds::VIRTUAL_MACHINE,
                    &vm_obj,
                    events::WARNING,
                    "FailedCreate",
                    &e.message,
                    COMPONENT,
                )
                .await;
                // The template can't make a VMI: say why on the VM instead of retrying blindly.
                let mut holder = serde_json::json!({"status": status});
                let at = meta::now_rfc3339();
                super::status::set_condition(&mut holder, "Failure", true, "FailedCreate", &e.message, &at);
                holder["status"]["printableStatus"] = "ErrorFailedCreate".into();
                status = holder["status"].take();
                action = action.sooner(Action::requeue(Duration::from_secs(10)));
            }
        }
    }
    write_status(cluster, &kinds::VIRTUAL_MACHINE, &vm_obj, status).await?;
    Ok(action.sooner(plan.requeue_after.into()))
}
