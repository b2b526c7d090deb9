// The web console in a real browser: Playwright (playwright-core) driving Debian's chromium,
// headless, against a running `converge serve` with a node (tests/ui.rs starts it and passes:
//   CONVERGE_URL            https://127.0.0.1:PORT
//   CONVERGE_KUBECONFIG     the kubeconfig the server wrote (its admin token is used)
//   CONVERGE_IMAGE          the containerDisk the form boots (a disk with the busybox guest)
//   CONVERGE_UPLOAD_FILE    a small image to upload
//   CONVERGE_SCREENSHOTS    where screenshots go (test artefacts)
//   CHROMIUM                the browser (default /usr/bin/chromium)).
// Each step prints what it did; the first failure ends the run with a non-zero status and a
// screenshot of where it stood.
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import yaml from "js-yaml";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("CONVERGE_URL");
const kubeconfig = readFileSync(env("CONVERGE_KUBECONFIG"), "utf8");
const shots = env("CONVERGE_SCREENSHOTS");
mkdirSync(shots, { recursive: true });
rmSync(join(shots, "failure.png"), { force: true });
const VM = "webvm";
const BOOT = 180_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in CI needs --no-sandbox; the server's certificate is its own CA's.
  args: ["--no-sandbox", "--ignore-certificate-errors"],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  if (m.type() === "error" && !/401|409|Unauthorized|Conflict/.test(m.text())) problems.push(`console: ${m.text()}`);
});

let stepName = "start";
async function step(name, body) {
  stepName = name;
  const started = Date.now();
  await body();
  if (problems.length) throw new Error(problems.join("\n"));
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
const statusOf = () => page.locator("#vm-status").getAttribute("data-status");

try {
  await step("the console asks for a token, and takes a kubeconfig", async () => {
    await page.goto(`${base}/ui/`);
    await page.getByLabel("Bearer token").waitFor();
    await shot("login");
    await page.getByLabel("Kubeconfig", { exact: true }).fill(kubeconfig);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.waitForURL(/#\/(namespaces|ns\/)/);
    const url = page.url();
    if (url.includes("token") || url.includes(kubeconfig.slice(0, 20))) throw new Error(`a token in the URL: ${url}`);
    const stored = await page.evaluate(() => [sessionStorage.getItem("converge.token"), localStorage.length, document.cookie]);
    if (!stored[0] || stored[1] !== 0 || stored[2] !== "") throw new Error(`the token is kept elsewhere: ${stored}`);
  });

  await step("namespaces are listed, and lead to a namespace's VMs", async () => {
    await page.goto(`${base}/ui/#/namespaces`);
    await page.getByRole("link", { name: "default", exact: true }).click();
    await page.waitForURL(/#\/ns\/default\/vms$/);
    await page.getByText("No virtual machines here yet.").waitFor();
  });

  await step("the create form is usable by keyboard and labels every control", async () => {
    await page.getByRole("link", { name: "Create a VM" }).click();
    await page.getByLabel("Name", { exact: true }).waitFor();
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll("main input, main select, main textarea")]
        .filter((e) => !e.labels?.length && !e.getAttribute("aria-label")).map((e) => e.name));
    if (unlabelled.length) throw new Error(`controls without labels: ${unlabelled}`);
    // Typed, not filled: the form is driven by the keyboard alone.
    await page.keyboard.type(VM);
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    const focused = await page.evaluate(() => document.activeElement?.name);
    if (focused !== "cores") throw new Error(`Tab from the name went to ${focused}, not the cores`);
  });

  await step("a VM is created from the form with the JSON kubectl would send", async () => {
    await page.getByLabel("Memory").fill("128Mi");
    await page.getByLabel("Container image").fill(env("CONVERGE_IMAGE"));
    await page.getByLabel("SSH public keys").fill("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHmYl2t2S8lZ9B0v0F0v2Ww8S6s0PqkQ7zxZx5ZxZxZx test@ui");
    const sent = JSON.parse(await page.locator("pre.json").textContent());
    const tmpl = sent.spec.template.spec;
    if (sent.kind !== "VirtualMachine" || sent.spec.runStrategy !== "Always" || tmpl.domain.resources.requests.memory !== "128Mi"
      || tmpl.volumes[0].containerDisk.image !== env("CONVERGE_IMAGE") || !tmpl.volumes[1].cloudInitNoCloud.userData.includes("ssh_authorized_keys")) {
      throw new Error(`the preview is not the VM asked for: ${JSON.stringify(sent)}`);
    }
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot("create-form");
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    await page.getByRole("button", { name: "Create", exact: true }).click();
    await page.waitForURL(new RegExp(`#/ns/default/vms/${VM}$`));
  });

  await step("the VM reaches Running without a reload (a watch)", async () => {
    await page.waitForFunction(() => document.querySelector("#vm-status")?.dataset.status === "Running", null, { timeout: BOOT });
    if (!(await page.evaluate(() => window.__sameDocument))) throw new Error("the page was reloaded");
    await page.getByRole("cell", { name: "rootdisk" }).waitFor();
    await page.getByText("container image").first().waitFor();
  });

  await step("pause and unpause, live", async () => {
    await page.getByRole("button", { name: `Pause ${VM}` }).click();
    await page.waitForFunction(() => document.querySelector("#vm-status")?.dataset.status === "Paused", null, { timeout: 30_000 });
    await page.getByRole("button", { name: `Unpause ${VM}` }).click();
    await page.waitForFunction(() => document.querySelector("#vm-status")?.dataset.status === "Running", null, { timeout: 30_000 });
  });

  await step("markup in an Event's message is shown as text, never run (a hostile tenant's event)", async () => {
    await page.evaluate(async (name) => {
      const token = sessionStorage.getItem("converge.token");
      const r = await fetch("/api/v1/namespaces/default/events", { method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ apiVersion: "v1", kind: "Event", metadata: { name: `${name}.hostile`, namespace: "default" },
          involvedObject: { apiVersion: "kubevirt.io/v1", kind: "VirtualMachine", name, namespace: "default" },
          reason: "Hostile", type: "Warning",
          message: '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>' }) });
      if (r.status !== 201) throw new Error(`event: ${r.status} ${await r.text()}`);
    }, VM);
    await page.getByText('<img src=x onerror="window.__pwned=1">', { exact: false }).waitFor();
    const ran = await page.evaluate(() => window.__pwned || document.querySelectorAll("main img, main script").length);
    if (ran) throw new Error(`the markup became elements or ran: ${ran}`);
  });

  await step("the VM list shows it Running on its node", async () => {
    await page.getByRole("link", { name: /Virtual machines in default/ }).click();
    const row = page.getByRole("row", { name: new RegExp(VM) });
    await row.getByText("Running").waitFor();
    await row.getByText("node-1").waitFor();
    // The pod address, when the node reports it, without a reload.
    await row.getByRole("cell", { name: /^\d+\.\d+\.\d+\.\d+$/ }).waitFor({ timeout: 60_000 });
    await shot("vm-list");
  });

  await step("a command typed in the serial console answers there", async () => {
    await page.goto(`${base}/ui/#/ns/default/vms/${VM}/console`);
    await page.getByText("Connected to the serial console.").waitFor({ timeout: 30_000 });
    await page.locator("#serial-console").click();
    // The shell may still be starting: ask until it answers.
    const deadline = Date.now() + 60_000;
    let answered = false;
    while (!answered && Date.now() < deadline) {
      await page.keyboard.type("echo ui-$((6*7))\n");
      answered = await page.waitForFunction(() => document.querySelector("#serial-console .xterm-rows")?.textContent.includes("ui-42"),
        null, { timeout: 5_000 }).then(() => true, () => false);
    }
    if (!answered) throw new Error(`no answer: ${await page.locator("#serial-console .xterm-rows").textContent()}`);
    // Escape then Tab leaves the terminal: a keyboard user is not trapped in it.
    await page.keyboard.press("Escape");
    await page.keyboard.press("Tab");
    const inside = await page.evaluate(() => document.querySelector("#serial-console").contains(document.activeElement));
    if (inside) throw new Error("Escape, Tab left the focus in the terminal");
    if (!(await page.title()).startsWith(VM)) throw new Error(`the page's title is ${await page.title()}`);
    await shot("vm-console");
  });

  await step("the VNC canvas draws the guest's screen", async () => {
    await page.getByRole("link", { name: "VNC" }).click();
    await page.getByText("Connected to the screen.").waitFor({ timeout: 30_000 });
    const drawn = await page.waitForFunction(() => {
      const canvas = document.querySelector("#vnc-screen canvas");
      if (!canvas || !canvas.width || !canvas.height) return false;
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < data.length; i += 4) if (data[i] || data[i + 1] || data[i + 2]) return true;
      return false;
    }, null, { timeout: 30_000 }).then(() => true, () => false);
    if (!drawn) throw new Error("the canvas stayed blank");
    await shot("vm-vnc");
  });

  await step("a YAML save over someone else's change is a 409, shown as such; after a reload it saves", async () => {
    await page.getByRole("link", { name: "YAML" }).click();
    const editor = page.getByRole("textbox", { name: "YAML" });
    await page.getByText(/Loaded at resourceVersion/).waitFor();
    // Someone else changes the VM meanwhile.
    await page.evaluate(async (name) => {
      const token = sessionStorage.getItem("converge.token");
      const r = await fetch(`/apis/kubevirt.io/v1/namespaces/default/virtualmachines/${name}`, {
        method: "PATCH", headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/merge-patch+json" },
        body: JSON.stringify({ metadata: { labels: { changed: "elsewhere" } } }),
      });
      if (!r.ok) throw new Error(`patch: ${r.status}`);
    }, VM);
    const withLabel = (text) => {
      const obj = yaml.load(text);
      obj.metadata.labels = { ...(obj.metadata.labels || {}), edited: "in-the-browser" };
      return yaml.dump(obj);
    };
    await editor.fill(withLabel(await editor.inputValue()));
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator(".conflict").getByText("Conflict (409)").waitFor();
    await shot("vm-yaml-conflict");
    // Saved after a reload; a status write between the reload and the save is a real conflict
    // too, so it may take a second round.
    for (let round = 0; ; round++) {
      await page.getByRole("button", { name: "Reload" }).click();
      await page.waitForFunction(() => !document.querySelector(".conflict")
        && document.querySelector("textarea.yaml")?.value.includes("changed: elsewhere"));
      await editor.fill(withLabel(await editor.inputValue()));
      await page.getByRole("button", { name: "Save" }).click();
      const saved = await page.getByText(/Saved: resourceVersion/).waitFor({ timeout: 10_000 }).then(() => true, () => false);
      if (saved) break;
      if (round === 2) throw new Error("three saves in a row met a conflict");
    }
    const labels = await page.evaluate(async (name) => {
      const token = sessionStorage.getItem("converge.token");
      const r = await fetch(`/apis/kubevirt.io/v1/namespaces/default/virtualmachines/${name}`, { headers: { Authorization: `Bearer ${token}` } });
      return (await r.json()).metadata.labels;
    }, VM);
    if (labels?.edited !== "in-the-browser" || labels?.changed !== "elsewhere") throw new Error(`labels after the save: ${JSON.stringify(labels)}`);
  });

  await step("stop, from the VM's page, shows Stopping live; force stop reaches Stopped", async () => {
    await page.getByRole("link", { name: "Overview" }).click();
    await page.getByRole("button", { name: `Stop ${VM}` }).click();
    // The busybox guest ignores the ACPI power button: it stops only when forced.
    await page.waitForFunction(() => document.querySelector("#vm-status")?.dataset.status === "Stopping", null, { timeout: 30_000 });
    await page.getByRole("button", { name: `Force stop ${VM}` }).click();
    await page.waitForFunction(() => document.querySelector("#vm-status")?.dataset.status === "Stopped", null, { timeout: 90_000 });
    await page.getByRole("button", { name: `Start ${VM}` }).waitFor();
    await shot("vm-page");
  });

  await step("an image uploaded from the browser fills its bar to 100 %", async () => {
    await page.getByRole("link", { name: "Storage" }).click();
    await page.getByLabel("DataVolume name").fill("uploaded");
    await page.getByLabel("Size", { exact: true }).fill("64Mi");
    await page.getByLabel("Image file").setInputFiles(env("CONVERGE_UPLOAD_FILE"));
    await page.getByRole("button", { name: "Upload" }).click();
    await page.locator("#upload-state").getByText(/^Uploaded .* into uploaded\.$/).waitFor({ timeout: 90_000 });
    const value = await page.getByRole("progressbar", { name: "Upload progress" }).getAttribute("aria-valuenow");
    if (value !== "100.0") throw new Error(`the bar ended at ${value}`);
    const row = page.getByRole("row", { name: /uploaded/ });
    await row.locator('[data-phase="Succeeded"]').waitFor({ timeout: 60_000 });
    await shot("storage");
  });

  await step("the hosts page lists /bridge/v1 records with their steps", async () => {
    // A pipeline provisions a host through the bridge.
    await page.evaluate(async () => {
      const token = sessionStorage.getItem("converge.token");
      const r = await fetch("/bridge/v1/hosts", { method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ name: "pipeline-host", memory: "128Mi", start: false,
          disks: [{ name: "root", size: "16Mi", source: { blank: {} } }] }) });
      if (r.status >= 300) throw new Error(`host: ${r.status} ${await r.text()}`);
    });
    await page.getByRole("link", { name: "Hosts" }).click();
    const card = page.getByRole("article", { name: "Host default/pipeline-host" });
    await card.getByRole("table", { name: "Steps of default/pipeline-host" }).waitFor();
    await card.getByRole("cell", { name: /VirtualMachine pipeline-host/ }).waitFor();
    await shot("hosts");
  });

  await step("at a phone's width nothing overflows sideways", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(`${base}/ui/#/ns/default/vms`);
    await page.getByRole("row", { name: new RegExp(VM) }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) throw new Error(`the page is ${overflow}px wider than the screen`);
    await shot("phone-vm-list");
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await step("axe-core finds no serious or critical accessibility problem on any page", async () => {
    // A context of its own that lets axe's script in (the console's policy would refuse it).
    const audit = await browser.newContext({ ignoreHTTPSErrors: true, bypassCSP: true, viewport: { width: 1280, height: 800 } });
    const tab = await audit.newPage();
    const axe = readFileSync(new URL("../node_modules/axe-core/axe.min.js", import.meta.url), "utf8");
    const token = await page.evaluate(() => sessionStorage.getItem("converge.token"));
    await tab.goto(`${base}/ui/#/login`);
    await tab.addScriptTag({ content: axe });
    const problems = [];
    const check = async (where) => {
      await tab.waitForFunction(() => document.querySelector("main h1") && !document.querySelector("main")?.textContent.includes("Loading…"));
      const found = await tab.evaluate(async () => (await window.axe.run(document, { resultTypes: ["violations"] })).violations
        .filter((v) => ["serious", "critical"].includes(v.impact))
        .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join(", ")}`));
      for (const f of found) problems.push(`${where}: ${f}`);
    };
    await check("#/login");
    await tab.evaluate((t) => sessionStorage.setItem("converge.token", t), token);
    for (const hash of ["#/namespaces", "#/ns/default/vms", `#/ns/default/vms/${VM}`, `#/ns/default/vms/${VM}/yaml`,
      "#/ns/default/create", "#/ns/default/storage", "#/hosts"]) {
      await tab.evaluate((h) => {
        location.hash = h;
      }, hash);
      await tab.waitForTimeout(300);
      await check(hash);
    }
    // And at a phone's width, where tables scroll sideways.
    await tab.setViewportSize({ width: 390, height: 844 });
    await check("#/hosts (phone)");
    await tab.evaluate(() => {
      location.hash = "#/ns/default/vms";
    });
    await tab.waitForTimeout(300);
    await check("#/ns/default/vms (phone)");
    await audit.close();
    if (problems.length) throw new Error(`accessibility problems:\n${problems.join("\n")}`);
  });

  await step("delete asks first, then the VM goes from the list", async () => {
    await page.getByRole("button", { name: `Delete ${VM}` }).click();
    const dialog = page.getByRole("dialog");
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await page.getByRole("row", { name: new RegExp(VM) }).waitFor();
    await page.getByRole("button", { name: `Delete ${VM}` }).click();
    await dialog.getByRole("button", { name: `Delete ${VM}` }).click();
    await page.getByRole("row", { name: new RegExp(VM) }).waitFor({ state: "detached", timeout: 60_000 });
  });

  await step("a tenant's token lands in its namespace; once expired, the tab goes back to the login page", async () => {
    // An admin issues a token for default that lives five seconds.
    const issued = await page.evaluate(async () => {
      const token = sessionStorage.getItem("converge.token");
      const r = await fetch("/converge/v1/tokens", { method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ subject: "short-lived", role: "edit", namespaces: ["default"], ttlSeconds: 8 }) });
      if (r.status !== 201) throw new Error(`token: ${r.status} ${await r.text()}`);
      return (await r.json()).token;
    });
    const expires = Date.now() + 8_000;
    const short = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
    const tab = await short.newPage();
    await tab.goto(`${base}/ui/`);
    await tab.getByLabel("Bearer token").fill(issued);
    await tab.getByRole("button", { name: "Log in" }).click();
    await tab.waitForURL(/#\/ns\/default\/vms$/);
    await tab.getByRole("row", { name: /pipeline-host/ }).waitFor();
    const wait = expires - Date.now() + 1500;
    if (wait > 0) await tab.waitForTimeout(wait);
    await tab.getByRole("link", { name: "Storage" }).click();
    await tab.waitForURL(/#\/login$/);
    await tab.getByText("Your session has expired").waitFor();
    if (await tab.evaluate(() => sessionStorage.getItem("converge.token"))) throw new Error("the expired token was kept");
    await tab.screenshot({ path: join(shots, "expired.png") });
    await short.close();
  });
  console.log("all steps passed");
} catch (e) {
  console.error(`FAILED at "${stepName}": ${e.stack || e}`);
  await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
