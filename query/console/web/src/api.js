// The console's only way to the data: the same REST API scripts call (docs/api.md), with the
// token the user pasted (kept in this tab's sessionStorage) or, with none, the browser's own
// TLS client certificate. Every call is recorded in query_audit_log like any other.

const TOKEN_KEY = "keytrail.token";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// ApiError.kind is what the console tells the user: auth (401: no, expired or wrong
// credentials), forbidden (403), notfound (404), invalid (400), ratelimited (429),
// unreachable (no answer at all), server (5xx and anything else).
export class ApiError extends Error {
  constructor(kind, status, message) {
    super(message);
    this.kind = kind;
    this.status = status;
  }
}

function kindOf(status) {
  switch (status) {
    case 400: return "invalid";
    case 401: return "auth";
    case 403: return "forbidden";
    case 404: return "notfound";
    case 429: return "ratelimited";
    default: return "server";
  }
}

let onAuthFailure = () => {};

// onUnauthenticated registers what the app does when the server refuses the credentials.
export function onUnauthenticated(fn) {
  onAuthFailure = fn;
}

// apiURL builds a same-origin URL; params with empty values are left out, arrays repeat.
export function apiURL(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(one));
  }
  return url;
}

export async function api(path, params = {}, { signal } = {}) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = "Bearer " + token;
  let resp;
  try {
    resp = await fetch(apiURL(path, params), { headers, signal, credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError("unreachable", 0, "the keytrail server did not answer (" + e.message + ")");
  }
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const message = (body && body.message) || text.trim() || resp.statusText || "HTTP " + resp.status;
    const err = new ApiError(kindOf(resp.status), resp.status, message);
    if (err.kind === "auth") onAuthFailure(err);
    throw err;
  }
  if (body === null) throw new ApiError("server", resp.status, "the server's answer was not JSON");
  return body;
}

// ambiguousProjects reads the projects out of the API's answer to a key id asked about
// without a project that several readable projects know (HTTP 400, documented in api.md:
// `project: key "default" exists in projects alpha, beta; pass one of them`); null for any
// other error. Only projects the caller may read are ever named.
export function ambiguousProjects(err) {
  if (!err || err.kind !== "invalid") return null;
  const m = / exists in projects (.+); pass one of them$/.exec(err.message);
  return m ? m[1].split(", ") : null;
}

// allPages follows next_page_token until the list ends or max rows are read.
export async function allPages(path, params, field, max, opts) {
  const rows = [];
  let token = "";
  for (;;) {
    const page = await api(path, { ...params, page_token: token }, opts);
    rows.push(...(page[field] || []));
    token = page.next_page_token || "";
    if (!token || rows.length >= max) return { rows, truncated: !!token, last: page };
  }
}
