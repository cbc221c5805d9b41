// Chat page: one WebSocket to /ws/chat/ (DESIGN.md §3), streaming replies into the log.
// htmx renders the finished message (details, rating) and the conversation list; this module only
// speaks the socket. No inline scripts (CSP).

const root = document.getElementById("chat");
const log = document.getElementById("chat-log");
const form = document.getElementById("chat-form");
const input = document.getElementById("chat-input");
const sendBtn = document.getElementById("send-btn");
const stopBtn = document.getElementById("stop-btn");
const statusEl = document.getElementById("chat-status");
const titleEl = document.getElementById("chat-title");
const presets = JSON.parse(document.getElementById("chat-presets")?.textContent || "[]");

let socket = null;
let streaming = null; // {message: id, el: text element}
let pending = null; // a generate frame sent, no start yet: {text, bubble}
let retry = 0;

function urlFor(template, id) {
  return template.replace(/0\/?$/, `${id}/`);
}

function setStatus(text, kind = "") {
  statusEl.textContent = text;
  statusEl.className = `cm-status ${kind}`;
}

function setBusy(busy) {
  sendBtn.disabled = busy;
  stopBtn.disabled = !busy;
  root.classList.toggle("is-streaming", busy);
}

function scrollDown() {
  log.scrollTop = log.scrollHeight;
}

const hello = document.getElementById("chat-hello");

function bubble(role, text, id) {
  hello?.remove();
  const article = document.createElement("article");
  article.className = `cm-msg cm-${role}`;
  if (id) article.id = `msg-${id}`;
  const who = document.createElement("div");
  who.className = "cm-role";
  who.textContent = role === "user" ? "You" : "Agent";
  const body = document.createElement("div");
  body.className = "cm-text";
  body.textContent = text;
  article.append(who, body);
  log.append(article);
  scrollDown();
  return article;
}

function paramsFromPanel() {
  const num = (id) => {
    const v = document.getElementById(`p-${id}`).value;
    return v === "" ? undefined : Number(v);
  };
  const params = {
    max_new_tokens: num("max_new_tokens"),
    temperature: num("temperature"),
    top_k: num("top_k"),
    top_p: num("top_p"),
    repetition_penalty: num("repetition_penalty"),
    do_sample: document.getElementById("p-do_sample").checked,
    seed: num("seed") ?? null,
    stop: document.getElementById("p-stop").value.split(",").map((s) => s.trim()).filter(Boolean),
  };
  for (const k of Object.keys(params)) if (params[k] === undefined) delete params[k];
  return params;
}

function applyPreset(name) {
  const preset = presets.find((p) => p.name === name);
  if (!preset) return;
  for (const [k, v] of Object.entries(preset.params)) {
    const el = document.getElementById(`p-${k}`);
    if (!el) continue;
    if (el.type === "checkbox") el.checked = Boolean(v);
    else el.value = v;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}`);
  socket.addEventListener("open", () => {
    retry = 0;
    root.dataset.socket = "open";
    if (!streaming) setStatus("");
  });
  socket.addEventListener("message", (event) => onFrame(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    root.dataset.socket = "closed";
    if (streaming) finishLocal("connection lost");
    if (pending) { // never lose what was typed
      pending.bubble.remove();
      if (!input.value.trim()) input.value = pending.text;
    }
    pending = null;
    setBusy(false);
    if (event.code === 4401) {
      setStatus("Your session ended: log in again.", "error");
      return;
    }
    retry = Math.min(retry + 1, 6);
    setStatus("Reconnecting…", "warn");
    setTimeout(connect, 250 * 2 ** retry);
  });
}

function refreshMessage(id) {
  if (window.htmx) {
    window.htmx.ajax("GET", urlFor(root.dataset.messageUrl, id), { target: `#msg-${id}`, swap: "outerHTML" });
  }
}

function refreshList() {
  if (!window.htmx) return;
  const active = root.dataset.conversation ? `?active=${root.dataset.conversation}` : "";
  window.htmx.ajax("GET", `${root.dataset.listUrl}${active}`, { target: "#conv-list", swap: "outerHTML" });
}

function finishLocal(note) {
  if (!streaming) return;
  const id = streaming.message;
  streaming = null;
  setBusy(false);
  if (note) setStatus(note, "warn");
  refreshMessage(id);
}

function onFrame(frame) {
  switch (frame.type) {
    case "start": {
      // the server took the message: only now does the box empty (unless the user typed on meanwhile)
      if (pending && input.value.trim() === pending.text) input.value = "";
      pending = null;
      const conv = String(frame.conversation);
      if (root.dataset.conversation !== conv) {
        root.dataset.conversation = conv;
        history.replaceState(null, "", urlFor(root.dataset.conversationUrl, conv));
        if (titleEl.textContent === "New chat") titleEl.textContent = input.dataset.lastPrompt?.slice(0, 60) || "Chat";
        refreshList();
      }
      const article = bubble("agent", "", frame.message);
      article.classList.add("is-streaming");
      streaming = { message: frame.message, el: article.querySelector(".cm-text"), tokens: 0 };
      root.dataset.model = frame.model;
      setStatus(frame.queue_position > 0 ? `Queued: position ${frame.queue_position}…` : `Generating with ${frame.model}…`);
      setBusy(true);
      break;
    }
    case "token":
      if (streaming && frame.message === streaming.message) {
        if (streaming.tokens === 0) setStatus(`Generating with ${root.dataset.model}…`);
        streaming.tokens += 1;
        streaming.el.append(document.createTextNode(frame.text));
        streaming.el.dataset.tokens = String(streaming.tokens);
        scrollDown();
      }
      break;
    case "end": {
      if (streaming && frame.message === streaming.message) {
        streaming.el.textContent = frame.text;
        const t = frame.timing || {};
        const speed = t.tokens_per_s ? ` · ${t.tokens_per_s.toFixed(1)} tok/s` : "";
        const ttft = t.ttft_ms != null ? ` · first token ${Math.round(t.ttft_ms)} ms` : "";
        setStatus(`${frame.reason === "cancelled" ? "Stopped" : "Done"} (${frame.usage.completion_tokens} tokens${ttft}${speed})`);
        finishLocal();
        refreshList();
      }
      break;
    }
    case "error":
      // A refused message (too long, rate limited, busy…) keeps its text in the box to fix and resend;
      // the status says what happened in words (the code is for programs, kept in a data attribute).
      if (pending) {
        pending.bubble.remove();
        if (!log.querySelector(".cm-msg") && hello) log.append(hello);
        if (!input.value.trim()) input.value = pending.text;
        input.focus();
      }
      pending = null;
      setStatus(frame.message || "Something went wrong; try again.", "error");
      statusEl.dataset.code = frame.code || "";
      if (streaming) finishLocal();
      setBusy(false);
      break;
    default:
      break;
  }
}

// A parameter out of the range the model allows: say which and how, open the panel, send nothing.
function invalidParam() {
  const bad = Array.from(document.querySelectorAll("#chat-params input[type=number]")).find((el) => {
    const v = el.validity;
    return v.rangeOverflow || v.rangeUnderflow || v.badInput;
  });
  if (!bad) return null;
  const name = bad.closest("label")?.dataset.name || bad.id;
  const range = bad.max !== "" ? `between ${bad.min} and ${bad.max}` : `at least ${bad.min}`;
  document.getElementById("chat-params").open = true;
  bad.focus();
  return `${name} must be ${range}${bad.dataset.why ? ` (${bad.dataset.why})` : ""}.`;
}

function send() {
  const text = input.value.trim();
  if (!text || streaming || pending) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    setStatus("Not connected yet; try again in a moment.", "warn");
    return;
  }
  const problem = invalidParam();
  if (problem) {
    setStatus(problem, "error");
    return;
  }
  const conv = root.dataset.conversation;
  input.dataset.lastPrompt = text;
  socket.send(JSON.stringify({
    type: "generate",
    conversation: conv ? Number(conv) : null,
    prompt: text,
    params: paramsFromPanel(),
  }));
  pending = { text, bubble: bubble("user", text) };
  setBusy(true);
  setStatus("Sending…");
}

function stop() {
  if (socket && socket.readyState === WebSocket.OPEN && (streaming || pending)) {
    socket.send(JSON.stringify({ type: "stop" }));
    setStatus("Stopping…");
  }
}

if (root) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && (streaming || pending)) stop();
  });
  stopBtn.addEventListener("click", stop);
  const presetSel = document.getElementById("p-preset");
  presetSel.addEventListener("change", () => applyPreset(presetSel.value));
  document.getElementById("chat-params").addEventListener("input", (event) => {
    if (event.target !== presetSel) presetSel.value = "custom";
  });
  // A reload mid-reply: ask the server to keep generating; the reloaded page polls the message.
  window.addEventListener("pagehide", () => {
    if (streaming && socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "detach" }));
  });
  scrollDown();
  connect();
  input.focus();
}
