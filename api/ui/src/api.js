// The API as the console speaks it: bearer requests, watches over a streamed response, and
// websockets with the token in a subprotocol. The token lives in this tab's sessionStorage only:
// never in a URL, a cookie or localStorage.

const TOKEN_KEY = "converge.token";
const WHO_KEY = "converge.who";

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  who: () => {
    try {
      return JSON.parse(sessionStorage.getItem(WHO_KEY) || "null");
    } catch {
      return null;
    }
  },
  begin(token, who) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(WHO_KEY, JSON.stringify(who));
  },
  end() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(WHO_KEY);
  },
};

/// A request the server refused: `status` is the Kubernetes Status it sent, when it sent one.
export class ApiFailure extends Error {
  constructor(code, status, fallback) {
    super(status?.message || status?.error?.message || fallback || `HTTP ${code}`);
    this.code = code;
    this.status = status;
  }

  /// The field causes of a 422, as "field: message" lines.
  causes() {
    return (this.status?.details?.causes || []).map((c) => (c.field ? `${c.field}: ${c.message}` : c.message));
  }
}

let onExpired = () => {};

/// What to do when the server no longer takes the token (the router sends the tab to login).
export function whenExpired(handler) {
  onExpired = handler;
}

function expired() {
  session.end();
  onExpired();
}

function headers(token, extra = {}) {
  return { Authorization: `Bearer ${token}`, Accept: "application/json", ...extra };
}

async function failure(resp) {
  let status = null;
  try {
    status = await resp.json();
  } catch {
    // Not JSON: the code alone says it.
  }
  return new ApiFailure(resp.status, status, resp.statusText);
}

/// One request with the session's token (or `token`, at login). A 401 ends the session.
export async function request(method, path, { body, contentType = "application/json", token, signal } = {}) {
  const bearer = token || session.token();
  if (!bearer) {
    expired();
    throw new ApiFailure(401, null, "Not logged in");
  }
  const init = { method, headers: headers(bearer), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = contentType;
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401 && !token) {
    expired();
  }
  if (!resp.ok) throw await failure(resp);
  if (resp.status === 204) return null;
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, body, opts) => request("POST", path, { ...opts, body });
export const put = (path, body, opts) => request("PUT", path, { ...opts, body });
export const del = (path, body) => request("DELETE", path, { body });

/// Collection paths of the kinds the console shows.
export const paths = {
  namespaces: () => "/api/v1/namespaces",
  vms: (ns) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachines`,
  vm: (ns, name) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachines/${enc(name)}`,
  vmis: (ns) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstances`,
  vmi: (ns, name) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstances/${enc(name)}`,
  migrations: (ns) => `/apis/kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstancemigrations`,
  events: (ns) => `/api/v1/namespaces/${enc(ns)}/events`,
  dvs: (ns) => `/apis/cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/datavolumes`,
  dv: (ns, name) => `/apis/cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/datavolumes/${enc(name)}`,
  dataSources: (ns) => `/apis/cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/datasources`,
  uploadTokens: (ns) => `/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/${enc(ns)}/uploadtokenrequests`,
  instancetypes: (ns) => `/apis/instancetype.kubevirt.io/v1beta1/namespaces/${enc(ns)}/virtualmachineinstancetypes`,
  clusterInstancetypes: () => "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes",
  nads: (ns) => `/apis/k8s.cni.cncf.io/v1/namespaces/${enc(ns)}/network-attachment-definitions`,
  vmAction: (ns, name, action) =>
    `/apis/subresources.kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachines/${enc(name)}/${action}`,
  vmiAction: (ns, name, action) =>
    `/apis/subresources.kubevirt.io/v1/namespaces/${enc(ns)}/virtualmachineinstances/${enc(name)}/${action}`,
  hosts: () => "/bridge/v1/hosts",
};

function enc(s) {
  return encodeURIComponent(s);
}

/// Lists `path` and follows it with a watch from the list's resourceVersion, calling
/// `onChange(items)` with the whole current set after every change; re-lists after a 410 or a
/// dropped stream. Returns a function that stops it.
export function follow(path, onChange, { onError = () => {}, query = "" } = {}) {
  const objects = new Map();
  const abort = new AbortController();
  let stopped = false;
  const key = (o) => `${o.metadata?.namespace || ""}/${o.metadata?.name}`;
  // A burst of events (a hundred VMs starting) redraws once per 40 ms, not a hundred times; a
  // lone event is drawn at once.
  let pending = null;
  let last = 0;
  const deliver = () => {
    pending = null;
    last = performance.now();
    if (!stopped) onChange([...objects.values()].sort((a, b) => key(a).localeCompare(key(b))));
  };
  const emit = () => {
    if (pending === null) pending = setTimeout(deliver, Math.max(0, last + 40 - performance.now()));
  };
  const sep = query ? "&" : "";

  async function list() {
    const l = await get(`${path}?${query}`, { signal: abort.signal });
    objects.clear();
    for (const o of l.items || []) objects.set(key(o), o);
    emit();
    return l.metadata?.resourceVersion || "";
  }

  async function watch(resourceVersion) {
    const url = `${path}?${query}${sep}watch=true&allowWatchBookmarks=true&resourceVersion=${enc(resourceVersion)}`;
    const resp = await fetch(url, { headers: headers(session.token()), signal: abort.signal });
    if (resp.status === 401) {
      expired();
      throw new ApiFailure(401, null, "Unauthorized");
    }
    if (!resp.ok) throw await failure(resp);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    let version = resourceVersion;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return version;
      buffered += value;
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (!line) continue;
        const event = JSON.parse(line);
        if (event.type === "ERROR") {
          // 410 Expired inside the stream: start again from a fresh list.
          throw new ApiFailure(event.object?.code || 500, event.object);
        }
        version = event.object?.metadata?.resourceVersion || version;
        if (event.type === "BOOKMARK") continue;
        if (event.type === "DELETED") objects.delete(key(event.object));
        else objects.set(key(event.object), event.object);
        emit();
      }
    }
  }

  (async () => {
    let version = null;
    let backoff = 250;
    while (!stopped) {
      try {
        if (version === null) version = await list();
        const began = Date.now();
        version = await watch(version);
        // The server ended the watch (its timeout): follow on at once, unless it keeps ending
        // them as soon as they begin.
        if (Date.now() - began > 1000) backoff = 250;
        else await new Promise((r) => setTimeout(r, backoff));
      } catch (e) {
        if (stopped || e.name === "AbortError") return;
        if (e.code === 401) return;
        if (e.code === 403 || e.code === 404) {
          onError(e);
          return;
        }
        version = null;
        // 410: the log moved past the version; a fresh list is the normal way on.
        if (e.code === 410) continue;
        onError(e);
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  })();
  return () => {
    stopped = true;
    clearTimeout(pending);
    abort.abort();
  };
}

/// A websocket to a console subresource, the token in the subprotocol as kubectl and virtctl
/// send it (base64url, unpadded), binary frames as KubeVirt's `plain.kubevirt.io`.
export function openSocket(path) {
  const token = session.token() || "";
  const bytes = new TextEncoder().encode(token);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  const encoded = btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${path}`, [
    "plain.kubevirt.io",
    `base64url.bearer.authorization.k8s.io.${encoded}`,
  ]);
  socket.binaryType = "arraybuffer";
  return socket;
}

/// Who a token belongs to (a SelfSubjectReview): its subject, role and namespaces. Throws the
/// 401 when the server does not take it.
export async function whoAmI(token) {
  const review = await request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
    token,
    body: { apiVersion: "authentication.k8s.io/v1", kind: "SelfSubjectReview" },
  });
  const info = review?.status?.userInfo || {};
  const groups = info.groups || [];
  const role = (groups.find((g) => /^converge:[a-z]+$/.test(g)) || "converge:").slice("converge:".length);
  const namespaces = groups.filter((g) => g.startsWith("converge:namespace:")).map((g) => g.slice(19));
  return { subject: info.username || "", role, namespaces };
}
