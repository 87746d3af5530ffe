// Shared by the chat and review pages: the API key field, calls to the /v1 API, and the
// server-sent events of a streamed answer. Model text only ever goes in with textContent.

const KEY_ITEM = "lmforge.apiKey";

// The key lives in the field; in localStorage only while "remember" is ticked.
export function setupKey(input, remember) {
  const saved = localStorage.getItem(KEY_ITEM);
  if (saved !== null) {
    input.value = saved;
    remember.checked = true;
  }
  const sync = () => {
    if (remember.checked && input.value) localStorage.setItem(KEY_ITEM, input.value);
    else localStorage.removeItem(KEY_ITEM);
  };
  input.addEventListener("input", sync);
  remember.addEventListener("change", sync);
  return () => input.value.trim();
}

export function headers(key) {
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The message of an OpenAI-shaped error body, or the status line.
export async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) {
    // not JSON: fall through
  }
  return `HTTP ${resp.status} ${resp.statusText}`;
}

export async function callApi(path, key, { method = "GET", body, signal } = {}) {
  const resp = await fetch(path, {
    method,
    headers: headers(key),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!resp.ok) throw new Error(await errorMessage(resp));
  return resp.json();
}

// The served model's name (what requests pass as `model`).
export async function servedModel(key) {
  const list = await callApi("/v1/models", key);
  return list.data[0].id;
}

// The `data:` payloads of a server-sent event stream, one string per event.
export async function* sseData(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""));
      if (data.length) yield data.join("\n");
    }
  }
}

// An element with a class and text (never markup).
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
