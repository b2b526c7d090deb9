// The console's shell: a hash router (the server serves one page, and a hash never reaches it,
// so no route can carry a token to a log), the navigation, and each page's cleanup (its watches
// and sockets end when the page is left).
import "./app.css";
import { session, whenExpired } from "./api.js";
import { h, fill, notify, clearStaleNotice } from "./dom.js";
import { go, target } from "./router.js";
import { loginPage } from "./pages/login.js";
import { namespacesPage, currentNamespace, rememberNamespace } from "./pages/namespaces.js";
import { vmListPage } from "./pages/vms.js";
import { vmPage } from "./pages/vm.js";
import { createPage } from "./pages/create.js";
import { storagePage } from "./pages/storage.js";
import { hostsPage } from "./pages/hosts.js";

const routes = [
  [/^\/login$/, () => loginPage],
  [/^\/namespaces$/, () => namespacesPage],
  [/^\/ns\/([^/]+)\/vms$/, (ns) => (main) => vmListPage(main, ns)],
  [/^\/ns\/([^/]+)\/vms\/([^/]+)(?:\/(overview|yaml|console|vnc))?$/, (ns, name, tab) => (main) =>
    vmPage(main, ns, name, tab || "overview")],
  [/^\/ns\/([^/]+)\/create$/, (ns) => (main) => createPage(main, ns)],
  [/^\/ns\/([^/]+)\/storage$/, (ns) => (main) => storagePage(main, ns)],
  [/^\/hosts$/, () => hostsPage],
];

let cleanup = null;

function nav(ns) {
  const here = target();
  const link = (path, label) =>
    h("a", { href: `#${path}`, "aria-current": here.startsWith(path) ? "page" : null }, label);
  const who = session.who();
  return [
    link("/namespaces", "Namespaces"),
    ns && link(`/ns/${ns}/vms`, "Virtual machines"),
    ns && link(`/ns/${ns}/create`, "Create"),
    ns && link(`/ns/${ns}/storage`, "Storage"),
    link("/hosts", "Hosts"),
    h("span", { class: "who", title: who ? `role ${who.role}` : null }, who ? `${who.subject || "token"} · ${ns || ""}` : ""),
    h("button", { type: "button", class: "secondary small", onclick: logout }, "Log out"),
  ];
}

function logout() {
  session.end();
  notify("Logged out.");
  go("/login");
}

function render() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // A page that failed to clean up must not keep the next from rendering.
    }
    cleanup = null;
  }
  const main = document.getElementById("main");
  const navEl = document.getElementById("nav");
  let path = target();
  if (!session.token() && path !== "/login") {
    path = "/login";
    history.replaceState(null, "", "#/login");
  }
  if (path === "/") {
    const ns = currentNamespace();
    go(ns ? `/ns/${ns}/vms` : "/namespaces");
    return;
  }
  clearStaleNotice();
  const nsMatch = path.match(/^\/ns\/([^/]+)\//);
  if (nsMatch) rememberNamespace(decodeURIComponent(nsMatch[1]));
  fill(navEl, path === "/login" ? [] : nav(currentNamespace()));
  for (const [pattern, page] of routes) {
    const m = path.match(pattern);
    if (!m) continue;
    const args = m.slice(1).map((x) => (x === undefined ? undefined : decodeURIComponent(x)));
    fill(main);
    cleanup = page(...args)(main) || null;
    // Focus starts at the page (a screen reader reads it from the top) unless the page put it on
    // its first control.
    if (!main.contains(document.activeElement) || document.activeElement === document.body) main.focus({ preventScroll: true });
    // Each page its own title, so history and screen readers tell them apart.
    document.title = `${main.querySelector("h1")?.textContent || "Converge"} · Converge`;
    return;
  }
  fill(main, h("h1", {}, "Not found"), h("p", {}, "There is no page here. ", h("a", { href: "#/" }, "Start over.")));
}

whenExpired(() => {
  notify("Your session has expired or the token was refused: log in again.", "error");
  go("/login");
});
window.addEventListener("hashchange", render);
render();
