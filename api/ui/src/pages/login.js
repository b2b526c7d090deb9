// Log in with a bearer token, or with a kubeconfig (the one `converge serve` writes): its current
// context's user token and namespace.
import yaml from "js-yaml";
import { session, whoAmI } from "../api.js";
import { h, field, notify } from "../dom.js";
import { go } from "../router.js";
import { rememberNamespace } from "./namespaces.js";

/// The token and namespace of a kubeconfig's current context. Pure, so it is easy to test.
export function fromKubeconfig(text) {
  const config = yaml.load(text);
  if (!config || typeof config !== "object") throw new Error("that is not a kubeconfig");
  const contexts = config.contexts || [];
  const current = contexts.find((c) => c.name === config["current-context"]) || contexts[0];
  const userName = current?.context?.user;
  const user = (config.users || []).find((u) => u.name === userName) || (config.users || [])[0];
  const token = user?.user?.token;
  if (!token) throw new Error("the kubeconfig's user has no token (client certificates cannot be used in a browser)");
  return { token, namespace: current?.context?.namespace || "" };
}

export function loginPage(main) {
  const token = h("input", { type: "password", name: "token", autocomplete: "off", spellcheck: "false" });
  const kubeconfig = h("textarea", { name: "kubeconfig", rows: 6, spellcheck: "false" });
  const file = h("input", { type: "file", accept: ".yaml,.yml,.conf,text/*" });
  const button = h("button", { type: "submit" }, "Log in");
  file.addEventListener("change", async () => {
    if (file.files[0]) kubeconfig.value = await file.files[0].text();
  });
  const form = h(
    "form",
    { class: "login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in to Converge"),
    h("p", {}, "Paste a bearer token, or the kubeconfig `converge serve` wrote (its token is used). ",
      "The token stays in this tab only and is forgotten when the tab closes."),
    field("Bearer token", token),
    h("p", { class: "or" }, "or"),
    field("Kubeconfig", kubeconfig, "Paste it, or choose the file below."),
    field("Kubeconfig file", file),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      let bearer = token.value.trim();
      let namespace = "";
      if (!bearer && kubeconfig.value.trim()) ({ token: bearer, namespace } = fromKubeconfig(kubeconfig.value));
      if (!bearer) throw new Error("give a token or a kubeconfig");
      const who = await whoAmI(bearer);
      session.begin(bearer, who);
      namespace = namespace || who.namespaces[0] || "";
      if (namespace) rememberNamespace(namespace);
      notify(`Logged in as ${who.subject || "a token"} (${who.role}).`);
      go(namespace ? `/ns/${namespace}/vms` : "/namespaces");
    } catch (e) {
      notify(e.code === 401 ? "The server refused that token (unknown, revoked or expired)." : `Cannot log in: ${e.message}`,
        "error");
      button.disabled = false;
    }
  });
  main.append(form);
  token.focus();
}
