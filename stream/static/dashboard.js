// Vigil dashboard: polls the worker's JSON API once a second and draws with uPlot (vendored).
"use strict";
const params = new URLSearchParams(location.search);  // ?token=...&entity=...&alert=... (links)
const token = params.get("token");
const api = (path) => fetch(path + (token ? (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : ""))
  .then((r) => r.json());
let selected = params.get("entity"), selectedIncident = params.get("alert"), plot = null, spans = [];
let rawPlot = null, rawKey = "", rawSpan = null;
const COLORS = ["#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

// entity ids, alert ids and channel names come from producers: never markup
function esc(x) { return String(x).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`); }
const send = (path, body) => fetch(path + (token ? "?token=" + encodeURIComponent(token) : ""), {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
  .then((r) => r.json());

function fmt(x, digits = 2) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function stateClass(s) { return s.startsWith("no model") ? "nomodel" : s.startsWith("warming") ? "warming" : s; }

function drawHealth(h) {
  const lag = Object.values(h.consumer_lag).reduce((a, b) => a + b, 0);
  const behind = Math.max(0, ...Object.values(h.consumer_lag_seconds || {}));
  const eta = !lag ? "" : h.catch_up_s === null ? ", not shrinking" : `, caught up in ~${fmt(h.catch_up_s, 0)} s`;
  document.getElementById("health").innerHTML =
    `<span id="rate">${fmt(h.readings_per_second, 0)} readings/s</span><span>${h.readings} readings</span>` +
    `<span id="lag">lag ${lag}${lag ? ` (${fmt(behind, 1)} s behind${eta})` : ""}</span><span>batch ${h.batch_size}</span>` +
    `<span>inference ${fmt(h.inference_ms)} ms</span><span id="dlq-total">${h.dlq_total} dead letters</span>`;
  const rows = Object.entries(h.dlq).map(([k, n]) => `<tr><td>${k}</td><td>${n}</td></tr>`).join("");
  document.getElementById("dlq").innerHTML = rows || '<tr><td class="muted">none</td></tr>';
}

function drawEntities(list) {
  if (!selected && list.length) {  // start on an alerting entity if there is one
    selected = (list.find((e) => e.state === "alerting") || list[0]).entity;
  }
  document.getElementById("entities").innerHTML = list.map((e) =>
    `<tr data-entity="${esc(e.entity)}" class="${e.entity === selected ? "selected" : ""}"><td>${esc(e.entity)}</td>` +
    `<td><span class="state ${stateClass(e.state)}">${esc(e.state)}</span></td><td>${esc(e.model)}</td>` +
    `<td>${fmt(e.last_score)} / ${fmt(e.threshold)}</td></tr>`).join("");
  for (const tr of document.querySelectorAll("tr[data-entity]")) {
    tr.onclick = () => { selected = tr.dataset.entity; selectedIncident = null; plot = null; refresh(); };
  }
}

function shadeSpans(u) {  // alert spans behind the lines
  const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
  let drawn = 0;
  ctx.save();
  ctx.fillStyle = "rgba(220, 38, 38, 0.15)";
  for (const s of spans) {
    const x0 = u.valToPos(s.start, "x", true), x1 = u.valToPos(s.end, "x", true);
    if (x1 < u.bbox.left || x0 > u.bbox.left + u.bbox.width) continue;
    ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
    drawn++;
  }
  ctx.restore();
  document.getElementById("chart").dataset.spans = drawn;
}

function drawEntity(e) {
  document.getElementById("title").textContent = `${e.entity} — ${e.model} (${e.state})`;
  document.getElementById("labelling").hidden = !selectedIncident;
  document.getElementById("models").textContent = (e.models || []).length > 1 ? "models: " + e.models.map((m) =>
    `${m.model} from ${new Date(m.since * 1000).toISOString().slice(0, 19).replace("T", " ")}`).join(" → ") : "";
  document.getElementById("why").textContent = e.why ? `why ${e.model}: ${e.why}` : "";
  spans = e.incidents;
  const data = [e.ts, e.score, e.threshold];
  const el = document.getElementById("chart");
  if (!plot) {
    el.innerHTML = "";
    plot = new uPlot({
      width: Math.max(el.clientWidth, 600), height: 260,
      series: [{}, { label: "score", stroke: "#2563eb", width: 1 },
               { label: "threshold", stroke: "#dc2626", dash: [6, 4], width: 1 }],
      axes: [{ values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(11, 19)) }, {}],
      hooks: { drawClear: [shadeSpans] },
    }, data, el);
  } else {
    plot.setData(data);
  }
  el.dataset.points = e.ts.length;
  const items = e.incidents.slice().reverse();
  if (!selectedIncident && items.length) selectedIncident = items[0].alert_id;
  document.getElementById("incidents").innerHTML = items.map((a) =>
    `<li data-alert="${esc(a.alert_id)}" class="${a.alert_id === selectedIncident ? "selected" : ""}">` +
    `${esc(a.state)} · ${new Date(a.start * 1000).toISOString().slice(11, 19)}–` +
    `${new Date(a.end * 1000).toISOString().slice(11, 19)} · peak ${fmt(a.score)} · ` +
    `${esc(a.channels.map((c) => c.channel).join(", "))}` +
    (a.label ? ` · <span class="label">labelled ${esc(a.label)}</span>` : "") + `</li>`).join("") ||
    '<li class="muted">none yet</li>';
  for (const li of document.querySelectorAll("#incidents li[data-alert]")) {
    li.onclick = () => { selectedIncident = li.dataset.alert; refresh(); };
  }
}

function drawHeatmap(inc) {
  const canvas = document.getElementById("heatmap"), rowH = 14;
  const rows = inc.channel_scores, n = rows.length ? rows[0].length : 0;
  canvas.height = rows.length * rowH;
  canvas.width = Math.max(300, Math.min(900, n * 6));
  const ctx = canvas.getContext("2d"), cw = canvas.width / Math.max(n, 1);
  const max = Math.max(1e-9, ...rows.flat());
  rows.forEach((row, c) => row.forEach((v, t) => {
    const a = Math.min(1, Math.log1p(Math.max(v, 0)) / Math.log1p(max));
    ctx.fillStyle = `rgba(220, 38, 38, ${a.toFixed(3)})`;
    ctx.fillRect(t * cw, c * rowH, Math.ceil(cw), rowH - 1);
  }));
  canvas.dataset.channels = inc.names.join(",");
  document.getElementById("heatmap-labels").innerHTML = inc.names.map((n) => `<div>${esc(n)}</div>`).join("");
  document.getElementById("ranked").innerHTML = inc.channels.map((c) =>
    `<li>${esc(c.channel)} <span class="muted">${fmt(c.score, 1)}</span></li>`).join("");
  document.getElementById("heatmap-title").textContent = `Channel scores during incident ${inc.alert_id}`;
  drawRaw(inc);
}

function drawRaw(inc) {  // what an operator opens first: the raw readings of the ranked channels
  const top = inc.top_channels || [], el = document.getElementById("rawchart");
  const key = inc.alert_id + "|" + top.map((c) => c.channel).join(",");
  const data = [inc.ts, ...top.map((c) => c.values)];
  rawSpan = { start: inc.start, end: inc.end };
  if (!rawPlot || key !== rawKey) {
    if (rawPlot) rawPlot.destroy();
    el.innerHTML = "";
    rawPlot = new uPlot({
      width: Math.max(el.clientWidth, 600), height: 200,
      series: [{}, ...top.map((c, i) => ({ label: c.channel, stroke: COLORS[i % COLORS.length], width: 1 }))],
      axes: [{ values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(11, 19)) }, {}],
      hooks: { drawClear: [(u) => {  // the incident's span behind the lines
        if (!rawSpan) return;
        const x0 = u.valToPos(rawSpan.start, "x", true), x1 = u.valToPos(rawSpan.end, "x", true);
        u.ctx.save(); u.ctx.fillStyle = "rgba(220, 38, 38, 0.12)";
        u.ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height); u.ctx.restore();
      }] },
    }, data, el);
    rawKey = key;
  } else {
    rawPlot.setData(data);
  }
  el.dataset.series = top.map((c) => c.channel).join(",");
  el.dataset.points = inc.ts.length;
  document.getElementById("raw-title").textContent =
    `Readings of the top channels around incident ${inc.alert_id} (${top.map((c) => c.channel).join(", ")})`;
}

// Operator feedback: the selected incident is a false alarm or an anomaly; or a period without an
// alert was an anomaly (a miss). Published on the feedback topic; the trainer retunes to it.
async function label(body) {
  const status = document.getElementById("label-status");
  const note = document.getElementById("note").value;
  let r;
  try { r = await send("api/feedback", { ...body, entity: selected, note }); }
  catch (err) { r = { error: String(err) }; }
  status.textContent = r.ok ? `labelled ${r.label} (${r.feedback_id.slice(0, 8)}); the trainer's next round uses it`
    : `not labelled: ${r.error}`;
  status.dataset.result = r.ok ? "ok" : "error";
  refresh();
}
document.getElementById("mark-false").onclick = () => label({ alert_id: selectedIncident, label: "false-alarm" });
document.getElementById("mark-anomaly").onclick = () => label({ alert_id: selectedIncident, label: "anomaly" });
document.getElementById("mark-miss").onclick = () => {
  const t = (id) => Date.parse(document.getElementById(id).value) / 1000;
  label({ label: "anomaly", start: t("miss-start"), end: t("miss-end") });
};

async function refresh() {
  try {
    const overview = await api("api/entities");
    drawHealth(overview.health);
    drawEntities(overview.entities);
    if (selected) {
      const e = await api("api/entity/" + encodeURIComponent(selected));
      if (!e.error) drawEntity(e);
      if (selectedIncident) {
        const inc = await api(`api/entity/${encodeURIComponent(selected)}/incident/${selectedIncident}`);
        if (!inc.error) drawHeatmap(inc);
      }
    }
  } catch (err) {
    document.getElementById("health").textContent = "worker unreachable: " + err;
  }
}
refresh();
setInterval(refresh, 1000);
