// The console's pure parts, without a browser: the VM the form builds, a kubeconfig's token,
// progress and state readings. `node --test api/ui/tests/` (scripts/test runs it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildVm } from "../src/pages/create.js";
import { fromKubeconfig } from "../src/pages/login.js";
import { percentOf } from "../src/pages/storage.js";
import { actionsFor } from "../src/actions.js";
import { addresses, diskRows, nicRows, tone } from "../src/vmstate.js";
import { age } from "../src/dom.js";

const form = {
  name: "web", sizing: "resources", cores: "2", memory: "1Gi", instancetype: "", diskSource: "registry",
  image: "quay.io/containerdisks/fedora:40", url: "", dataSource: "", diskSize: "10Gi", network: "pod",
  userData: "", sshKeys: "", start: true,
};

test("the form builds the VirtualMachine kubectl would send", () => {
  const { vm, problems } = buildVm("team", form);
  assert.deepEqual(problems, {});
  assert.deepEqual(vm, {
    apiVersion: "kubevirt.io/v1", kind: "VirtualMachine", metadata: { name: "web", namespace: "team" },
    spec: {
      runStrategy: "Always",
      template: {
        metadata: { labels: { "kubevirt.io/vm": "web" } },
        spec: {
          domain: { cpu: { cores: 2 }, resources: { requests: { memory: "1Gi" } },
            devices: { disks: [{ name: "rootdisk", disk: { bus: "virtio" }, bootOrder: 1 }],
              interfaces: [{ name: "default", masquerade: {} }] } },
          networks: [{ name: "default", pod: {} }],
          volumes: [{ name: "rootdisk", containerDisk: { image: "quay.io/containerdisks/fedora:40" } }],
        },
      },
    },
  });
});

test("a URL or blank disk is a DataVolume template; a DataSource is a sourceRef", () => {
  const url = buildVm("team", { ...form, diskSource: "url", url: "https://example.com/d.qcow2" }).vm;
  assert.deepEqual(url.spec.dataVolumeTemplates, [{ metadata: { name: "web-rootdisk" },
    spec: { source: { http: { url: "https://example.com/d.qcow2" } }, storage: { resources: { requests: { storage: "10Gi" } } } } }]);
  assert.deepEqual(url.spec.template.spec.volumes[0], { name: "rootdisk", dataVolume: { name: "web-rootdisk" } });
  const blank = buildVm("team", { ...form, diskSource: "blank" }).vm;
  assert.deepEqual(blank.spec.dataVolumeTemplates[0].spec.source, { blank: {} });
  const ds = buildVm("team", { ...form, diskSource: "datasource", dataSource: "team/fedora" }).vm;
  assert.deepEqual(ds.spec.dataVolumeTemplates[0].spec.sourceRef, { kind: "DataSource", name: "fedora", namespace: "team" });
});

test("an instancetype replaces CPU and memory; a NAD is a multus network with a bridge", () => {
  const { vm, problems } = buildVm("team", { ...form, sizing: "instancetype",
    instancetype: "VirtualMachineClusterInstancetype/u1.small", network: "team/vlan10", start: false });
  assert.deepEqual(problems, {});
  assert.deepEqual(vm.spec.instancetype, { kind: "VirtualMachineClusterInstancetype", name: "u1.small" });
  assert.equal(vm.spec.template.spec.domain.cpu, undefined);
  assert.equal(vm.spec.template.spec.domain.resources, undefined);
  assert.equal(vm.spec.runStrategy, "Halted");
  assert.deepEqual(vm.spec.template.spec.networks, [{ name: "vlan10", multus: { networkName: "team/vlan10" } }]);
  assert.deepEqual(vm.spec.template.spec.domain.devices.interfaces, [{ name: "vlan10", bridge: {} }]);
});

test("SSH keys go into #cloud-config user data, merged with what is there", () => {
  const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHmY me@host";
  const alone = buildVm("team", { ...form, sshKeys: key }).vm.spec.template.spec.volumes[1];
  assert.equal(alone.cloudInitNoCloud.userData, `#cloud-config\nssh_authorized_keys:\n  - ${key}\n`);
  const merged = buildVm("team", { ...form, sshKeys: key, userData: "#cloud-config\nhostname: web\n" }).vm;
  const userData = merged.spec.template.spec.volumes[1].cloudInitNoCloud.userData;
  assert.match(userData, /^#cloud-config\n/);
  assert.match(userData, /hostname: web/);
  assert.match(userData, /ssh_authorized_keys:\n {2}- ssh-ed25519/);
  assert.ok(buildVm("team", { ...form, sshKeys: key, userData: "#!/bin/sh\necho hi" }).problems.userData);
  assert.ok(buildVm("team", { ...form, sshKeys: "not a key" }).problems.sshKeys);
});

test("bad values are problems by field, never a request", () => {
  const { problems } = buildVm("team", { ...form, name: "Web_1", cores: "0", memory: "lots", image: "" });
  assert.deepEqual(Object.keys(problems).sort(), ["cores", "image", "memory", "name"]);
  assert.ok(buildVm("team", { ...form, diskSource: "url", url: "file:///etc/passwd" }).problems.url);
  assert.ok(buildVm("team", { ...form, name: "a".repeat(64) }).problems.name);
});

test("a kubeconfig's current context gives the token and namespace", () => {
  const config = `apiVersion: v1
kind: Config
current-context: b
contexts:
- {name: a, context: {cluster: c, user: ua}}
- {name: b, context: {cluster: c, user: ub, namespace: team}}
users:
- {name: ua, user: {token: aaa}}
- {name: ub, user: {token: bbb}}
`;
  assert.deepEqual(fromKubeconfig(config), { token: "bbb", namespace: "team" });
  assert.throws(() => fromKubeconfig("users: [{name: x, user: {client-certificate-data: Zm9v}}]"), /no token/);
  assert.throws(() => fromKubeconfig("just text"), /not a kubeconfig/);
});

test("readings: progress, actions, addresses, rows, tone, age", () => {
  assert.equal(percentOf({ status: { progress: "45.20%" } }), 45.2);
  assert.equal(percentOf({ status: { progress: "N/A" } }), null);
  assert.equal(percentOf({ status: { phase: "Succeeded", progress: "N/A" } }), 100);
  const vm = { status: { printableStatus: "Running" } };
  const vmi = { status: { phase: "Running", conditions: [{ type: "LiveMigratable", status: "True" }] } };
  assert.deepEqual(actionsFor(vm, vmi), { start: false, stop: true, forcestop: false, restart: true, pause: true, unpause: false, migrate: true,
    delete: true });
  const paused = { status: { phase: "Running", conditions: [{ type: "Paused", status: "True" }] } };
  assert.equal(actionsFor({ status: { printableStatus: "Paused" } }, paused).unpause, true);
  assert.equal(actionsFor({ status: { printableStatus: "Stopped" } }, null).start, true);
  assert.equal(actionsFor(vm, { status: { phase: "Running", conditions: [{ type: "LiveMigratable", status: "False" }] } }).migrate,
    false);
  const stopping = actionsFor({ status: { printableStatus: "Stopping" } }, vmi);
  assert.ok(stopping.forcestop && !stopping.stop && !stopping.start);
  assert.deepEqual(addresses({ status: { interfaces: [{ ipAddresses: ["10.0.2.2", "fd00::2"] }, { ipAddress: "10.0.2.2" }] } }),
    ["10.0.2.2", "fd00::2"]);
  const spec = { domain: { devices: { disks: [{ name: "root", disk: { bus: "virtio" } }, { name: "cd", cdrom: {} }],
    interfaces: [{ name: "default", masquerade: {} }] } }, networks: [{ name: "default", pod: {} }],
  volumes: [{ name: "root", dataVolume: { name: "dv" } }, { name: "cd", containerDisk: { image: "img" } }] };
  assert.deepEqual(diskRows(spec), [["root", "disk (virtio)", "DataVolume dv"], ["cd", "cdrom", "container image img"]]);
  assert.deepEqual(nicRows(spec, { status: { interfaces: [{ name: "default", mac: "02:00:00:00:00:01", ipAddress: "10.0.2.2" }] } }),
    [["default", "masquerade", "pod network", "02:00:00:00:00:01", "10.0.2.2"]]);
  assert.equal(tone("ErrorUnschedulable"), "bad");
  assert.equal(tone("Running"), "ok");
  assert.equal(age("2026-01-01T00:00:00Z", Date.parse("2026-01-01T00:05:00Z")), "5m");
  assert.equal(age("2026-01-01T00:00:00Z", Date.parse("2026-01-03T00:00:00Z")), "2d");
});
