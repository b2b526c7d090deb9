// DataVolumes with their import progress (live), and an upload from the browser through the
// upload proxy, as `virtctl image-upload` does it: a DataVolume with an upload source, a token
// for it once it is UploadReady, then the image POSTed with that token.
import { follow, post, paths } from "../api.js";
import { h, fill, table, age, progress, setProgress, field, notify } from "../dom.js";

/// CDI's progress ("45.20%", "N/A") as a number, or null.
export function percentOf(dv) {
  if (dv.status?.phase === "Succeeded") return 100;
  const m = /^([0-9]+(?:\.[0-9]+)?)%$/.exec(dv.status?.progress || "");
  return m ? Number(m[1]) : null;
}

function sourceOf(dv) {
  const s = dv.spec?.source || {};
  if (s.http) return `URL ${s.http.url}`;
  if (s.registry) return `registry ${s.registry.url}`;
  if (s.s3) return `S3 ${s.s3.url}`;
  if (s.upload) return "upload";
  if (s.blank) return "blank";
  if (s.pvc) return `clone of ${s.pvc.namespace || ""}/${s.pvc.name}`;
  if (dv.spec?.sourceRef) return `DataSource ${dv.spec.sourceRef.name}`;
  return Object.keys(s)[0] || "";
}

export function storagePage(main, ns) {
  const list = h("div", {}, h("p", {}, "Loading…"));
  main.append(h("h1", {}, "Storage ", h("span", { class: "muted" }, `in ${ns}`)), h("h2", {}, "DataVolumes"), list);
  let dvs = [];
  const waiting = new Map();
  const stop = follow(paths.dvs(ns), (items) => {
    dvs = items;
    fill(list, table(`DataVolumes in ${ns}`, ["Name", "Source", "Phase", "Progress", "Size", "Age"], items.map((dv) => [
      dv.metadata.name,
      sourceOf(dv),
      h("span", { "data-phase": dv.status?.phase || "" }, dv.status?.phase || "Pending"),
      progress(`Import progress of ${dv.metadata.name}`, percentOf(dv)),
      dv.spec?.storage?.resources?.requests?.storage || dv.spec?.pvc?.resources?.requests?.storage || "",
      age(dv.metadata.creationTimestamp),
    ]), "No DataVolumes here yet."));
    for (const [name, resolve] of waiting) {
      const dv = items.find((d) => d.metadata.name === name);
      if (dv && ["UploadReady", "Failed"].includes(dv.status?.phase)) {
        waiting.delete(name);
        resolve(dv);
      }
    }
  }, { onError: (e) => fill(list, h("p", { class: "error" }, `Cannot list DataVolumes: ${e.message}`)) });

  const ready = (name) => new Promise((resolve, reject) => {
    const dv = dvs.find((d) => d.metadata.name === name);
    if (dv && ["UploadReady", "Failed"].includes(dv.status?.phase)) {
      resolve(dv);
      return;
    }
    const timer = setTimeout(() => {
      waiting.delete(name);
      const phase = dvs.find((d) => d.metadata.name === name)?.status?.phase || "Pending";
      reject(new Error(`${name} was not ready for an upload within 5 minutes (it is ${phase}); its events say why`));
    }, 300_000);
    waiting.set(name, (v) => {
      clearTimeout(timer);
      resolve(v);
    });
  });
  main.append(uploadForm(ns, ready));
  return stop;
}

function uploadForm(ns, ready) {
  const name = h("input", { name: "dvName", autocomplete: "off", required: true });
  const size = h("input", { name: "dvSize", value: "1Gi" });
  const file = h("input", { type: "file", name: "image", required: true });
  const bar = progress("Upload progress", 0);
  const state = h("p", { class: "muted", role: "status", id: "upload-state" });
  const button = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "upload", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload an image"),
    field("DataVolume name", name), field("Size", size, "At least the image's virtual size"),
    field("Image file", file, "qcow2, raw, or either compressed (gz, xz)"), button, bar, state);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!name.value.trim() || !chosen) {
      fill(state, "Give a name and choose a file.");
      return;
    }
    button.disabled = true;
    const dvName = name.value.trim();
    try {
      fill(state, `Creating DataVolume ${dvName}…`);
      await post(paths.dvs(ns), { apiVersion: "cdi.kubevirt.io/v1beta1", kind: "DataVolume",
        metadata: { name: dvName, namespace: ns },
        spec: { source: { upload: {} }, storage: { resources: { requests: { storage: size.value.trim() } } } } });
      fill(state, "Waiting for the volume to be ready for the upload…");
      const dv = await ready(dvName);
      if (dv.status?.phase === "Failed") throw new Error(`the DataVolume failed: ${dv.status?.conditions?.at(-1)?.message || ""}`);
      const grant = await post(paths.uploadTokens(ns), { apiVersion: "upload.cdi.kubevirt.io/v1beta1",
        kind: "UploadTokenRequest", metadata: { name: dvName, namespace: ns }, spec: { pvcName: dvName } });
      fill(state, `Uploading ${chosen.name}…`);
      await send(chosen, grant.status.token, (percent) => setProgress(bar, percent));
      setProgress(bar, 100);
      fill(state, `Uploaded ${chosen.name} into ${dvName}.`);
      notify(`Uploaded ${chosen.name} into ${dvName}.`);
    } catch (e) {
      fill(state, `Upload failed: ${e.message}`);
      notify(`Upload failed: ${e.message}`, "error");
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/// XMLHttpRequest, not fetch: only it reports an upload's progress.
function send(file, token, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1beta1/upload");
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && e.total > 0) onProgress((100 * e.loaded) / e.total);
    };
    xhr.onload = () => (xhr.status >= 200 && xhr.status < 300 ? resolve() : reject(new Error(`HTTP ${xhr.status}: ${xhr.responseText.slice(0, 300)}`)));
    xhr.onerror = () => reject(new Error("the connection failed"));
    xhr.send(file);
  });
}
