// The VMs of a namespace with their guests' state, node and addresses, kept current by two
// watches (VMs and VMIs); no polling.
import { follow, paths } from "../api.js";
import { h, fill, table, age } from "../dom.js";
import { actionButtons } from "../actions.js";
import { addresses, nodeOf, printable, tone } from "../vmstate.js";

export function vmListPage(main, ns) {
  let vms = null;
  const vmis = new Map();
  const body = h("div", { "aria-live": "off" }, h("p", {}, "Loading…"));
  main.append(
    h("div", { class: "title-row" },
      h("h1", {}, "Virtual machines ", h("span", { class: "muted" }, `in ${ns}`)),
      h("a", { class: "button", href: `#/ns/${encodeURIComponent(ns)}/create` }, "Create a VM")),
    body,
  );

  function draw() {
    if (vms === null) return;
    const rows = vms.map((vm) => {
      const name = vm.metadata.name;
      const vmi = vmis.get(name);
      const status = printable(vm);
      return [
        h("a", { href: `#/ns/${encodeURIComponent(ns)}/vms/${encodeURIComponent(name)}` }, name),
        h("span", { class: `badge ${tone(status)}`, "data-status": status }, status || "—"),
        nodeOf(vmi),
        addresses(vmi).join(", "),
        age(vm.metadata.creationTimestamp),
        actionButtons(ns, vm, vmi, { small: true }),
      ];
    });
    // A redraw keeps the keyboard's place: the focused button or link is focused again.
    const focused = body.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label")
      || document.activeElement.textContent : null;
    fill(body, table(`Virtual machines in ${ns}`, ["Name", "Status", "Node", "IPs", "Age", "Actions"], rows,
      "No virtual machines here yet."));
    if (focused) {
      const again = [...body.querySelectorAll("a, button")].find((el) =>
        (el.getAttribute("aria-label") || el.textContent) === focused);
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
  const ticker = setInterval(draw, 30000);
  return () => {
    stopVms();
    stopVmis();
    clearInterval(ticker);
  };
}
