// Calls to the public API, timed, with errors reported as the API words them.
// Every call resolves to {data, ms} or throws an ApiError carrying the server's `detail`, `code`
// and request id, so the page shows what a curl user would read, never a guess of its own.

const API_KEY_STORAGE = "mmserve-api-key";

export class ApiError extends Error {
  constructor(message, { status = 0, code = "", requestId = "", ms = 0 } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.ms = ms;
  }
}

export function getApiKey() {
  return sessionStorage.getItem(API_KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(API_KEY_STORAGE, key);
  else sessionStorage.removeItem(API_KEY_STORAGE);
}

/** fetch `path`, time the round trip, parse JSON; throw ApiError on a non-2xx answer or no answer. */
export async function callApi(path, { method = "GET", body = undefined, json = undefined } = {}) {
  const headers = { Accept: "application/json" };
  const key = getApiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const start = performance.now();
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new ApiError(`could not reach the server (${err.message})`, { ms: performance.now() - start });
  }
  const text = await response.text();
  const ms = performance.now() - start;
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
    throw new ApiError(detail, {
      status: response.status,
      code: (data && data.code) || "",
      requestId: (data && data.request_id) || response.headers.get("X-Request-ID") || "",
      ms,
    });
  }
  if (data === null) throw new ApiError(`the server answered ${response.status} without JSON`, { status: response.status, ms });
  return { data, ms };
}

/** "12 ms" or "1.3 s": the round trip as the browser saw it (network, queueing, model, JSON). */
export function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** An error line as the API words it, with its code and request id for the server log. */
export function describeError(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const parts = [err.message];
  const tags = [err.status ? `HTTP ${err.status}` : "", err.code].filter(Boolean).join(" ");
  if (tags) parts.push(`(${tags}${err.requestId ? `, request ${err.requestId}` : ""})`);
  return parts.join(" ");
}
