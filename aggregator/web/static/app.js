// LLM-Sentinel page: alert feed (list + live stream), alert detail, service health and charts.
// Plain ES module, no build step. The API contract is aggregator/api/API_SPEC.md.
// Everything that comes from the API is put into the page as text (textContent), never as HTML:
// service names, users and summaries come from telemetry.

const API = "/api/v1";
const TOKEN_KEY = "sentinel.token";
const PAGE_SIZE = 100;
const SEVERITIES = ["critical", "high", "medium", "low"];
const ANOMALY_TYPES = [
  "latency_spike", "token_spike", "cost_anomaly", "error_burst", "throughput_drop", "drift",
  "model_swap", "budget_exceeded", "budget_warning", "token_abuse", "expensive_prompt",
  "multivariate_outlier", "ttft_regression", "finish_length", "alert_storm", "content_filter", "empty_answer",
  "quality_regression", "satisfaction_drop", "coordinated_attack", "attack_campaign", "security_correlation",
];
const DEFAULT_FILTERS = { severity: "", service: "", type: "", status: "open,acknowledged" };
const REFRESH_MS = 15000; // services and counts
const SERIES_REFRESH_MS = 30000;
const STREAM_IDLE_MS = 45000; // the server sends a keepalive every 15 s
const LIST_FALLBACK_MS = 3000; // load the list even if the stream has not said hello by then

const $ = (id) => document.getElementById(id);

// --- state -----------------------------------------------------------------------------------

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  filters: { ...DEFAULT_FILTERS },
  alerts: new Map(), // alert_id -> Alert, the rows of the feed
  total: 0,
  offset: 0,
  listGen: 0,
  listLoading: false,
  listDirty: true, // the feed does not reflect the current filters yet
  pending: [], // stream events received while the list loads: applied on top of it
  selectedAlert: null, // alert_id
  detailAlert: null, // the Alert shown in the detail (may not be in the feed)
  selectedService: null,
  knownServices: new Set(),
  seriesAlerts: [],
  seriesRange: null, // [first bucket, end of the last] in unix seconds
  seriesGen: 0,
};

const stream = { ctrl: null, gen: 0, attempt: 0, retryTimer: null, idleTimer: null, blocked: false };

// --- small helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
  const ax = Math.abs(x);
  if (ax >= 1000) return Math.round(x).toLocaleString("en-US");
  if (ax === 0) return "0";
  return String(Number(x.toPrecision(digits)));
}

function unitOf(metric) {
  const m = metric || "";
  if (/tokens_per_s/.test(m)) return "tokens/s";
  if (/(^|_)ms$|latency|ttft/.test(m)) return "ms";
  if (/cost|usd/.test(m)) return "USD";
  if (/error_rate|_rate$/.test(m)) return "%";
  if (/token/.test(m)) return "tokens";
  if (/calls/.test(m)) return "calls";
  return "";
}

function fmtMetric(x, metric) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
  const unit = unitOf(metric);
  if (unit === "USD") return `$${fmtNum(x)}`;
  if (unit === "%") return `${fmtNum(x * 100)} %`;
  return unit ? `${fmtNum(x)} ${unit}` : fmtNum(x);
}

function fmtCompact(x) {
  if (!Number.isFinite(x)) return "";
  const ax = Math.abs(x);
  if (ax >= 1e6) return `${fmtNum(x / 1e6, 3)}M`;
  if (ax >= 1e4) return `${fmtNum(x / 1e3, 3)}k`;
  return fmtNum(x, 3);
}

const label = (type) => (type || "").replaceAll("_", " ");

function where(a) {
  return [a.service_name, a.model].filter(Boolean).join(" / ") || "all services";
}

function toDate(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return new Date(t > 1e14 ? t / 1e6 : t * 1000); // unix ns or seconds
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

function shortTime(t) {
  const d = toDate(t);
  if (!d) return "–";
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function fullTime(t) {
  const d = toDate(t);
  return d ? d.toISOString() : "";
}

function timeEl(t) {
  const d = toDate(t);
  return el("time", { datetime: d ? d.toISOString() : null, title: fullTime(t), text: shortTime(t) });
}

function safeHref(url) {
  if (!url) return null;
  try {
    const u = new URL(url, window.location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

function announce(text) {
  const node = $("announcer");
  node.textContent = "";
  setTimeout(() => { node.textContent = text; }, 50);
}

// --- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  return headers;
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders({ Accept: "application/json" });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(API + path, {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the aggregator (${e.message})`);
  }
  const text = await res.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = null;
  }
  if (!res.ok) {
    const message = (doc && doc.error) || `${res.status} ${res.statusText}`;
    if (res.status === 401) askForToken();
    throw new ApiError(res.status, message);
  }
  return doc;
}

function filterQuery({ withStatus }) {
  const q = new URLSearchParams();
  const f = state.filters;
  if (f.severity) q.set("severity", f.severity);
  if (f.service) q.set("service", f.service);
  if (f.type) q.set("type", f.type);
  if (withStatus && f.status) q.set("status", f.status);
  return q;
}

function matchesFilters(a) {
  const f = state.filters;
  if (f.severity && !f.severity.split(",").includes(a.severity)) return false;
  if (f.service && a.service_name !== f.service) return false;
  if (f.type && a.anomaly_type !== f.type) return false;
  if (f.status && !f.status.split(",").includes(a.status)) return false;
  return true;
}

// --- errors and token ------------------------------------------------------------------------

function showError(e) {
  if (e && e.name === "AbortError") return;
  if (e instanceof ApiError && e.status === 401) return; // the token panel says it
  const banner = $("banner");
  banner.textContent = e instanceof ApiError && e.status ? `Error ${e.status}: ${e.message}` : String(e.message || e);
  banner.hidden = false;
}

function clearError() {
  $("banner").hidden = true;
}

function askForToken() {
  const panel = $("token-panel");
  const first = panel.hidden;
  $("token-msg").textContent = state.token
    ? "The aggregator refused this token. Enter another one (viewer or above)."
    : "This aggregator needs an API token (viewer or above).";
  panel.hidden = false;
  panel.dataset.reason = "401";
  $("token-toggle").setAttribute("aria-expanded", "true");
  stream.blocked = true;
  if (first) $("token-input").focus();
}

function setToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token-panel").hidden = true;
  $("token-panel").dataset.reason = "";
  $("token-toggle").setAttribute("aria-expanded", "false");
  $("token-input").value = "";
  stream.blocked = false;
  clearError();
  state.listDirty = true;
  refreshAll();
  startFeed();
}

// --- feed ------------------------------------------------------------------------------------

function rowFor(a) {
  const selected = a.alert_id === state.selectedAlert;
  const li = el("li", {
    class: `row sev-${a.severity} st-${a.status}`,
    "data-testid": "alert-row",
    "data-alert-id": a.alert_id,
    "data-anomaly-type": a.anomaly_type,
    "data-severity": a.severity,
    "data-status": a.status,
    "data-service": a.service_name || "",
    "data-ts": String(toDate(a.timestamp)?.getTime() ?? 0),
  });
  const button = el("button", {
    type: "button", class: "row-btn", "aria-controls": "detail", "aria-current": selected ? "true" : null,
    onclick: () => selectAlert(a.alert_id, { focusDetail: false }),
  },
  el("span", { class: `sev sev-${a.severity}`, text: a.severity }),
  el("span", { class: "row-main" },
    el("span", { class: "row-title" },
      el("strong", { text: label(a.anomaly_type) }), " ",
      el("span", { class: "row-where", text: where(a) })),
    el("span", { class: "row-summary", text: a.summary || "" })),
  el("span", { class: "row-meta" },
    el("span", { class: `status st-${a.status}`, text: a.status }),
    a.count > 1 ? el("span", { class: "times", title: "detections folded into this alert", text: `×${a.count}` }) : null,
    a.silenced_by ? el("span", { class: "tag", title: `silence ${a.silenced_by}`, text: "silenced" }) : null,
    (a.members || []).length > 1
      ? el("span", { class: "tag", title: "series grouped into this alert", text: `${a.members.length} series` })
      : null,
    timeEl(a.timestamp)));
  li.append(button);
  return li;
}

function upsertRow(a, { isNew = false } = {}) {
  const feed = $("feed");
  const existing = state.alerts.has(a.alert_id)
    ? feed.querySelector(`li[data-alert-id="${CSS.escape(a.alert_id)}"]`) : null;
  state.alerts.set(a.alert_id, a);
  const row = rowFor(a);
  if (existing) {
    const hadFocus = existing.contains(document.activeElement);
    existing.replaceWith(row);
    if (hadFocus) row.querySelector("button").focus();
    return;
  }
  if (isNew) row.classList.add("is-new");
  const ts = Number(row.dataset.ts);
  let before = null;
  for (const child of feed.children) {
    if (Number(child.dataset.ts) < ts) {
      before = child;
      break;
    }
  }
  feed.insertBefore(row, before);
}

function removeRow(id) {
  state.alerts.delete(id);
  $("feed").querySelector(`li[data-alert-id="${CSS.escape(id)}"]`)?.remove();
}

function updateFeedMeta() {
  const feed = $("feed");
  const shown = state.alerts.size;
  $("feed-empty").hidden = !(shown === 0 && feed.dataset.state === "loaded");
  $("feed-count").textContent = feed.dataset.state === "loaded"
    ? `${shown} shown${state.total > shown ? ` of ${state.total}` : ""}` : "";
  $("load-more").hidden = !(state.offset < state.total);
}

async function loadAlerts({ append = false } = {}) {
  const gen = append ? state.listGen : ++state.listGen;
  const feed = $("feed");
  if (!append) {
    state.listLoading = true;
    state.pending = [];
    feed.dataset.state = "loading";
    feed.setAttribute("aria-busy", "true");
  }
  const q = filterQuery({ withStatus: true });
  q.set("limit", String(PAGE_SIZE));
  q.set("offset", String(append ? state.offset : 0));
  try {
    const doc = await api(`/alerts?${q}`);
    if (gen !== state.listGen) return; // filters changed meanwhile
    if (!append) {
      state.alerts.clear();
      feed.replaceChildren();
      state.offset = 0;
    }
    for (const a of doc.alerts) upsertRow(a);
    state.offset += doc.alerts.length;
    state.total = doc.total;
    state.listDirty = false;
    feed.dataset.state = "loaded";
    clearError();
  } catch (e) {
    if (gen !== state.listGen) return;
    feed.dataset.state = "error";
    showError(e);
  } finally {
    if (gen === state.listGen && !append) {
      state.listLoading = false;
      feed.removeAttribute("aria-busy");
      const pending = state.pending;
      state.pending = [];
      for (const [kind, a] of pending) applyEvent(kind, a);
    }
    updateFeedMeta();
  }
}

function applyEvent(kind, a) {
  if (state.listLoading) {
    state.pending.push([kind, a]);
    return;
  }
  const have = state.alerts.has(a.alert_id);
  if (matchesFilters(a)) {
    upsertRow(a, { isNew: kind === "alert" });
    if (!have) {
      // one more matching alert on the server: later pages move by one
      state.total += 1;
      state.offset += 1;
    }
    if (kind === "alert") announce(`New ${a.severity} alert: ${label(a.anomaly_type)} on ${where(a)}`);
  } else if (have) {
    removeRow(a.alert_id); // e.g. resolved while the feed shows unresolved alerts
    state.total = Math.max(0, state.total - 1);
    state.offset = Math.max(0, state.offset - 1);
  }
  if (state.detailAlert && state.detailAlert.alert_id === a.alert_id) renderDetail(a);
  if (a.service_name) noteServices([a.service_name]);
  updateFeedMeta();
  refreshSoon();
  if (a.service_name && a.service_name === state.selectedService) seriesSoon();
}

// --- live stream (fetch + ReadableStream: the request carries the bearer token) ---------------

function setConn(kind, text) {
  $("conn").dataset.state = kind;
  $("conn-label").textContent = text;
}

function stopStream() {
  stream.gen += 1;
  clearTimeout(stream.retryTimer);
  clearTimeout(stream.idleTimer);
  if (stream.ctrl) stream.ctrl.abort();
  stream.ctrl = null;
}

function connectStream() {
  stopStream();
  if (stream.blocked) {
    setConn("auth", "Live feed: needs a token");
    return;
  }
  const gen = stream.gen;
  const ctrl = new AbortController();
  stream.ctrl = ctrl;
  setConn("connecting", "Live feed: connecting…");
  readStream(gen, ctrl)
    .catch((e) => {
      if (gen === stream.gen && e.name !== "AbortError") console.debug("stream:", e.message);
    })
    .finally(() => {
      if (gen !== stream.gen) return; // replaced on purpose
      clearTimeout(stream.idleTimer);
      if (state.listDirty && !state.listLoading && !stream.blocked) loadAlerts();
      scheduleReconnect();
    });
}

function scheduleReconnect() {
  if (stream.blocked) {
    setConn("auth", "Live feed: needs a token");
    return;
  }
  const base = Math.min(30, 2 ** stream.attempt);
  const delay = Math.round(base * (0.75 + Math.random() * 0.5) * 1000);
  stream.attempt += 1;
  setConn("down", `Live feed: disconnected, retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
  const gen = stream.gen;
  stream.retryTimer = setTimeout(() => {
    if (gen === stream.gen) connectStream();
  }, delay);
}

function kickIdle(ctrl) {
  clearTimeout(stream.idleTimer);
  stream.idleTimer = setTimeout(() => ctrl.abort(), STREAM_IDLE_MS);
}

async function readStream(gen, ctrl) {
  const q = filterQuery({ withStatus: false }); // status is filtered here: a resolve must reach a shown row
  const res = await fetch(`${API}/stream?${q}`, {
    headers: authHeaders({ Accept: "text/event-stream" }), signal: ctrl.signal, cache: "no-store",
  });
  if (res.status === 401) {
    askForToken();
    return;
  }
  if (!res.ok || !res.body) {
    let message = `${res.status} ${res.statusText}`;
    try {
      message = (await res.json()).error || message;
    } catch { /* not JSON */ }
    if (gen === stream.gen) showError(new ApiError(res.status, `live feed: ${message}`));
    return;
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  kickIdle(ctrl);
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== stream.gen) break;
    kickIdle(ctrl);
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (gen === stream.gen) handleEvent(block);
    }
  }
}

function handleEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comment (keepalive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (event === "hello") {
    stream.attempt = 0;
    setConn("live", "Live feed: connected");
    loadAlerts(); // (re)load: whatever happened while disconnected is in the list
    return;
  }
  if (event === "lagged") {
    loadAlerts();
    return;
  }
  if (!data.length || !["alert", "update", "resolved"].includes(event)) return;
  let alert;
  try {
    alert = JSON.parse(data.join("\n"));
  } catch {
    return;
  }
  applyEvent(event, alert);
}

// --- alert detail ----------------------------------------------------------------------------

async function selectAlert(id, { focusDetail = true } = {}) {
  state.selectedAlert = id;
  for (const b of $("feed").querySelectorAll(".row-btn[aria-current]")) b.removeAttribute("aria-current");
  $("feed").querySelector(`li[data-alert-id="${CSS.escape(id)}"] .row-btn`)?.setAttribute("aria-current", "true");
  writeHash();
  let a = state.alerts.get(id);
  if (!a) {
    try {
      a = await api(`/alerts/${encodeURIComponent(id)}`);
    } catch (e) {
      showError(e);
      return;
    }
    if (state.selectedAlert !== id) return;
  }
  renderDetail(a);
  $("d-ack-msg").textContent = "";
  $("d-ack-msg").className = "ack-msg";
  loadFeedback(a);
  if (focusDetail) $("detail").focus();
  if (window.matchMedia("(max-width: 1100px)").matches) {
    $("detail").scrollIntoView({ block: "start", behavior: "smooth" });
  }
}

function dlRows(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", { text: k }), el("dd", {}, v instanceof Node ? v : String(v)));
  }
}

function renderGauge(d) {
  const vals = [d.value, d.baseline, d.threshold].filter((x) => Number.isFinite(x));
  const gauge = $("d-gauge");
  if (!vals.length || vals.some((x) => x < 0)) {
    gauge.hidden = true;
    return;
  }
  gauge.hidden = false;
  const max = Math.max(...vals) * 1.15 || 1;
  const pct = (x) => `${Math.min(100, Math.max(0, (x / max) * 100)).toFixed(2)}%`;
  const fill = $("d-gauge-fill");
  fill.style.width = Number.isFinite(d.value) ? pct(d.value) : "0";
  const over = Number.isFinite(d.threshold) && Number.isFinite(d.value)
    && (d.metric === "calls_per_bucket" || /tokens_per_s/.test(d.metric) ? d.value < d.threshold : d.value > d.threshold);
  fill.classList.toggle("over", over);
  for (const [id, x] of [["d-gauge-baseline", d.baseline], ["d-gauge-threshold", d.threshold]]) {
    const mark = $(id);
    mark.hidden = !Number.isFinite(x);
    if (Number.isFinite(x)) mark.style.left = pct(x);
  }
}

// The series of a grouped alert (one per model, region or user): the breakdown of the one notification.
function memberName(m, members) {
  const keys = ["model", "region", "user", "service_name", "anomaly_type", "metric"];
  const varying = keys.filter((k) => members.some((o) => (o.labels || {})[k] !== (members[0].labels || {})[k]));
  const labels = m.labels || {};
  return (varying.length ? varying : ["model"]).map((k) => labels[k] || "–").join(" / ");
}

function renderMembers(a) {
  const members = a.members || [];
  const box = $("d-members-box");
  box.hidden = members.length < 2;
  const body = $("d-members");
  body.replaceChildren();
  if (box.hidden) return;
  const firing = members.filter((m) => m.status === "firing").length;
  $("d-members-note").textContent = `${members.length} series, ${firing} firing · ` +
    `${a.notifications || 0} notification${a.notifications === 1 ? "" : "s"} sent`;
  for (const m of members) {
    const d = m.details || {};
    body.append(el("tr", { class: `st-${m.status}`, "data-testid": "member-row" },
      el("td", {}, memberName(m, members), m.silenced_by ? el("span", { class: "tag", text: "silenced" }) : null),
      el("td", {}, el("span", { class: `sev sev-${m.severity}`, text: m.severity })),
      el("td", { text: fmtMetric(d.value, d.metric) }),
      el("td", { text: fmtMetric(d.baseline, d.metric) }),
      el("td", { text: String(m.count) }),
      el("td", { text: m.status })));
  }
}

function renderDetail(a) {
  state.detailAlert = a;
  $("detail-empty").hidden = true;
  const body = $("detail-body");
  body.hidden = false;
  $("detail").dataset.alertId = a.alert_id;

  const sev = $("d-sev");
  sev.className = `sev sev-${a.severity}`;
  sev.textContent = a.severity;
  const st = $("d-status");
  st.className = `status st-${a.status}`;
  st.textContent = a.status;
  $("d-type").textContent = label(a.anomaly_type);
  $("d-summary").textContent = a.summary || `${label(a.anomaly_type)} on ${where(a)}`;

  const d = a.details || {};
  renderGauge(d);
  $("d-metric").textContent = d.metric || "n/a";
  $("d-value").textContent = fmtMetric(d.value, d.metric);
  $("d-baseline").textContent = fmtMetric(d.baseline, d.metric);
  $("d-threshold").textContent = fmtMetric(d.threshold, d.metric);
  let deviation = Number.isFinite(d.deviation_sigma)
    ? `${d.deviation_sigma >= 0 ? "+" : ""}${d.deviation_sigma.toFixed(1)} σ` : "n/a";
  if (Number.isFinite(d.value) && Number.isFinite(d.baseline) && d.baseline > 0) {
    deviation += ` (${fmtNum(d.value / d.baseline, 2)}× baseline)`;
  }
  $("d-sigma").textContent = deviation;
  $("d-peak").textContent = fmtMetric(a.peak_value, d.metric);

  renderMembers(a);

  const serviceBtn = el("button", {
    type: "button", class: "linklike", text: a.service_name || "",
    onclick: () => showService(a.service_name),
  });
  dlRows($("d-where"), [
    ["Service", a.service_name ? serviceBtn : "all services"],
    ["Model", a.model],
    ["Method", `${a.detection_method} (confidence ${fmtNum(a.confidence, 2)})`],
    ["Raised", timeEl(a.timestamp)],
    ["Last seen", a.count > 1 ? el("span", {}, timeEl(a.last_seen), ` (${a.count} detections)`) : null],
    ["Acknowledged", a.acknowledged_at ? el("span", {}, timeEl(a.acknowledged_at), ` by ${a.acknowledged_by || "?"}`) : null],
    ["Resolved", a.resolved_at ? el("span", {}, timeEl(a.resolved_at), a.resolved_reason ? `: ${a.resolved_reason}` : "") : null],
    ["Silenced by", a.silenced_by],
    ["Storm", a.storm_id],
    ["Alert id", el("code", { text: a.alert_id })],
  ]);

  const ctx = { ...(a.context || {}) };
  const pairs = [];
  const traces = Array.isArray(ctx.trace_ids) ? ctx.trace_ids : [];
  if (traces.length) {
    pairs.push(["Trace ids", el("ul", { class: "plain" }, traces.map((t) => el("li", {}, el("code", { text: t }))))]);
  }
  pairs.push(["User", ctx.user], ["Region", ctx.region]);
  if (ctx.window_start || ctx.window_end) {
    pairs.push(["Window", el("span", {}, timeEl(ctx.window_start), " – ", timeEl(ctx.window_end))]);
  }
  for (const k of ["trace_ids", "user", "region", "window_start", "window_end"]) delete ctx[k];
  for (const [k, v] of Object.entries(ctx)) {
    pairs.push([k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)]);
  }
  dlRows($("d-context"), pairs);
  if (!$("d-context").children.length) $("d-context").append(el("dd", { class: "muted", text: "none" }));

  $("d-cause").textContent = a.root_cause || "No hint for this anomaly type.";
  const rem = $("d-remediation");
  rem.replaceChildren(...(a.remediation || []).map((r) => el("li", { text: r })));
  if (!rem.children.length) rem.append(el("li", { class: "muted", text: "No suggestions." }));

  const rel = $("d-related");
  rel.replaceChildren();
  for (const id of a.related_alerts || []) {
    const other = state.alerts.get(id);
    const text = other ? `${label(other.anomaly_type)} (${other.severity}, ${other.status})` : `alert ${id.slice(0, 8)}`;
    rel.append(el("li", {}, el("a", {
      href: `#alert=${encodeURIComponent(id)}`, "data-testid": "related-link", "data-alert-id": id, text,
      onclick: (ev) => {
        ev.preventDefault();
        selectAlert(id);
      },
    })));
  }
  if (!rel.children.length) rel.append(el("li", { class: "muted", text: "None." }));

  const runbook = $("d-runbook");
  const href = safeHref(a.runbook_url) || `/static/runbooks.html#${encodeURIComponent(a.anomaly_type)}`;
  runbook.setAttribute("href", href);
  runbook.textContent = `Runbook: ${label(a.anomaly_type)}`;

  const svc = $("d-service");
  svc.hidden = !a.service_name;
  svc.textContent = `Charts of ${a.service_name || ""}`;

  const ack = $("d-ack");
  ack.hidden = a.status === "resolved";
  ack.disabled = a.status !== "open";
  ack.textContent = a.status === "acknowledged" ? "Acknowledged" : "Acknowledge";
}

async function acknowledge() {
  const a = state.detailAlert;
  if (!a) return;
  const msg = $("d-ack-msg");
  const button = $("d-ack");
  msg.className = "ack-msg";
  msg.textContent = "Acknowledging…";
  button.disabled = true;
  try {
    const updated = await api(`/alerts/${encodeURIComponent(a.alert_id)}/ack`, { method: "POST", body: {} });
    msg.textContent = `Acknowledged by ${updated.acknowledged_by || "you"}.`;
    msg.classList.add("ok");
    applyEvent("update", updated);
  } catch (e) {
    msg.textContent = e instanceof ApiError && e.status ? `Not acknowledged (${e.status}): ${e.message}` : `Not acknowledged: ${e.message}`;
    msg.classList.add("error");
    msg.dataset.status = e instanceof ApiError ? String(e.status) : "";
    if (state.detailAlert) button.disabled = state.detailAlert.status !== "open";
  }
}

// --- false-positive feedback ---------------------------------------------------------------------

const VERDICT_TEXT = { true_positive: "a real problem", false_positive: "a false positive", unsure: "unsure" };

function precisionLine(type) {
  const p = state.precision?.[type];
  if (!p || p.precision === null || p.precision === undefined) return "";
  const judged = p.true_positive + p.false_positive;
  return ` Precision of ${label(type)} today: ${Math.round(p.precision * 100)} % (${p.true_positive} of ${judged} judged).`;
}

function showVerdict(verdict, by) {
  for (const b of document.querySelectorAll(".feedback [data-verdict]")) {
    b.setAttribute("aria-pressed", String(b.dataset.verdict === verdict));
  }
  const a = state.detailAlert;
  const msg = $("d-fb-msg");
  msg.className = "ack-msg";
  msg.textContent = (verdict ? `Judged ${VERDICT_TEXT[verdict]}${by ? ` by ${by}` : ""}.` : "") +
    (a ? precisionLine(a.anomaly_type) : "");
}

async function loadFeedback(a) {
  showVerdict(null, "");
  try {
    const doc = await api(`/alerts/${encodeURIComponent(a.alert_id)}/feedback`);
    const last = doc.feedback[doc.feedback.length - 1];
    if (state.detailAlert && state.detailAlert.alert_id === a.alert_id) showVerdict(doc.verdict, last?.by || "");
  } catch (e) {
    // Feedback is an extra: the alert itself is shown whatever happens here.
  }
}

async function giveFeedback(ev) {
  const verdict = ev.currentTarget.dataset.verdict;
  const a = state.detailAlert;
  if (!a || !verdict) return;
  const msg = $("d-fb-msg");
  msg.className = "ack-msg";
  msg.textContent = "Saving…";
  try {
    const fb = await api(`/alerts/${encodeURIComponent(a.alert_id)}/feedback`, { method: "POST", body: { verdict } });
    await loadSummary().catch(() => {});
    showVerdict(fb.verdict, fb.by);
    msg.classList.add("ok");
  } catch (e) {
    msg.textContent = e instanceof ApiError && e.status ? `Not saved (${e.status}): ${e.message}` : `Not saved: ${e.message}`;
    msg.classList.add("error");
  }
}

// --- audit log (admin) -------------------------------------------------------------------------

async function loadAudit() {
  const msg = $("audit-msg");
  const rows = $("audit-rows");
  msg.className = "ack-msg";
  msg.textContent = "Loading…";
  try {
    const doc = await api("/audit?limit=100");
    rows.replaceChildren(...doc.entries.map((e) => el("tr", { "data-testid": "audit-row", "data-action": e.action }, [
      el("td", { text: shortTime(e.at) }), el("td", { text: e.who }), el("td", { text: e.role }),
      el("td", { text: e.action }), el("td", { text: e.target }),
      el("td", { text: Object.keys(e.detail || {}).length ? JSON.stringify(e.detail) : "" }),
    ].flat())));
    msg.textContent = `${doc.entries.length} of ${doc.total} entries, newest first.`;
  } catch (e) {
    rows.replaceChildren();
    msg.textContent = e instanceof ApiError && e.status === 403 ? "The audit log needs an admin token." : `Not loaded: ${e.message}`;
    msg.classList.add("error");
  }
}

// --- header counts and service health ----------------------------------------------------------

async function loadSummary() {
  const doc = await api("/statistics/summary");
  for (const s of SEVERITIES) {
    document.querySelector(`[data-testid="count-${s}"]`).textContent = String(doc.by_severity?.[s] ?? 0);
  }
  document.querySelector('[data-testid="count-open"]').textContent = String(doc.open ?? 0);
  state.precision = doc.precision_by_type || {};
}

function noteServices(names) {
  let added = false;
  for (const n of names) {
    if (n && !state.knownServices.has(n)) {
      state.knownServices.add(n);
      added = true;
    }
  }
  if (!added) return;
  const select = $("f-service");
  const current = state.filters.service;
  const names2 = [...state.knownServices].sort();
  select.replaceChildren(el("option", { value: "", text: "all" }),
    ...names2.map((n) => el("option", { value: n, text: n })));
  select.value = current;
}

function metricLine(name, value) {
  return el("div", { class: "metric" }, el("dt", { text: name }), el("dd", {}, value));
}

function cardFor(s) {
  const open = s.open_alerts || 0;
  const bySev = SEVERITIES.filter((k) => s.open_by_severity?.[k]).map((k) => `${s.open_by_severity[k]} ${k}`);
  const latency = s.latency_ms_p50 === null || s.latency_ms_p50 === undefined
    ? "n/a" : `${fmtNum(s.latency_ms_p50)} / ${fmtNum(s.latency_ms_p95)} ms`;
  const base = s.baseline || {};
  const baseText = Number.isFinite(base.latency_ms_p50)
    ? `${fmtNum(base.latency_ms_p50)} / ${fmtNum(base.latency_ms_p95)} ms` : "not yet";
  const selected = s.service === state.selectedService;
  return el("button", {
    type: "button", class: `card status-${s.status}`, "aria-pressed": selected ? "true" : "false",
    "data-testid": "service-card", "data-service": s.service, "data-status": s.status,
    onclick: () => selectService(s.service),
  },
  el("span", { class: "card-head" },
    el("span", { class: "card-name", text: s.service }),
    el("span", { class: `health health-${s.status}`, text: s.status })),
  el("span", { class: "card-alerts", text: open ? `${open} open: ${bySev.join(", ")}` : "no open alerts" }),
  el("dl", { class: "card-metrics" },
    metricLine("calls (5 min)", fmtNum(s.calls)),
    metricLine("errors", `${fmtNum((s.error_rate || 0) * 100, 2)} %`),
    metricLine("latency p50 / p95", latency),
    metricLine("baseline p50 / p95", baseText),
    metricLine("tokens / min", fmtNum(s.tokens_per_min)),
    metricLine("cost / h", `$${fmtNum(s.cost_usd_per_hour)}`)),
  el("span", { class: "card-foot" }, "last seen ", timeEl(s.last_seen)));
}

async function loadServices() {
  const doc = await api("/services");
  const services = doc.services || [];
  const box = $("service-cards");
  box.replaceChildren(...services.map(cardFor));
  if (!services.length) box.append(el("p", { class: "muted", text: "No service has sent traffic or raised an alert yet." }));
  box.dataset.state = "loaded";
  noteServices(services.map((s) => s.service));
  if (!state.selectedService && services.length) {
    const worst = services.find((s) => s.status === "critical") || services.find((s) => s.status === "warning") || services[0];
    selectService(worst.service, { scroll: false });
  }
}

// --- charts (uPlot) --------------------------------------------------------------------------

const charts = {};

function sevColor(sev) {
  return cssVar(`--sev-${sev}`, "#888");
}

function markersPlugin() {
  return {
    hooks: {
      draw: [(u) => {
        const { ctx, bbox } = u;
        const [xMin, xMax] = [u.scales.x.min, u.scales.x.max];
        ctx.save();
        for (const m of state.seriesAlerts) {
          if (m.t < xMin || m.t > xMax) continue;
          const x = Math.round(u.valToPos(m.t, "x", true));
          const selected = m.alert_id === state.selectedAlert;
          ctx.strokeStyle = sevColor(m.severity);
          ctx.fillStyle = sevColor(m.severity);
          ctx.lineWidth = (selected ? 2.5 : 1.5) * devicePixelRatio;
          ctx.setLineDash(selected ? [] : [5 * devicePixelRatio, 3 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, bbox.top);
          ctx.lineTo(x, bbox.top + bbox.height);
          ctx.stroke();
          const s = 5 * devicePixelRatio;
          ctx.beginPath();
          ctx.moveTo(x - s, bbox.top);
          ctx.lineTo(x + s, bbox.top);
          ctx.lineTo(x, bbox.top + s * 1.4);
          ctx.closePath();
          ctx.fill();
        }
        ctx.restore();
      }],
    },
  };
}

function makeChart(id, series, valueFmt, axisFmt) {
  const box = $(id);
  const axis = cssVar("--muted", "#667");
  const grid = cssVar("--grid", "#e3e6ea");
  const opts = {
    width: Math.max(280, box.clientWidth),
    height: 190,
    scales: {
      x: {
        time: true,
        // the whole last bucket, so an anomaly raised during it is on the chart
        range: (u, min, max) => (state.seriesRange ? [...state.seriesRange] : [min, max]),
      },
    },
    series: [
      {},
      ...series.map((s) => ({
        label: s.label, stroke: cssVar(s.color, "#2563eb"), width: 1.75, spanGaps: false,
        points: { size: 4 }, value: (u, v) => (v === null || v === undefined ? "–" : valueFmt(v)),
      })),
    ],
    axes: [
      { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
      {
        stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 58,
        values: (u, splits) => splits.map((v) => axisFmt(v)),
      },
    ],
    cursor: { drag: { x: true, y: false } },
    legend: { live: true },
    plugins: [markersPlugin()],
  };
  const chart = new window.uPlot(opts, [[], ...series.map(() => [])], box);
  new ResizeObserver(() => {
    const w = Math.max(280, box.clientWidth);
    if (Math.abs(w - chart.width) > 2) chart.setSize({ width: w, height: 190 });
  }).observe(box);
  return chart;
}

function ensureCharts() {
  if (charts.latency || !window.uPlot) return Boolean(charts.latency);
  charts.latency = makeChart("chart-latency", [
    { label: "mean", color: "--c1" }, { label: "max", color: "--c2" }], (v) => `${fmtNum(v)} ms`, fmtCompact);
  charts.tokens = makeChart("chart-tokens", [
    { label: "input", color: "--c1" }, { label: "output", color: "--c3" }], (v) => fmtNum(v), fmtCompact);
  charts.cost = makeChart("chart-cost", [{ label: "cost", color: "--c4" }], (v) => `$${fmtNum(v)}`,
    (v) => `$${fmtCompact(v)}`);
  charts.quality = makeChart("chart-quality", [
    { label: "eval score", color: "--c1" }, { label: "negative feedback", color: "--c2" }], (v) => fmtNum(v),
  fmtCompact);
  return true;
}

function selectService(name, { scroll = false } = {}) {
  state.selectedService = name;
  for (const card of $("service-cards").querySelectorAll(".card")) {
    card.setAttribute("aria-pressed", card.dataset.service === name ? "true" : "false");
  }
  $("chart-service").textContent = name;
  writeHash();
  loadSeries();
  if (scroll) $("charts").scrollIntoView({ block: "start", behavior: "smooth" });
}

function showService(name) {
  if (name) selectService(name, { scroll: true });
}

async function loadSeries() {
  const name = state.selectedService;
  if (!name) return;
  const gen = ++state.seriesGen;
  const section = $("charts");
  section.dataset.state = "loading";
  let doc;
  try {
    doc = await api(`/services/${encodeURIComponent(name)}/series`);
  } catch (e) {
    if (gen !== state.seriesGen) return;
    section.dataset.state = "error";
    $("charts-note").textContent = e instanceof ApiError && e.status === 404
      ? "No traffic recorded for this service yet." : `Could not load the series: ${e.message}`;
    return;
  }
  if (gen !== state.seriesGen) return;
  if (!ensureCharts()) {
    section.dataset.state = "error";
    $("charts-note").textContent = "The chart library did not load.";
    return;
  }
  const points = doc.points || [];
  state.seriesAlerts = doc.alerts || [];
  const xs = points.map((p) => p.t);
  const step = doc.step_s || 60;
  state.seriesRange = xs.length ? [xs[0], xs[xs.length - 1] + step] : null;
  charts.latency.setData([xs, points.map((p) => p.latency_ms_mean), points.map((p) => p.latency_ms_max)]);
  charts.tokens.setData([xs, points.map((p) => p.input_tokens), points.map((p) => p.output_tokens)]);
  charts.cost.setData([xs, points.map((p) => p.cost_usd)]);
  loadQuality(name, gen);
  section.dataset.state = "loaded";
  section.dataset.points = String(points.length);
  section.dataset.alerts = String(state.seriesAlerts.length);
  const calls = points.reduce((n, p) => n + (p.calls || 0), 0);
  const errors = points.reduce((n, p) => n + (p.errors || 0), 0);
  $("charts-note").textContent = points.length
    ? `${shortTime(xs[0])} – ${shortTime(xs[xs.length - 1] + step)}, ${step} s buckets: `
      + `${fmtNum(calls)} calls, ${fmtNum(errors)} errors. Dashed lines mark anomalies.`
    : "No traffic in this range.";
  const list = $("chart-markers");
  list.replaceChildren(...[...state.seriesAlerts].reverse().map((m) => el("li", {}, el("a", {
    href: `#alert=${encodeURIComponent(m.alert_id)}`, class: `marker sev-${m.severity}`, "data-testid": "chart-marker",
    "data-alert-id": m.alert_id,
    onclick: (ev) => {
      ev.preventDefault();
      selectAlert(m.alert_id);
    },
  }, el("span", { class: `sev sev-${m.severity}`, text: m.severity }), " ", timeEl(m.t), " ",
  `${label(m.anomaly_type)} (${m.metric})`))));
  if (!list.children.length) list.append(el("li", { class: "muted", text: "None in this range." }));
}

// The service's evaluation scores and feedback (GET /services/{name}/quality), pooled over its models:
// the events-weighted mean score of the evaluations, and the negative share of the users' feedback.
async function loadQuality(name, gen) {
  let doc;
  try {
    doc = await api(`/services/${encodeURIComponent(name)}/quality`);
  } catch (e) {
    doc = { series: [] }; // quality signals off, or none yet
  }
  if (gen !== state.seriesGen || !charts.quality) return;
  const acc = new Map(); // bucket start -> [score sum, scored, negative sum, feedback]
  for (const s of doc.series || []) {
    const feedback = s.eval_name === "user_feedback";
    for (const [t, mean, bad, n] of s.points || []) {
      const a = acc.get(t) || [0, 0, 0, 0];
      if (!feedback && mean !== null) { a[0] += mean * n; a[1] += n; }
      if (feedback && bad !== null) { a[2] += bad * n; a[3] += n; }
      acc.set(t, a);
    }
  }
  const xs = [...acc.keys()].sort((a, b) => a - b);
  charts.quality.setData([xs, xs.map((t) => (acc.get(t)[1] ? acc.get(t)[0] / acc.get(t)[1] : null)),
    xs.map((t) => (acc.get(t)[3] ? acc.get(t)[2] / acc.get(t)[3] : null))]);
  $("charts").dataset.qualitySeries = String((doc.series || []).length);
}

// --- refreshing --------------------------------------------------------------------------------

async function refreshAll() {
  const results = await Promise.allSettled([loadSummary(), loadServices()]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(failed.reason);
}

function startFeed() {
  connectStream(); // its hello loads the list
  setTimeout(() => {
    if (state.listDirty && !state.listLoading && !stream.blocked) loadAlerts();
  }, LIST_FALLBACK_MS);
}

const refreshSoon = debounce(() => {
  Promise.allSettled([loadSummary(), loadServices()]);
}, 500);
const seriesSoon = debounce(() => loadSeries(), 1000);

// --- filters and URL hash -------------------------------------------------------------------

function readHash() {
  const h = new URLSearchParams(window.location.hash.slice(1));
  for (const k of Object.keys(DEFAULT_FILTERS)) {
    if (h.has(k)) state.filters[k] = h.get(k);
  }
  return { alert: h.get("alert"), service: h.get("chart") };
}

function writeHash() {
  const h = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) {
    if (v !== DEFAULT_FILTERS[k]) h.set(k, v);
  }
  if (state.selectedAlert) h.set("alert", state.selectedAlert);
  if (state.selectedService) h.set("chart", state.selectedService);
  const text = h.toString();
  history.replaceState(null, "", text ? `#${text}` : window.location.pathname + window.location.search);
}

function syncFilterControls() {
  for (const [k, v] of Object.entries(state.filters)) {
    const select = $(`f-${k}`);
    if (![...select.options].some((o) => o.value === v)) select.append(el("option", { value: v, text: v }));
    select.value = v;
  }
}

function onFiltersChanged() {
  const before = { ...state.filters };
  for (const k of Object.keys(DEFAULT_FILTERS)) state.filters[k] = $(`f-${k}`).value;
  writeHash();
  state.listDirty = true;
  const streamSide = ["severity", "service", "type"].some((k) => before[k] !== state.filters[k]);
  if (streamSide && !stream.blocked) {
    state.listGen += 1; // a load under the old filters is stale
    $("feed").dataset.state = "loading";
    startFeed();
  } else {
    loadAlerts();
  }
}

// --- start -------------------------------------------------------------------------------------

function init() {
  $("f-type").append(...ANOMALY_TYPES.map((t) => el("option", { value: t, text: label(t) })));
  const fromHash = readHash();
  syncFilterControls();
  if (state.filters.service) noteServices([state.filters.service]);

  $("filters").addEventListener("change", onFiltersChanged);
  $("filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("filters").addEventListener("reset", () => setTimeout(onFiltersChanged, 0)); // after the controls reset
  $("load-more").addEventListener("click", () => loadAlerts({ append: true }));
  $("d-ack").addEventListener("click", acknowledge);
  for (const b of document.querySelectorAll(".feedback [data-verdict]")) b.addEventListener("click", giveFeedback);
  $("audit").addEventListener("toggle", () => { if ($("audit").open) loadAudit(); });
  $("d-service").addEventListener("click", () => showService(state.detailAlert?.service_name));
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token-input").value.trim();
    if (token) setToken(token);
  });
  $("token-forget").addEventListener("click", () => setToken(""));
  $("token-toggle").addEventListener("click", () => {
    const panel = $("token-panel");
    panel.hidden = !panel.hidden;
    $("token-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) {
      $("token-msg").textContent = state.token
        ? "A token is set for this tab. Enter another one to replace it."
        : "No token is set. Enter one if the aggregator asks for it.";
      $("token-input").focus();
    }
  });
  window.addEventListener("online", () => {
    if (!stream.blocked) connectStream();
  });
  window.addEventListener("hashchange", () => {
    const h = new URLSearchParams(window.location.hash.slice(1));
    const id = h.get("alert");
    if (id && id !== state.selectedAlert) selectAlert(id);
  });

  if (fromHash.service) selectService(fromHash.service);
  if (fromHash.alert) selectAlert(fromHash.alert, { focusDetail: false });
  refreshAll();
  startFeed();
  setInterval(() => {
    if (!document.hidden && !stream.blocked) refreshSoon();
  }, REFRESH_MS);
  setInterval(() => {
    if (!document.hidden && !stream.blocked) loadSeries();
  }, SERIES_REFRESH_MS);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
