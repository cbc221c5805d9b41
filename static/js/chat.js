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
const modelSel = document.getElementById("chat-model");
const demoNotice = document.getElementById("demo-notice");
const demoDismiss = document.getElementById("demo-notice-dismiss");

let socket = null;
let streaming = null; // {message: id, el: text element}
let pending = null; // a generate frame sent, no start yet: {text, bubble}
let retry = 0;
// A reply that was still being generated when this page loaded (e.g. a reload mid-reply): the socket asks
// to follow it ({"type": "resume"}); a server that cannot hand it over (another process, or it ended) says
// so with an error frame and the page polls the message instead, with Stop still working over HTTP.
let resuming = null; // message id asked for
let polling = null; // {id, timer}
const POLL_MS = 400;

// "/chat/m/0/" or "/chat/m/0/stop" with the id in place of the 0
function urlFor(template, id) {
  return template.replace(/\/0(\/|$)/, `/${id}$1`);
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

// The picked model's facts: the demo notice, and how long a reply it can give (its context window).
function applyModel() {
  const opt = modelSel?.selectedOptions[0];
  if (!opt) return;
  if (demoNotice) demoNotice.hidden = !opt.dataset.demo || demoNotice.dataset.dismissed === "1";
  const box = document.getElementById("p-max_new_tokens");
  const cap = Number(root.dataset.maxNewTokens) || Number(box.max);
  const window = Number(opt.dataset.window || 0);
  box.max = String(window ? Math.min(cap, window) : cap);
  if (window) box.dataset.why = `this model reads ${window} tokens at a time, your message and its reply together`;
  else delete box.dataset.why;
  const note = document.getElementById("p-window");
  if (note) note.textContent = window ? `Message and reply share ${window} tokens.` : "";
}

function pickModel() {
  applyModel();
  const label = modelSel.selectedOptions[0]?.textContent || modelSel.value;
  const conv = root.dataset.conversation;
  if (!conv) { // a new chat: the first message carries the choice
    setStatus(`New chat with ${label}.`);
    return;
  }
  fetch(urlFor(root.dataset.modelUrl, conv), {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-CSRFToken": window.slmCsrfToken(), Accept: "application/json" },
    body: new URLSearchParams({ model: modelSel.value }),
  }).then((r) => {
    if (r.ok) setStatus(`Replies in this chat now use ${label}.`);
    else setStatus("Could not switch the model; reload the page.", "error");
  }, () => setStatus("Could not switch the model; reload the page.", "error"));
}

function isLive(article) {
  return article && (article.dataset.status === "streaming" || article.dataset.status === "queued");
}

// The page follows this reply itself: htmx must not swap the bubble on its own timer meanwhile.
function adopt(article) {
  for (const name of ["hx-get", "hx-trigger", "hx-swap"]) article.removeAttribute(name);
}

function stopPolling() {
  if (polling) clearTimeout(polling.timer);
  polling = null;
}

function startPolling(id) {
  stopPolling();
  polling = { id, timer: null };
  setBusy(true);
  setStatus("Generating… (following the reply)");
  const tick = async () => {
    if (!polling || polling.id !== id) return;
    try {
      const r = await fetch(urlFor(root.dataset.messageUrl, id), { credentials: "same-origin", headers: { "HX-Request": "true" } });
      if (!r.ok) throw new Error(String(r.status));
      const holder = document.createElement("template");
      holder.innerHTML = (await r.text()).trim();
      const fresh = holder.content.firstElementChild;
      const old = document.getElementById(`msg-${id}`);
      if (fresh && old) {
        adopt(fresh);
        const live = isLive(fresh);
        if (live) fresh.classList.add("is-streaming");
        old.replaceWith(fresh);
        if (window.htmx) window.htmx.process(fresh);
        scrollDown();
        if (!live) {
          stopPolling();
          setBusy(false);
          setStatus(fresh.dataset.status === "cancelled" ? "Stopped." : "Done.");
          refreshList();
          return;
        }
      }
    } catch (err) {
      setStatus("Lost track of the reply; reload the page to see it.", "warn");
    }
    if (polling && polling.id === id) polling.timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${root.dataset.wsPath}`);
  socket.addEventListener("open", () => {
    retry = 0;
    root.dataset.socket = "open";
    if (resuming && !streaming) {
      socket.send(JSON.stringify({ type: "resume", message: resuming }));
    } else if (!streaming && !polling) {
      setStatus("");
    }
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
    // Each refresh names its own source element: htmx keeps one request queue per source (the body when
    // none is named) and a queued request replaces the one queued before it, so a list refresh still in
    // flight would otherwise drop this one and leave the reply without its stored details.
    window.htmx.ajax("GET", urlFor(root.dataset.messageUrl, id), { source: `#msg-${id}`, target: `#msg-${id}`, swap: "outerHTML" });
  }
}

let listLoading = null; // the conversation-list refresh in flight, if any
let listAgain = false; // asked for again while it was in flight

function refreshList() {
  if (!window.htmx) return;
  if (listLoading) { // one at a time, the latest wins: run once more when this one is in (against the fresh list)
    listAgain = true;
    return;
  }
  const active = root.dataset.conversation ? `?active=${root.dataset.conversation}` : "";
  listLoading = Promise.resolve(
    window.htmx.ajax("GET", `${root.dataset.listUrl}${active}`, { source: "#conv-list", target: "#conv-list", swap: "outerHTML" }),
  ).catch(() => {}).finally(() => {
    listLoading = null;
    if (listAgain) {
      listAgain = false;
      refreshList();
    }
  });
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
      if (resuming && frame.message === resuming) { // the reply in progress is ours again: stream it in
        const article = document.getElementById(`msg-${frame.message}`);
        resuming = null;
        stopPolling();
        if (article) {
          article.classList.add("is-streaming");
          const text = article.querySelector(".cm-text");
          text.textContent = ""; // the first token frame carries the reply so far
          streaming = { message: frame.message, el: text, tokens: 0 };
          root.dataset.model = frame.model;
          setStatus(`Generating with ${frame.model}…`);
          setBusy(true);
          scrollDown();
        }
        break;
      }
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
      if (resuming && !pending) { // this server cannot hand the reply over: follow it by polling
        const id = resuming;
        resuming = null;
        startPolling(id);
        break;
      }
      // A refused message (too long, rate limited, busy…) keeps its text in the box to fix and resend;
      // the status says what happened in words (the code is for programs, kept in a data attribute).
      if (pending) {
        pending.bubble.remove();
        if (!log.querySelector(".cm-msg") && hello) log.append(hello);
        if (!input.value.trim()) input.value = pending.text;
        input.focus();
      }
      pending = null;
      if (frame.code === "model_unavailable" && document.querySelector(".building")) {
        setStatus("The chat model is still being built (see above); your message is kept, send it when it is ready.", "warn");
      } else {
        setStatus(frame.message || "Something went wrong; try again.", "error");
      }
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
    model: modelSel?.value || undefined,
  }));
  pending = { text, bubble: bubble("user", text) };
  setBusy(true);
  setStatus("Sending…");
}

function stop() {
  if (polling) { // the reply runs on the server without a socket of ours: ask over HTTP
    const id = polling.id;
    setStatus("Stopping…");
    fetch(urlFor(root.dataset.stopUrl, id), {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": window.slmCsrfToken() },
    }).then((r) => {
      if (!r.ok) setStatus("Could not stop this reply.", "error");
    });
    return;
  }
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
    if (event.key === "Escape" && (streaming || pending || polling)) stop();
  });
  const inProgress = Array.from(log.querySelectorAll(".cm-agent")).reverse().find(isLive);
  if (inProgress) {
    adopt(inProgress);
    inProgress.classList.add("is-streaming");
    resuming = Number(inProgress.dataset.messageId);
    setBusy(true);
    setStatus("Reconnecting to the reply in progress…");
  }
  stopBtn.addEventListener("click", stop);
  modelSel?.addEventListener("change", pickModel);
  applyModel();
  // The demo notice's ×: gone for good in this browser (a cookie the server reads, so no flash on the next page).
  if (demoDismiss) {
    demoDismiss.hidden = false;
    demoDismiss.addEventListener("click", () => {
      document.cookie = "slm_demo_notice=dismissed; path=/; max-age=31536000; SameSite=Lax";
      demoNotice.dataset.dismissed = "1";
      demoNotice.hidden = true;
      input.focus();
    });
  }
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
