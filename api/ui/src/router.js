// Moving between pages: a hash change, which the shell (main.js) renders.

export function target() {
  return location.hash.replace(/^#/, "") || "/";
}

export function go(path) {
  if (target() === path) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = `#${path}`;
}
