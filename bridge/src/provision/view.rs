//! A host as `/bridge/v1` shows it: the record's steps beside what its objects report now —
//! volume progress, MACs and addresses, the VM's printableStatus, console URLs.

use super::error::BridgeError;
use super::executor::Provisioner;
use super::record::HostRecord;
use super::request::{self, HostRequest};
use super::state::{HostState, StepState};
use converge_engine::kinds;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    /// The provisioning record's id (on every object the host made, as label `bridge.converge.dev/host-id`).
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub state: HostState,
    /// The VM's printableStatus (KubeVirt's values: Provisioning, Starting, Running, Stopped, …); absent without a VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    /// Created, and the VM Running.
    pub ready: bool,
    /// Why the request failed: the step named, with what was rolled back in `steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BridgeError>,
    pub steps: Vec<StepView>,
    pub disks: Vec<DiskView>,
    pub nics: Vec<NicView>,
    /// Serial console: a websocket (bearer token as for every route), as `virtctl console` uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnc_url: Option<String>,
    /// Objects still there while the host is Deleting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remaining: Vec<String>,
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// The request as it was taken, defaults filled in.
    pub request: HostRequest,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// `secret`, `disk/<name>` or `vm`.
    pub name: String,
    /// The object the step makes: its kind and name.
    pub kind: String,
    pub object: String,
    pub state: StepState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskView {
    pub name: String,
    pub data_volume: String,
    /// The DataVolume's phase (Pending, ImportInProgress, Succeeded, Failed, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The DataVolume's progress (`45.00%`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NicView {
    pub name: String,
    /// `pod` or `namespace/name` of the network.
    pub network: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    pub ip_addresses: Vec<String>,
}

fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0).then(|| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339())).flatten()
}

fn text(v: &Value, path: &str) -> Option<String> {
    v.pointer(path).and_then(Value::as_str).map(str::to_string)
}

/// Pure: the view from a record and its live objects.
pub fn render(
    rec: &HostRecord,
    vm: Option<&Value>,
    vmi: Option<&Value>,
    volumes: &[Option<Value>],
    base_url: &str,
) -> HostView {
    let r = &rec.request;
    let steps = rec
        .steps
        .iter()
        .map(|s| StepView {
            name: s.name.clone(),
            kind: s.kind.clone(),
            object: s.object_name.clone(),
            state: s.state,
            started_at: rfc3339(s.started_at),
            finished_at: rfc3339(s.finished_at),
            error: (!s.error.is_empty()).then(|| s.error.clone()),
        })
        .collect();
    let disks = r
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let disk = request::disk_name(i, d);
            let dv = volumes.get(i).and_then(Option::as_ref);
            DiskView {
                data_volume: request::volume_name(&r.name, &disk),
                name: disk,
                phase: dv.and_then(|v| text(v, "/status/phase")),
                progress: dv.and_then(|v| text(v, "/status/progress")),
            }
        })
        .collect();
    let empty = vec![];
    let vm_ifaces =
        vm.and_then(|v| v.pointer("/spec/template/spec/domain/devices/interfaces")).and_then(Value::as_array);
    let vm_networks =
        vm.and_then(|v| v.pointer("/spec/template/spec/networks")).and_then(Value::as_array).unwrap_or(&empty);
    let vmi_ifaces = vmi.and_then(|v| v.pointer("/status/interfaces")).and_then(Value::as_array).unwrap_or(&empty);
    let nics = vm_ifaces
        .unwrap_or(&empty)
        .iter()
        .map(|iface| {
            let name = iface["name"].as_str().unwrap_or_default().to_string();
            let network = vm_networks
                .iter()
                .find(|n| n["name"] == name.as_str())
                .map(|n| text(n, "/multus/networkName").unwrap_or_else(|| request::POD_NETWORK.to_string()))
                .unwrap_or_default();
            let live = vmi_ifaces.iter().find(|i| i["name"] == name.as_str());
            let ip_addresses = live
                .and_then(|l| l["ipAddresses"].as_array())
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            NicView {
                mac_address: live.and_then(|l| text(l, "/mac")).or_else(|| text(iface, "/macAddress")),
                ip_address: live.and_then(|l| text(l, "/ipAddress")),
                ip_addresses,
                name,
                network,
            }
        })
        .collect();
    let printable_status = vm.and_then(|v| text(v, "/status/printableStatus"));
    let live = matches!(rec.state, HostState::Created) && vmi.is_some();
    let subresource = |what: &str| {
        format!(
            "{}/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{}/{what}",
            base_url.replacen("https://", "wss://", 1),
            rec.namespace,
            rec.name
        )
    };
    HostView {
        id: rec.id.clone(),
        namespace: rec.namespace.clone(),
        name: rec.name.clone(),
        state: rec.state,
        ready: rec.state == HostState::Created && printable_status.as_deref() == Some("Running"),
        printable_status,
        error: rec.error.clone(),
        steps,
        disks,
        nics,
        console_url: live.then(|| subresource("console")),
        vnc_url: live.then(|| subresource("vnc")),
        remaining: vec![],
        created_by: rec.created_by.clone(),
        created_at: rfc3339(rec.created_at).unwrap_or_default(),
        updated_at: rfc3339(rec.updated_at).unwrap_or_default(),
        deleted_at: rfc3339(rec.deleted_at),
        request: r.clone(),
    }
}

/// The view of a record with its objects as they are now.
pub async fn host_view(p: &Provisioner, rec: &HostRecord) -> Result<Value, BridgeError> {
    let gone = matches!(rec.state, HostState::Failed | HostState::Deleted);
    let (mut vm, mut vmi, mut volumes) = (None, None, vec![]);
    if !gone {
        vm = p.store.get(&kinds::VIRTUAL_MACHINE, &rec.namespace, &rec.name).await?;
        vmi = p.store.get(&kinds::VIRTUAL_MACHINE_INSTANCE, &rec.namespace, &rec.name).await?;
        for (i, d) in rec.request.disks.iter().enumerate() {
            let name = request::volume_name(&rec.name, &request::disk_name(i, d));
            volumes.push(p.store.get(&kinds::DATA_VOLUME, &rec.namespace, &name).await?);
        }
    }
    // The objects of the name are shown only while they are the host's own.
    let ours = |o: Option<Value>| {
        o.filter(|v| {
            converge_engine::meta::labels(v).get(request::HOST_ID_LABEL).and_then(Value::as_str)
                == Some(rec.id.as_str())
        })
    };
    let vm = ours(vm);
    let vmi = vmi.filter(|i| {
        vm.as_ref()
            .is_some_and(|v| converge_engine::meta::owner_uids(i).iter().any(|u| u == converge_engine::meta::uid(v)))
    });
    let volumes: Vec<Option<Value>> = volumes.into_iter().map(ours).collect();
    let mut view = render(rec, vm.as_ref(), vmi.as_ref(), &volumes, &p.base_url);
    if rec.state == HostState::Deleting {
        view.remaining = p.leftovers(rec).await?;
    }
    serde_json::to_value(view).map_err(|e| BridgeError::internal(e.to_string()))
}
