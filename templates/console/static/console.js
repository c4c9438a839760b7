// Live follow of a log page over Server-Sent Events. The page is usable without it.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log) { return; }
  var stateEl = document.getElementById("live-state");
  var toggle = document.getElementById("live-toggle");
  var shown = document.getElementById("shown");
  var empty = document.getElementById("no-lines");
  var baseUrl = log.dataset.followUrl;
  var position = log.dataset.position;
  var maxLines = Math.max(parseInt(log.dataset.maxLines, 10) || 5000, 1000);
  var source = null;

  function setState(text, kind) {
    stateEl.textContent = text;
    stateEl.className = "badge " + (kind || "");
  }

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 60;
  }

  function add(texts, cls) {
    var stick = nearBottom();
    var frag = document.createDocumentFragment();
    texts.forEach(function (t) {
      var div = document.createElement("div");
      div.className = "line " + cls;
      div.textContent = t;
      frag.appendChild(div);
    });
    log.appendChild(frag);
    while (log.childElementCount > maxLines) { log.removeChild(log.firstElementChild); }
    if (empty) { empty.remove(); empty = null; }
    shown.textContent = log.querySelectorAll(".line:not(.notice)").length;
    if (stick) { window.scrollTo(0, document.body.scrollHeight); }
  }

  function connect() {
    var url = baseUrl + (position ? "&from=" + encodeURIComponent(position) : "");
    source = new EventSource(url);
    setState("connecting");
    source.onopen = function () { setState("live", "good"); };
    source.onmessage = function (e) {
      position = e.lastEventId || position;
      add(JSON.parse(e.data).lines, "new");
    };
    source.addEventListener("notice", function (e) {
      position = e.lastEventId || position;
      add(["— file " + JSON.parse(e.data).notice + " —"], "notice");
    });
    source.onerror = function () {
      setState(source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting", "warn");
    };
  }

  toggle.addEventListener("click", function () {
    if (source) {
      source.close();
      source = null;
      setState("paused");
      toggle.textContent = "Resume";
    } else {
      connect();
      toggle.textContent = "Pause";
    }
  });

  window.scrollTo(0, document.body.scrollHeight);
  connect();
})();
