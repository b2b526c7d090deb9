// Builds the web console's assets into dist/ (committed; `converge serve` embeds them, and the
// page src/index.html as it is, with include_bytes!): dist/assets/app.js (every module,
// xterm.js, noVNC and js-yaml in one ES module), dist/assets/app.css (ours and xterm.js's).
// `node build.mjs --check` builds into a scratch directory and fails when dist/ differs from it,
// so a change to src/ or to the lockfile that was not rebuilt cannot land.
import * as esbuild from "esbuild";
import { mkdtempSync, readFileSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const check = process.argv.includes("--check");
const out = check ? mkdtempSync(join(tmpdir(), "converge-ui-")) : join(here, "dist");
const files = ["assets/app.js", "assets/app.css"];

mkdirSync(join(out, "assets"), { recursive: true });
await esbuild.build({
  entryPoints: { app: join(here, "src/main.js") },
  bundle: true,
  format: "esm",
  // noVNC uses top-level await; every browser with ES2022 modules runs this.
  target: ["es2022"],
  minify: true,
  legalComments: "eof",
  outdir: join(out, "assets"),
  loader: { ".css": "css" },
  logLevel: "warning",
});

if (check) {
  const stale = files.filter((f) => !readFileSync(join(out, f)).equals(readFileSync(join(here, "dist", f))));
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`api/ui/dist is stale (${stale.join(", ")}): run \`npm --prefix api/ui run build\` and commit dist/`);
    process.exit(1);
  }
  console.log("api/ui/dist matches its sources");
}
