/**
 * The status page the admin HTTP serves at `GET /`: one self-contained HTML document (inline
 * CSS and JS, no external resource, no build step) that polls `GET /cluster` every 2 s and
 * shows the health, the members as a table and the last minutes of commits per second,
 * commit latency and replica lag as small SVG charts.
 *
 * Everything taken from the data reaches the DOM as text (`textContent`, `setAttribute`),
 * never as markup; on top of that a Content-Security-Policy allows only this page's own
 * script and style (by hash), requests to its own origin, and nothing else.
 *
 * The JSON it reads (the contract of `GET /cluster`):
 *
 *   { clusterId, self, generatedAt,
 *     health: { code: 0 | 1 | 2, summary, problems: [string] },
 *     members: [ { nodeId, admin, status: NodeStatus } | { nodeId, admin, error } ],
 *     history: { from: number | null, intervalMs,
 *                samples: [ { t, commitsPerS, commitP50Ms | null, commitP99Ms | null, lagTxns | null } ] } }
 *
 * A non-2xx answer shows its `{error}` instead of the data (401 with `admin.openStatus: false`).
 *
 * Hooks for tests: data-testid="health" (data-code), "master" (the node id or "none"),
 * "updated", "error", "chart-commits", "chart-latency", "chart-lag"; one
 * `<tr data-node="N" data-role="master|replica|down" data-db="...">` per member.
 */
import { createHash } from "node:crypto"

const STYLE = String.raw`
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1f2328; --muted: #656d76; --line: #d8dee4; --card: #f6f8fa;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --accent: #0969da;
  --c1: #0969da; --c2: #cf222e; --c3: #8250df; --grid: #d8dee4;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #8d96a0; --line: #30363d; --card: #161b22;
    --ok: #3fb950; --warn: #d29922; --bad: #f85149; --accent: #58a6ff;
    --c1: #58a6ff; --c2: #ff7b72; --c3: #bc8cff; --grid: #30363d;
  }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 12px 16px 24px; background: var(--bg); color: var(--fg);
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-variant-numeric: tabular-nums; }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 4px 16px; margin-bottom: 8px; }
header h1 { font-size: 15px; font-weight: 600; margin: 0; }
.muted { color: var(--muted); }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.banner { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 14px; padding: 8px 12px; border: 1px solid var(--line);
  border-left-width: 5px; border-radius: 6px; background: var(--card); }
.banner[data-code="0"] { border-left-color: var(--ok); }
.banner[data-code="1"] { border-left-color: var(--warn); }
.banner[data-code="2"] { border-left-color: var(--bad); }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px; color: #fff; background: var(--muted); }
.banner[data-code="0"] .pill { background: var(--ok); }
.banner[data-code="1"] .pill { background: var(--warn); }
.banner[data-code="2"] .pill { background: var(--bad); }
.master-id { font-size: 15px; font-weight: 700; }
#problems { flex-basis: 100%; margin: 2px 0 0; padding-left: 18px; color: var(--fg); }
#problems:empty { display: none; }
.error { margin-top: 8px; padding: 8px 12px; border: 1px solid var(--bad); border-radius: 6px; color: var(--bad); font-weight: 600; }
.stale { opacity: 0.45; }
.table-wrap { overflow-x: auto; margin-top: 10px; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 8px; text-align: right; white-space: nowrap; border-bottom: 1px solid var(--line); }
th { font-weight: 600; background: var(--card); vertical-align: bottom; }
th small { display: block; font-weight: 400; color: var(--muted); font-size: 11px; }
th.l, td.l { text-align: left; }
tbody tr:last-child td { border-bottom: 0; }
tr[data-role="master"] td:first-child { box-shadow: inset 4px 0 var(--accent); }
tr[data-role="master"] .role { color: var(--accent); font-weight: 700; }
tr[data-role="down"] { background: color-mix(in srgb, var(--bad) 9%, transparent); }
tr[data-role="down"] .role, .bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); font-weight: 600; }
td.why { text-align: left; white-space: normal; color: var(--bad); }
.self { color: var(--muted); font-size: 11px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 10px; margin-top: 10px; }
figure { margin: 0; padding: 6px 8px 4px; border: 1px solid var(--line); border-radius: 6px; background: var(--card); }
figcaption { display: flex; flex-wrap: wrap; justify-content: space-between; gap: 2px 10px; font-weight: 600; }
figcaption .last { font-weight: 400; }
svg { display: block; width: 100%; height: auto; }
svg text { fill: var(--muted); font-size: 10px; }
svg .grid { stroke: var(--grid); stroke-width: 1; }
svg .line { fill: none; stroke-width: 1.6; stroke-linejoin: round; stroke-linecap: round; }
svg .s1 { stroke: var(--c1); } svg .s2 { stroke: var(--c2); } svg .s3 { stroke: var(--c3); }
svg .area { fill: var(--c1); fill-opacity: 0.14; stroke: none; }
.sw { display: inline-block; width: 14px; height: 3px; border-radius: 2px; vertical-align: middle; margin: 0 3px 0 8px; }
.sw.s1 { background: var(--c1); } .sw.s2 { background: var(--c2); } .sw.s3 { background: var(--c3); }
.legend { margin-top: 10px; color: var(--muted); font-size: 12px; }
.legend b { color: var(--fg); font-weight: 600; }
`

const SCRIPT = String.raw`
"use strict";
(function () {
  var REFRESH_MS = 2000;
  var TIMEOUT_MS = 5000;
  var SVG = "http://www.w3.org/2000/svg";
  var $ = function (id) { return document.getElementById(id); };
  var lastOkAt = 0;

  // Every value from the data becomes text (createTextNode / textContent) or an attribute
  // value (setAttribute): never markup.
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, String(attrs[k]));
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    });
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs || {}) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function str(v) { return typeof v === "string" ? v : v === null || v === undefined ? "" : String(v); }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function clock(ms) { var d = new Date(ms); return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }
  function fmt(v) {
    if (v === null) return "\u2014";
    var a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
    if (a >= 10) return v.toFixed(1);
    return String(Number(v.toFixed(2)));
  }
  function span(ms) {
    var s = Math.round(ms / 1000);
    if (s < 120) return s + " s";
    var m = Math.floor(s / 60), r = s % 60;
    return r === 0 ? m + " min" : m + " min " + r + " s";
  }
  function niceCeil(x) {
    if (!(x > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(x)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * p >= x * 0.999999) return steps[i] * p;
    return 10 * p;
  }

  // --- charts -------------------------------------------------------------------------
  var W = 320, H = 112, ML = 34, MR = 8, MT = 8, MB = 16;
  function chart(testid, title, unit, series, samples, intervalMs, noValues) {
    var pts = samples.filter(function (s) { return s && num(s.t) !== null; });
    var caption = el("figcaption", {}, [el("span", {}, [title, " ", el("span", { "class": "muted" }, [unit])])]);
    var lastParts = el("span", { "class": "last" });
    series.forEach(function (s) {
      var last = null;
      for (var i = pts.length - 1; i >= 0 && last === null; i--) last = num(pts[i][s.key]);
      lastParts.appendChild(el("span", { "class": "sw " + s.cls }));
      lastParts.appendChild(document.createTextNode(s.label + " " + fmt(last)));
    });
    caption.appendChild(lastParts);
    var g = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
    var x0 = ML, x1 = W - MR, y0 = H - MB, y1 = MT;
    var max = 0;
    pts.forEach(function (p) { series.forEach(function (s) { var v = num(p[s.key]); if (v !== null && v > max) max = v; }); });
    var top = niceCeil(max);
    [0, 0.5, 1].forEach(function (f) {
      var y = y0 - f * (y0 - y1);
      g.appendChild(svg("line", { "class": "grid", x1: x0, x2: x1, y1: y, y2: y }));
      g.appendChild(svg("text", { x: x0 - 4, y: y + 3.5, "text-anchor": "end" }, fmt(top * f)));
    });
    var values = 0;
    pts.forEach(function (p) { series.forEach(function (s) { if (num(p[s.key]) !== null) values++; }); });
    if (pts.length === 0 || values === 0) {
      g.appendChild(svg("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle" }, pts.length === 0 ? "no samples yet" : noValues));
      if (pts.length === 0) return el("figure", { "class": "chart", "data-testid": testid, "data-samples": 0 }, [caption, g]);
    }
    var tFirst = pts[0].t, tLast = pts[pts.length - 1].t;
    var spanMs = Math.max(tLast - tFirst, 0);
    var xOf = function (t) { return spanMs === 0 ? x1 : x0 + ((t - tFirst) / spanMs) * (x1 - x0); };
    var yOf = function (v) { return y0 - (v / top) * (y0 - y1); };
    if (spanMs > 0) g.appendChild(svg("text", { x: x0, y: H - 3, "text-anchor": "start" }, "\u2212" + span(spanMs)));
    g.appendChild(svg("text", { x: x1, y: H - 3, "text-anchor": "end" }, clock(tLast)));
    series.forEach(function (s) {
      var d = "", open = false, gaps = false;
      pts.forEach(function (p) {
        var v = num(p[s.key]);
        if (v === null) { open = false; gaps = true; return; }
        var x = xOf(p.t).toFixed(1), y = yOf(v).toFixed(1);
        // A lone point is a zero-length segment: round caps draw it as a dot.
        d += (open ? " L" : (d ? " M" : "M")) + x + " " + y + (open ? "" : " L" + x + " " + y);
        open = true;
      });
      if (!d) return;
      if (s.area && !gaps && pts.length > 1) {
        g.appendChild(svg("path", { "class": "area", d: d + " L" + xOf(tLast).toFixed(1) + " " + y0 + " L" + xOf(tFirst).toFixed(1) + " " + y0 + " Z" }));
      }
      g.appendChild(svg("path", { "class": "line " + s.cls, d: d, "data-series": s.key }));
    });
    return el("figure", { "class": "chart", "data-testid": testid, "data-samples": pts.length, title: "a sample every " + span(intervalMs || 0) }, [caption, g]);
  }

  // --- members ------------------------------------------------------------------------
  function dbCell(st) {
    var db = st.database;
    if (!db || typeof db !== "object") return { text: "\u2014", key: "none", cls: "muted" };
    if (db.diverged !== null && db.diverged !== undefined) return { text: "DIVERGED", key: "diverged", cls: "bad", title: str(db.diverged) };
    if (db.up === false) return { text: "DOWN", key: "down", cls: "bad", title: str(db.replicationError) };
    if (db.rebuild && typeof db.rebuild === "object") {
      var pc = num(db.rebuild.percent);
      return { text: "rebuild " + (pc === null ? "?" : fmt(pc)) + " %", key: "rebuild", cls: "warn", title: str(db.rebuild.reason) };
    }
    var role = str(db.role) || "?";
    return { text: role, key: role, cls: role === "master" ? "" : role === "replica" ? "" : "warn", title: str(db.replicationError) };
  }
  function memberRow(m, self, nCols) {
    var st = m.status && typeof m.status === "object" ? m.status : null;
    var id = num(m.nodeId) !== null ? num(m.nodeId) : st ? num(st.nodeId) : null;
    var idCell = el("td", { "class": "l" }, [el("b", {}, [id === null ? "?" : String(id)]), id === self ? " " : null, id === self ? el("span", { "class": "self", title: "the node serving this page" }, ["this"]) : null]);
    var admin = el("td", { "class": "l mono" }, [str(m.admin)]);
    if (!st) {
      return el("tr", { "data-node": id === null ? "" : id, "data-role": "down", "data-db": "unknown" }, [
        idCell, admin, el("td", { "class": "l role" }, ["DOWN"]),
        el("td", { "class": "why", colspan: nCols - 3 }, [str(m.error) || "no answer"])
      ]);
    }
    var role = st.role === "master" ? "master" : "replica";
    var db = dbCell(st);
    var paxos = st.paxos && typeof st.paxos === "object" ? st.paxos : {};
    var applied = num(st.appliedInstance);
    var lag = st.database && typeof st.database === "object" ? num(st.database.lag) : null;
    var behind = st.database && typeof st.database === "object" ? num(st.database.lagSeconds) : null;
    var peers = Array.isArray(st.members) ? st.members : [];
    var reach = el("td", { "class": "l" }, [peers.filter(function (p) { return p && p.reachable; }).map(function (p) { return str(p.nodeId); }).join(",") || "\u2014"]);
    var unreached = peers.filter(function (p) { return p && !p.reachable; }).map(function (p) { return str(p.nodeId); });
    if (unreached.length > 0) reach.appendChild(el("span", { "class": "bad", title: "no peer connection to these" }, [" \u2717" + unreached.join(",")]));
    var rss = st.memory && typeof st.memory === "object" ? num(st.memory.rssMb) : null;
    var lease = num(st.leaseRemainingMs);
    return el("tr", { "data-node": id === null ? "" : id, "data-role": role, "data-db": db.key }, [
      idCell,
      admin,
      el("td", { "class": "l role", title: "Paxos: " + str(paxos.role) }, [role]),
      el("td", { "class": "l " + db.cls, title: db.title || null }, [db.text]),
      el("td", {}, [num(st.master) === null ? "\u2014" : String(st.master)]),
      el("td", {}, [fmt(num(st.epoch))]),
      el("td", {}, [role === "master" && lease !== null ? String(Math.round(lease)) : "\u2014"]),
      el("td", {}, [fmt(num(paxos.lastChosenInstance))]),
      el("td", {}, [applied === null ? "\u2014" : String(applied - 1)]),
      el("td", { "class": "l mono" }, [str(st.lastGtid) || "\u2014"]),
      el("td", { "class": lag !== null && lag > 0 ? "warn" : "" }, [fmt(lag)]),
      el("td", { "class": behind !== null && behind > 0 ? "warn" : "" }, [fmt(behind)]),
      reach,
      el("td", {}, [rss === null ? "\u2014" : rss.toFixed(0)])
    ]);
  }

  // --- rendering ----------------------------------------------------------------------
  function setError(text) {
    var box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }
  function renderBanner(data, members) {
    var health = data.health && typeof data.health === "object" ? data.health : {};
    var code = num(health.code);
    var banner = $("health");
    banner.setAttribute("data-code", code === null ? "" : String(code));
    $("health-pill").textContent = code === 0 ? "healthy" : code === 1 ? "degraded" : code === 2 ? "no master" : "unknown";
    $("health-summary").textContent = str(health.summary);
    var problems = Array.isArray(health.problems) ? health.problems : [];
    $("problems").replaceChildren.apply($("problems"), problems.map(function (p) { return el("li", {}, [str(p)]); }));
    var masters = members.filter(function (m) { return m.status && m.status.role === "master"; })
      .map(function (m) { return num(m.status.nodeId) !== null ? num(m.status.nodeId) : num(m.nodeId); });
    var master = $("master");
    master.textContent = masters.length === 0 ? "none" : masters.join(",");
    master.setAttribute("data-several", masters.length > 1 ? "true" : "false");
    $("master-note").textContent = masters.length > 1 ? "several nodes report master" : "";
    $("cluster-id").textContent = str(data.clusterId) || "?";
    $("self").textContent = num(data.self) === null ? "?" : String(data.self);
    document.title = "phxmaria " + str(data.clusterId) + (code === 0 ? "" : code === 1 ? " (degraded)" : code === 2 ? " (no master)" : "");
  }
  function render(data) {
    if (!data || typeof data !== "object" || !Array.isArray(data.members)) throw new Error("unexpected answer from /cluster");
    var members = data.members.filter(function (m) { return m && typeof m === "object"; })
      .slice().sort(function (a, b) { return (num(a.nodeId) || 0) - (num(b.nodeId) || 0); });
    renderBanner(data, members);
    var nCols = $("members-head").children.length;
    var self = num(data.self);
    $("members").replaceChildren.apply($("members"), members.map(function (m) { return memberRow(m, self, nCols); }));
    var history = data.history && typeof data.history === "object" ? data.history : {};
    var samples = Array.isArray(history.samples) ? history.samples : [];
    var interval = num(history.intervalMs) || 0;
    var from = num(history.from);
    var who = from === null ? "the sampled node" : "node " + from;
    $("charts").replaceChildren(
      chart("chart-commits", "Commits", "per s", [{ key: "commitsPerS", label: "last", cls: "s1", area: true }], samples, interval, "no values"),
      chart("chart-latency", "Commit latency", "ms", [{ key: "commitP50Ms", label: "p50", cls: "s1" }, { key: "commitP99Ms", label: "p99", cls: "s2" }], samples, interval,
        "no commits by " + who + " as master in this span"),
      chart("chart-lag", "Replica lag", "transactions", [{ key: "lagTxns", label: "last", cls: "s3" }], samples, interval,
        "no replica lag measured on " + who)
    );
    $("history-note").textContent = (from === null ? "Charts: no node's samples (no master known)" : "Charts: samples of node " + from) +
      (interval > 0 ? ", one every " + span(interval) : "") +
      (samples.length > 1 ? ", over the last " + span(num(samples[samples.length - 1].t) - num(samples[0].t)) : "") + ".";
  }
  function markUpdated() {
    var u = $("updated");
    u.textContent = "updated " + clock(lastOkAt);
    u.setAttribute("data-at", String(lastOkAt));
  }
  function failed(text, hideData) {
    setError(text);
    var main = $("data");
    if (hideData) {
      main.hidden = true;
      $("health").setAttribute("data-code", "");
      $("health-pill").textContent = "unknown";
      $("health-summary").textContent = "";
      $("problems").replaceChildren();
      $("master").textContent = "none";
    } else {
      main.classList.add("stale");
    }
    $("updated").textContent = lastOkAt === 0 ? "never updated" : "last updated " + clock(lastOkAt) + " (" + span(Date.now() - lastOkAt) + " ago)";
  }

  async function refresh() {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    try {
      var res = await fetch("cluster", { cache: "no-store", signal: ctl.signal, headers: { accept: "application/json" } });
      var body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      if (!res.ok) {
        var why = body && typeof body === "object" && typeof body.error === "string" ? body.error : res.statusText;
        var hint = res.status === 401 ? " (this node has admin.openStatus: false: the cluster view needs the admin token)" : "";
        failed("GET /cluster: HTTP " + res.status + ": " + why + hint, res.status === 401 || res.status === 403);
        return;
      }
      render(body);
      lastOkAt = Date.now();
      setError("");
      $("data").hidden = false;
      $("data").classList.remove("stale");
      markUpdated();
    } catch (e) {
      var msg = e && e.name === "AbortError" ? "no answer within " + TIMEOUT_MS / 1000 + " s" : str(e && e.message ? e.message : e);
      failed("cannot reach this agent (GET /cluster): " + msg, false);
    } finally {
      clearTimeout(timer);
      setTimeout(refresh, REFRESH_MS);
    }
  }
  refresh();
})();
`

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`

const CSP = [
  "default-src 'none'",
  `script-src ${sha256(SCRIPT)}`,
  `style-src ${sha256(STYLE)}`,
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'"
].join("; ")

const COLUMNS: ReadonlyArray<readonly [string, string, string?]> = [
  ["node", "", "l"],
  ["admin", "host:port", "l"],
  ["role", "lease", "l"],
  ["database", "role", "l"],
  ["master", "it sees"],
  ["epoch", "term"],
  ["lease left", "ms"],
  ["chosen", "instance"],
  ["applied", "instance"],
  ["last GTID", "domain-server-seq", "l"],
  ["lag", "txns"],
  ["behind", "s"],
  ["reaches", "node ids", "l"],
  ["RSS", "MB"]
]

const header = COLUMNS.map(([name, unit, align]) =>
  `<th${align === "l" ? ` class="l"` : ""}>${name}${unit === "" ? "" : `<small>${unit}</small>`}</th>`
).join("")

/** The page, served as `text/html; charset=utf-8` at `GET /`. */
export const STATUS_PAGE_HTML: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="referrer" content="no-referrer">
<title>phxmaria status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>phxmaria &middot; cluster <span id="cluster-id" data-testid="cluster-id">&hellip;</span>
    <span class="muted">&middot; served by node <span id="self">&hellip;</span></span></h1>
  <span id="updated" data-testid="updated" class="muted">loading&hellip;</span>
</header>
<section id="health" class="banner" data-testid="health" data-code="">
  <span id="health-pill" class="pill">unknown</span>
  <span>master <span id="master" class="master-id" data-testid="master">none</span> <span id="master-note" class="bad"></span></span>
  <span id="health-summary"></span>
  <ul id="problems"></ul>
</section>
<div id="error" class="error" data-testid="error" role="alert" hidden></div>
<main id="data">
  <div class="table-wrap">
    <table>
      <thead><tr id="members-head">${header}</tr></thead>
      <tbody id="members"></tbody>
    </table>
  </div>
  <div id="charts" class="charts"></div>
  <p class="legend"><b>role</b>: master holds the lease now (blue bar), replica, or <span class="bad">DOWN</span> when its agent
    did not answer the serving node (why, in red). <b>database</b>: the MariaDB's role, <span class="bad">DIVERGED</span>,
    <span class="bad">DOWN</span> or <span class="warn">rebuild %</span>. <b>chosen</b>/<b>applied</b>: last Paxos instance
    chosen and applied here. <b>lag</b>: chosen transactions not yet applied by this replica; <b>behind</b>: for how long. <b>reaches</b>: members it has
    a peer connection to (<span class="bad">&#x2717;</span> not). <span id="history-note"></span> Refreshes every 2 s.</p>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`
