// Annotate: keyboard-first labelling (prefetched next item) and dashboard charts. No inline JS (CSP).
(function () {
  "use strict";

  const csrfToken = () => window.slmCsrfToken();

  function readJSON(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  // ------------------------------------------------------------------ labelling
  function initLabeler(root) {
    const urls = { submit: root.dataset.submitUrl, next: root.dataset.nextUrl, undo: root.dataset.undoUrl };
    const card = document.getElementById("a-item-card");
    const empty = document.getElementById("a-empty");
    const textEl = document.getElementById("a-text");
    const idEl = document.getElementById("a-item-id");
    const sugEl = document.getElementById("a-suggestion");
    const input = document.getElementById("a-item-input");
    const status = document.getElementById("a-status");
    const recent = document.getElementById("a-recent");
    const help = document.getElementById("a-help");
    let current = readJSON("a-current");
    const queue = [];
    const first = readJSON("a-next");
    if (first) queue.push(first);
    let shownAt = performance.now();
    let chain = Promise.resolve();
    let loading = false;
    const inflight = new Set(); // items whose label is queued but not yet saved: never fetch them again

    function say(msg, isError) {
      status.textContent = msg || "";
      status.classList.toggle("error", !!isError);
    }

    function render() {
      if (!current) {
        card.hidden = true;
        empty.hidden = loading;
        if (loading) say("Loading the next item…");
        return;
      }
      card.hidden = false;
      empty.hidden = true;
      textEl.textContent = current.text;
      idEl.textContent = "#" + current.id;
      input.value = current.id;
      sugEl.textContent = "";
      if (current.suggestion) {
        const s = current.suggestion;
        sugEl.append("suggested: ");
        const strong = document.createElement("strong");
        strong.textContent = s.label;
        sugEl.append(strong);
        sugEl.append(s.confidence !== null && s.confidence !== undefined ? " (" + Math.round(100 * Number(s.confidence)) + "% sure)" : " (" + s.source + ")");
      }
      document.querySelectorAll(".a-label-btn").forEach((b) => b.classList.remove("picked"));
      shownAt = performance.now();
    }

    function post(url, data) {
      const entries = Object.entries(data || {});
      const body = new URLSearchParams();
      entries.forEach(([k, v]) => body.append(k, v));
      return fetch(url, {
        method: "POST",
        body: entries.length ? body : undefined,
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      }).then((r) => r.json().then((j) => ({ status: r.status, body: j })));
    }

    function progress(p) {
      if (!p) return;
      const done = document.getElementById("a-done");
      const mine = document.getElementById("a-mine");
      const fill = document.getElementById("a-progress-fill");
      if (done) done.textContent = p.done;
      if (mine) mine.textContent = p.mine;
      if (fill) fill.style.width = p.percent + "%";
    }

    function refill() {
      const held = [current && current.id].concat(queue.map((q) => q.id), Array.from(inflight)).filter(Boolean);
      const qs = held.map((id) => "exclude=" + id).join("&");
      loading = !current;
      return fetch(urls.next + (qs ? "?" + qs : ""), { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then((r) => r.json())
        .then((j) => {
          loading = false;
          if (j.item && !held.includes(j.item.id)) {
            if (!current) { current = j.item; render(); say(""); }
            else queue.push(j.item);
          } else if (!current) {
            loading = inflight.size > 0; // a label still on its way may free more items: wait for it
            render();
            if (!loading) say("");
          }
        });
    }

    function addRecent(label, text) {
      if (!recent) return;
      const li = document.createElement("li");
      const b = document.createElement("span");
      b.className = "badge";
      b.textContent = label;
      li.append(b, " " + (text.length > 40 ? text.slice(0, 39) + "…" : text));
      const placeholder = document.getElementById("a-recent-empty");
      if (placeholder) placeholder.hidden = true;
      recent.prepend(li);
      while (recent.children.length > 5) recent.lastElementChild.remove();
    }

    function act(kind, label) {
      if (!current) return;
      const item = current;
      const seconds = ((performance.now() - shownAt) / 1000).toFixed(2);
      const btn = label ? root.querySelector('.a-label-btn[data-label="' + CSS.escape(label) + '"]') : null;
      if (btn) btn.classList.add("picked");
      // show the prefetched item at once; the label is sent in the background
      current = queue.shift() || null;
      if (!current) loading = true;
      render();
      if (kind === "label") addRecent(label, item.text);
      inflight.add(item.id);
      root.dataset.pending = inflight.size;
      say(kind === "skip" ? "Skipped." : "Saved “" + label + "”.");
      chain = chain
        .then(() => post(urls.submit, kind === "skip" ? { item: item.id, action: "skip" } : { item: item.id, label: label, seconds: seconds }))
        .then((res) => {
          inflight.delete(item.id);
          root.dataset.pending = inflight.size;
          if (!res.body.ok) say(res.body.error || "Could not save that label.", true);
          progress(res.body.progress);
          return refill();
        })
        .catch(() => {
          inflight.delete(item.id);
          root.dataset.pending = inflight.size;
          say("Network error: the label was not saved. Reload the page.", true);
        });
    }

    function undo() {
      chain = chain
        .then(() => post(urls.undo, {}))
        .then((res) => {
          progress(res.body.progress);
          if (!res.body.item) { say("Nothing to undo."); return; }
          if (current) queue.unshift(current);
          current = res.body.item;
          render();
          if (recent && recent.firstElementChild) recent.firstElementChild.remove();
          const placeholder = document.getElementById("a-recent-empty");
          if (placeholder && recent) placeholder.hidden = recent.children.length > 0;
          say("Undone: label item #" + current.id + " again.");
        })
        .catch((err) => say("Network error while undoing (" + err + ").", true));
    }

    root.addEventListener("click", (ev) => {
      const btn = ev.target.closest("button");
      if (!btn || !root.contains(btn)) return;
      if (btn.dataset.label) { ev.preventDefault(); act("label", btn.dataset.label); }
      else if (btn.dataset.action === "skip") { ev.preventDefault(); act("skip"); }
      else if (btn.dataset.action === "undo") { ev.preventDefault(); undo(); }
    });

    document.addEventListener("keydown", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const t = ev.target;
      if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
      if (/^[1-9]$/.test(ev.key)) {
        const btn = root.querySelector('.a-label-btn[data-key="' + ev.key + '"]');
        if (btn) { ev.preventDefault(); act("label", btn.dataset.label); }
      } else if (ev.key === "s" || ev.key === "S") {
        ev.preventDefault(); act("skip");
      } else if (ev.key === "u" || ev.key === "U") {
        ev.preventDefault(); undo();
      } else if (ev.key === "?") {
        ev.preventDefault();
        if (help) { help.open = !help.open; if (help.open) help.scrollIntoView({ block: "nearest" }); }
      }
    });
    if (!current && queue.length) { current = queue.shift(); }
    render();
    if (current && queue.length === 0) chain = chain.then(refill);
  }

  // ------------------------------------------------------------------ dashboard charts
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function labelColor(label, i) {
    return window.slmLabelColor ? window.slmLabelColor(label, i) : palette[i % palette.length];
  }

  function chart(id, config) {
    const el = document.getElementById(id);
    if (!el || !window.Chart) return;
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    new window.Chart(el, config);
  }

  // counts: whole-number ticks from 0 (never "0.2 items")
  function countAxis(title) {
    return { beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: title } };
  }

  function emptyNote(id, text) {
    const el = document.getElementById(id);
    if (!el) return;
    const p = document.createElement("p");
    p.className = "muted a-chart-empty";
    p.textContent = text;
    el.parentElement.replaceChildren(p);
  }

  function initCharts(d) {
    const lc = d.learning_curve || [];
    if (lc.length) {
      chart("chart-learning", {
        type: "line",
        data: { datasets: [{ label: "gold macro-F1", data: lc.map((p) => ({ x: p.labels, y: p.macro_f1, v: p.version })), borderColor: palette[0], backgroundColor: palette[0] }] },
        options: { scales: { x: { type: "linear", min: 0, ticks: { precision: 0 }, title: { display: true, text: "labels" } }, y: { min: 0, max: 1, title: { display: true, text: "macro-F1" } } },
          plugins: { tooltip: { callbacks: { label: (c) => c.raw.v + ": " + c.raw.y.toFixed(3) + " at " + c.raw.x + " labels" } } } },
      });
    } else emptyNote("chart-learning", "No trained versions yet.");

    drawSimulation();

    const f1 = d.per_class_f1 || {};
    if (Object.values(f1).some((v) => v !== null)) {
      chart("chart-f1", { type: "bar", data: { labels: Object.keys(f1), datasets: [{ label: "F1", data: Object.values(f1), backgroundColor: Object.keys(f1).map(labelColor) }] }, options: { scales: { y: { min: 0, max: 1 } }, plugins: { legend: { display: false } } } });
    } else emptyNote("chart-f1", "No evaluated version yet.");

    const dist = d.distribution || {};
    if (Object.values(dist).some((v) => v > 0)) {
      chart("chart-dist", { type: "bar", data: { labels: Object.keys(dist), datasets: [{ label: "items", data: Object.values(dist), backgroundColor: Object.keys(dist).map(labelColor) }] }, options: { scales: { y: countAxis("items") }, plugins: { legend: { display: false } } } });
    } else emptyNote("chart-dist", "No labels yet.");

    const tp = d.throughput || [];
    if (tp.length) {
      chart("chart-throughput", { type: "bar", data: { labels: tp.map((p) => p.day), datasets: [{ label: "labels", data: tp.map((p) => p.n), backgroundColor: palette[2] }] }, options: { scales: { y: countAxis("labels") }, plugins: { legend: { display: false } } } });
    } else emptyNote("chart-throughput", "No labels yet.");

    const st = d.stability || [];
    if (st.length) {
      chart("chart-stability", { type: "line", data: { labels: st.map((p) => p.version), datasets: [{ label: "unchanged predictions", data: st.map((p) => p.agreement), borderColor: palette[4], backgroundColor: palette[4] }, { label: "κ between versions", data: st.map((p) => p.kappa), borderColor: palette[5], backgroundColor: palette[5] }] }, options: { scales: { y: { min: 0, max: 1 } } } });
    } else emptyNote("chart-stability", "Needs two versions with pool predictions.");
  }

  // The simulation card draws its own chart from its JSON; it is swapped in by htmx while it polls.
  function drawSimulation() {
    const sim = readJSON("sim-data");
    const old = window.Chart && window.Chart.getChart(document.getElementById("chart-sim") || "");
    if (old) old.destroy();
    if (sim && sim.curves) {
      const names = Object.keys(sim.curves);
      chart("chart-sim", {
        type: "line",
        data: { datasets: names.map((n, i) => ({ label: n, data: sim.curves[n].labels.map((x, j) => ({ x: x, y: sim.curves[n].f1[j] })), borderColor: n === "random" ? "#9ca3af" : palette[i % palette.length], backgroundColor: n === "random" ? "#9ca3af" : palette[i % palette.length], borderDash: n === "random" ? [6, 4] : [] })) },
        options: { scales: { x: { type: "linear", title: { display: true, text: "labels" } }, y: { title: { display: true, text: "gold macro-F1" } } } },
      });
    } else emptyNote("chart-sim", document.querySelector("#simulation [data-job-active], #simulation[data-job-active]") ? "Running…" : "No simulation yet.");
  }

  document.addEventListener("htmx:afterSettle", () => {
    const canvas = document.getElementById("chart-sim");
    if (canvas && !(window.Chart && window.Chart.getChart(canvas))) drawSimulation();
  });

  function init() {
    const root = document.getElementById("labeler");
    if (root) initLabeler(root);
    const data = readJSON("dashboard-data");
    if (data) initCharts(data);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
