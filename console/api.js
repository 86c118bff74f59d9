// The public REST API, called with the key the user pasted (kept in this tab's sessionStorage only).

const KEY = "ferry.apiKey";
const SCOPES = "ferry.scopes";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function scopes() {
  return new Set(JSON.parse(sessionStorage.getItem(SCOPES) || "[]"));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(SCOPES);
}

/** An answer other than 2xx: the API's message and ErrorInfo reason, and when to retry (429/503). */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    const info = (body.details || []).find((d) => String(d["@type"]).endsWith("ErrorInfo")) || {};
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code;
    this.reason = info.reason || "";
    this.metadata = info.metadata || {};
    const retry = (body.details || []).find((d) => String(d["@type"]).endsWith("RetryInfo"));
    this.retryAfterS = retryAfter ? Number(retryAfter) : retry ? parseFloat(retry.retry_delay) : null;
  }
}

/** A failure recorded in a prediction or job (a google.rpc.Status), shown like an API error. */
export function recordedError(status) {
  return new ApiError(`code ${status.code}`, status, null);
}

/** A path with its query, spaces as %20: Envoy's transcoder reads "+" as a plus sign, not the
 * space URLSearchParams would make of it (a label filter "tiger cat" would match nothing). */
function url(path, query) {
  const search = Object.entries(query || {})
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(value)}`)
    .join("&");
  return search ? `${path}?${search}` : path;
}

async function send(method, path, {query, body, contentType, key} = {}) {
  const headers = {authorization: `Bearer ${key || apiKey()}`};
  if (body !== undefined) headers["content-type"] = contentType || "application/json";
  const payload = body === undefined || contentType ? body : JSON.stringify(body);
  const response = await fetch(url(path, query), {method, headers, body: payload, cache: "no-store"});
  if (!response.ok) {
    let error;
    try {
      error = await response.json();
    } catch {
      error = {message: `${response.status} ${response.statusText}`};
    }
    throw new ApiError(response.status, error, response.headers.get("retry-after"));
  }
  return response;
}

/** A call answering JSON. */
export async function call(method, path, options) {
  const response = await send(method, path, options);
  return response.json();
}

export const get = (path, query) => call("GET", path, {query});
export const post = (path, body) => call("POST", path, {body: body || {}});

/** A call answering text (a job's result file). */
export async function text(path) {
  return (await send("GET", path)).text();
}

/** A server stream (WatchJob): Envoy sends one JSON object per line as they come; `onObject` gets
 * each. Ends when the server ends the stream or `signal` aborts; no polling. */
export async function stream(path, onObject, signal) {
  const response = await fetch(path, {headers: {authorization: `Bearer ${apiKey()}`}, signal, cache: "no-store"});
  if (!response.ok) {
    let error = {message: `${response.status} ${response.statusText}`};
    try { error = await response.json(); } catch { /* keep the status line */ }
    throw new ApiError(response.status, error, response.headers.get("retry-after"));
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffered += value;
    let newline;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (line) onObject(parseStreamed(line));
    }
  }
  if (buffered.trim()) onObject(parseStreamed(buffered.trim()));
}

/** One streamed line; an error the server sent mid-stream arrives as an object with code/message,
 * or as a one-element array holding it. */
function parseStreamed(line) {
  let value = JSON.parse(line.replace(/^\[|\]$/g, "").replace(/^,/, ""));
  if (Array.isArray(value)) value = value[0];
  if (value && value.code !== undefined && value.message !== undefined && !value.job) {
    throw new ApiError(500, value, null);
  }
  return value;
}

/** Which scopes `key` has, found without side effects: each probe fails on scope before it does
 * anything (403 MISSING_SCOPE), or reaches a handler that refuses it (400/404) or lists one row. */
export async function probeScopes(key) {
  const allowed = async (method, path, body) => {
    try {
      await send(method, path, {key, body, query: method === "GET" ? {page_size: 1} : undefined});
      return true;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.status === 401 || error.status === 429) throw error;
      return error.reason !== "MISSING_SCOPE";
    }
  };
  const found = [];
  if (await allowed("GET", "/v1/keys")) found.push("admin", "read", "jobs", "predict");
  else {
    if (await allowed("GET", "/v1/models")) found.push("read");
    if (await allowed("POST", "/v1/jobs/00000000-0000-0000-0000-000000000000:cancel", {})) found.push("jobs");
    if (await allowed("POST", "/v1/models/-:predict", {})) found.push("predict");
  }
  if (!found.length) throw new ApiError(403, {message: "this key has no scope the console can use"}, null);
  return found;
}

export function signIn(key, found) {
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(SCOPES, JSON.stringify(found));
}
