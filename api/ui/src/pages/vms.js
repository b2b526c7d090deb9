// The VMs of a namespace with their guests' state, node and addresses, kept current by two
// watches (VMs and VMIs); no polling. Rows are kept by name and remade only when their VM or
// guest changed, so a create among a thousand VMs touches one row (and the keyboard's focus
// stays where it was).
import { follow, paths } from "../api.js";
import { h, fill, age, tableShell } from "../dom.js";
import { actionButtons } from "../actions.js";
import { addresses, nodeOf, printable, tone } from "../vmstate.js";

const HEADERS = ["Name", "Status", "Node", "IPs", "Age", "Actions"];

export function vmListPage(main, ns) {
  let vms = null;
  const vmis = new Map();
  const rows = new Map(); // name → { version, tr }
  const body = h("div", {}, h("p", {}, "Loading…"));
  const caption = `Virtual machines in ${ns}`;
  const { wrap, tbody } = tableShell(caption, HEADERS);
  const empty = h("p", { class: "empty" }, "No virtual machines here yet.");
  main.append(
    h("div", { class: "title-row" },
      h("h1", {}, "Virtual machines ", h("span", { class: "muted" }, `in ${ns}`)),
      h("a", { class: "button", href: `#/ns/${encodeURIComponent(ns)}/create` }, "Create a VM")),
    body,
  );

  function row(vm, vmi) {
    const name = vm.metadata.name;
    const status = printable(vm);
    const cells = [
      h("a", { href: `#/ns/${encodeURIComponent(ns)}/vms/${encodeURIComponent(name)}` }, name),
      h("span", { class: `badge ${tone(status)}`, "data-status": status }, status || "—"),
      nodeOf(vmi),
      addresses(vmi).join(", "),
      h("span", { "data-since": vm.metadata.creationTimestamp || "" }, age(vm.metadata.creationTimestamp)),
      actionButtons(ns, vm, vmi, { small: true }),
    ];
    return h("tr", { "data-name": name }, cells.map((c) => h("td", {}, c)));
  }

  function draw() {
    if (vms === null) return;
    if (!vms.length) {
      rows.clear();
      fill(body, empty);
      return;
    }
    if (!body.contains(wrap)) fill(body, wrap);
    const focused = tbody.contains(document.activeElement) ? document.activeElement : null;
    const wanted = vms.map((vm) => {
      const name = vm.metadata.name;
      const vmi = vmis.get(name);
      const version = `${vm.metadata.resourceVersion}/${vmi?.metadata?.resourceVersion || ""}`;
      let kept = rows.get(name);
      if (!kept || kept.version !== version) {
        kept = { version, tr: row(vm, vmi) };
        rows.set(name, kept);
      }
      return kept.tr;
    });
    const names = new Set(vms.map((vm) => vm.metadata.name));
    for (const name of rows.keys()) if (!names.has(name)) rows.delete(name);
    // The fewest moves: rows already in place stay untouched.
    let at = tbody.firstChild;
    for (const tr of wanted) {
      if (tr === at) at = at.nextSibling;
      else tbody.insertBefore(tr, at);
    }
    while (at) {
      const next = at.nextSibling;
      at.remove();
      at = next;
    }
    // A row remade under the keyboard's focus: the same control in the new row takes it.
    if (focused && !tbody.contains(focused)) {
      const name = focused.closest("tr")?.dataset.name;
      const label = focused.getAttribute("aria-label") || focused.textContent;
      const again = [...(rows.get(name)?.tr.querySelectorAll("a, button") || [])]
        .find((el) => (el.getAttribute("aria-label") || el.textContent) === label);
      again?.focus();
    }
  }

  const failed = (what) => (e) =>
    fill(body, h("p", { class: "error" }, `Cannot list ${what} in ${ns}: ${e.message}`));
  const stopVms = follow(paths.vms(ns), (items) => {
    vms = items;
    draw();
  }, { onError: failed("virtual machines") });
  const stopVmis = follow(paths.vmis(ns), (items) => {
    vmis.clear();
    for (const vmi of items) vmis.set(vmi.metadata.name, vmi);
    draw();
  }, { onError: failed("guests") });
  // Ages move on without a change to watch.
  const ticker = setInterval(() => {
    for (const cell of tbody.querySelectorAll("[data-since]")) cell.textContent = age(cell.dataset.since);
  }, 30000);
  return () => {
    stopVms();
    stopVmis();
    clearInterval(ticker);
  };
}
