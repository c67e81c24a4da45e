// The drift dashboard: polls /api/state and redraws without reloading. uPlot is vendored (static/vendor/).
"use strict";

const charts = new Map();  // card id -> uPlot
const POLL_MS = 2000;

function card(container, id, title) {
  let el = document.getElementById(id);
  if (!el) {
    el = document.createElement("div");
    el.className = "card";
    el.id = id;
    el.innerHTML = `<h3><span class="title"></span><span class="level"></span></h3><div class="chart"></div>`;
    el.querySelector(".title").textContent = title;
    container.appendChild(el);
  }
  return el;
}

function plot(el, id, series, data) {
  let chart = charts.get(id);
  if (!chart) {
    const width = Math.max(el.clientWidth - 16, 300);
    chart = new uPlot({width, height: 180, series: [{}, ...series], axes: [{}, {size: 50}],
                       scales: {x: {time: true}}}, data, el.querySelector(".chart"));
    charts.set(id, chart);
  } else {
    chart.setData(data);
  }
}

function drawSignals(signals) {
  const container = document.getElementById("signals");
  for (const s of signals) {
    const id = `signal-${s.model}-${s.signal}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const el = card(container, id, `${s.model} · ${s.signal}`);
    const level = el.querySelector(".level");
    level.textContent = `${s.level} · ${s.events_since_reference} events since reference`;
    level.className = `level level-${s.level}`;
    const xs = s.series.map(p => p[0] / 1000);
    plot(el, id, [
      {label: "score", stroke: "#2563eb", width: 2},
      {label: "warning", stroke: "#d97706", dash: [6, 4]},
      {label: "drift", stroke: "#dc2626", dash: [6, 4]},
    ], [xs, s.series.map(p => p[1]), s.series.map(p => p[2]), s.series.map(p => p[3])]);
  }
}

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map(item => {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

const time = ms => (ms ? new Date(ms).toLocaleTimeString() : "-");

function drawTables(state) {
  rows(document.querySelector("#episodes tbody"), [...state.episodes].reverse().slice(0, 50), e => [
    [time(e.ts)], [e.model], [e.signal], [`${e.level} (#${e.episode})`, `level-${e.level}`], [e.statistic],
    [`${(+e.value).toFixed(2)} / ${(+e.threshold).toFixed(2)}`]]);
  const versions = Object.entries(state.versions).flatMap(([model, vs]) => vs.map(v => ({model, ...v})));
  rows(document.querySelector("#versions tbody"), versions, v => [[v.model], [v.version], [time(v.from_ts)]]);
  const numbers = n => Object.entries(n).map(([k, [a, b]]) =>
    `${k.replace("_accuracy", "")} ${a == null ? "-" : (+a).toFixed(3)} → ${b == null ? "-" : (+b).toFixed(3)}`);
  rows(document.querySelector("#retraining tbody"), [...state.retraining].reverse().slice(0, 50), e => [
    [time(e.ts)], [e.model], [e.what, `what-${e.what.replace(/ /g, "-")}`], [e.version || "-"],
    [numbers(e.numbers).join("; ") || "-"], [e.detail]]);
}

function drawWorkers(state) {
  if (state.workers.length) document.getElementById("workers").textContent = state.workers.join(", ");
  const container = document.getElementById("throughput");
  for (const [name, points] of Object.entries(state.throughput)) {
    const id = `worker-${name}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const el = card(container, id, name);
    const last = points[points.length - 1] || {};
    const p99 = last.latency_p99_s == null ? "-" : `${(last.latency_p99_s * 1000).toFixed(0)} ms`;
    el.querySelector(".level").textContent = `p99 latency ${p99}`;
    const xs = points.map(p => p.ts / 1000);
    const ms = key => points.map(p => (p[key] == null ? null : p[key] * 1000));
    plot(el, id, [
      {label: "consumed/s", stroke: "#2563eb", width: 2},
      {label: "produced/s", stroke: "#16a34a"},
      {label: "dead letters/s", stroke: "#dc2626"},
      {label: "p50 ms", stroke: "#7c3aed", dash: [4, 3]},
      {label: "p99 ms", stroke: "#db2777", dash: [4, 3]},
    ], [xs, points.map(p => p.consumed_per_s), points.map(p => p.produced_per_s),
        points.map(p => p.dead_letters_per_s), ms("latency_p50_s"), ms("latency_p99_s")]);
  }
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    const state = await response.json();
    drawSignals(state.signals);
    drawTables(state);
    drawWorkers(state);
    const points = state.signals.reduce((n, s) => n + s.series.length, 0);
    Object.assign(status.dataset, {signals: state.signals.length, points, episodes: state.episodes.length,
                                   charts: charts.size, retraining: state.retraining.length});
    status.textContent = `${state.signals.length} signals · ${state.episodes.length} episode changes · ` +
      `updated ${new Date().toLocaleTimeString()}` + (state.reading ? "" : " · waiting for the drift topics");
  } catch (err) {
    status.textContent = `cannot reach the dashboard server (${err})`;
  }
}

refresh();
setInterval(refresh, POLL_MS);
