// Live refresh of /ops/: poll status.json and update the page in place (no reload, no framework).
(function () {
  "use strict";
  var body = document.body;
  var url = body.dataset.statusUrl;
  var every = Number(body.dataset.refreshMs) || 3000;
  var running = document.getElementById("running");
  var template = document.getElementById("run-card");

  function text(key, value) {
    if (value === null || value === undefined) return "—";
    if (key === "rate") return value.toFixed(1);
    if (key === "failures") return value.length ? value.map(function (f) { return f.reason + " " + f.users; }).join(", ") : "none";
    if (key === "problems") return value.join(" ");
    if (key === "related") return value.join(" · ");
    if (/_at$/.test(key)) return new Date(value).toLocaleTimeString("en-GB", { timeZone: "Asia/Seoul" });
    return String(value);
  }

  function fill(element, data) {
    element.querySelectorAll("[data-field]").forEach(function (node) {
      var key = node.dataset.field;
      if (key in data) node.textContent = text(key, data[key]);
    });
    var link = element.querySelector("a[data-href]");
    if (link && data.url) link.href = data.url;
  }

  function renderRuns(runs) {
    var seen = {};
    runs.forEach(function (run) {
      seen[run.id] = true;
      var card = running.querySelector('[data-run-id="' + run.id + '"]');
      if (!card) {
        card = template.content.firstElementChild.cloneNode(true);
        card.dataset.runId = run.id;
        running.appendChild(card);
      }
      fill(card, run);
      card.querySelector("[data-width]").style.width = run.percent.toFixed(1) + "%";
      card.classList.toggle("stale", Boolean(run.stale));
    });
    running.querySelectorAll("[data-run-id]").forEach(function (card) {
      if (!seen[card.dataset.runId]) card.remove();
    });
    document.getElementById("no-running").hidden = runs.length > 0;
  }

  function render(data) {
    renderRuns(data.running);
    var last = document.getElementById("last-finished");
    if (data.last_finished) {
      fill(last, data.last_finished);
      last.querySelector("[data-some]").hidden = false;
      last.querySelector("[data-none]").hidden = true;
    }
    data.coverage.forEach(function (c) {
      var tile = document.querySelector('[data-coverage="' + c.for_date + '"]');
      if (!tile) return;
      fill(tile, c);
      tile.classList.toggle("ok", c.ok);
      tile.classList.toggle("bad", !c.ok);
    });
    var health = document.querySelector("[data-health]");
    health.classList.toggle("ok", data.health.ok);
    health.classList.toggle("bad", !data.health.ok);
    fill(health, data.health);
    document.getElementById("updated").textContent = text("generated_at", data.generated_at);
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status.json answered " + response.status);
        return response.json();
      })
      .then(render)
      .catch(function (error) { document.getElementById("updated").textContent = "refresh failed: " + error.message; })
      .finally(function () { setTimeout(tick, every); });
  }

  if (url && running && template) setTimeout(tick, every);
})();
