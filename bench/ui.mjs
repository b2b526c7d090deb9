// P7: the web console's speed, in Debian's chromium (Playwright), against a running server.
//   - first render: a VM list of N VMs, from the hash change to N rows in the table;
//   - watch latency: a VM created through the API, until its row is in the console's table,
//     beside `kubectl get vms --watch` seeing the same create (the baseline: the same watch,
//     read by the client every Kubernetes user has, without a page to draw). Both observe the
//     same POST, so the ratio is the console's cost over the watch itself.
// Run by bench/ui (which starts `converge serve`); prints figures and writes --json.
//   node bench/ui.mjs URL DATA_DIR N ROUNDS [JSON]
import { chromium } from "../api/ui/node_modules/playwright-core/index.mjs";
import { readFileSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { join } from "node:path";

const [base, dataDir, nArg = "1000", roundsArg = "30", jsonOut] = process.argv.slice(2);
const N = Number(nArg);
const ROUNDS = Number(roundsArg);
const token = readFileSync(join(dataDir, "admin.token"), "utf8").trim();
const VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

function vm(name) {
  return { apiVersion: "kubevirt.io/v1", kind: "VirtualMachine", metadata: { name, namespace: "default" },
    spec: { runStrategy: "Halted", template: { spec: { domain: { devices: {}, resources: { requests: { memory: "64Mi" } } } } } } };
}

async function create(name) {
  const r = await fetch(`${base}${VMS}`, { method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, body: JSON.stringify(vm(name)) });
  if (r.status !== 201) throw new Error(`create ${name}: ${r.status} ${await r.text()}`);
}

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

// N VMs, 16 creates at a time.
for (let i = 0; i < N; i += 16) {
  await Promise.all(Array.from({ length: Math.min(16, N - i) }, (_, k) => create(`bench-${String(i + k).padStart(5, "0")}`)));
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--ignore-certificate-errors"] });
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
await context.addInitScript((t) => sessionStorage.setItem("converge.token", t), token);
const page = await context.newPage();
await page.goto(`${base}/ui/#/namespaces`);
await page.getByRole("link", { name: "default", exact: true }).waitFor();

const renders = [];
for (let round = 0; round < 5; round++) {
  await page.evaluate(() => {
    location.hash = "#/namespaces";
  });
  await page.getByRole("link", { name: "default", exact: true }).waitFor();
  const ms = await page.evaluate((n) => new Promise((resolve) => {
    const started = performance.now();
    location.hash = "#/ns/default/vms";
    const poll = () => {
      if (document.querySelectorAll("main tbody tr").length >= n) resolve(performance.now() - started);
      else requestAnimationFrame(poll);
    };
    poll();
  }), N);
  renders.push(ms);
}

// The console's table and kubectl, both watching, see the same creates.
await page.evaluate(() => {
  window.__seen = {};
  const body = document.querySelector("main");
  new MutationObserver(() => {
    for (const a of body.querySelectorAll("tbody tr td:first-child a")) {
      if (!window.__seen[a.textContent]) window.__seen[a.textContent] = Date.now();
    }
  }).observe(body, { childList: true, subtree: true });
});
const kubectlSeen = {};
const kubectl = spawn("kubectl", ["--kubeconfig", join(dataDir, "kubeconfig"), "get", "vms", "-n", "default", "--watch",
  "--watch-only", "-o", "name"], { stdio: ["ignore", "pipe", "inherit"] });
let buffered = "";
kubectl.stdout.on("data", (chunk) => {
  const now = Date.now();
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf("\n")) >= 0) {
    const name = buffered.slice(0, nl).trim().split("/").pop();
    buffered = buffered.slice(nl + 1);
    if (name && !kubectlSeen[name]) kubectlSeen[name] = now;
  }
});
await new Promise((r) => setTimeout(r, 2000)); // kubectl's discovery and watch are open
const ui = [];
const cli = [];
for (let round = 0; round < ROUNDS; round++) {
  const name = `late-${round}`;
  const sent = Date.now();
  await create(name);
  const deadline = Date.now() + 10_000;
  let seen;
  while (Date.now() < deadline) {
    seen = await page.evaluate((n) => window.__seen[n], name);
    if (seen && kubectlSeen[name]) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  if (!seen || !kubectlSeen[name]) throw new Error(`round ${round}: the console saw ${seen}, kubectl ${kubectlSeen[name]}`);
  ui.push(seen - sent);
  cli.push(kubectlSeen[name] - sent);
  await new Promise((r) => setTimeout(r, 200));
}
kubectl.kill();
await browser.close();

const result = {
  vms: N,
  first_render_ms: { median: quantile(renders, 0.5), max: Math.max(...renders) },
  watch_latency_ms: {
    console: { median: quantile(ui, 0.5), p95: quantile(ui, 0.95) },
    kubectl: { median: quantile(cli, 0.5), p95: quantile(cli, 0.95) },
    ratio_median: quantile(ui, 0.5) / quantile(cli, 0.5),
  },
};
console.log(`P7 web console, ${N} VMs in the namespace:`);
console.log(`  first render of the VM list: median ${result.first_render_ms.median.toFixed(0)} ms (5 rounds, max ${result.first_render_ms.max.toFixed(0)})`);
console.log(`  create → row in the console: median ${result.watch_latency_ms.console.median} ms, p95 ${result.watch_latency_ms.console.p95} ms`);
console.log(`  create → kubectl --watch line: median ${result.watch_latency_ms.kubectl.median} ms, p95 ${result.watch_latency_ms.kubectl.p95} ms`);
console.log(`  ratio (console / kubectl, medians): ${result.watch_latency_ms.ratio_median.toFixed(2)}x over ${ROUNDS} creates`);
if (jsonOut) writeFileSync(jsonOut, JSON.stringify(result, null, 2));
