// The review page: two answers to one prompt (two samples of the served model, in random
// order) and the person's pick, stored by the server as preference data.
import { callApi, el, servedModel, setupKey } from "./common.js";

const $ = (id) => document.getElementById(id);
const key = setupKey($("api-key"), $("remember-key"));
const picks = ["pick-a", "pick-b", "pick-tie", "pick-neither"].map($);
let pairId = null;

function status(text) {
  $("status").textContent = text;
}

function showPair(pair) {
  pairId = pair.id;
  const prompt = $("pair-prompt");
  prompt.replaceChildren(
    ...pair.messages.map((m) => el("div", `msg ${m.role === "user" ? "user" : "assistant"}`,
      `${m.role}: ${m.content ?? ""}`)),
  );
  $("answer-a").textContent = pair.answers[0].content;
  $("answer-b").textContent = pair.answers[1].content;
  $("comment").value = "";
  for (const b of picks) {
    b.disabled = false;
    b.classList.remove("chosen");
  }
  $("pair").dataset.state = "open";
  $("pair").dataset.pairId = pair.id;
  $("pair").hidden = false;
}

async function nextPair() {
  const params = new URLSearchParams();
  const prompt = $("prompt").value.trim();
  const system = $("system").value.trim();
  if (prompt) params.set("prompt", prompt);
  if (prompt && system) params.set("system", system);
  params.set("temperature", $("temperature").value || "1");
  if ($("max-tokens").value) params.set("max_tokens", $("max-tokens").value);
  $("next").disabled = true;
  status("Sampling two answers...");
  try {
    showPair(await callApi(`/v1/review/next?${params}`, key()));
    status("Which answer is better?");
  } catch (e) {
    status(e.message);
  } finally {
    $("next").disabled = false;
  }
}

async function pick(button) {
  if (!pairId) return;
  for (const b of picks) b.disabled = true;
  const comment = $("comment").value.trim();
  try {
    await callApi("/v1/review", key(), {
      method: "POST",
      body: { id: pairId, choice: button.dataset.choice, ...(comment ? { comment } : {}) },
    });
    button.classList.add("chosen");
    $("pair").dataset.state = "judged";
    status(`Saved (${button.textContent}). Get the next pair when ready.`);
  } catch (e) {
    for (const b of picks) b.disabled = false;
    status(`Not saved: ${e.message}`);
  }
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  nextPair();
});
for (const b of picks) b.addEventListener("click", () => pick(b));

servedModel(key())
  .then((name) => {
    $("model").textContent = name;
  })
  .catch((e) => status(`Enter the API key if the server needs one (${e.message})`));
