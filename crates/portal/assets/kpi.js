// Drawbridge portal: live KPI tiles. Served by the portal itself (script-src
// 'self'); no inline script, no third-party code. While the page is open and
// visible it asks the portal's JSON route (the element with data-kpi-live
// names it) about once a second and puts the texts it gets into the tiles
// (textContent only, never HTML). Each request also renews the viewer's
// watch, so the edge keeps sending values; when the page closes or is hidden
// the requests stop and so do the values, within seconds.
(function () {
  "use strict";
  var status = document.querySelector("[data-kpi-live]");
  if (!status) {
    return;
  }
  var url = status.getAttribute("data-kpi-live");
  var busy = false;
  var failures = 0;

  function put(tile, selector, text) {
    var el = tile.querySelector(selector);
    if (el && el.textContent !== text) {
      el.textContent = text;
    }
  }

  function apply(data) {
    var byKey = {};
    (data.tiles || []).forEach(function (t) {
      byKey[t.key] = t;
    });
    document.querySelectorAll("[data-kpi]").forEach(function (tile) {
      var t = byKey[tile.getAttribute("data-kpi")];
      if (!t) {
        tile.classList.add("stale");
        put(tile, ".kpi-age", "not available");
        return;
      }
      put(tile, ".kpi-value", t.value);
      put(tile, ".kpi-unit", t.unit);
      put(tile, ".kpi-quality", t.quality);
      put(tile, ".kpi-age", t.age);
      tile.classList.toggle("bad", !!t.bad);
      tile.classList.toggle("stale", !!t.stale);
    });
    status.classList.remove("offline");
    status.textContent = "Live: values refresh about once a second while this page is open.";
  }

  function tick() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" }
    })
      .then(function (r) {
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.json();
      })
      .then(function (data) {
        failures = 0;
        apply(data);
      })
      .catch(function () {
        failures += 1;
        if (failures >= 3) {
          status.classList.add("offline");
          status.textContent = "Not live: the portal does not answer (reload the page, or log in again).";
        }
      })
      .finally(function () {
        busy = false;
      });
  }

  tick();
  setInterval(tick, 1000);
})();
