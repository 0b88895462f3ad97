// Calls to the gateway's own task API (POST /v1, GET /v1/models, GET /readyz), with the user's key.
// Errors come back as ApiError carrying the HTTP status and the API's own messages, so the page shows
// exactly what the API said.

const KEY_STORAGE = "triton-inpaint.apiKey";

export class ApiError extends Error {
  constructor(status, errors, retryAfter) {
    super(errors.map((e) => e.message).join("; ") || `HTTP ${status}`);
    this.status = status;
    this.errors = errors;
    this.retryAfter = retryAfter;
  }

  // A sentence for a person: what happened and what to do.
  get readable() {
    const said = this.message;
    if (this.status === 0) return `The gateway cannot be reached (${said}). Check that it is running.`;
    if (this.status === 401) return `The API key is missing or not accepted: enter a valid key above. (${said})`;
    if (this.status === 429) return `Too many requests for this key: ${said}`;
    if (this.status === 503) {
      const wait = this.retryAfter ? ` Try again in ${this.retryAfter} s.` : "";
      return `The inpainting server is unavailable (it may be restarting): ${said}.${wait}`;
    }
    if (this.status === 413) return `The request is too large: ${said}`;
    return said;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// A v4 UUID; crypto.randomUUID exists only on secure origins (https, localhost), getRandomValues on all.
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// Seeds go up to 2^63-1, past what a JS number holds exactly: they are kept as digit strings, read
// from the answer's own text and written into the request as bare digits.
function parseKeepingSeeds(text) {
  return JSON.parse(text, (key, value, context) =>
    key === "seed" && typeof value === "number" && context?.source ? context.source : value,
  );
}

function stringifyWithSeeds(tasks) {
  const marked = tasks.map((t) => ("seed" in t ? { ...t, seed: `@@seed:${t.seed}@@` } : t));
  return JSON.stringify(marked).replace(/"@@seed:(\d+)@@"/g, "$1");
}

async function request(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(), body, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, [{ message: String(error.message || error) }]);
  }
  const text = await response.text();
  let content = null;
  try {
    content = parseKeepingSeeds(text);
  } catch {
    content = null;
  }
  if (!response.ok && !(content && Array.isArray(content.data) && content.data.length)) {
    const errors = content?.errors ?? [{ message: `HTTP ${response.status} ${response.statusText}` }];
    throw new ApiError(response.status, errors, response.headers.get("Retry-After"));
  }
  return content;
}

// Run tasks with POST /v1; answers their data items, or throws ApiError with every task's errors.
export async function runTasks(tasks) {
  const content = await request("POST", "/v1", stringifyWithSeeds(tasks));
  if (content.errors?.length) throw new ApiError(400, content.errors);
  return content.data;
}

export async function runTask(task) {
  return runTasks([{ taskUUID: uuid(), ...task }]);
}

// Run one task with POST /v1 as server-sent events (Accept: text/event-stream): onProgress gets each
// progress item (status "processing": step, steps, previewImages) while it runs. Answers its result
// items, or throws ApiError with its errors, as runTask does.
export async function runTaskWithProgress(task, onProgress) {
  const body = stringifyWithSeeds([{ taskUUID: uuid(), ...task }]);
  let response;
  try {
    const h = { ...headers(), Accept: "text/event-stream" };
    response = await fetch("/v1", { method: "POST", headers: h, body, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, [{ message: String(error.message || error) }]);
  }
  if (!response.ok) {
    // Refused before any event (a key, a limit, a body too large): a JSON body, as without events.
    let content = null;
    try {
      content = JSON.parse(await response.text());
    } catch {
      content = null;
    }
    const errors = content?.errors ?? [{ message: `HTTP ${response.status} ${response.statusText}` }];
    throw new ApiError(response.status, errors, response.headers.get("Retry-After"));
  }
  const data = [];
  const errors = [];
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const payload = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!payload || payload === "[DONE]") continue; // a keep-alive comment, or the end
      const frame = parseKeepingSeeds(payload);
      errors.push(...(frame.errors ?? []));
      for (const item of frame.data ?? []) {
        if (item.status === "processing") onProgress(item);
        else data.push(item);
      }
    }
  }
  if (errors.length) {
    const unavailable = errors.some((e) => e.code === "serviceUnavailable");
    throw new ApiError(unavailable ? 503 : 400, errors);
  }
  return data;
}

export async function models() {
  return request("GET", "/v1/models");
}

export async function readiness() {
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    return await response.json();
  } catch (error) {
    return { status: "unavailable", reason: `the gateway cannot be reached (${error.message || error})` };
  }
}

// A URL the page can load from its own origin: result URLs carry the gateway's public base, which
// may differ from the address this page was opened at.
export function sameOrigin(url) {
  const parsed = new URL(url, location.href);
  return parsed.pathname.startsWith("/images/") ? parsed.pathname : parsed.href;
}
