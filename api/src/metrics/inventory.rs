//! Families read at scrape time, under KubeVirt's and CDI's names: what the store says about
//! VMIs, migrations and imports, and what libvirt says about this node's guests. Each scrape
//! fills a registry of its own, so a guest gone since the last scrape leaves no series behind.
//! The builders are pure over objects and statistics, and tested without a server.

use converge_engine::hypervisor::stats::DomainStats;
use prometheus::{CounterVec, GaugeVec, Opts, Registry};
use serde_json::Value;

/// One scrape's families.
pub struct Families {
    registry: Registry,
}

impl Families {
    pub fn new() -> Families {
        Families { registry: Registry::new() }
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let vec = GaugeVec::new(Opts::new(name, help), labels).expect("metric");
        let _ = self.registry.register(Box::new(vec.clone()));
        vec
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        let vec = CounterVec::new(Opts::new(name, help), labels).expect("metric");
        let _ = self.registry.register(Box::new(vec.clone()));
        vec
    }

    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

impl Default for Families {
    fn default() -> Self {
        Families::new()
    }
}

fn text<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

/// `kubevirt_vmi_info`, one series per VMI, labelled as KubeVirt labels it (lower-case phase;
/// os, workload and flavor from the `vm.kubevirt.io/*` annotations; `<none>` where unset).
pub fn vmi_info(families: &Families, vmis: &[Value]) {
    let labels = ["name", "namespace", "node", "phase", "os", "workload", "flavor", "instance_type", "preference"];
    let info = families.gauge("kubevirt_vmi_info", "Information about VirtualMachineInstances.", &labels);
    for vmi in vmis {
        let annotation = |key: &str| {
            vmi.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str).unwrap_or("")
        };
        let instance_type = match annotation("kubevirt.io/cluster-instancetype-name") {
            "" => annotation("kubevirt.io/instancetype-name"),
            cluster => cluster,
        };
        let preference = match annotation("kubevirt.io/cluster-preference-name") {
            "" => annotation("kubevirt.io/preference-name"),
            cluster => cluster,
        };
        let phase = text(vmi, "/status/phase").to_lowercase();
        info.with_label_values(&[
            text(vmi, "/metadata/name"),
            text(vmi, "/metadata/namespace"),
            text(vmi, "/status/nodeName"),
            &phase,
            or_none(annotation("vm.kubevirt.io/os")),
            or_none(annotation("vm.kubevirt.io/workload")),
            or_none(annotation("vm.kubevirt.io/flavor")),
            or_none(instance_type),
            or_none(preference),
        ])
        .set(1.0);
    }
}

/// KubeVirt's migration families: counts by phase, each finished migration's outcome, and a
/// running one's progress (from `status.migrationState.progress`, which the source writes).
pub fn migrations(families: &Families, migrations: &[Value], vmis: &[Value]) {
    let in_phase = |phase: &str| {
        let name = format!("kubevirt_vmi_migrations_in_{phase}_phase");
        let gauge = families.gauge(&name, &format!("Number of current {phase} migrations."), &[]);
        gauge.with_label_values::<&str>(&[]).set(0.0);
        gauge
    };
    let (pending, scheduling, running) = (in_phase("pending"), in_phase("scheduling"), in_phase("running"));
    let outcome = ["vmi", "namespace", "name"];
    let succeeded =
        families.gauge("kubevirt_vmi_migration_succeeded", "Indicates if the VMI migration succeeded.", &outcome);
    let failed = families.gauge("kubevirt_vmi_migration_failed", "Indicates if the VMI migration failed.", &outcome);
    for m in migrations {
        let labels = [text(m, "/spec/vmiName"), text(m, "/metadata/namespace"), text(m, "/metadata/name")];
        match text(m, "/status/phase") {
            "" | "Pending" => pending.with_label_values::<&str>(&[]).inc(),
            "Scheduling" | "Scheduled" | "PreparingTarget" | "TargetReady" => {
                scheduling.with_label_values::<&str>(&[]).inc()
            }
            "Running" => running.with_label_values::<&str>(&[]).inc(),
            "Succeeded" => succeeded.with_label_values(&labels).set(1.0),
            "Failed" => failed.with_label_values(&labels).set(1.0),
            _ => {}
        }
    }
    let vmi_labels = ["name", "namespace", "node"];
    let progress = |name: &str, help: &str| families.gauge(name, help, &vmi_labels);
    let total = families.counter(
        "kubevirt_vmi_migration_data_bytes_total",
        "The total Guest OS data to be migrated to the new VM.",
        &vmi_labels,
    );
    let processed = progress(
        "kubevirt_vmi_migration_data_processed_bytes",
        "The total Guest OS data processed and migrated to the new VM.",
    );
    let remaining = progress(
        "kubevirt_vmi_migration_data_remaining_bytes",
        "The remaining guest OS data to be migrated to the new VM.",
    );
    let rate = progress(
        "kubevirt_vmi_migration_memory_transfer_rate_bytes",
        "The rate at which the memory is being transferred.",
    );
    let started = progress("kubevirt_vmi_migration_start_time_seconds", "The time at which the migration started.");
    let ended = progress("kubevirt_vmi_migration_end_time_seconds", "The time at which the migration ended.");
    for vmi in vmis {
        let Some(state) = vmi.pointer("/status/migrationState") else { continue };
        let labels = [text(vmi, "/metadata/name"), text(vmi, "/metadata/namespace"), text(vmi, "/status/nodeName")];
        let number = |key: &str| state.pointer(&format!("/progress/{key}")).and_then(Value::as_f64);
        if state.get("completed").and_then(Value::as_bool) != Some(true) {
            if let Some(v) = number("dataTotalBytes") {
                total.with_label_values(&labels).inc_by(v.max(0.0));
            }
            for (gauge, key) in [
                (&processed, "dataProcessedBytes"),
                (&remaining, "dataRemainingBytes"),
                (&rate, "memoryTransferRateBytesPerSecond"),
            ] {
                if let Some(v) = number(key) {
                    gauge.with_label_values(&labels).set(v);
                }
            }
        }
        for (gauge, key) in [(&started, "startTimestamp"), (&ended, "endTimestamp")] {
            let at = state.get(key).and_then(Value::as_str).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if let Some(at) = at {
                gauge.with_label_values(&labels).set(at.timestamp() as f64);
            }
        }
    }
}

/// CDI's `kubevirt_cdi_import_progress_total`: each import's percentage, by its owner's uid
/// (the DataVolume, as CDI's importer labels it).
pub fn imports(families: &Families, data_volumes: &[Value]) {
    let progress =
        families.counter("kubevirt_cdi_import_progress_total", "The import progress in percentage", &["ownerUID"]);
    for dv in data_volumes {
        if !matches!(text(dv, "/status/phase"), "ImportInProgress" | "ImportScheduled" | "Succeeded") {
            continue;
        }
        if dv.pointer("/spec/source/upload").is_some() || dv.pointer("/spec/source/pvc").is_some() {
            continue;
        }
        let percent = text(dv, "/status/progress").trim_end_matches('%').parse::<f64>().ok();
        if let Some(p) = percent.filter(|p| (0.0..=100.0).contains(p)) {
            progress.with_label_values(&[text(dv, "/metadata/uid")]).inc_by(p);
        }
    }
}

/// The figures libvirt keeps for each guest on this node, under KubeVirt's names.
pub fn guests(families: &Families, node: &str, guests: &[(String, String, DomainStats)]) {
    let base = ["name", "namespace", "node"];
    let with =
        |extra: &[&'static str]| -> Vec<&'static str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    let g = |name: &str, help: &str| families.gauge(name, help, &base);
    let resident = g("kubevirt_vmi_memory_resident_bytes", "Resident set size of the process running the domain.");
    let available = g(
        "kubevirt_vmi_memory_available_bytes",
        "Amount of usable memory as seen by the domain. This value may not be accurate if a balloon driver is in use or if the guest OS does not initialize all assigned pages",
    );
    let unused = g("kubevirt_vmi_memory_unused_bytes", "The amount of memory left completely unused by the system.");
    let usable = g(
        "kubevirt_vmi_memory_usable_bytes",
        "The amount of memory which can be reclaimed by balloon without pushing the guest system to swap.",
    );
    let domain = g("kubevirt_vmi_memory_domain_bytes", "The amount of memory in bytes allocated to the domain.");
    let cpu = families.counter(
        "kubevirt_vmi_cpu_usage_seconds_total",
        "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage).",
        &base,
    );
    let vcpu = families.counter(
        "kubevirt_vmi_vcpu_seconds_total",
        "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time).",
        &with(&["id", "state"]),
    );
    let nic = |name: &str, help: &str| families.counter(name, help, &with(&["interface"]));
    let rx_bytes = nic("kubevirt_vmi_network_receive_bytes_total", "Total network traffic received in bytes.");
    let tx_bytes = nic("kubevirt_vmi_network_transmit_bytes_total", "Total network traffic transmitted in bytes.");
    let rx_packets = nic("kubevirt_vmi_network_receive_packets_total", "Total network traffic received packets.");
    let tx_packets = nic("kubevirt_vmi_network_transmit_packets_total", "Total network traffic transmitted packets.");
    let rx_errors = nic("kubevirt_vmi_network_receive_errors_total", "Total network received error packets.");
    let tx_errors = nic("kubevirt_vmi_network_transmit_errors_total", "Total network transmitted error packets.");
    let rx_drop = nic(
        "kubevirt_vmi_network_receive_packets_dropped_total",
        "The total number of rx packets dropped on vNIC interfaces.",
    );
    let tx_drop = nic(
        "kubevirt_vmi_network_transmit_packets_dropped_total",
        "The total number of tx packets dropped on vNIC interfaces.",
    );
    let disk = |name: &str, help: &str| families.counter(name, help, &with(&["drive"]));
    let read_bytes = disk("kubevirt_vmi_storage_read_traffic_bytes_total", "Total number of bytes read from storage.");
    let write_bytes = disk("kubevirt_vmi_storage_write_traffic_bytes_total", "Total number of written bytes.");
    let read_ops = disk("kubevirt_vmi_storage_iops_read_total", "Total number of I/O read operations.");
    let write_ops = disk("kubevirt_vmi_storage_iops_write_total", "Total number of I/O write operations.");
    let flushes = disk("kubevirt_vmi_storage_flush_requests_total", "Total storage flush requests.");
    let read_time = disk("kubevirt_vmi_storage_read_times_seconds_total", "Total time spent on read operations.");
    let write_time = disk("kubevirt_vmi_storage_write_times_seconds_total", "Total time spent on write operations.");
    const NS: f64 = 1e9;
    for (namespace, name, s) in guests {
        let labels = [name.as_str(), namespace.as_str(), node];
        for (gauge, value) in [
            (&resident, s.memory_rss_bytes),
            (&available, s.memory_available_bytes),
            (&unused, s.memory_unused_bytes),
            (&usable, s.memory_usable_bytes),
            (&domain, s.memory_current_bytes),
        ] {
            if let Some(v) = value {
                gauge.with_label_values(&labels).set(v as f64);
            }
        }
        if let Some(t) = s.cpu_time_ns {
            cpu.with_label_values(&labels).inc_by(t as f64 / NS);
        }
        for (id, state, time) in &s.vcpus {
            let state = ["offline", "running", "blocked"][(*state as usize).min(2)];
            let id = id.to_string();
            vcpu.with_label_values(&[name, namespace, node, &id, state]).inc_by(*time as f64 / NS);
        }
        for n in &s.interfaces {
            let l = [name.as_str(), namespace.as_str(), node, n.name.as_str()];
            for (counter, v) in [
                (&rx_bytes, n.rx_bytes),
                (&tx_bytes, n.tx_bytes),
                (&rx_packets, n.rx_packets),
                (&tx_packets, n.tx_packets),
                (&rx_errors, n.rx_errors),
                (&tx_errors, n.tx_errors),
                (&rx_drop, n.rx_dropped),
                (&tx_drop, n.tx_dropped),
            ] {
                counter.with_label_values(&l).inc_by(v as f64);
            }
        }
        for d in &s.disks {
            let l = [name.as_str(), namespace.as_str(), node, d.name.as_str()];
            for (counter, v) in [
                (&read_bytes, d.read_bytes as f64),
                (&write_bytes, d.write_bytes as f64),
                (&read_ops, d.read_requests as f64),
                (&write_ops, d.write_requests as f64),
                (&flushes, d.flush_requests as f64),
                (&read_time, d.read_time_ns as f64 / NS),
                (&write_time, d.write_time_ns as f64 / NS),
            ] {
                counter.with_label_values(&l).inc_by(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(f: &Families) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &f.gather(), &mut out).expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn vmi_info_carries_kubevirts_labels() {
        let f = Families::new();
        let vmi = json!({"metadata": {"name": "web", "namespace": "a", "annotations": {"vm.kubevirt.io/os": "fedora",
                         "kubevirt.io/instancetype-name": "u1.small"}},
                         "status": {"phase": "Running", "nodeName": "n1"}});
        vmi_info(&f, &[vmi]);
        let text = render(&f);
        let line =
            "kubevirt_vmi_info{flavor=\"<none>\",instance_type=\"u1.small\",name=\"web\",namespace=\"a\",node=\"n1\",\
                    os=\"fedora\",phase=\"running\",preference=\"<none>\",workload=\"<none>\"} 1";
        assert!(text.contains(line), "{text}");
    }

    #[test]
    fn migrations_are_counted_by_phase_and_progress_is_read_from_the_vmi() {
        let f = Families::new();
        let m = |name: &str, phase: &str| json!({"metadata": {"name": name, "namespace": "a"}, "spec": {"vmiName": "web"}, "status": {"phase": phase}});
        let vmi = json!({"metadata": {"name": "web", "namespace": "a"}, "status": {"nodeName": "n1", "migrationState": {
            "startTimestamp": "2026-12-04T10:00:00Z",
            "progress": {"dataTotalBytes": 1000, "dataProcessedBytes": 400, "dataRemainingBytes": 600, "memoryTransferRateBytesPerSecond": 50}}}});
        migrations(&f, &[m("m1", "Running"), m("m2", "Succeeded"), m("m3", "Scheduling"), m("m4", "Failed")], &[vmi]);
        let text = render(&f);
        for line in [
            "kubevirt_vmi_migrations_in_running_phase 1",
            "kubevirt_vmi_migrations_in_scheduling_phase 1",
            "kubevirt_vmi_migrations_in_pending_phase 0",
            "kubevirt_vmi_migration_succeeded{name=\"m2\",namespace=\"a\",vmi=\"web\"} 1",
            "kubevirt_vmi_migration_failed{name=\"m4\",namespace=\"a\",vmi=\"web\"} 1",
            "kubevirt_vmi_migration_data_remaining_bytes{name=\"web\",namespace=\"a\",node=\"n1\"} 600",
            "kubevirt_vmi_migration_data_bytes_total{name=\"web\",namespace=\"a\",node=\"n1\"} 1000",
            "kubevirt_vmi_migration_start_time_seconds{name=\"web\",namespace=\"a\",node=\"n1\"} 1796378400",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn guests_figures_become_kubevirts_series() {
        let f = Families::new();
        let stats = DomainStats {
            name: "a_web".into(),
            cpu_time_ns: Some(2_500_000_000),
            vcpus: vec![(0, 1, 1_000_000_000)],
            memory_rss_bytes: Some(4096),
            interfaces: vec![converge_engine::hypervisor::stats::NicStats {
                name: "default".into(),
                rx_bytes: 10,
                ..Default::default()
            }],
            disks: vec![converge_engine::hypervisor::stats::BlockStats {
                name: "root".into(),
                read_bytes: 512,
                read_requests: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        guests(&f, "n1", &[("a".into(), "web".into(), stats)]);
        let text = render(&f);
        for line in [
            "kubevirt_vmi_memory_resident_bytes{name=\"web\",namespace=\"a\",node=\"n1\"} 4096",
            "kubevirt_vmi_cpu_usage_seconds_total{name=\"web\",namespace=\"a\",node=\"n1\"} 2.5",
            "kubevirt_vmi_vcpu_seconds_total{id=\"0\",name=\"web\",namespace=\"a\",node=\"n1\",state=\"running\"} 1",
            "kubevirt_vmi_network_receive_bytes_total{interface=\"default\",name=\"web\",namespace=\"a\",node=\"n1\"} 10",
            "kubevirt_vmi_storage_read_traffic_bytes_total{drive=\"root\",name=\"web\",namespace=\"a\",node=\"n1\"} 512",
            "kubevirt_vmi_storage_iops_read_total{drive=\"root\",name=\"web\",namespace=\"a\",node=\"n1\"} 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("kubevirt_vmi_memory_available_bytes{"), "no balloon figure, no series");
    }

    #[test]
    fn import_progress_is_a_percentage_by_owner() {
        let f = Families::new();
        let dv = |phase: &str, progress: &str| json!({"metadata": {"uid": format!("u-{phase}")}, "spec": {"source": {"http": {"url": "x"}}}, "status": {"phase": phase, "progress": progress}});
        imports(&f, &[dv("ImportInProgress", "45.5%"), dv("Pending", "N/A"), dv("Failed", "300%")]);
        let text = render(&f);
        assert!(text.contains("kubevirt_cdi_import_progress_total{ownerUID=\"u-ImportInProgress\"} 45.5"), "{text}");
        assert!(!text.contains("u-Pending") && !text.contains("u-Failed"), "{text}");
    }
}
