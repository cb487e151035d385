// Krill web view: live updates without a framework.
// - Regions marked data-live="on" are refreshed every 2 s from the same page
//   (fetched with the session cookie); polling stops once none is live.
// - <pre data-logs="URL"> follows the task's Server-Sent Events log and
//   reloads the page when the log ends (to show the stored result).
(function () {
  "use strict";
  function live() { return document.querySelectorAll('[data-live="on"]'); }
  function poll() {
    if (live().length === 0) { return; }
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          if (!el.id) { return; }
          var fresh = doc.getElementById(el.id);
          if (!fresh) { return; }
          if (el.dataset.state && fresh.dataset.state !== el.dataset.state) { location.reload(); return; }
          el.replaceWith(fresh);
        });
      })
      .catch(function () {})
      .then(function () { setTimeout(poll, 2000); });
  }
  function follow(pre) {
    var es = new EventSource(pre.getAttribute("data-logs"));
    var fresh = true;
    function add(e) {
      if (fresh) { pre.textContent = ""; fresh = false; }
      pre.textContent += /\n$/.test(e.data) ? e.data : e.data + "\n";
      pre.scrollTop = pre.scrollHeight;
    }
    es.addEventListener("stdout", add);
    es.addEventListener("stderr", add);
    es.addEventListener("end", function () {
      es.close();
      setTimeout(function () { location.reload(); }, 800);
    });
    es.onerror = function () { es.close(); };
  }
  document.addEventListener("DOMContentLoaded", function () {
    if (live().length > 0) { setTimeout(poll, 2000); }
    document.querySelectorAll("pre[data-logs]").forEach(follow);
  });
})();
