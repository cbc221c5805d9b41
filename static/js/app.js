// Small site-wide helpers (no inline scripts: the CSP forbids them).
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
