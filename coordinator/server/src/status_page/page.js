(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var TIMEOUT_MS = 6000;
  var box = document.getElementById("refresh");
  var text = document.getElementById("refresh-text");
  var lastOk = new Date();
  function hms(d) {
    return d.toISOString().slice(11, 19) + " UTC";
  }
  function mark(state, message) {
    box.setAttribute("data-refresh", state);
    text.textContent = message;
  }
  function refresh() {
    var abort = new AbortController();
    var timer = setTimeout(function () { abort.abort(); }, TIMEOUT_MS);
    fetch(location.pathname, { cache: "no-store", signal: abort.signal, headers: { Accept: "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("status");
        var current = document.getElementById("status");
        if (!fresh || !current) { throw new Error("unexpected answer"); }
        current.replaceWith(document.importNode(fresh, true));
        lastOk = new Date();
        mark("live", "Live: refreshed " + hms(lastOk) + ", every 2 s");
      })
      .catch(function (e) {
        var why = e && e.name === "AbortError" ? "no answer within 6 s" : (e && e.message) || "error";
        mark("stale", "STALE: refresh failed (" + why + "); the data below is from " + hms(lastOk) + ". Retrying.");
      })
      .then(function () {
        clearTimeout(timer);
        setTimeout(refresh, PERIOD_MS);
      });
  }
  mark("live", "Live: refreshes every 2 s");
  setTimeout(refresh, PERIOD_MS);
})();
