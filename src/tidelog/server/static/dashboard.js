// tidelog dashboard: vanilla JS, no build step, no third-party code.
//
// Safety rule for this file: event content (streams, types, metadata, data)
// is only ever written with textContent / createElement, never as markup.
// The page's Content-Security-Policy forbids inline script anyway.

const KEY = "tidelog.key";
const REFRESH_MS = 2000;
const TAIL_MAX = 200;
const TAIL_BACKLOG = 20;
const WINDOW_S = 3600; // the server keeps an hour of samples: the charts are full at once
const PALETTE = ["#1f6feb", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#e67700"];

const $ = (id) => document.getElementById(id);

let running = false;
let refreshTimer = null;
let tailCtrl = null;
let tailPaused = false;
let tailLast = null;
let lastHead = null;
let rateSeries = [];
const lagSeries = new Map(); // "group/category" -> [{t, v}]
let historyLoaded = false;
let dlqGroup = null; // the group whose parked events are listed
let dlqSeen = ""; // its counts when last listed: list again only when they change

class Unauthorized extends Error {}

// ------------------------------------------------------------------ helpers

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cells(tr, values) {
  for (const [value, cls] of values) tr.append(el("td", value, cls));
  return tr;
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").replace("Z", "");
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (cls || "");
}

function authHeaders(extra) {
  // An empty key means: no header, the browser's client certificate (mutual TLS) identifies us.
  const headers = new Headers(extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", "Bearer " + key);
  return headers;
}

async function api(path, init) {
  const r = await fetch(path, { ...(init || {}), headers: authHeaders(init && init.headers) });
  if (r.status === 401) {
    signOut(refusal());
    throw new Unauthorized();
  }
  if (!r.ok) {
    let message = r.statusText;
    try {
      message = (await r.json()).message || message;
    } catch (_) { /* not JSON */ }
    throw new Error(`${r.status}: ${message}`);
  }
  return r.json();
}

function post(path) {
  return api(path, { method: "POST" });
}

function dataText(ev) {
  if (ev.data_base64 !== null && ev.data_base64 !== undefined) {
    return ev.data_base64 === "" ? "(empty)" : "(binary, base64)\n" + ev.data_base64;
  }
  return JSON.stringify(ev.data, null, 2);
}

// ------------------------------------------------------------------ sign in

function showLogin(message) {
  $("login").hidden = false;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login-error").textContent = message || "";
  $("key").focus();
}

function refusal() {
  return sessionStorage.getItem(KEY) ? "The key was refused." : "This server needs a key.";
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  stop();
  setStatus("signed out");
  showLogin(message);
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    const info = await api("/v1/info");
    $("server-info").textContent = `${info.engine} · ${info.partition_count} partitions · v${info.version}`;
  } catch (e) {
    if (!(e instanceof Unauthorized)) showLogin("Cannot reach the server: " + e.message);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  start();
}

// ------------------------------------------------------------------ stats, charts, groups

function start() {
  if (running) return;
  running = true;
  refresh();
  startTail();
  browse();
}

function stop() {
  running = false;
  historyLoaded = false;
  lastHead = null;
  rateSeries = [];
  lagSeries.clear();
  // nothing the last key could see stays in the page for the next one
  $("server-info").textContent = "";
  for (const id of ["head", "first", "scheduled"]) $(id).textContent = "–";
  dlqGroup = null;
  dlqSeen = "";
  $("dlq").hidden = true;
  $("dlq-detail").hidden = true;
  $("dlq-events").tBodies[0].replaceChildren();
  $("dlq-group").replaceChildren();
  clearTimeout(refreshTimer);
  if (tailCtrl) tailCtrl.abort();
  tailCtrl = null;
}

async function refresh() {
  clearTimeout(refreshTimer);
  if (!running) return;
  try {
    const stats = await api(historyLoaded ? "/v1/stats" : "/v1/stats?history=true");
    if (!running) return; // signed out while it was on its way
    if (!historyLoaded && stats.history) seedHistory(stats.history, Date.now() / 1000 - stats.time);
    historyLoaded = true;
    render(stats);
  } catch (e) {
    if (e instanceof Unauthorized) return;
    setStatus("server unreachable", "down");
  }
  if (running) refreshTimer = setTimeout(refresh, REFRESH_MS);
}

// The server's samples of the last hour ([time, head, [[group, category, lag], ...]]):
// throughput from the movement of the head between samples, lag as it was.
// `skew` moves the server's times onto this browser's clock.
function seedHistory(samples, skew) {
  let prev = null;
  for (const [serverTime, head, lags] of samples) {
    const t = serverTime + skew;
    if (prev !== null && t > prev.t) {
      rateSeries.push({ t, v: Math.max(0, head - prev.head) / (t - prev.t) });
    }
    prev = { t, head };
    for (const [group, category, lag] of lags) {
      const key = `${group}/${category}`;
      if (!lagSeries.has(key)) lagSeries.set(key, []);
      lagSeries.get(key).push({ t, v: lag });
    }
  }
  if (prev !== null) lastHead = prev;
}

function render(stats) {
  const now = Date.now() / 1000;
  $("head").textContent = String(stats.head);
  $("first").textContent = String(stats.first_position);
  $("scheduled").textContent = stats.scheduled == null ? "–" : String(stats.scheduled);
  if (lastHead !== null) {
    const rate = Math.max(0, stats.head - lastHead.head) / Math.max(0.001, now - lastHead.t);
    rateSeries.push({ t: now, v: rate });
    $("rate").textContent = rate.toFixed(1);
  }
  lastHead = { t: now, head: stats.head };
  rateSeries = rateSeries.filter((p) => p.t >= now - WINDOW_S);

  const seen = new Set();
  for (const g of stats.groups) {
    const key = `${g.group}/${g.category}`;
    seen.add(key);
    const series = lagSeries.get(key) || [];
    series.push({ t: now, v: g.lag });
    lagSeries.set(key, series.filter((p) => p.t >= now - WINDOW_S));
  }
  for (const key of [...lagSeries.keys()]) if (!seen.has(key)) lagSeries.delete(key);

  renderCategories(stats.categories);
  renderGroups(stats.groups);
  renderDlq(stats);
  drawChart($("chart-rate"), [{ color: PALETTE[0], points: rateSeries }], now);
  const lagLines = [...lagSeries.entries()].map(([label, points], i) => ({
    label, points, color: PALETTE[i % PALETTE.length],
  }));
  drawChart($("chart-lag"), lagLines, now);
  const legend = $("lag-legend");
  legend.replaceChildren(...lagLines.map((line) => {
    const li = el("li", line.label);
    const swatch = el("span", null, "swatch");
    swatch.style.background = line.color;
    li.prepend(swatch);
    return li;
  }));
}

function renderCategories(categories) {
  const body = $("categories").tBodies[0];
  body.replaceChildren(...categories.map((c) => {
    const tr = cells(el("tr", null, "clickable"), [
      [c.category], [c.streams, "num"], [c.events, "num"],
      [c.deleted, c.deleted ? "num state-deleted" : "num muted"],
    ]);
    tr.dataset.category = c.category;
    tr.addEventListener("click", () => showStreams(c.category));
    return tr;
  }));
}

async function showStreams(category) {
  let page;
  try {
    page = await api("/v1/streams?category=" + encodeURIComponent(category));
  } catch (e) {
    return;
  }
  const title = $("streams-title");
  title.hidden = false;
  title.textContent = `Streams of ${category}`;
  const table = $("streams");
  table.hidden = false;
  table.tBodies[0].replaceChildren(...page.streams.map((s) => {
    const tr = cells(el("tr", null, s.deleted ? "clickable deleted" : "clickable"), [
      [s.name], [s.version === null ? "–" : s.version, "num"],
      s.deleted ? ["deleted", "state-deleted"] : ["", "muted"],
    ]);
    tr.dataset.stream = s.name;
    tr.addEventListener("click", () => {
      $("browse-stream").value = s.name;
      $("browse-from").value = "0";
      browse();
    });
    return tr;
  }));
}

function renderGroups(groups) {
  const box = $("groups");
  if (!groups.length) {
    box.replaceChildren(el("p", "No groups yet.", "muted"));
    return;
  }
  box.replaceChildren(...groups.map((g) => {
    const div = el("div", null, "group");
    div.dataset.group = g.group;
    div.dataset.category = g.category;
    const head = el("div", null, "group-head");
    head.append(el("strong", `${g.group} → ${g.category}`));
    head.append(el("span", g.generation === null ? "no members" : `generation ${g.generation}`, "badge"));
    const lag = el("span", null, g.lag > 0 ? "badge bad" : "badge");
    lag.append("lag ", el("span", g.lag, "group-lag"));
    head.append(lag);
    // parked events wait for an operator; held ones only wait behind them: counted apart
    if (g.parked > 0) head.append(el("span", `${g.parked} parked`, "badge bad group-parked"));
    if (g.retrying > 0) head.append(el("span", `${g.retrying} retrying`, "badge warn group-retrying"));
    if (g.held > 0) head.append(el("span", `${g.held} held behind them`, "badge warn group-held"));
    div.append(head);
    const members = el("p", null, "muted");
    members.textContent = g.members.length
      ? g.members.map((m) => `${m.member}: [${m.partitions.join(", ")}]`).join("  ·  ")
      : "no live members";
    div.append(members);
    const table = el("table");
    const thead = el("thead");
    thead.append(cells(el("tr"), [["partition"], ["owner"], ["checkpoint", "num"], ["lag", "num"]]));
    const tbody = el("tbody");
    for (const p of g.partitions) {
      const tr = cells(el("tr"), [
        [p.partition], [p.owner || "–"], [p.checkpoint, "num"],
        [p.lag, p.lag > 0 ? "num lag-high" : "num"],
      ]);
      tr.dataset.partition = String(p.partition);
      tbody.append(tr);
    }
    table.append(thead, tbody);
    div.append(table);
    return div;
  }));
}

function drawChart(canvas, lines, now) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, canvas.clientWidth || 560);
  const h = Math.max(100, canvas.clientHeight || 160);
  if (canvas.width !== Math.round(w * dpr)) canvas.width = Math.round(w * dpr);
  if (canvas.height !== Math.round(h * dpr)) canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const left = 44, right = 8, top = 8, bottom = 18;
  let max = 0;
  for (const line of lines) for (const p of line.points) max = Math.max(max, p.v);
  max = max <= 0 ? 1 : niceCeil(max * 1.1);
  const x = (t) => left + ((t - (now - WINDOW_S)) / WINDOW_S) * (w - left - right);
  const y = (v) => top + (1 - v / max) * (h - top - bottom);
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#dde3ea";
  ctx.fillStyle = "#6b7785";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    ctx.beginPath();
    ctx.moveTo(left, y(v) + 0.5);
    ctx.lineTo(w - right, y(v) + 0.5);
    ctx.stroke();
    ctx.fillText(formatNumber(v), 2, y(v) + 4);
  }
  ctx.fillText(`-${WINDOW_S / 60} min`, left, h - 4);
  ctx.fillText("now", w - right - 22, h - 4);
  for (const line of lines) {
    if (!line.points.length) continue;
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    line.points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
    ctx.stroke();
    const last = line.points[line.points.length - 1];
    ctx.fillStyle = line.color;
    ctx.beginPath();
    ctx.arc(x(last.t), y(last.v), 2.5, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function formatNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

// ------------------------------------------------------------------ parked events (admins)

function renderDlq(stats) {
  const box = $("dlq");
  if (!stats.admin) { // the routes refuse anyone else; the panel is not even drawn
    box.hidden = true;
    return;
  }
  const withDlq = stats.groups.filter((g) => g.parked + g.held + g.retrying > 0);
  box.hidden = withDlq.length === 0 && dlqGroup === null;
  if (box.hidden) return;
  const select = $("dlq-group");
  const names = [...new Set(withDlq.map((g) => g.group))];
  if (dlqGroup !== null && !names.includes(dlqGroup)) names.push(dlqGroup);
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((n) => el("option", n)));
  }
  if (dlqGroup === null) dlqGroup = names[0];
  select.value = dlqGroup;
  const counts = withDlq.filter((g) => g.group === dlqGroup)
    .map((g) => `${g.parked}/${g.held}/${g.retrying}`).join(",");
  if (counts !== dlqSeen) {
    dlqSeen = counts;
    loadDlq();
  }
}

async function loadDlq() {
  const group = dlqGroup;
  if (group === null) return;
  $("dlq-error").textContent = "";
  let page;
  try {
    page = await api(`/v1/admin/dlq/${encodeURIComponent(group)}?limit=200`);
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("dlq-error").textContent = e.message;
    return;
  }
  if (group !== dlqGroup) return;
  const c = page.counts;
  $("dlq-counts").textContent =
    `${c.parked || 0} parked · ${c.held || 0} held · ${c.retrying || 0} retrying` +
    (page.total > page.events.length ? ` (first ${page.events.length} of ${page.total})` : "");
  $("dlq-events").tBodies[0].replaceChildren(...page.events.map((p) => dlqRow(group, p)));
}

function dlqRow(group, p) {
  const tr = cells(el("tr", null, "clickable"), [
    [p.event_id], [p.status, "status-" + p.status], [`${p.stream} @ ${p.version}`], [p.type],
    [p.attempts, "num"], [p.error || "", "error-text"],
  ]);
  tr.dataset.eventId = p.event_id;
  tr.dataset.status = p.status;
  const actions = el("td");
  if (p.status === "parked" || p.status === "held") {
    for (const action of ["retry", "drop"]) {
      const button = el("button", action === "retry" ? "Retry" : "Drop", "dlq-" + action);
      button.type = "button";
      button.addEventListener("click", (e) => {
        e.stopPropagation();
        settle(group, p.event_id, action);
      });
      actions.append(button);
    }
  }
  tr.append(actions);
  tr.addEventListener("click", () => showParked(group, p.event_id, tr));
  return tr;
}

async function settle(group, eventId, action) {
  $("dlq-error").textContent = "";
  try {
    await post(`/v1/admin/dlq/${encodeURIComponent(group)}/${encodeURIComponent(eventId)}/${action}`);
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("dlq-error").textContent = e.message;
  }
  dlqSeen = "";
  await loadDlq();
  // an open detail of this event shows its new status, not the one it had
  const detail = $("dlq-detail");
  if (!detail.hidden && detail.dataset.eventId === eventId) {
    const row = $("dlq-events").querySelector(`tr[data-event-id="${eventId}"]`);
    if (row) showParked(group, eventId, row);
    else detail.hidden = true;
  }
  refresh();
}

async function showParked(group, eventId, tr) {
  let p;
  try {
    p = await api(`/v1/admin/dlq/${encodeURIComponent(group)}/${encodeURIComponent(eventId)}`);
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("dlq-error").textContent = e.message;
    return;
  }
  for (const row of $("dlq-events").querySelectorAll("tr.selected")) row.classList.remove("selected");
  tr.classList.add("selected");
  const ev = p.event;
  $("dlq-detail").hidden = false;
  $("dlq-detail").dataset.eventId = eventId;
  $("dlq-detail-title").textContent = `${ev.stream} @ ${ev.version}: ${p.status}`;
  const fields = [
    ["id", ev.id], ["type", ev.type], ["position", ev.position], ["handler", p.handler],
    ["reason", p.reason], ["attempts", p.attempts], ["parked", fmtTime(p.parked_at)],
  ];
  $("dlq-detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  $("dlq-detail-error").textContent = p.error || "(none: held behind a parked event)";
  $("dlq-detail-metadata").textContent = JSON.stringify(ev.metadata, null, 2);
  $("dlq-detail-data").textContent = dataText(ev);
}

// ------------------------------------------------------------------ live tail

function eventRow(ev) {
  const tr = cells(el("tr", null, "clickable"), [
    [ev.position, "num"], [ev.stream], [ev.version, "num"], [ev.type], [fmtTime(ev.recorded_at)],
  ]);
  tr.dataset.position = String(ev.position);
  tr.addEventListener("click", () => showEvent(ev, tr));
  return tr;
}

function addTail(ev) {
  tailLast = ev.position;
  const body = $("tail").tBodies[0];
  const tr = eventRow(ev);
  tr.classList.add("fresh");
  body.prepend(tr);
  while (body.rows.length > TAIL_MAX) body.deleteRow(body.rows.length - 1);
}

async function startTail() {
  if (tailCtrl || tailPaused || !running) return;
  const ctrl = new AbortController();
  tailCtrl = ctrl;
  while (running && !ctrl.signal.aborted) {
    try {
      if (tailLast === null) {
        const head = await api("/v1/log/head");
        tailLast = Math.max(0, head.position - TAIL_BACKLOG);
      }
      const r = await fetch(`/v1/subscribe?from_position=${tailLast + 1}`, {
        headers: authHeaders({ Accept: "text/event-stream" }),
        signal: ctrl.signal,
        cache: "no-store",
      });
      if (r.status === 401) {
        signOut(refusal());
        return;
      }
      if (r.status === 403) {
        // retrying cannot help: the principal may not read the global log
        $("tail-state").textContent = "this key may not read the global log ($all)";
        setStatus("no live access", "down");
        break;
      }
      if (!r.ok) throw new Error(`subscribe: ${r.status}`);
      setStatus("live", "live");
      $("tail-state").textContent = "following";
      await readSse(r.body, (type, data) => {
        if (type === "event") addTail(JSON.parse(data));
      });
    } catch (e) {
      if (ctrl.signal.aborted || e instanceof Unauthorized) break;
      setStatus("reconnecting", "down");
    }
    if (!ctrl.signal.aborted) await new Promise((done) => setTimeout(done, 1500));
  }
  if (tailCtrl === ctrl) tailCtrl = null;
}

async function readSse(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    buffer = buffer.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") type = v;
        else if (field === "data") data.push(v);
      }
      if (data.length) onMessage(type, data.join("\n"));
    }
  }
}

function toggleTail() {
  tailPaused = !tailPaused;
  $("tail-toggle").textContent = tailPaused ? "Resume" : "Pause";
  if (tailPaused) {
    if (tailCtrl) tailCtrl.abort();
    tailCtrl = null;
    $("tail-state").textContent = "paused";
    setStatus("paused");
  } else {
    startTail();
  }
}

// ------------------------------------------------------------------ event browser

async function browse() {
  const stream = $("browse-stream").value.trim();
  const from = Math.max(0, parseInt($("browse-from").value, 10) || 0);
  const limit = Math.min(1000, Math.max(1, parseInt($("browse-limit").value, 10) || 50));
  const path = stream
    ? `/v1/streams/${encodeURIComponent(stream)}/events?from_version=${from}&limit=${limit}`
    : `/v1/log?from_position=${from}&limit=${limit}`;
  $("browse-error").textContent = "";
  try {
    const page = await api(path);
    $("events").tBodies[0].replaceChildren(...page.events.map(eventRow));
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("browse-error").textContent = e.message;
  }
}

function showEvent(ev, tr) {
  for (const row of document.querySelectorAll("tr.selected")) row.classList.remove("selected");
  tr.classList.add("selected");
  $("event-detail").hidden = false;
  $("detail-title").textContent = `${ev.stream} @ ${ev.version}`;
  const fields = [
    ["id", ev.id], ["type", ev.type], ["position", ev.position], ["version", ev.version],
    ["schema", ev.schema_version], ["recorded", fmtTime(ev.recorded_at)],
  ];
  $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  $("detail-metadata").textContent = JSON.stringify(ev.metadata, null, 2);
  $("detail-data").textContent = dataText(ev);
}

// ------------------------------------------------------------------ wiring

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  $("key").value = "";
  signIn(key);
});
$("signout").addEventListener("click", () => signOut(""));
$("tail-toggle").addEventListener("click", toggleTail);
$("dlq-group").addEventListener("change", () => {
  dlqGroup = $("dlq-group").value;
  dlqSeen = "";
  $("dlq-detail").hidden = true;
  loadDlq();
});
$("browse-form").addEventListener("submit", (e) => {
  e.preventDefault();
  browse();
});

if (sessionStorage.getItem(KEY) !== null) signIn(sessionStorage.getItem(KEY));
else showLogin("");
