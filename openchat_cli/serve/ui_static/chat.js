// The browser chat page of `openchat serve --ui`: it talks to this server's own OpenAI API
// (/v1/models, /v1/chat/completions with stream=true) exactly as any client would; chats and
// settings live in this browser's localStorage only, the server keeps nothing new.
"use strict";

const STORE = "openchat.ui.v1";
const $ = (id) => document.getElementById(id);
const state = loadState();
let controller = null; // the AbortController of the reply being streamed

function loadState() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    return { chats: saved.chats || [], current: saved.current || null, settings: saved.settings || {} };
  } catch (err) {
    return { chats: [], current: null, settings: {} };
  }
}

function saveState() {
  localStorage.setItem(STORE, JSON.stringify(state));
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (err) {
    return resp.status + " " + resp.statusText;
  }
}

// -- models and API key ----------------------------------------------------------------------
async function loadModels() {
  const resp = await fetch("/v1/models", { headers: headers() });
  if (resp.status === 401) {
    $("api-key-row").hidden = false;
    setStatus("This server wants an API key: enter it in Settings.", true);
    return;
  }
  if (!resp.ok) {
    setStatus("Could not list models: " + (await errorText(resp)), true);
    return;
  }
  const models = (await resp.json()).data.map((m) => m.id);
  const select = $("model");
  select.replaceChildren(...models.map((id) => new Option(id, id)));
  if (models.includes(state.settings.model)) select.value = state.settings.model;
  setStatus("Connected: " + models.length + " model" + (models.length === 1 ? "" : "s") + ".");
  document.body.dataset.ready = "1";
}

// -- chats -----------------------------------------------------------------------------------
function currentChat() {
  return state.chats.find((c) => c.id === state.current) || null;
}

function newChat() {
  const chat = { id: "c" + Date.now().toString(36) + Math.random().toString(36).slice(2, 6),
                 title: "New chat", messages: [] };
  state.chats.unshift(chat);
  state.current = chat.id;
  saveState();
  render();
  $("prompt").focus();
  return chat;
}

function deleteChat(id) {
  state.chats = state.chats.filter((c) => c.id !== id);
  if (state.current === id) state.current = state.chats.length ? state.chats[0].id : null;
  saveState();
  render();
}

function renderList() {
  const list = $("chat-list");
  list.replaceChildren(...state.chats.map((chat) => {
    const li = document.createElement("li");
    li.classList.toggle("active", chat.id === state.current);
    const title = document.createElement("span");
    title.textContent = chat.title;
    title.title = chat.title;
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "×";
    del.title = "Delete this chat";
    del.addEventListener("click", (ev) => { ev.stopPropagation(); deleteChat(chat.id); });
    li.append(title, del);
    li.addEventListener("click", () => { if (!controller) { state.current = chat.id; saveState(); render(); } });
    return li;
  }));
}

// Model text is untrusted: Markdown → HTML → DOMPurify, then highlight the code blocks.
function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(marked.parse(text, { gfm: true, breaks: false }));
  target.querySelectorAll("pre code").forEach((block) => hljs.highlightElement(block));
}

function messageElement(message) {
  const div = document.createElement("div");
  div.className = "message " + message.role;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role;
  const body = document.createElement("div");
  body.className = "body";
  if (message.role === "assistant") renderMarkdown(body, message.content);
  else body.textContent = message.content;
  div.append(role, body);
  return div;
}

function renderMessages() {
  const chat = currentChat();
  const box = $("messages");
  box.replaceChildren(...(chat ? chat.messages.map(messageElement) : []));
  box.scrollTop = box.scrollHeight;
}

function render() {
  renderList();
  renderMessages();
}

// -- sending and streaming -------------------------------------------------------------------
function requestBody(chat) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  chat.messages.forEach((m) => { if (m.role !== "error") messages.push({ role: m.role, content: m.content }); });
  const body = { model: $("model").value, messages, stream: true };
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const condition = $("condition").value.trim();
  if (condition) body.condition = condition;
  return body;
}

// Yields the JSON payload of each `data:` event of a server-sent event stream.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.dataset.busy = busy ? "1" : "0";
}

async function send(text) {
  const chat = currentChat() || newChat();
  chat.messages.push({ role: "user", content: text });
  if (chat.title === "New chat") chat.title = text.slice(0, 40);
  const reply = { role: "assistant", content: "" };
  chat.messages.push(reply);
  saveState();
  render();
  const bubble = $("messages").lastElementChild;
  const body = bubble.querySelector(".body");
  controller = new AbortController();
  setBusy(true);
  setStatus("Generating …");
  let pending = false;
  const paint = () => {
    pending = false;
    renderMarkdown(body, reply.content);
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  try {
    const payload = requestBody(chat);
    payload.messages.pop(); // the empty reply being written
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
                                                        body: JSON.stringify(payload), signal: controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    let finish = null;
    for await (const event of sseEvents(resp)) {
      if (event.error) throw new Error(event.error.message || "the server failed");
      const choice = (event.choices || [])[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) {
        reply.content += choice.delta.content;
        if (!pending) { pending = true; requestAnimationFrame(paint); }
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    setStatus(finish === "length" ? "Stopped at the token limit." : "Done.");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped.");
    } else {
      if (!reply.content) chat.messages.pop();
      chat.messages.push({ role: "error", content: String(err.message || err) });
      setStatus(String(err.message || err), true);
    }
  } finally {
    controller = null;
    if (reply.content) paint();
    bubble.dataset.done = "1";
    saveState();
    setBusy(false);
    if (chat.messages[chat.messages.length - 1].role === "error") renderMessages();
  }
}

// -- wiring ----------------------------------------------------------------------------------
function bindSetting(id, key) {
  const input = $(id);
  if (state.settings[key] !== undefined) input.value = state.settings[key];
  input.addEventListener("change", () => { state.settings[key] = input.value; saveState(); });
}

function init() {
  bindSetting("system", "system");
  bindSetting("condition", "condition");
  bindSetting("temperature", "temperature");
  bindSetting("max-tokens", "maxTokens");
  bindSetting("api-key", "apiKey");
  bindSetting("model", "model");
  if (state.settings.apiKey) $("api-key-row").hidden = false;
  $("api-key").addEventListener("change", loadModels);
  $("new-chat").addEventListener("click", () => { if (!controller) newChat(); });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller || !$("model").value) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("composer").requestSubmit();
    }
  });
  setBusy(false);
  render();
  loadModels().catch((err) => setStatus("Could not reach the server: " + err.message, true));
}

init();
