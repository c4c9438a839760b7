// Live charts of the Cluster and Models pages: /api/timeline drawn with the vendored uPlot,
// refreshed every sampling interval; events are markers on every chart and a list below.
// Each chart says which series carried traffic in data-traffic (also what a test reads).
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") { return; }
  var url = root.dataset.timelineUrl;
  var stateEl = document.getElementById("charts-state");
  var eventsEl = document.getElementById("chart-events");
  var COLORS = ["#1f6fd1", "#d1491f", "#2e9b57", "#8a56c9", "#c99a1f", "#1fa6b8", "#b81f7a", "#5b6b7f"];
  var data = { t: [], events: [], nodes: {}, models: {}, upstreams: {}, window: 3600, interval: 5 };
  var charts = [];
  var timer = null;

  Array.prototype.forEach.call(root.querySelectorAll(".chart"), function (fig) {
    charts.push({ fig: fig, group: fig.dataset.group, metric: fig.dataset.metric, plot: null, keys: "" });
  });

  function merge(update) {
    var n = data.t.length;
    data.interval = update.interval;
    data.window = update.window;
    data.t = data.t.concat(update.t);
    ["nodes", "models", "upstreams"].forEach(function (group) {
      var old = data[group], fresh = update[group] || {}, out = {};
      Object.keys(old).concat(Object.keys(fresh)).forEach(function (key) {
        if (out[key]) { return; }
        out[key] = {};
        ["rps", "err", "p50", "p99"].forEach(function (m) {
          var before = old[key] ? old[key][m] : new Array(n).fill(null);
          var after = fresh[key] ? fresh[key][m] : new Array(update.t.length).fill(null);
          out[key][m] = before.concat(after);
        });
      });
      data[group] = out;
    });
    data.events = update.events;  // every event of the window, each time
    // Keep the window only, as the agent does.
    var horizon = (data.t.length ? data.t[data.t.length - 1] : Date.now() / 1000) - data.window;
    var drop = 0;
    while (drop < data.t.length && data.t[drop] < horizon) { drop++; }
    if (drop) {
      data.t = data.t.slice(drop);
      ["nodes", "models", "upstreams"].forEach(function (group) {
        Object.keys(data[group]).forEach(function (key) {
          ["rps", "err", "p50", "p99"].forEach(function (m) { data[group][key][m] = data[group][key][m].slice(drop); });
        });
      });
    }
    data.events = data.events.filter(function (e) { return e.t >= horizon; });
  }

  function seriesOf(chart) {
    var keys = Object.keys(data[chart.group]).sort();
    var series = [{}], columns = [data.t];
    keys.forEach(function (key, i) {
      var color = COLORS[i % COLORS.length], s = data[chart.group][key];
      if (chart.metric === "latency") {
        series.push({ label: key + " p50", stroke: color, width: 1.5 });
        columns.push(s.p50);
        series.push({ label: key + " p99", stroke: color, width: 1.5, dash: [6, 4] });
        columns.push(s.p99);
      } else {
        series.push({ label: key, stroke: color, width: 1.5 });
        columns.push(chart.metric === "rps" ? s.rps : s.err);
      }
    });
    return { keys: keys, series: series, columns: columns };
  }

  function placeMarkers(u, chart) {
    var over = u.over;
    Array.prototype.forEach.call(over.querySelectorAll(".marker"), function (m) { m.remove(); });
    var min = u.scales.x.min, max = u.scales.x.max;
    data.events.forEach(function (e) {
      if (min == null || e.t < min || e.t > max) { return; }
      var m = document.createElement("div");
      m.className = "marker kind-" + e.kind;
      m.dataset.kind = e.kind;
      m.dataset.t = e.t;
      m.title = new Date(e.t * 1000).toISOString().slice(11, 19) + " " + e.text;
      m.style.left = u.valToPos(e.t, "x") + "px";
      m.style.height = over.clientHeight + "px";
      over.appendChild(m);
    });
    chart.fig.dataset.markers = String(over.querySelectorAll(".marker").length);
  }

  function traffic(chart) {
    if (chart.metric !== "rps") { return; }
    var busy = Object.keys(data[chart.group]).filter(function (key) {
      return data[chart.group][key].rps.some(function (v) { return v > 0; });
    });
    chart.fig.dataset.traffic = busy.sort().join(" ");
  }

  function draw(chart) {
    var s = seriesOf(chart);
    var keys = s.keys.join("|");
    if (chart.plot && chart.keys === keys) {
      chart.plot.setData(s.columns);
    } else {
      if (chart.plot) { chart.plot.destroy(); }
      var box = chart.fig.querySelector(".plot");
      chart.plot = new uPlot({
        width: Math.max(300, Math.min(560, Math.floor(chart.fig.parentNode.clientWidth / 3) - 40)),
        height: 190,
        series: s.series,
        scales: { x: { time: true } },
        axes: [{}, { size: 50 }],
        legend: { live: false },
        hooks: { draw: [function (u) { placeMarkers(u, chart); }] }
      }, s.columns, box);
      chart.keys = keys;
    }
    traffic(chart);
  }

  function showEvents() {
    eventsEl.textContent = "";
    data.events.slice().reverse().forEach(function (e) {
      var li = document.createElement("li");
      li.dataset.kind = e.kind;
      var when = document.createElement("span");
      when.className = "kind";
      when.textContent = new Date(e.t * 1000).toISOString().slice(11, 19) + " " + e.kind;
      li.appendChild(when);
      li.appendChild(document.createTextNode(" " + e.text));
      eventsEl.appendChild(li);
    });
  }

  function refresh() {
    var since = data.t.length ? data.t[data.t.length - 1] : 0;
    fetch(url + "?since=" + encodeURIComponent(since), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (update) {
        merge(update);
        charts.forEach(draw);
        showEvents();
        stateEl.textContent = "every " + data.interval + " s, last " + Math.round(data.window / 60) + " min";
        root.dataset.samples = String(data.t.length);
      })
      .catch(function (err) { stateEl.textContent = "not updated: " + err.message; })
      .then(function () { timer = setTimeout(refresh, Math.max(1, data.interval) * 1000); });
  }

  refresh();
  window.addEventListener("pagehide", function () { if (timer) { clearTimeout(timer); } });
})();
