// Create a VM from a form. What it POSTs is shown beside it and is the JSON `kubectl create -f`
// would send for the same manifest: the server applies the same defaults and checks to both.
import yaml from "js-yaml";
import { get, post, paths } from "../api.js";
import { h, fill, field, notify } from "../dom.js";
import { go } from "../router.js";

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const QUANTITY = /^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$/;

/// Pure: the form's values → the VirtualMachine, or the problems with them (field → message).
export function buildVm(ns, v) {
  const problems = {};
  if (!NAME.test(v.name || "") || v.name.length > 63) problems.name = "a DNS label: lower case letters, digits and '-', at most 63";
  const domain = { devices: { disks: [], interfaces: [] } };
  const spec = { runStrategy: v.start ? "Always" : "Halted", template: { metadata: { labels: { "kubevirt.io/vm": v.name } },
    spec: { domain, networks: [], volumes: [] } } };
  const tmpl = spec.template.spec;
  if (v.sizing === "instancetype") {
    const [kind, name] = (v.instancetype || "").split("/");
    if (!name) problems.instancetype = "choose an instancetype";
    else spec.instancetype = { kind, name };
  } else {
    const cores = Number(v.cores);
    if (!Number.isInteger(cores) || cores < 1 || cores > 64) problems.cores = "a whole number from 1 to 64";
    else domain.cpu = { cores };
    if (!QUANTITY.test(v.memory || "")) problems.memory = "a quantity such as 256Mi or 2Gi";
    else domain.resources = { requests: { memory: v.memory } };
  }
  const dvName = `${v.name}-rootdisk`;
  const dvTemplate = (source) => {
    if (!QUANTITY.test(v.diskSize || "")) problems.diskSize = "a quantity such as 1Gi";
    spec.dataVolumeTemplates = [{ metadata: { name: dvName },
      spec: { source, storage: { resources: { requests: { storage: v.diskSize } } } } }];
    tmpl.volumes.push({ name: "rootdisk", dataVolume: { name: dvName } });
  };
  switch (v.diskSource) {
    case "registry":
      if (!v.image) problems.image = "an image reference, such as quay.io/containerdisks/fedora:40";
      tmpl.volumes.push({ name: "rootdisk", containerDisk: { image: v.image } });
      break;
    case "url":
      if (!/^(https?):\/\/[^\s]+$/.test(v.url || "")) problems.url = "an http:// or https:// address";
      dvTemplate({ http: { url: v.url } });
      break;
    case "datasource": {
      const [dsNs, dsName] = (v.dataSource || "").split("/");
      if (!dsName) problems.dataSource = "choose a DataSource";
      spec.dataVolumeTemplates = [{ metadata: { name: dvName },
        spec: { sourceRef: { kind: "DataSource", name: dsName, namespace: dsNs },
          storage: QUANTITY.test(v.diskSize || "") ? { resources: { requests: { storage: v.diskSize } } } : {} } }];
      tmpl.volumes.push({ name: "rootdisk", dataVolume: { name: dvName } });
      break;
    }
    case "blank":
      dvTemplate({ blank: {} });
      break;
    default:
      break;
  }
  if (tmpl.volumes.length) domain.devices.disks.push({ name: "rootdisk", disk: { bus: "virtio" }, bootOrder: 1 });
  if (v.network === "pod") {
    domain.devices.interfaces.push({ name: "default", masquerade: {} });
    tmpl.networks.push({ name: "default", pod: {} });
  } else if (v.network) {
    const nadName = v.network.split("/").pop();
    domain.devices.interfaces.push({ name: nadName, bridge: {} });
    tmpl.networks.push({ name: nadName, multus: { networkName: v.network } });
  } else {
    domain.devices.autoattachPodInterface = false;
  }
  const userData = cloudInit(v.userData || "", v.sshKeys || "", problems);
  if (userData) {
    domain.devices.disks.push({ name: "cloudinitdisk", disk: { bus: "virtio" } });
    tmpl.volumes.push({ name: "cloudinitdisk", cloudInitNoCloud: { userData } });
  }
  if (!tmpl.networks.length) delete tmpl.networks;
  if (!domain.devices.interfaces.length) delete domain.devices.interfaces;
  const vm = { apiVersion: "kubevirt.io/v1", kind: "VirtualMachine", metadata: { name: v.name, namespace: ns }, spec };
  return { vm, problems };
}

/// User data with the SSH keys in it: keys need #cloud-config (a script cannot carry them).
function cloudInit(userData, sshKeys, problems) {
  const keys = sshKeys.split("\n").map((k) => k.trim()).filter(Boolean);
  const bad = keys.find((k) => !/^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$/.test(k));
  if (bad) problems.sshKeys = `not an OpenSSH public key: ${bad.slice(0, 40)}`;
  if (!keys.length) return userData.trim() ? userData : "";
  if (!userData.trim()) return `#cloud-config\n${yaml.dump({ ssh_authorized_keys: keys }, { lineWidth: -1 })}`;
  if (!userData.startsWith("#cloud-config")) {
    problems.userData = "SSH keys go into #cloud-config user data; this user data is not #cloud-config";
    return userData;
  }
  let config;
  try {
    config = yaml.load(userData) || {};
  } catch (e) {
    problems.userData = `not valid YAML: ${e.message}`;
    return userData;
  }
  config.ssh_authorized_keys = [...(config.ssh_authorized_keys || []), ...keys];
  return `#cloud-config\n${yaml.dump(config, { lineWidth: -1 })}`;
}

async function options(path, label) {
  try {
    const list = await get(path);
    return (list.items || []).map(label);
  } catch {
    return []; // Not readable with this token, or the kind is not served: the choice is just absent.
  }
}

function select(name, choices, value) {
  return h("select", { name }, choices.map(([v, label]) => h("option", { value: v, selected: v === value ? true : null }, label)));
}

export function createPage(main, ns) {
  const input = (name, attrs = {}) => h("input", { name, autocomplete: "off", spellcheck: "false", ...attrs });
  const c = {
    name: input("name", { required: true, maxlength: 63 }),
    sizing: select("sizing", [["resources", "CPU and memory"], ["instancetype", "An instancetype"]], "resources"),
    cores: input("cores", { type: "number", min: 1, max: 64, value: "1", inputmode: "numeric" }),
    memory: input("memory", { value: "256Mi" }),
    instancetype: select("instancetype", [["", "(loading…)"]]),
    diskSource: select("diskSource", [["registry", "A container image (registry)"], ["url", "Import from a URL"],
      ["datasource", "Clone a DataSource"], ["blank", "A blank disk"], ["", "No disk"]], "registry"),
    image: input("image", { placeholder: "quay.io/containerdisks/fedora:40" }),
    url: input("url", { type: "url", placeholder: "https://example.com/disk.qcow2" }),
    dataSource: select("dataSource", [["", "(loading…)"]]),
    diskSize: input("diskSize", { value: "1Gi" }),
    network: select("network", [["pod", "The pod network (masquerade)"], ["", "No network"]], "pod"),
    userData: h("textarea", { name: "userData", rows: 5, spellcheck: "false" }),
    sshKeys: h("textarea", { name: "sshKeys", rows: 2, spellcheck: "false" }),
    start: h("input", { type: "checkbox", name: "start", checked: true }),
  };
  const errors = {};
  const wrap = (key, label, hint) => {
    errors[key] = h("small", { class: "field-error", id: `err-${key}`, role: "alert" });
    c[key].setAttribute("aria-errormessage", `err-${key}`);
    const f = field(label, c[key], hint);
    f.append(errors[key]);
    f.dataset.for = key;
    return f;
  };
  // Focusable, so the keyboard can scroll it.
  const preview = h("pre", { class: "json", tabindex: 0, role: "region", "aria-label": "The JSON that will be sent" });
  const submit = h("button", { type: "submit" }, "Create");
  const form = h("form", { class: "create", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Name and size"),
      wrap("name", "Name"),
      wrap("sizing", "Size by"),
      wrap("cores", "CPU cores"),
      wrap("memory", "Memory", "A quantity: 256Mi, 2Gi"),
      wrap("instancetype", "Instancetype")),
    h("fieldset", {}, h("legend", {}, "Boot disk"),
      wrap("diskSource", "Source"),
      wrap("image", "Container image"),
      wrap("url", "Image URL", "qcow2, raw, or either compressed (gz, xz)"),
      wrap("dataSource", "DataSource"),
      wrap("diskSize", "Disk size")),
    h("fieldset", {}, h("legend", {}, "Network"), wrap("network", "Interface on")),
    h("fieldset", {}, h("legend", {}, "Cloud-init"),
      wrap("userData", "User data", "#cloud-config or a script"),
      wrap("sshKeys", "SSH public keys", "One per line; added to #cloud-config user data")),
    h("div", { class: "field check" }, c.start, h("label", { for: (c.start.id = "f-start") }, "Start it once created")),
    h("div", { class: "buttons" }, submit),
  );

  function values() {
    const v = {};
    for (const [k, el] of Object.entries(c)) v[k] = el.type === "checkbox" ? el.checked : el.value.trim();
    v.userData = c.userData.value;
    return v;
  }

  function refresh() {
    const v = values();
    const show = (key, on) => {
      form.querySelector(`[data-for="${key}"]`).hidden = !on;
    };
    show("cores", v.sizing === "resources");
    show("memory", v.sizing === "resources");
    show("instancetype", v.sizing === "instancetype");
    show("image", v.diskSource === "registry");
    show("url", v.diskSource === "url");
    show("dataSource", v.diskSource === "datasource");
    show("diskSize", ["url", "datasource", "blank"].includes(v.diskSource));
    const { vm, problems } = buildVm(ns, v);
    preview.textContent = JSON.stringify(vm, null, 2);
    return { vm, problems };
  }

  function showProblems(problems) {
    for (const [key, el] of Object.entries(errors)) {
      el.textContent = problems[key] || "";
      c[key].setAttribute("aria-invalid", problems[key] ? "true" : "false");
    }
  }

  form.addEventListener("input", refresh);
  form.addEventListener("change", refresh);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { vm, problems } = refresh();
    showProblems(problems);
    const first = Object.keys(problems)[0];
    if (first) {
      c[first].focus();
      return;
    }
    submit.disabled = true;
    try {
      await post(paths.vms(ns), vm);
      notify(`Created ${vm.metadata.name}.`);
      go(`/ns/${ns}/vms/${vm.metadata.name}`);
    } catch (e) {
      const causes = e.causes ? e.causes() : [];
      notify(`Not created (${e.code || "error"}): ${e.message}${causes.length ? ` — ${causes.join("; ")}` : ""}`, "error");
      submit.disabled = false;
    }
  });

  main.append(h("h1", {}, "Create a virtual machine ", h("span", { class: "muted" }, `in ${ns}`)),
    h("div", { class: "create-layout" }, form,
      h("details", { class: "preview", open: true }, h("summary", {}, "What will be sent (POST, JSON)"), preview)));
  refresh();
  c.name.focus();

  (async () => {
    const types = [
      ...(await options(paths.clusterInstancetypes(), (t) => [`VirtualMachineClusterInstancetype/${t.metadata.name}`,
        `${t.metadata.name} (cluster)`])),
      ...(await options(paths.instancetypes(ns), (t) => [`VirtualMachineInstancetype/${t.metadata.name}`, t.metadata.name])),
    ];
    fill(c.instancetype, [["", types.length ? "Choose…" : "None defined"], ...types].map(([v, l]) => h("option", { value: v }, l)));
    const sources = await options(paths.dataSources(ns), (d) => [`${ns}/${d.metadata.name}`, d.metadata.name]);
    fill(c.dataSource, [["", sources.length ? "Choose…" : "None in this namespace"], ...sources].map(([v, l]) => h("option", { value: v }, l)));
    const nads = await options(paths.nads(ns), (n) => [`${ns}/${n.metadata.name}`, `${n.metadata.name} (NetworkAttachmentDefinition)`]);
    for (const [v, l] of nads) c.network.insertBefore(h("option", { value: v }, l), c.network.lastChild);
    refresh();
  })();
}
