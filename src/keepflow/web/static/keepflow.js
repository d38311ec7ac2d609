// Live refresh: the server says "change" (server-sent events) when what the pages show has
// changed; the page then fetches itself and swaps its content in, unless a person is typing
// in a form or has a <details> open. Without JavaScript every page still works.
(function () {
  "use strict";
  var url = document.body && document.body.getAttribute("data-live");
  if (!url || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var state = document.querySelector(".live-state");
  var busy = false, again = false;

  // Only a <details> the person opened counts (a click on its summary, mouse or keyboard):
  // one the page opens itself, like a run's error, must not stop the page from refreshing.
  document.addEventListener("click", function (e) {
    var summary = e.target && e.target.closest ? e.target.closest("summary") : null;
    if (summary && summary.parentElement) summary.parentElement.setAttribute("data-opened", "");
  });

  function interacting() {
    var el = document.activeElement;
    if (el && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName)) return true;
    return document.querySelector("main details[open][data-opened]") !== null;
  }

  // What identifies a link or button across a refresh: the fresh copy of the focused one gets
  // the focus back (a keyboard user keeps their place; a confirmation keeps its focused "Yes").
  function key(el) {
    return [el.tagName, el.getAttribute("href"), el.getAttribute("name"),
            el.form ? el.form.getAttribute("action") : "", el.textContent.trim()].join("\n");
  }

  function counterpart(el, root) {
    if (!el || el === document.body || !el.tagName) return null;
    var want = key(el), all = root.querySelectorAll(el.tagName);
    for (var i = 0; i < all.length; i++) if (key(all[i]) === want) return all[i];
    return null;
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
        var shown = old.querySelector("#flash"), main = fresh.querySelector("#main");
        if (shown && main) main.parentNode.insertBefore(shown, main); // ... and stays there
        var focused = old.contains(document.activeElement)
          ? counterpart(document.activeElement, fresh) : null;
        var y = window.scrollY;
        old.replaceWith(fresh);
        window.scrollTo(0, y);
        if (focused) focused.focus({ preventScroll: true });
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
