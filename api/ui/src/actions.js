// What a VM's buttons do: virtctl's subresources (PUT, an empty body), and the delete it asks
// to confirm first. Each resolves with a message for the live region, or throws ApiFailure.
import { request, del, paths } from "./api.js";
import { h, notify, confirmDialog } from "./dom.js";

/// Which actions a VM offers in its state (printableStatus and whether its guest is paused).
export function actionsFor(vm, vmi) {
  const status = vm?.status?.printableStatus || "";
  const running = Boolean(vmi) && vmi.status?.phase === "Running";
  const holds = (type) => (vmi?.status?.conditions || []).some((c) => c.type === type && c.status === "True");
  const paused = holds("Paused");
  const stopped = ["Stopped", "Stopping", ""].includes(status) && !running;
  return {
    start: stopped,
    stop: !stopped && status !== "Stopping",
    // A guest that ignores the ACPI power button would take its whole grace period.
    forcestop: status === "Stopping" || status === "Terminating",
    restart: running,
    pause: running && !paused,
    unpause: running && paused,
    // Offered where the guest can move (its LiveMigratable condition), as virtctl would refuse.
    migrate: running && !paused && holds("LiveMigratable"),
    delete: true,
  };
}

const LABELS = { start: "Start", stop: "Stop", forcestop: "Force stop", restart: "Restart", pause: "Pause", unpause: "Unpause", migrate: "Migrate",
  delete: "Delete" };

async function run(ns, name, action) {
  switch (action) {
    case "start":
    case "stop":
    case "restart":
    case "migrate":
      await request("PUT", paths.vmAction(ns, name, action), { body: {} });
      return `${LABELS[action]} of ${name} requested.`;
    case "forcestop":
      // virtctl stop --force --grace-period=0: the guest is switched off now.
      await request("PUT", paths.vmAction(ns, name, "stop"), { body: { gracePeriod: 0 } });
      return `${name} is being switched off.`;
    case "pause":
    case "unpause":
      await request("PUT", paths.vmiAction(ns, name, action), { body: {} });
      return `${name} ${action === "pause" ? "paused" : "unpaused"}.`;
    case "delete":
      if (!(await confirmDialog(`Delete the virtual machine ${name}? Its guest stops and its disks from templates go too.`,
        `Delete ${name}`))) return null;
      await del(paths.vm(ns, name), { kind: "DeleteOptions", apiVersion: "v1", propagationPolicy: "Foreground" });
      return `${name} is being deleted.`;
    default:
      throw new Error(`unknown action ${action}`);
  }
}

/// The buttons of the actions `vm` offers; `afterDelete` runs once a delete went through.
export function actionButtons(ns, vm, vmi, { small = false, afterDelete } = {}) {
  const name = vm.metadata.name;
  const offered = actionsFor(vm, vmi);
  return h(
    "div",
    { class: "actions", role: "group", "aria-label": `Actions on ${name}` },
    Object.keys(LABELS).filter((a) => offered[a]).map((action) =>
      h("button", {
        type: "button",
        class: `${action === "delete" ? "danger" : "secondary"}${small ? " small" : ""}`,
        "data-action": action,
        "aria-label": `${LABELS[action]} ${name}`,
        onclick: async (event) => {
          const button = event.currentTarget;
          button.disabled = true;
          try {
            const message = await run(ns, name, action);
            if (message) notify(message);
            if (message && action === "delete" && afterDelete) afterDelete();
          } catch (e) {
            notify(`${LABELS[action]} failed: ${e.message}`, "error");
          } finally {
            button.disabled = false;
          }
        },
      }, LABELS[action])),
  );
}
