// The serial console in xterm.js and the screen in noVNC, each over the VMI's websocket
// subresource (`plain.kubevirt.io`, binary frames, the token in a subprotocol), as virtctl uses
// them. One serial client at a time: opening this console takes the port over from another.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import RFB from "@novnc/novnc";
import { openSocket, paths } from "./api.js";
import { h, fill } from "./dom.js";

function statusLine() {
  return h("p", { class: "console-status muted", role: "status" }, "Connecting…");
}

/// Waits for the guest to run before it connects, and offers to connect again after a drop.
function consoleFrame(content, { connect, label }) {
  const status = statusLine();
  const again = h("button", { type: "button", class: "secondary small", hidden: true }, "Connect again");
  content.append(h("div", { class: "console-bar" }, status, again));
  let session = null;
  let running = false;
  let closed = false;

  function start() {
    if (closed || session) return;
    again.hidden = true;
    fill(status, "Connecting…");
    session = connect({
      opened: () => fill(status, `Connected to the ${label}.`),
      ended: (why) => {
        session = null;
        fill(status, why);
        if (!closed) again.hidden = false;
      },
    });
  }

  again.addEventListener("click", start);
  return {
    update(vm, vmi) {
      const nowRunning = vmi?.status?.phase === "Running";
      if (nowRunning && !running) start();
      if (!nowRunning && !session) fill(status, `The guest is not running (${vmi?.status?.phase || "no guest"}): the ${label} opens once it runs.`);
      running = nowRunning;
    },
    close() {
      closed = true;
      session?.close();
    },
  };
}

export function serialConsole(content, ns, name) {
  const screen = h("div", { class: "terminal", id: "serial-console", "aria-label": `Serial console of ${name}` });
  const hint = h("p", { class: "muted" }, "Keys typed in the console go to the guest; Tab moves focus out only with ",
    h("kbd", {}, "Escape"), " then ", h("kbd", {}, "Tab"), ".");
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace" });
  const fit = new FitAddon();
  term.loadAddon(fit);
  const frame = consoleFrame(content, {
    label: "serial console",
    connect: ({ opened, ended }) => {
      const socket = openSocket(paths.vmiAction(ns, name, "console"));
      const encoder = new TextEncoder();
      const typed = term.onData((data) => {
        if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
      });
      socket.onopen = () => {
        opened();
        term.focus();
      };
      socket.onmessage = (event) => term.write(new Uint8Array(event.data));
      socket.onclose = (event) => {
        typed.dispose();
        ended(event.code === 1000 ? "The console closed." : `The console closed (${event.code}${event.reason ? `: ${event.reason}` : ""}).`);
      };
      return { close: () => socket.close(1000) };
    },
  });
  content.append(hint, screen);
  term.open(screen);
  // Escape then Tab leaves the terminal, so a keyboard user is never trapped in it.
  let escaped = false;
  term.attachCustomKeyEventHandler((e) => {
    if (e.type !== "keydown") return true;
    if (e.key === "Tab" && escaped) {
      escaped = false;
      return false;
    }
    escaped = e.key === "Escape";
    return true;
  });
  fit.fit();
  const resize = () => fit.fit();
  window.addEventListener("resize", resize);
  return {
    update: frame.update,
    close() {
      window.removeEventListener("resize", resize);
      frame.close();
      term.dispose();
    },
  };
}

export function vncConsole(content, ns, name) {
  const screen = h("div", { class: "vnc", id: "vnc-screen", "aria-label": `Screen of ${name}` });
  const cad = h("button", { type: "button", class: "secondary small", disabled: true }, "Send Ctrl+Alt+Del");
  let rfb = null;
  const frame = consoleFrame(content, {
    label: "screen",
    connect: ({ opened, ended }) => {
      rfb = new RFB(screen, openSocket(paths.vmiAction(ns, name, "vnc")), { shared: true });
      rfb.scaleViewport = true;
      rfb.focusOnClick = true;
      rfb.addEventListener("connect", () => {
        cad.disabled = false;
        opened();
      });
      rfb.addEventListener("disconnect", (e) => {
        cad.disabled = true;
        rfb = null;
        ended(e.detail?.clean ? "The screen closed." : "The screen's connection dropped.");
      });
      return { close: () => rfb?.disconnect() };
    },
  });
  cad.addEventListener("click", () => rfb?.sendCtrlAltDel());
  content.append(h("div", { class: "buttons" }, cad), screen);
  return frame;
}
