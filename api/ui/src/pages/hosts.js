// The /bridge/v1 host records (what Foreman and pipelines provisioned) with their steps. The
// bridge has no watch: the page reads the records when opened and when asked.
import { get, paths } from "../api.js";
import { h, fill, table, age } from "../dom.js";
import { currentNamespace } from "./namespaces.js";

function hostCard(host) {
  const title = `${host.namespace}/${host.name}`;
  return h("article", { class: "card", "aria-label": `Host ${title}` },
    h("h3", {}, title, " ", h("span", { class: `badge ${host.ready ? "ok" : host.error ? "bad" : "busy"}` }, host.state),
      host.printableStatus ? h("span", { class: "muted" }, ` VM: ${host.printableStatus}`) : null),
    host.error ? h("p", { class: "error" }, `${host.error.code}: ${host.error.message}`) : null,
    table(`Steps of ${title}`, ["Step", "Object", "State", "Started", "Error"], (host.steps || []).map((s) => [
      s.name, `${s.kind} ${s.object}`, s.state, s.startedAt ? age(s.startedAt) : "", s.error || "",
    ]), "No steps."),
    (host.disks || []).length
      ? table(`Disks of ${title}`, ["Disk", "DataVolume", "Phase", "Progress"], host.disks.map((d) => [
        d.name, d.dataVolume, d.phase || "", d.progress || "",
      ]))
      : null,
    (host.nics || []).length
      ? table(`NICs of ${title}`, ["NIC", "Network", "MAC", "IPs"], host.nics.map((n) => [
        n.name, n.network, n.macAddress || "", (n.ipAddresses || []).join(", "),
      ]))
      : null,
    h("p", { class: "muted" }, `Created ${age(host.createdAt)} ago by ${host.createdBy}.`));
}

export function hostsPage(main) {
  const ns = currentNamespace();
  const all = h("input", { type: "checkbox", id: "hosts-all" });
  const body = h("div", {}, h("p", {}, "Loading…"));
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show more");
  let next = null;
  async function load(append = false) {
    refresh.disabled = true;
    try {
      const params = new URLSearchParams();
      if (!all.checked && ns) params.set("namespace", ns);
      if (append && next) params.set("continue", next);
      const list = await get(`${paths.hosts()}?${params}`);
      next = list.continue || null;
      more.hidden = !next;
      const cards = (list.items || []).map(hostCard);
      if (append) body.append(...cards);
      else fill(body, cards.length ? cards : h("p", { class: "empty" }, "No host records."));
    } catch (e) {
      fill(body, h("p", { class: "error" }, `Cannot list host records: ${e.message}`));
    } finally {
      refresh.disabled = false;
    }
  }
  refresh.addEventListener("click", () => load());
  all.addEventListener("change", () => load());
  more.addEventListener("click", () => load(true));
  main.append(
    h("div", { class: "title-row" }, h("h1", {}, "Hosts ", h("span", { class: "muted" }, "(/bridge/v1 records)")), refresh),
    ns ? h("div", { class: "field check" }, all, h("label", { for: "hosts-all" }, `Every namespace, not only ${ns}`)) : null,
    body,
    more,
  );
  load();
}
