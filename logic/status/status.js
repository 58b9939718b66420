// The status page: polls /status.json every second and derives rates from the difference
// between two polls. No framework, no build step.
"use strict";

const POINTS = 60;
const history = [];
let previous = null;

function $(id) { return document.getElementById(id); }

function fmt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms" : s.toFixed(2) + " s";
}

function cell(text, numeric) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "n";
  return td;
}

function rows(tbody, items) {
  tbody.replaceChildren(...items.map((values) => {
    const tr = document.createElement("tr");
    values.forEach((v, i) => tr.appendChild(cell(v, i > 0)));
    return tr;
  }));
}

// Totals the rates are computed from.
function totals(s) {
  const pushes = Object.values((s.logic && s.logic.pushes) || {})
    .reduce((sum, p) => sum + p.accepted, 0);
  const local = s.comets || [];
  const writes = local.reduce((sum, c) => sum + c.writes, 0);
  const byComet = {};
  for (const c of local) byComet[c.id] = { writes: c.writes, messages: c.messages_sent };
  return { time: s.time_ms, pushes, writes, byComet };
}

function rate(now, before, pick) {
  if (!before) return null;
  const dt = (now.time - before.time) / 1000;
  if (dt <= 0) return null;
  return Math.max(0, (pick(now) - pick(before)) / dt);
}

function render(s) {
  const local = s.comets || [];
  const registry = (s.logic && s.logic.comets) || [];
  // Live counters of comets in this process when there are any; the registry's (refreshed
  // with each online report) otherwise.
  const connections = local.length
    ? local.reduce((sum, c) => sum + c.connections, 0)
    : registry.reduce((sum, c) => sum + c.connections, 0);
  $("connections").textContent = fmt(connections);
  $("rooms").textContent = fmt(s.logic ? s.logic.rooms : null);

  const now = totals(s);
  const pushRate = rate(now, previous, (t) => t.pushes);
  const writeRate = rate(now, previous, (t) => t.writes);
  $("pushes-rate").textContent = fmt(pushRate);
  $("writes-rate").textContent = local.length ? fmt(writeRate) : "–";
  const latency = local.find((c) => c.latency && c.latency.count > 0);
  // Percentiles are histogram bucket bounds: the latency is at most this.
  const bound = (s) => (s === null || s === undefined ? "–" : "≤ " + seconds(s));
  $("latency-p50").textContent = bound(latency ? latency.latency.p50 : null);
  $("latency-p99").textContent = bound(latency ? latency.latency.p99 : null);

  const ready = s.ready || [];
  const failing = ready.filter((c) => !c.ok);
  $("ready").textContent = failing.length
    ? "not ready: " + failing.map((c) => c.check + " (" + c.error + ")").join(", ")
    : "ready";
  $("ready").className = failing.length ? "bad" : "ok";
  $("updated").textContent = new Date(s.time_ms).toLocaleTimeString();

  const ids = new Set(registry.map((c) => c.id).concat(local.map((c) => c.id)));
  rows($("comets"), [...ids].sort().map((id) => {
    const reg = registry.find((c) => c.id === id) || {};
    const here = local.find((c) => c.id === id);
    const w = here ? rate(now, previous, (t) => (t.byComet[id] || {}).writes || 0) : null;
    const m = here ? rate(now, previous, (t) => (t.byComet[id] || {}).messages || 0) : null;
    return [
      id,
      fmt(here ? here.connections : reg.connections),
      fmt(here ? here.rooms : null),
      fmt(w),
      fmt(m),
      reg.lag_us !== undefined ? (reg.lag_us / 1000).toFixed(1) + " ms" : "–",
      here && here.io ? here.io : "–",
    ];
  }));
  rows($("top-rooms"), ((s.logic && s.logic.busiest_rooms) || []).map((r) => [r.room, fmt(r.online)]));
  rows($("pushes"), Object.entries((s.logic && s.logic.pushes) || {})
    .map(([kind, p]) => [kind, fmt(p.accepted), fmt(p.failed)]));
  const p = s.process || {};
  const job = s.job;
  rows($("process"), [
    ["CPU time", seconds(p.cpu_seconds)],
    ["resident memory", fmt(p.resident_bytes / 1048576) + " MiB"],
    ["open files", fmt(p.open_fds) + " of " + fmt(p.max_fds)],
  ].concat(job ? [
    ["job: comet links", fmt(job.comet_links)],
    ["job: room budget", job.room_budget.toFixed(2)],
  ] : []));

  if (pushRate !== null) {
    history.push({ pushes: pushRate, writes: writeRate || 0 });
    if (history.length > POINTS) history.shift();
    draw();
  }
  previous = now;
}

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history.map((p) => Math.max(p.pushes, p.writes)));
  ctx.strokeStyle = "#e6e8ee";
  ctx.fillStyle = "#55607a";
  ctx.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = pad + ((h - 2 * pad) * i) / 2;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(fmt(max * (1 - i / 2)), 0, y - 2);
  }
  for (const [key, color] of [["pushes", "#2f6fde"], ["writes", "#e0812f"]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((p, i) => {
      const x = pad + ((w - pad) * i) / (POINTS - 1);
      const y = h - pad - ((h - 2 * pad) * p[key]) / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

async function poll() {
  try {
    const response = await fetch("/status.json", { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error("/status.json answered " + response.status);
    render(await response.json());
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = String(e);
  }
  setTimeout(poll, 1000);
}

poll();
