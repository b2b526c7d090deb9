// One VM: its state, actions, conditions, events, disks and NICs (live), its YAML to edit, and
// its serial and graphical consoles.
import { follow, paths } from "../api.js";
import { h, fill, table, age } from "../dom.js";
import { actionButtons } from "../actions.js";
import { addresses, diskRows, nicRows, nodeOf, printable, tone } from "../vmstate.js";
import { go } from "../router.js";
import { serialConsole, vncConsole } from "../consoles.js";
import { yamlEditor } from "../yaml_editor.js";

const TABS = [["overview", "Overview"], ["yaml", "YAML"], ["console", "Serial console"], ["vnc", "VNC"]];

export function vmPage(main, ns, name, tab) {
  const base = `#/ns/${encodeURIComponent(ns)}/vms/${encodeURIComponent(name)}`;
  const header = h("div", { class: "title-row" }, h("h1", {}, name));
  const actions = h("div", {});
  const summary = h("div", {});
  const content = h("section", { class: "tab-content", "aria-label": TABS.find(([t]) => t === tab)[1] });
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: `#/ns/${encodeURIComponent(ns)}/vms` }, `Virtual machines in ${ns}`)),
    header,
    summary,
    actions,
    h("nav", { class: "tabs", "aria-label": "VM views" },
      TABS.map(([t, label]) => h("a", { href: `${base}/${t}`, "aria-current": t === tab ? "page" : null }, label))),
    content,
  );

  let vm = null;
  let vmi = null;
  let events = [];
  const stops = [];
  const byName = `fieldSelector=${encodeURIComponent(`metadata.name=${name}`)}`;
  let view = null;

  function drawHeader() {
    if (!vm) return;
    const status = printable(vm);
    fill(summary, h("dl", { class: "summary" },
      h("dt", {}, "Status"), h("dd", {}, h("span", { class: `badge ${tone(status)}`, "data-status": status, id: "vm-status" },
        status || "—")),
      h("dt", {}, "Node"), h("dd", {}, nodeOf(vmi) || "—"),
      h("dt", {}, "IPs"), h("dd", {}, addresses(vmi).join(", ") || "—"),
      h("dt", {}, "Age"), h("dd", {}, age(vm.metadata.creationTimestamp)),
      h("dt", {}, "Run strategy"), h("dd", {}, vm.spec?.runStrategy || (vm.spec?.running ? "Always" : "Halted"))));
    const focused = document.activeElement?.dataset?.action;
    fill(actions, actionButtons(ns, vm, vmi, { afterDelete: () => go(`/ns/${ns}/vms`) }));
    if (focused) actions.querySelector(`[data-action="${focused}"]`)?.focus();
  }

  function changed() {
    drawHeader();
    view?.update(vm, vmi, events);
  }

  stops.push(follow(paths.vms(ns), (items) => {
    vm = items[0] || null;
    if (!vm) {
      fill(summary, h("p", { class: "error" }, `There is no virtual machine ${name} in ${ns} (any more).`));
      fill(actions);
    }
    changed();
  }, { query: byName, onError: (e) => fill(summary, h("p", { class: "error" }, e.message)) }));
  stops.push(follow(paths.vmis(ns), (items) => {
    vmi = items[0] || null;
    changed();
  }, { query: byName }));
  stops.push(follow(paths.events(ns), (items) => {
    events = items;
    changed();
  }, { query: `fieldSelector=${encodeURIComponent(`involvedObject.name=${name}`)}` }));

  if (tab === "overview") view = overview(content);
  else if (tab === "yaml") view = yamlEditor(content, paths.vm(ns, name));
  else if (tab === "console") view = serialConsole(content, ns, name);
  else view = vncConsole(content, ns, name);

  return () => {
    for (const stop of stops) stop();
    view?.close?.();
  };
}

function overview(content) {
  const conditions = h("div", {});
  const eventList = h("div", {});
  const disks = h("div", {});
  const nics = h("div", {});
  content.append(
    h("h2", {}, "Conditions"), conditions,
    h("h2", {}, "Disks"), disks,
    h("h2", {}, "Network interfaces"), nics,
    h("h2", {}, "Events"), eventList,
  );
  return {
    update(vm, vmi, events) {
      if (!vm) return;
      const conds = [...(vm.status?.conditions || []).map((c) => ["VM", c]),
        ...(vmi?.status?.conditions || []).map((c) => ["Guest", c])];
      fill(conditions, table("Conditions", ["Of", "Type", "Status", "Reason", "Message", "Changed"],
        conds.map(([of, c]) => [of, c.type, c.status, c.reason || "", c.message || "", age(c.lastTransitionTime)])));
      const spec = vm.spec?.template?.spec || {};
      fill(disks, table("Disks", ["Name", "Bus", "Source"], diskRows(spec)));
      fill(nics, table("Network interfaces", ["Name", "Binding", "Network", "MAC", "IPs"], nicRows(spec, vmi)));
      const sorted = [...events].sort((a, b) => eventTime(b).localeCompare(eventTime(a)));
      fill(eventList, table("Events", ["Type", "Reason", "Of", "Message", "Count", "Last seen"],
        sorted.slice(0, 50).map((e) => [e.type || "", e.reason || "", e.involvedObject?.kind || "", e.message || "",
          String(e.count || 1), age(eventTime(e))]), "No events."));
    },
  };
}

function eventTime(e) {
  return e.lastTimestamp || e.eventTime || e.metadata?.creationTimestamp || "";
}
