// Small DOM helpers: every page builds its nodes with h(), never with innerHTML, so text from the
// API (names, messages, YAML) is always text and never markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "value") el.value = value;
    else if (key === "checked") el.checked = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/// Replaces what `el` holds.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/// An empty table in a scrolling wrapper (phones), with a caption for screen readers; the
/// wrapper takes focus so the keyboard can scroll it too. Its rows go into `tbody`.
export function tableShell(caption, headers) {
  const tbody = h("tbody");
  const wrap = h(
    "div",
    { class: "table-wrap", tabindex: 0, role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      tbody,
    ),
  );
  return { wrap, tbody };
}

/// A table of `rows` (arrays of cells), or `empty` when there are none.
export function table(caption, headers, rows, empty = "None.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  const { wrap, tbody } = tableShell(caption, headers);
  tbody.append(...rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))));
  return wrap;
}

/// "3m", "2h", "5d": the age column kubectl prints.
export function age(timestamp, now = Date.now()) {
  const then = Date.parse(timestamp || "");
  if (Number.isNaN(then)) return "";
  const s = Math.max(0, Math.floor((now - then) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/// A progress bar that screen readers announce; `percent` is 0–100 or null (unknown).
export function progress(label, percent) {
  const known = typeof percent === "number" && Number.isFinite(percent);
  const bar = h(
    "div",
    { class: "progress", role: "progressbar", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100 },
    h("div", { class: "progress-fill" }),
    h("span", { class: "progress-text" }),
  );
  if (known) setProgress(bar, percent);
  else {
    bar.setAttribute("aria-valuetext", "unknown");
    bar.querySelector(".progress-text").textContent = "—";
  }
  return bar;
}

/// Sets a progress bar made by progress().
export function setProgress(bar, percent) {
  const value = Math.max(0, Math.min(100, percent));
  bar.setAttribute("aria-valuenow", value.toFixed(1));
  bar.setAttribute("aria-valuetext", `${value.toFixed(1)}%`);
  bar.querySelector(".progress-fill").style.width = `${value}%`;
  bar.querySelector(".progress-text").textContent = `${value.toFixed(1)}%`;
}

/// Shows a message in the page's live region (announced by screen readers).
export function notify(message, kind = "info") {
  const box = document.getElementById("notice");
  if (!box) return;
  box.dataset.at = String(Date.now());
  fill(box, message ? h("p", { class: `notice notice-${kind}` }, message) : null);
}

/// Clears a message left from an earlier page; one set just now (say, by the action that moved
/// here) stays.
export function clearStaleNotice() {
  const box = document.getElementById("notice");
  if (box && Date.now() - Number(box.dataset.at || 0) > 1500) fill(box);
}

/// Asks before something that cannot be undone; resolves true when confirmed. A native <dialog>:
/// focus moves into it, Escape cancels.
export function confirmDialog(question, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-q" },
      h("form", { method: "dialog" },
        h("p", { id: "confirm-q" }, question),
        h("div", { class: "buttons" },
          h("button", { value: "cancel", class: "secondary", autofocus: true }, "Cancel"),
          h("button", { value: "ok", class: "danger" }, confirmLabel))),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const hintEl = hint ? h("small", { id: `${id}-hint`, class: "hint" }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hintEl);
}
