// Small site-wide helpers (no inline scripts: the CSP forbids them).

// The CSRF token the page carries for htmx (hx-headers on <body>), for fetch() calls of the page modules.
window.slmCsrfToken = function () {
  try {
    return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
  } catch (e) {
    return "";
  }
};

// One colour per label everywhere: the CSS variables --label-<name> (app.css), else a fixed palette.
const SLM_PALETTE = ["#2563eb", "#7c3aed", "#d97706", "#0891b2", "#db2777", "#4b5563"];
window.slmLabelColor = function (label, index) {
  const slug = String(label).toLowerCase().replace(/[^a-z0-9]+/g, "-");
  const css = getComputedStyle(document.documentElement).getPropertyValue(`--label-${slug}`).trim();
  return css || SLM_PALETTE[(index || 0) % SLM_PALETTE.length];
};
document.addEventListener("click", (event) => {
  const btn = event.target.closest("[data-copy]");
  if (!btn) return;
  const target = document.querySelector(btn.dataset.copy);
  if (target && navigator.clipboard) {
    navigator.clipboard.writeText(target.innerText).then(() => {
      const old = btn.textContent;
      btn.textContent = "Copied";
      setTimeout(() => { btn.textContent = old; }, 1200);
    });
  }
});

// Risky actions ask first: a form with data-confirm="<question>" opens a dialog; on "yes" the form is
// sent with confirm=1 (the server asks on a page of its own when JavaScript is off). Capture phase, so
// htmx-driven forms wait for the answer too.
function askFirst(question, yes, danger) {
  return new Promise((resolve) => {
    const dialog = document.createElement("dialog");
    dialog.className = "confirm-dialog";
    dialog.setAttribute("aria-labelledby", "confirm-dialog-text");
    const text = document.createElement("p");
    text.id = "confirm-dialog-text";
    text.textContent = question;
    const actions = document.createElement("div");
    actions.className = "confirm-actions";
    const no = document.createElement("button");
    no.type = "button";
    no.textContent = "Cancel";
    no.value = "no";
    const ok = document.createElement("button");
    ok.type = "button";
    ok.textContent = yes;
    ok.value = "yes";
    ok.className = danger ? "danger" : "primary";
    actions.append(no, ok);
    dialog.append(text, actions);
    for (const btn of [no, ok]) btn.addEventListener("click", () => dialog.close(btn.value));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "yes");
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus(); // the safe answer has the focus: Enter does not delete by accident
  });
}

document.addEventListener(
  "submit",
  (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
    if (form.dataset.confirmed === "1") {
      delete form.dataset.confirmed;
      return;
    }
    event.preventDefault();
    event.stopPropagation();
    const submitter = event.submitter;
    askFirst(form.dataset.confirm, form.dataset.confirmYes || "Continue", form.dataset.confirmDanger !== "false").then((yes) => {
      if (!yes) return;
      let flag = form.querySelector("input[name=confirm]");
      if (!flag) {
        flag = document.createElement("input");
        flag.type = "hidden";
        flag.name = "confirm";
        form.append(flag);
      }
      flag.value = "1";
      form.dataset.confirmed = "1";
      form.requestSubmit(submitter && submitter.form === form ? submitter : undefined);
    });
  },
  true,
);

// "Retrain #2 queued."-style messages (class "transient") describe a job in progress: once no job on the
// page is still polling (no [data-job-active] left after an htmx swap), they are out of date and go.
function dropStaleJobMessages() {
  if (document.querySelector("[data-job-active]")) return;
  document.querySelectorAll(".messages .msg.transient").forEach((el) => el.remove());
  const list = document.querySelector(".messages");
  if (list && !list.children.length) list.remove();
}
document.addEventListener("htmx:afterSettle", dropStaleJobMessages);
document.addEventListener("DOMContentLoaded", dropStaleJobMessages);
