// Sentiment playground and model cards (no inline scripts: the CSP forbids them).
(function () {
  "use strict";

  // Example links: fill the textarea too (htmx fetches the prediction; without JS the link reloads the page).
  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-example]");
    if (!link) return;
    var box = document.getElementById("s-text");
    if (box) box.value = link.dataset.example;
    var cmp = document.getElementById("c-text");
    if (cmp && !cmp.value) cmp.value = link.dataset.example;
  });

  // Ctrl/Cmd+Enter submits the classify form.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    var form = event.target.closest && event.target.closest("form#classify-form, form#compare-form");
    if (form) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function labelColor(label, i) {
    return window.slmLabelColor ? window.slmLabelColor(label, i) : PALETTE[i % PALETTE.length];
  }

  function drawCharts() {
    var node = document.getElementById("s-chart-data");
    if (!node || typeof window.Chart === "undefined") return;
    var data = JSON.parse(node.textContent || "{}");

    var cmCanvas = document.getElementById("s-cm-chart");
    if (cmCanvas && data.matrix && data.matrix.matrix) {
      var labels = data.matrix.labels;
      var matrix = data.matrix.matrix;
      // Grouped bars: x = true class, one bar per predicted class (diagonal = correct).
      var datasets = labels.map(function (pred, j) {
        return {
          label: "predicted " + pred,
          data: matrix.map(function (row) { return row[j]; }),
          backgroundColor: labelColor(pred, j),
        };
      });
      new window.Chart(cmCanvas, {
        type: "bar",
        data: { labels: labels.map(function (l) { return "true " + l; }), datasets: datasets },
        options: { responsive: true, maintainAspectRatio: false, animation: false,
                   scales: { y: { beginAtZero: true, title: { display: true, text: "count" } } } },
      });
    }

    var histCanvas = document.getElementById("s-hist-chart");
    if (histCanvas && data.histogram) {
      new window.Chart(histCanvas, {
        type: "bar",
        data: { labels: data.histogram.labels, datasets: [{ label: "texts", data: data.histogram.counts, backgroundColor: "#94a3b8" }] },
        options: { responsive: true, maintainAspectRatio: false, animation: false, plugins: { legend: { display: false } },
                   scales: { x: { title: { display: true, text: "length (" + data.histogram.unit + ")" } },
                             y: { beginAtZero: true, title: { display: true, text: "texts" } } } },
      });
    }

    var curvesCanvas = document.getElementById("s-curves-chart");
    if (curvesCanvas && data.curves && data.curves.series) {
      var keys = Object.keys(data.curves.series);
      var xs = data.curves.xs;
      var series = keys.map(function (k, i) {
        var isLoss = /loss/i.test(k);
        return {
          label: k,
          data: data.curves.series[k],
          borderColor: PALETTE[i % PALETTE.length],
          backgroundColor: PALETTE[i % PALETTE.length],
          yAxisID: isLoss ? "loss" : "score",
          tension: 0.2,
          pointRadius: xs.length > 40 ? 0 : 2,
          spanGaps: true,
        };
      });
      var hasLoss = keys.some(function (k) { return /loss/i.test(k); });
      var scales = {
        x: { title: { display: true, text: data.curves.x.replace(/_/g, " ") } },
        score: { type: "linear", position: "right", min: 0, max: 1,
                 title: { display: true, text: "accuracy / F1" } },
      };
      if (hasLoss) {
        scales.loss = { type: "linear", position: "left", title: { display: true, text: "loss" } };
        scales.score.grid = { drawOnChartArea: false };
      }
      new window.Chart(curvesCanvas, {
        type: "line",
        data: { labels: xs, datasets: series },
        options: {
          responsive: true, maintainAspectRatio: false, animation: false,
          interaction: { mode: "index", intersect: false },
          scales: scales,
        },
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawCharts);
  } else {
    drawCharts();
  }
})();
