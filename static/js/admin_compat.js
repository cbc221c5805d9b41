// django-rq 4.2's admin pages under the CSP (no inline handlers run):
// - their inline script calls django.jQuery(...).actions(), a plugin Django 5 no longer has (its actions.js
//   starts itself): a no-op keeps that call from throwing. Deferred, so it runs after jquery.init.js and
//   before jQuery's ready handlers.
// - job result rows navigate with an inline onclick: the same, from here (the row's own link).
(function () {
  "use strict";
  var $ = window.django && window.django.jQuery;
  if ($ && !$.fn.actions) {
    $.fn.actions = function () { return this; };
  }
  // Django 5's actions.js updates an "N of M selected" counter (and uses the JS i18n helpers) that
  // django-rq's job lists do not have: give it both, so ticking rows does not throw.
  document.querySelectorAll("#changelist-form .actions").forEach(function (bar) {
    if (bar.querySelector(".action-counter")) return;
    var counter = document.createElement("span");
    counter.className = "action-counter";
    counter.dataset.actionsIcnt = String(document.querySelectorAll("tr input.action-select").length);
    bar.append(counter);
  });
  if (typeof window.ngettext !== "function") {
    window.ngettext = function (singular, plural, n) { return n === 1 ? singular : plural; };
  }
  if (typeof window.interpolate !== "function") {
    window.interpolate = function (fmt, obj) {
      return fmt.replace(/%\((\w+)\)s/g, function (_, key) { return String(obj[key]); });
    };
  }
  document.addEventListener("click", function (event) {
    var row = event.target.closest && event.target.closest("tr.rq-clickable");
    if (!row || event.target.closest("a, button, input")) return;
    var link = row.querySelector("a[href]");
    if (link) window.location.href = link.href;
  });
})();
