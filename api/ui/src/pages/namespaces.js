// Namespaces, live; a token confined to some namespaces sees those instead (it may not list).
import { follow, paths, session } from "../api.js";
import { h, fill, table, age, field } from "../dom.js";
import { go } from "../router.js";

const NAMESPACE_KEY = "converge.namespace";

export function currentNamespace() {
  return sessionStorage.getItem(NAMESPACE_KEY) || "";
}

export function rememberNamespace(ns) {
  sessionStorage.setItem(NAMESPACE_KEY, ns);
}

export function namespacesPage(main) {
  const body = h("div", {}, h("p", {}, "Loading…"));
  const pick = h("input", { name: "namespace", autocomplete: "off", pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?" });
  const form = h("form", { class: "inline" }, field("Go to namespace", pick), h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (pick.value.trim()) go(`/ns/${pick.value.trim()}/vms`);
  });
  main.append(h("h1", {}, "Namespaces"), body, form);
  const link = (ns) => h("a", { href: `#/ns/${encodeURIComponent(ns)}/vms` }, ns);
  return follow(
    paths.namespaces(),
    (items) =>
      fill(
        body,
        table("Namespaces", ["Name", "Status", "Age"], items.map((n) => [
          link(n.metadata.name),
          n.status?.phase || "",
          age(n.metadata.creationTimestamp),
        ])),
      ),
    {
      onError: (e) => {
        const mine = session.who()?.namespaces || [];
        fill(
          body,
          e.code === 403 && mine.length
            ? [h("p", {}, "This token works in these namespaces only:"), h("ul", {}, mine.map((ns) => h("li", {}, link(ns))))]
            : h("p", { class: "error" }, `Cannot list namespaces: ${e.message}`),
        );
      },
    },
  );
}
