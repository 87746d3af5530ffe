// The chat page: the conversation lives here (the server keeps none) and is sent whole on
// every turn; answers stream in over server-sent events from /v1/chat/completions.
import { callApi, el, errorMessage, headers, servedModel, setupKey, sseData } from "./common.js";

const $ = (id) => document.getElementById(id);
const history = []; // OpenAI messages, without the system prompt (it is read at each send)
const key = setupKey($("api-key"), $("remember-key"));
let model = null;
let tools = null;
let controller = null;

function status(text) {
  $("status").textContent = text;
}

function scrollDown() {
  window.scrollTo(0, document.body.scrollHeight);
}

async function ensureModel() {
  if (model === null) {
    model = await servedModel(key());
    $("model").textContent = model;
  }
  return model;
}

function number(id, fallback) {
  const value = Number($(id).value);
  return $(id).value === "" || Number.isNaN(value) ? fallback : value;
}

// "called docstring(name="os.path.join")": the arguments as key=JSON value.
function callLine(call) {
  let args = call.arguments;
  try {
    const parsed = JSON.parse(call.arguments || "{}");
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) {
      args = Object.entries(parsed).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ");
    }
  } catch (_) {
    // arguments that are not JSON are shown as sent
  }
  return `called ${call.name}(${args})`;
}

// Streamed tool_calls deltas: the first names the call, later ones add to its arguments.
function mergeCall(calls, delta) {
  const i = delta.index ?? calls.length;
  calls[i] = calls[i] || { id: "", name: "", arguments: "" };
  if (delta.id) calls[i].id = delta.id;
  if (delta.function && delta.function.name) calls[i].name += delta.function.name;
  if (delta.function && delta.function.arguments) calls[i].arguments += delta.function.arguments;
}

function addUser(text) {
  const box = el("div", "msg user", text);
  $("log").append(box);
  return box;
}

function addAssistant() {
  const box = el("div", "msg assistant");
  box.dataset.state = "streaming";
  const parts = {
    box,
    content: el("div", "content"),
    calls: el("div", "calls"),
    note: el("div", "note"),
  };
  box.append(parts.content, parts.calls, parts.note);
  $("log").append(box);
  return parts;
}

async function rate(parts, responseId, rating, pressed, other) {
  pressed.disabled = other.disabled = true;
  try {
    await callApi("/v1/feedback", key(), {
      method: "POST",
      body: { response_id: responseId, rating },
    });
    pressed.classList.add("sent");
    pressed.setAttribute("aria-pressed", "true");
    parts.box.dataset.rated = String(rating);
    parts.note.textContent = "Thanks, your rating was saved.";
  } catch (e) {
    pressed.disabled = other.disabled = false;
    parts.note.className = "note error";
    parts.note.textContent = `Rating not saved: ${e.message}`;
  }
}

function addRating(parts, responseId) {
  const row = el("div", "rate");
  // Plain glyphs: emoji fonts are not on every machine.
  const up = el("button", "thumb-up", "\u25B2 good");
  const down = el("button", "thumb-down", "\u25BC bad");
  up.type = down.type = "button";
  up.title = "good answer";
  up.setAttribute("aria-label", "good answer");
  down.title = "bad answer";
  down.setAttribute("aria-label", "bad answer");
  up.addEventListener("click", () => rate(parts, responseId, 1, up, down));
  down.addEventListener("click", () => rate(parts, responseId, -1, down, up));
  row.append(up, down);
  parts.box.append(row);
}

function busy(on) {
  $("send").disabled = on;
  $("stop").hidden = !on;
}

async function offeredTools() {
  if (!$("tools").checked) return undefined;
  if (tools === null) {
    const resp = await fetch("/pages/tools");
    if (!resp.ok) throw new Error(await errorMessage(resp));
    tools = await resp.json();
  }
  return tools;
}

async function send(text) {
  let name;
  let offered;
  try {
    name = await ensureModel();
    offered = await offeredTools();
  } catch (e) {
    status(`Cannot reach the model: ${e.message}`);
    return false;
  }
  status("");
  for (const old of document.querySelectorAll(".msg.assistant[data-state=error]")) old.remove();
  history.push({ role: "user", content: text });
  const asked = addUser(text);
  const parts = addAssistant();
  scrollDown();
  const system = $("system").value.trim();
  const body = {
    model: name,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...history],
    stream: true,
    temperature: number("temperature", 0.7),
  };
  const maxTokens = number("max-tokens", null); // left empty: the server's default
  if (maxTokens !== null) body.max_tokens = Math.round(maxTokens);
  if (offered) body.tools = offered;
  controller = new AbortController();
  busy(true);
  let reply = "";
  let responseId = null;
  let finish = null;
  const calls = [];
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(key()),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorMessage(resp));
    for await (const data of sseData(resp)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      responseId = chunk.id || responseId;
      for (const choice of chunk.choices || []) {
        const delta = choice.delta || {};
        if (delta.content) reply += delta.content;
        for (const call of delta.tool_calls || []) mergeCall(calls, call);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      parts.content.textContent = reply;
      parts.calls.textContent = calls.map(callLine).join("\n");
      scrollDown();
    }
    parts.box.dataset.state = "done";
    if (finish === "length") parts.note.textContent = "(cut at max tokens)";
  } catch (e) {
    if (e.name !== "AbortError") {
      // Nothing was answered: the turn is taken back (its text returns to the box).
      history.pop();
      asked.remove();
      parts.box.dataset.state = "error";
      parts.box.classList.add("error");
      parts.note.className = "note error";
      parts.note.textContent = e.message;
      if (!$("message").value) $("message").value = text;
      return false;
    }
    parts.box.dataset.state = "stopped";
    parts.note.textContent = "(stopped)";
  } finally {
    busy(false);
    controller = null;
  }
  const message = { role: "assistant", content: reply };
  if (calls.length) {
    message.content = reply || null;
    message.tool_calls = calls.map((c) => ({
      id: c.id,
      type: "function",
      function: { name: c.name, arguments: c.arguments },
    }));
  }
  history.push(message);
  if (responseId) {
    parts.box.dataset.responseId = responseId;
    addRating(parts, responseId);
  }
  return true;
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || controller) return;
  $("message").value = "";
  await send(text);
  $("message").focus();
});

$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => controller && controller.abort());

$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("log").replaceChildren();
  status("");
});

// A changed key may change what the server answers: look the model up again.
$("api-key").addEventListener("change", () => {
  model = null;
  ensureModel().catch((e) => status(`Cannot reach the model: ${e.message}`));
});

ensureModel().catch((e) => status(`Enter the API key if the server needs one (${e.message})`));
