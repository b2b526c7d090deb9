// Reading a VM's and its guest's state the way kubectl's columns and virtctl do.

/// The guest's addresses: every interface's, IPv4 first as the VMI lists them.
export function addresses(vmi) {
  const found = [];
  for (const iface of vmi?.status?.interfaces || []) {
    for (const ip of iface.ipAddresses || (iface.ipAddress ? [iface.ipAddress] : [])) {
      if (!found.includes(ip)) found.push(ip);
    }
  }
  return found;
}

export function nodeOf(vmi) {
  return vmi?.status?.nodeName || "";
}

export function printable(vm) {
  return vm?.status?.printableStatus || "";
}

/// A short class for the status badge's colour (the words carry the meaning, not the colour).
export function tone(status) {
  if (status === "Running") return "ok";
  if (/Error|Failed|Crash|Unschedulable|Backoff/i.test(status)) return "bad";
  if (status === "Stopped" || status === "Paused") return "idle";
  return "busy";
}

/// Disks with where their contents come from.
export function diskRows(spec) {
  const volumes = new Map((spec.volumes || []).map((v) => [v.name, v]));
  return (spec.domain?.devices?.disks || []).map((d) => {
    const kind = ["disk", "cdrom", "lun"].find((k) => d[k]) || "disk";
    return [d.name, `${kind}${d[kind]?.bus ? ` (${d[kind].bus})` : ""}`, volumeSource(volumes.get(d.name))];
  });
}

function volumeSource(v) {
  if (!v) return "no volume";
  if (v.containerDisk) return `container image ${v.containerDisk.image}`;
  if (v.dataVolume) return `DataVolume ${v.dataVolume.name}`;
  if (v.persistentVolumeClaim) return `claim ${v.persistentVolumeClaim.claimName}`;
  if (v.cloudInitNoCloud) return "cloud-init (NoCloud)";
  if (v.cloudInitConfigDrive) return "cloud-init (config drive)";
  if (v.emptyDisk) return `empty disk ${v.emptyDisk.capacity || ""}`;
  if (v.hostDisk) return `host disk ${v.hostDisk.path}`;
  const other = Object.keys(v).find((k) => k !== "name");
  return other || "";
}

export function nicRows(spec, vmi) {
  const networks = new Map((spec.networks || []).map((n) => [n.name, n]));
  const status = new Map((vmi?.status?.interfaces || []).map((i) => [i.name, i]));
  return (spec.domain?.devices?.interfaces || []).map((i) => {
    const binding = ["masquerade", "bridge", "sriov", "slirp", "passt"].find((b) => i[b]) || i.binding?.name || "";
    const net = networks.get(i.name);
    const where = net?.pod ? "pod network" : net?.multus ? `${net.multus.networkName}` : "";
    const live = status.get(i.name);
    return [i.name, binding, where, live?.mac || i.macAddress || "",
      (live?.ipAddresses || (live?.ipAddress ? [live.ipAddress] : [])).join(", ")];
  });
}
