// Live refresh: the server says "change" (server-sent events) when what the pages show has
// changed; the page then fetches itself and swaps its content in, unless a person is typing
// in a form or has a <details> open. Without JavaScript every page still works.
(function () {
  "use strict";
  var url = document.body && document.body.getAttribute("data-live");
  if (!url || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var state = document.querySelector(".live-state");
  var busy = false, again = false;

  function interacting() {
    var el = document.activeElement;
    if (el && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName)) return true;
    return document.querySelector("main details[open]") !== null;
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (interacting()) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("page"), old = document.getElementById("page");
        if (!fresh || !old || interacting()) return;
        var flash = fresh.querySelector("#flash");
        if (flash) flash.remove(); // a message is shown once, on the page it was meant for
        var y = window.scrollY;
        old.replaceWith(fresh);
        window.scrollTo(0, y);
      })
      .catch(function () {})
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var source = new EventSource(url);
  source.addEventListener("change", refresh);
  source.onopen = function () { if (state) state.textContent = "live"; };
  source.onerror = function () { if (state) state.textContent = "reconnecting…"; };
})();
