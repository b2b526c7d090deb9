//! P3: one guest booted to its serial marker by Converge, then by `virsh create` of the same
//! domain XML, alternating.

use super::*;

fn kernel_vmi(name: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 0, "domain": {
               "firmware": {"kernelBoot": {"kernelArgs": "console=ttyS0 quiet", "container": {
                   "image": "converge.dev/test/guest-kernel:v1", "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initramfs.gz"}}},
               "resources": {"requests": {"memory": "128Mi"}},
               "devices": {"autoattachGraphicsDevice": false, "autoattachPodInterface": false}}}})
}

fn has_marker(log: &Path) -> bool {
    std::fs::read(log).map(|b| b.windows(20).any(|w| w == b"CONVERGE-GUEST-READY")).unwrap_or(false)
}

/// P3: one guest to its serial marker, Converge then virsh, alternating; seconds each.
pub(super) async fn boot_to_marker(b: &Bench, boots: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut converge, mut virsh_times) = (vec![], vec![]);
    for round in 0..boots {
        let name = format!("boot-{round}");
        quiesce(&b.ns).await?;
        let t0 = Instant::now();
        let (code, body) = b.api.send(reqwest::Method::POST, &vmis(&b.ns), Some(&kernel_vmi(&name))).await?;
        anyhow::ensure!(code == 201, "create: {body}");
        let uid = body["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let log = b.node_dir.join(&uid).join("serial0.log");
        anyhow::ensure!(wait_for(Duration::from_secs(120), || has_marker(&log)).await, "P3: no marker from {name}");
        converge.push(t0.elapsed().as_secs_f64());
        let xml = virsh(&["dumpxml", &format!("{}_{name}", b.ns)])?;
        b.api.send(reqwest::Method::DELETE, &format!("{}/{name}", vmis(&b.ns)), None).await?;
        let dir = b.work.join(format!("virsh-{name}"));
        prepare_dir(&dir, b.qemu)?;
        let file = b.work.join(format!("{name}.xml"));
        let domain = format!("{}-virsh-{name}", b.ns);
        std::fs::write(&file, baseline_xml(&xml, &b.node_dir.join(&uid).display().to_string(), &dir, &domain))?;
        quiesce(&b.ns).await?;
        let t0 = Instant::now();
        virsh(&["create", &file.display().to_string()])?;
        let log = dir.join("serial0.log");
        anyhow::ensure!(wait_for(Duration::from_secs(120), || has_marker(&log)).await, "P3 baseline: no marker");
        virsh_times.push(t0.elapsed().as_secs_f64());
        let _ = virsh(&["destroy", &domain]);
    }
    Ok((converge, virsh_times))
}
