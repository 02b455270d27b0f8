// mfpt watch: polls /api/state every POLL_MS and redraws the page (no reload, no library, nothing fetched online).
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(window.location.search);

function el(id) { return document.getElementById(id); }

function text(node, value) { node.textContent = value; return node; }

function make(tag, attrs, content) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (content !== undefined) node.textContent = content;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%"; }

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  if (s < 90) return s + " s";
  if (s < 5400) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}

// A colour per language, spread around the hue circle; the means are black (all) and orange (low-resource).
function colour(i, n) { return "hsl(" + Math.round((360 * i) / Math.max(n, 1)) + ", 65%, 42%)"; }

function drawChart(svg, series, key, rounds) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = svg.clientWidth || 560, height = svg.clientHeight || 300;
  const left = 58, right = 10, top = 10, bottom = 28;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const values = [];
  for (const s of series) for (const p of s.points) if (typeof p[key] === "number") values.push(p[key]);
  if (!values.length) {
    const t = svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle" });
    svg.appendChild(text(t, "no evaluation yet"));
    return;
  }
  let lo = key === "score" ? 0 : Math.min(...values), hi = key === "score" ? 1 : Math.max(...values);
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const maxRound = Math.max(1, rounds);
  const x = r => left + ((width - left - right) * (r - (maxRound > 1 ? 1 : 0))) / Math.max(maxRound - 1, 1);
  const y = v => top + (height - top - bottom) * (1 - (v - lo) / (hi - lo));
  // Axes with integer round ticks.
  svg.appendChild(svgEl("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, stroke: "#999" }));
  svg.appendChild(svgEl("line", { x1: left, y1: top, x2: left, y2: height - bottom, stroke: "#999" }));
  const step = Math.max(1, Math.ceil(maxRound / 12));
  for (let r = 1; r <= maxRound; r += step) {
    const t = svgEl("text", { x: x(r), y: height - bottom + 14, "text-anchor": "middle" });
    svg.appendChild(text(t, String(r)));
  }
  // Enough decimals that the five ticks differ (losses of a short run can sit within 0.01 of each other).
  const decimals = Math.min(6, Math.max(2, Math.ceil(-Math.log10((hi - lo) / 4)) + 1));
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    const t = svgEl("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" });
    svg.appendChild(text(t, key === "score" ? Math.round(100 * v) + "%" : v.toFixed(decimals)));
  }
  for (const s of series) {
    const pts = s.points.filter(p => typeof p[key] === "number").sort((a, b) => a.round - b.round);
    if (!pts.length) continue;
    const d = pts.map((p, i) => (i ? "L" : "M") + x(p.round).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ");
    const path = svgEl("path", { d: d, fill: "none", stroke: s.colour, "stroke-width": s.width,
                                 "stroke-dasharray": s.dash, "data-series": s.name });
    path.appendChild(text(svgEl("title", {}), s.name));
    svg.appendChild(path);
    for (const p of pts) {
      const dot = svgEl("circle", { cx: x(p.round), cy: y(p[key]), r: s.width > 2 ? 3 : 2, fill: s.colour });
      dot.appendChild(text(svgEl("title", {}), s.name + ", round " + p.round + ": " +
                           (key === "score" ? pct(p[key]) : p[key].toFixed(3))));
      svg.appendChild(dot);
    }
  }
}

function seriesOf(state) {
  const split = state.settings.eval_split;
  const curves = state.curves[split] || { per_language: {}, mean: [], low_resource_mean: [] };
  const langs = state.languages;
  const series = langs.map((l, i) => ({
    name: l.lang + (l.heldout ? " (held out)" : l.low_resource ? " (low-resource)" : ""),
    lang: l.lang, points: curves.per_language[l.lang] || [], colour: colour(i, langs.length), width: 1.5,
    dash: l.heldout ? "2 3" : l.low_resource ? "6 3" : "",
  }));
  series.push({ name: "mean", lang: "mean", points: curves.mean, colour: "#000", width: 3, dash: "" });
  if (curves.low_resource_mean.length)
    series.push({ name: "low-resource mean", lang: "low-resource-mean", points: curves.low_resource_mean,
                  colour: "#e8710a", width: 3, dash: "" });
  return series;
}

function drawLegend(series) {
  const legend = el("legend");
  legend.replaceChildren(...series.map(s => {
    const item = make("span", { "data-lang": s.lang });
    const swatch = make("i");
    swatch.style.borderTopColor = s.colour;
    swatch.style.borderTopStyle = s.dash ? (s.dash.startsWith("2") ? "dotted" : "dashed") : "solid";
    swatch.style.borderTopWidth = s.width + "px";
    item.append(swatch, document.createTextNode(s.name));
    return item;
  }));
}

function row(cells, classes) {
  const tr = make("tr");
  cells.forEach((c, i) => tr.appendChild(make("td", classes && classes[i] ? { class: classes[i] } : {}, c)));
  return tr;
}

function definitions(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([k, v]) => [make("dt", {}, k), make("dd", {}, v)]));
}

function render(state, run) {
  const s = state.settings;
  text(el("title"), s.name + (run ? " (" + run + ")" : ""));
  document.title = "mfpt watch: " + s.name;
  text(el("settings"), [s.paradigm, s.method, s.strategy, "privacy: " + s.privacy,
                        "attack: " + (s.attack || "none"), "seed " + s.seed, s.model].join(" · "));
  const status = el("status");
  text(status, state.status);
  status.className = "badge " + state.status;
  const r = state.rounds;
  text(el("round-counter"), "round " + r.done + " / " + r.total);
  el("round-progress").max = Math.max(r.total, 1);
  el("round-progress").value = r.done;
  const timing = ["elapsed " + duration(r.seconds), "per round " + duration(r.seconds_per_round)];
  if (r.seconds_left !== null) timing.push("left about " + duration(r.seconds_left));
  if (state.status === "running" && r.stage && r.in_progress)
    timing.push("now: round " + r.in_progress + ", " + r.stage);
  if (state.seconds_since_update !== null) timing.push("last write " + duration(state.seconds_since_update) + " ago");
  text(el("timing"), timing.join(" · "));
  el("error").hidden = !state.error;
  text(el("error"), state.error || "");

  const series = seriesOf(state);
  // The headline: accuracy, or chrF++ for a generation task.
  text(el("accuracy-title"), (s.metric === "chrf" ? "chrF++" : "accuracy") + " on " + s.eval_split + " by round");
  text(el("loss-title"), "loss on " + s.eval_split + " by round");
  drawChart(el("accuracy-chart"), series, "score", r.total);
  drawChart(el("loss-chart"), series.filter(x => x.width < 3), "loss", r.total);
  drawLegend(series);

  const nodes = state.nodes;
  text(el("nodes-title"), "Clients in round " + nodes.round + (nodes.stage ? " (" + nodes.stage + ")" : ""));
  el("nodes").replaceChildren(...nodes.clients.map(c => row(
    [c.client, c.status + (c.stage && c.stage !== "train" ? " (" + c.stage + ")" : ""),
     typeof c.loss === "number" ? c.loss.toFixed(3) : "", c.steps === undefined || c.steps === null ? "" : String(c.steps),
     typeof c.update_norm === "number" ? c.update_norm.toPrecision(3) : "", c.reason || ""], [null, c.status])));

  const comm = state.communication;
  definitions(el("communication"), [
    ["sent so far", bytes(comm.bytes_total) + " (up " + bytes(comm.bytes_up) + ", down " + bytes(comm.bytes_down) + ")"],
    ["full fine-tuning", comm.full_finetuning_bytes === null ? "-" : bytes(comm.full_finetuning_bytes) +
      " for the same messages (" + (comm.full_finetuning_bytes / Math.max(comm.bytes_total, 1)).toFixed(0) + "x)"],
    ["trainable", comm.trainable_params.toLocaleString("en") + " of " + comm.total_params.toLocaleString("en") +
      " parameters (" + (100 * comm.trainable_params / Math.max(comm.total_params, 1)).toFixed(2) + "%)"],
  ]);
  const p = state.privacy;
  definitions(el("privacy"), p.mode === "none" ? [["DP", "none"]] : [
    ["DP", p.mode + "-level"],
    ["epsilon spent", p.epsilon === null ? "-" : Number(p.epsilon).toFixed(3) + (p.delta ? " (delta " + p.delta + ")" : "")],
    ["target", p.target_epsilon === null ? "none" : String(p.target_epsilon)],
  ]);
  text(el("selection"), state.selection ? state.selection.reason : "no evaluation yet");

  el("final-section").hidden = !state.final;
  if (state.final) {
    const f = state.final;
    definitions(el("final"), [["mean", pct(f.average)], ["low-resource mean", pct(f.low_resource_average)],
      ...Object.entries(f.per_language).map(([lang, acc]) => [lang, pct(acc)]),
      ...Object.entries(f.heldout).map(([lang, acc]) => [lang + " (held out)", pct(acc)])]);
  }
  const prefix = "/files/" + (run ? run.split("/").map(encodeURIComponent).join("/") + "/" : "");
  el("files").replaceChildren(...state.files.map(name => {
    const li = make("li");
    li.appendChild(make("a", { href: prefix + encodeURIComponent(name) }, name));
    return li;
  }));
}

async function poll(run) {
  try {
    const response = await fetch("/api/state?run=" + encodeURIComponent(run), { cache: "no-store" });
    const body = await response.json();
    if (response.ok) render(body, run);
    else { el("error").hidden = false; text(el("error"), body.error || response.statusText); }
  } catch (err) {
    el("error").hidden = false;
    text(el("error"), "mfpt watch is not answering (" + err + "); retrying");
  }
  window.setTimeout(() => poll(run), POLL_MS);
}

async function start() {
  const response = await fetch("/api/runs", { cache: "no-store" });
  const listing = await response.json();
  const wanted = params.get("run");
  if (wanted !== null || (listing.runs.length === 1 && listing.runs[0] === "")) {
    el("runs").hidden = true;
    el("run").hidden = false;
    poll(wanted || "");
    return;
  }
  el("runs").hidden = false;
  text(el("root"), listing.root);
  el("run-list").replaceChildren(...listing.runs.map(name => {
    const tr = make("tr"), td = make("td");
    td.appendChild(make("a", { href: "?run=" + encodeURIComponent(name) }, name));
    tr.appendChild(td);
    return tr;
  }));
  if (!listing.runs.length) {  // a run that has not written its config yet: look again
    text(el("root"), listing.root + " (no run yet)");
    window.setTimeout(start, POLL_MS);
  }
}

start();
