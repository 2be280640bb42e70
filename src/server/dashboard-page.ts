/**
 * The dashboard page: HTML, style and script, served by dashboard-app.ts from this module (no CDN, no
 * build step; it ships inside dist/). The script renders with `textContent` only, so run ids and
 * addresses written by clients can never inject markup, and the page's CSP allows only its own files.
 * It follows `/events` (server-sent events) and ticks ages and deadlines once a second on the server's
 * clock (offset by the `now` of each message).
 */

/** The page. */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rdzv dashboard</title>
<link rel="stylesheet" href="/dashboard.css">
</head>
<body>
<header>
  <h1>rdzv</h1>
  <span id="store"></span>
  <span id="conn" class="conn off" title="live updates">connecting</span>
</header>
<main>
  <section id="runs-pane">
    <h2>Runs</h2>
    <table id="runs"><thead><tr><th>run</th><th>source</th><th>state</th><th>round</th><th>nodes</th><th>waiting</th></tr></thead><tbody></tbody></table>
    <p id="no-runs" class="muted">No rendezvous run in this store yet.</p>
    <p id="runs-capped" class="notes" hidden></p>
  </section>
  <section id="run-pane">
    <div id="run"></div>
    <h3>Timeline</h3>
    <ol id="timeline"></ol>
  </section>
</main>
<script src="/dashboard.js"></script>
</body>
</html>
`;

/** The style. */
export const DASHBOARD_CSS = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { display: flex; gap: 1em; align-items: baseline; padding: .6em 1em; background: #1d2330; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; }
#store { color: #b8c0d0; font-family: monospace; }
.conn { margin-left: auto; font-size: .85em; padding: .1em .6em; border-radius: 1em; }
.conn.on { background: #2e7d32; } .conn.off { background: #9e2a2a; }
main { display: grid; grid-template-columns: minmax(0, 1fr); gap: 1em; padding: 1em; }
#runs-pane { max-height: 40vh; }
section { background: #fff; border-radius: 6px; padding: .8em 1em; box-shadow: 0 1px 2px #0002; overflow: auto; }
h2, h3 { margin: .2em 0 .5em; font-size: 1.05em; }
table { border-collapse: collapse; width: 100%; margin-bottom: .8em; }
th, td { text-align: left; padding: .2em .5em; border-bottom: 1px solid #e3e6ec; white-space: nowrap; }
th { font-weight: 600; color: #555; font-size: .9em; }
#runs tbody tr { cursor: pointer; } #runs tbody tr.selected { background: #e7efff; }
#runs td.run-id { max-width: 32em; overflow: hidden; text-overflow: ellipsis; }
.state { display: inline-block; padding: 0 .5em; border-radius: .8em; font-size: .85em; background: #ddd; }
.state-joining { background: #fff1c2; } .state-last-call { background: #ffd59e; } .state-complete { background: #c9efcf; }
.state-closed { background: #d6d6d6; } .state-unknown { background: #f4c7c7; }
.status-dead { color: #b00020; font-weight: 600; } .status-left, .status-rejoined { color: #777; }
.overdue { color: #b00020; font-weight: 600; }
.notes { color: #6a4b00; background: #fff8e1; padding: .3em .6em; border-radius: 4px; }
.muted { color: #888; }
#timeline { font-family: monospace; font-size: .9em; padding-left: 2.5em; max-height: 40em; overflow: auto; }
#timeline li.ev-nodeLost { color: #b00020; } #timeline li.ev-completed { color: #2e7d32; } #timeline li.ev-closed { color: #555; }
/* Side by side only where both tables fit; else the run list above the run (a wide table scrolls in its pane). */
@media (min-width: 120em) {
  main { grid-template-columns: fit-content(35%) minmax(0, 1fr); align-items: start; }
  #runs-pane { max-height: none; }
  #runs td.run-id { max-width: 16em; }
}
`;

/** The script (plain ES2017, no template literals so that it can live in this string). */
export const DASHBOARD_JS = String.raw`(function () {
  "use strict";
  var st = { runs: [], total: 0, truncated: false, selected: null, source: null, views: [], timeline: [], offset: 0, es: null };
  var $ = function (id) { return document.getElementById(id); };
  function el(tag, props, kids) {
    var e = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      if (k === "text") e.textContent = props[k];
      else if (k === "cls") e.className = props[k];
      else e.setAttribute(k, props[k]);
    });
    (kids || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function now() { return Date.now() + st.offset; }
  function clock(serverNow) { if (typeof serverNow === "number") st.offset = serverNow - Date.now(); }
  function secs(ms) { return (Math.abs(ms) / 1000).toFixed(ms < 10000 && ms > -10000 ? 1 : 0) + " s"; }
  function time(at) {
    var d = new Date(at);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function stateBadge(s) { return el("span", { cls: "state state-" + s.replace(/ /g, "-"), text: s, "data-state": s }); }
  function age(at) { return el("span", { "data-age": String(at), text: "" }); }
  function until(at) { return el("span", { "data-until": String(at), text: "" }); }
  function tick() {
    var t = now();
    document.querySelectorAll("[data-age]").forEach(function (e) { e.textContent = secs(t - Number(e.getAttribute("data-age"))) + " ago"; });
    document.querySelectorAll("[data-until]").forEach(function (e) {
      var left = Number(e.getAttribute("data-until")) - t;
      e.textContent = left >= 0 ? "in " + secs(left) : "overdue " + secs(left);
      e.className = left >= 0 ? "" : "overdue";
    });
  }
  function renderRuns() {
    var body = $("runs").tBodies[0];
    body.textContent = "";
    $("no-runs").style.display = st.runs.length ? "none" : "";
    var capped = $("runs-capped");
    capped.hidden = !st.truncated;
    capped.textContent = "Showing " + st.runs.length + " of " + st.total + " runs (capped): the most recently changed first, then by id; ids past 1024 characters are not listed.";
    st.runs.forEach(function (r) {
      var tr = el("tr", { "data-run": r.runId, "data-source": r.source }, [
        el("td", { cls: "run-id", title: r.runId, text: r.runId }), el("td", { text: r.source }), el("td", {}, [stateBadge(r.state)]),
        el("td", { text: String(r.round) }), el("td", { text: String(r.participants) }), el("td", { text: String(r.waiting) })
      ]);
      if (r.runId === st.selected && (!st.source || st.source === r.source)) tr.className = "selected";
      tr.addEventListener("click", function () { select(r.runId, r.source); });
      body.appendChild(tr);
    });
  }
  function nodeTable(nodes, withRank) {
    var head = ["rank", "slot", "node", "address", "pid", "status", "last keep-alive", "counted dead"];
    if (!withRank) head = head.slice(1);
    var rows = nodes.map(function (n) {
      var cells = [
        el("td", { text: n.slot === undefined ? "" : String(n.slot) }), el("td", { text: n.id }), el("td", { text: n.addr }),
        el("td", { text: n.pid === undefined ? "" : String(n.pid) }), el("td", { cls: "status-" + n.status, text: n.status }),
        el("td", {}, [n.lastKeepAliveAt === undefined ? (n.keepAlives === undefined ? null : el("span", { text: "count " + n.keepAlives })) : age(n.lastKeepAliveAt)]),
        el("td", {}, [n.expiresAt === undefined ? null : until(n.expiresAt)])
      ];
      if (withRank) cells.unshift(el("td", { text: n.rank === undefined ? "" : String(n.rank) }));
      return el("tr", { "data-node": n.id, "data-status": n.status }, cells);
    });
    return el("table", { cls: "nodes" }, [
      el("thead", {}, [el("tr", {}, head.map(function (h) { return el("th", { text: h }); }))]), el("tbody", {}, rows)
    ]);
  }
  function renderRun() {
    var box = $("run");
    box.textContent = "";
    if (!st.selected) return;
    if (!st.views.length) { box.appendChild(el("p", { cls: "muted", text: "Run " + st.selected + " is not in this store." })); return; }
    st.views.forEach(function (v) {
      var head = el("h2", { id: "run-title" }, [el("span", { text: v.runId + " " }), stateBadge(v.state), el("span", { text: " round " + v.round + " (" + v.source + ")" })]);
      box.appendChild(head);
      if (v.lastCallEndsAt !== undefined) box.appendChild(el("p", {}, [el("span", { text: "Last call ends " }), until(v.lastCallEndsAt)]));
      if (v.coordinator !== undefined) box.appendChild(el("p", { cls: "muted", text: "coordinator: slot " + v.coordinator }));
      v.notes.forEach(function (n) { box.appendChild(el("p", { cls: "notes", text: n })); });
      var capped = v.capped ? ", capped: see the notes" : "";
      box.appendChild(el("h3", { text: "Participants (" + v.participants.length + capped + ")" }));
      box.appendChild(nodeTable(v.participants, v.state === "complete"));
      if (v.waiting.length) { box.appendChild(el("h3", { text: "Waiting (" + v.waiting.length + capped + ")" })); box.appendChild(nodeTable(v.waiting, false)); }
      if (v.redundant.length) { box.appendChild(el("h3", { text: "Spares (" + v.redundant.length + ")" })); box.appendChild(nodeTable(v.redundant, false)); }
    });
    tick();
  }
  function describe(e) {
    var who = e.node ? " " + e.node.id + (e.node.slot === undefined ? "" : " (slot " + e.node.slot + ")") : "";
    var extra = e.type === "completed" ? " world size " + e.worldSize + (e.elapsedMs === undefined ? "" : " after " + secs(e.elapsedMs)) : e.type === "left" && e.reason && e.reason !== "left" ? " (" + e.reason + ")" : "";
    return time(e.at) + "  round " + (e.round < 0 ? "-" : e.round) + "  " + e.type + who + extra;
  }
  function renderTimeline(events, reset) {
    var list = $("timeline");
    if (reset) list.textContent = "";
    events.forEach(function (e) { list.appendChild(el("li", { cls: "ev ev-" + e.type, "data-type": e.type, text: describe(e) })); });
    list.scrollTop = list.scrollHeight;
  }
  function setConn(on) { var c = $("conn"); c.className = "conn " + (on ? "on" : "off"); c.textContent = on ? "live" : "reconnecting"; }
  function connect() {
    if (st.es) st.es.close();
    var q = st.selected ? "?run=" + encodeURIComponent(st.selected) + (st.source ? "&source=" + st.source : "") : "";
    var es = new EventSource("/events" + q);
    st.es = es;
    es.addEventListener("open", function () { setConn(true); });
    es.addEventListener("error", function () { setConn(false); });
    es.addEventListener("runs", function (m) {
      var d = JSON.parse(m.data); clock(d.now); st.runs = d.runs; st.total = d.total; st.truncated = d.truncated === true;
      if (!st.selected && d.runs.length) { select(d.runs[0].runId, d.runs[0].source); return; }
      renderRuns();
    });
    es.addEventListener("run", function (m) { var d = JSON.parse(m.data); clock(d.now); st.views = d.views; renderRun(); });
    es.addEventListener("timeline", function (m) { var d = JSON.parse(m.data); clock(d.now); renderTimeline(d.events, d.reset === true); });
  }
  function select(runId, source) {
    st.selected = runId; st.source = source || null; st.views = [];
    location.hash = "run=" + encodeURIComponent(runId) + (source ? "&source=" + source : "");
    renderRuns(); renderRun(); renderTimeline([], true); connect();
  }
  var m = /run=([^&]*)(?:&source=(\w+))?/.exec(location.hash);
  if (m) { st.selected = decodeURIComponent(m[1]); st.source = m[2] || null; }
  fetch("/healthz").then(function (r) { return r.json(); }).then(function (h) { if (h.store) $("store").textContent = "store " + h.store; }).catch(function () {});
  connect();
  setInterval(tick, 1000);
})();
`;
