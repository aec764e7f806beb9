// puyu chat: streams /v1/chat/completions with fetch and parses the SSE events by hand (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { history: [], controller: null, model: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function setStreaming(on) {
  document.body.dataset.state = on ? "streaming" : "idle";
  $("send").disabled = on;
  $("stop").disabled = !on;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    state.model = body.data[0].id;
    $("model-name").textContent = state.model;
    setStatus("ready");
  } catch (e) {
    setStatus("cannot list models: " + e.message);
  }
}

// Splits a growing SSE text buffer into complete events; returns [events, rest].
function takeEvents(buffer) {
  const events = [];
  const parts = buffer.split(/\r?\n\r?\n/);
  const rest = parts.pop();
  for (const part of parts) {
    const data = part.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
    if (data.length) events.push(data.join("\n"));
  }
  return [events, rest];
}

async function send(text) {
  if (!state.model) await loadModel();
  const system = $("system").value.trim();
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.classList.add("streaming");
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
  const body = {
    model: state.model, messages, stream: true,
    temperature: parseFloat($("temperature").value),
    max_tokens: parseInt($("max-tokens").value, 10),
  };
  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  setStatus("sending…");
  let reply = "";
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : r.status + " " + r.statusText);
    }
    // the headers come at once; until the first token the request waits in the server's queue
    setStatus("waiting for the model…");
    out.classList.add("waiting");
    out.textContent = "waiting…";
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finish = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let events;
      [events, buffer] = takeEvents(buffer);
      for (const data of events) {
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            if (!reply) { out.classList.remove("waiting"); setStatus("generating…"); }
            reply += choice.delta.content;
            out.textContent = reply;
            out.scrollIntoView({ block: "end" });
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    setStatus("done" + (finish ? " (" + finish + ")" : ""));
  } catch (e) {
    if (e.name === "AbortError") {
      out.classList.add("stopped");
      setStatus("stopped");
    } else {
      out.classList.add("error");
      out.textContent = reply + (reply ? "\n" : "") + "error: " + e.message;
      setStatus("error");
    }
  } finally {
    if (!reply && out.classList.contains("waiting")) out.textContent = "";
    out.classList.remove("streaming", "waiting");
    // a stopped reply stays in the history as far as it got, so the next turn sees it
    state.history.push({ role: "assistant", content: reply });
    state.controller = null;
    setStreaming(false);
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });

$("clear").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  setStatus("new chat");
});

$("api-key").value = localStorage.getItem("puyu-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("puyu-api-key", $("api-key").value); loadModel(); });
loadModel();
