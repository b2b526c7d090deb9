// An object's YAML to read and edit. Save PUTs it with the resourceVersion it was loaded at, so
// a change made meanwhile by someone else is a 409 the page shows as such (the text is kept),
// never a silent overwrite.
import yaml from "js-yaml";
import { get, put } from "./api.js";
import { h, fill, field } from "./dom.js";

/// The object as an editor shows it: without managedFields, which nobody edits by hand.
export function editable(obj) {
  const copy = structuredClone(obj);
  if (copy?.metadata) delete copy.metadata.managedFields;
  return yaml.dump(copy, { noRefs: true, lineWidth: 120 });
}

export function yamlEditor(content, path) {
  const text = h("textarea", { class: "yaml", rows: 28, spellcheck: "false", autocomplete: "off",
    "aria-describedby": "yaml-state" });
  const state = h("p", { id: "yaml-state", class: "muted", role: "status" });
  const save = h("button", { type: "submit" }, "Save");
  const reload = h("button", { type: "button", class: "secondary" }, "Reload");
  const problems = h("div", { role: "alert" });
  let loadedVersion = "";
  let dirty = false;

  async function load() {
    const obj = await get(path);
    loadedVersion = obj.metadata?.resourceVersion || "";
    text.value = editable(obj);
    dirty = false;
    fill(problems);
    fill(state, `Loaded at resourceVersion ${loadedVersion}.`);
  }

  text.addEventListener("input", () => {
    dirty = true;
  });
  reload.addEventListener("click", () => load().catch((e) => fill(problems, h("p", { class: "error" }, e.message))));
  const form = h("form", { class: "yaml-form" }, field("YAML", text), state, problems,
    h("div", { class: "buttons" }, save, reload));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(problems);
    let obj;
    try {
      obj = yaml.load(text.value);
    } catch (e) {
      fill(problems, h("p", { class: "error" }, `Not valid YAML: ${e.message}`));
      return;
    }
    save.disabled = true;
    try {
      const stored = await put(path, obj);
      loadedVersion = stored.metadata?.resourceVersion || "";
      text.value = editable(stored);
      dirty = false;
      fill(state, `Saved: resourceVersion ${loadedVersion}.`);
    } catch (e) {
      if (e.code === 409) {
        fill(problems, h("p", { class: "error conflict", "data-code": "409" },
          "Conflict (409): this object changed on the server since you loaded it. Your text is kept here; ",
          "Reload to start again from the stored version, or copy your change first. ", h("br"),
          `The server said: ${e.message}`));
      } else {
        const causes = e.causes ? e.causes() : [];
        fill(problems, h("div", { class: "error" }, h("p", {}, `Not saved (${e.code || "error"}): ${e.message}`),
          causes.length ? h("ul", {}, causes.map((c) => h("li", {}, c))) : null));
      }
    } finally {
      save.disabled = false;
    }
  });
  content.append(form);
  load().catch((e) => fill(problems, h("p", { class: "error" }, e.message)));
  return {
    update(vm) {
      const version = vm?.metadata?.resourceVersion;
      if (version && loadedVersion && version !== loadedVersion) {
        fill(state, dirty
          ? `Changed on the server (now ${version}) while you edit: saving will be refused with a conflict.`
          : `Changed on the server (now ${version}); Reload to see it.`);
      }
    },
  };
}
