// The modelgate live dashboard: polls dashboard/data every second and draws it.
//
// API keys: the key comes from the #key=KEY fragment (removed from the address bar at once;
// a fragment is never sent to the server) or from the form shown after a 401. It is kept in
// sessionStorage (this tab only) and sent as "Authorization: Bearer" on every data call.
// Every string from the API reaches the page through textContent or an attribute, never as
// markup (no innerHTML anywhere), so a model, feature or reason cannot inject anything.
(function () {
  "use strict";

  const POLL_MS = 1000;
  const DRIFT_POLL_MS = 5000;
  const VERSIONS_POLL_MS = 2000;
  const JOBS_POLL_MS = 1000;
  const JOBS_SHOWN = 10;
  const QUALITY_POLL_MS = 5000;
  const SHOWN_ENTRIES = 4; // params and metrics per version in the table
  const KEY_STORE = "modelgate.dashboard.key";
  const DECISIONS_SHOWN = 12;
  const C = {
    blue: "#2563eb", slate: "#94a3b8", red: "#dc2626", amber: "#d97706", cyan: "#0891b2",
    violet: "#7c3aed", pink: "#db2777", orange: "#ea580c", teal: "#0d9488", green: "#059669",
    grey: "#a1a1aa", lightgreen: "#6ee7b7", queue: "#f59e0b", compute: "#3b82f6",
  };

  const state = {
    data: null, model: null, feature: null, drift: null, driftAt: 0, driftModel: null,
    versions: null, versionsAt: 0, versionsModel: null, jobsAt: 0,
    quality: null, qualityAt: 0, qualityModel: null,
    memoryKey: null, waitingForKey: false, timer: null,
  };
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ the key

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORE);
    } catch (e) {
      return state.memoryKey; // storage disabled: keep it for this page only
    }
  }

  function storeKey(key) {
    try {
      if (key) window.sessionStorage.setItem(KEY_STORE, key);
      else window.sessionStorage.removeItem(KEY_STORE);
    } catch (e) {
      state.memoryKey = key || null;
    }
    $("forget").hidden = !key;
  }

  function takeKeyFromFragment() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    if (!params.has("key")) return;
    const key = params.get("key");
    if (key) storeKey(key);
    params.delete("key");
    const rest = params.toString();
    window.history.replaceState(null, "",
      window.location.pathname + window.location.search + (rest ? "#" + rest : ""));
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = storedKey();
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch(path, { headers: headers, cache: "no-store", credentials: "omit" });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    return { status: response.status, ok: response.ok, body: body };
  }

  function errorText(result) {
    return result.body && typeof result.body.error === "string" ? result.body.error : "HTTP " + result.status;
  }

  function askForKey(message) {
    state.waitingForKey = true;
    $("keyform").hidden = false;
    $("main").hidden = true;
    $("keyerror").textContent = message;
    setStatus("API key required", "warn");
    $("key").focus();
  }

  // ------------------------------------------------------------------ formatting

  const isNum = (v) => typeof v === "number" && isFinite(v);

  function fmtRate(v) {
    if (!isNum(v)) return "–";
    if (v === 0) return "0";
    return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1);
  }

  function fmtMs(v) {
    if (!isNum(v)) return "–";
    if (v < 1) return v.toFixed(2);
    return v < 10 ? v.toFixed(1) : v.toFixed(0);
  }

  function fmtInt(v) {
    return isNum(v) ? String(Math.round(v)) : "–";
  }

  function fmtCost(v) {
    return isNum(v) ? v.toFixed(2) : "–";
  }

  function fmtValue(v) {
    if (!isNum(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(Number(v.toPrecision(3)));
  }

  function setNum(id, value, format) {
    const node = $(id);
    node.textContent = format(value);
    node.dataset.value = isNum(value) ? String(value) : "";
  }

  function setStatus(text, kind) {
    const node = $("status");
    node.textContent = text;
    node.className = "status " + (kind || "");
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function legend(id, items) {
    const node = $(id);
    clear(node);
    for (const item of items) {
      const entry = el("span", "legend-item");
      const swatch = el("span", "swatch" + (item.dash ? " dash" : ""));
      if (item.dash) swatch.style.borderTopColor = item.color;
      else swatch.style.background = item.color;
      entry.appendChild(swatch);
      entry.appendChild(document.createTextNode(item.name));
      node.appendChild(entry);
    }
  }

  // ------------------------------------------------------------------ polling

  async function poll() {
    state.timer = null;
    if (state.waitingForKey) return;
    try {
      const result = await api("dashboard/data");
      if (result.status === 401) {
        const had = storedKey();
        storeKey(null);
        askForKey(had ? "That key was refused: " + errorText(result) : "");
        return;
      }
      if (!result.ok || !result.body) {
        setStatus(errorText(result) + " — retrying", "bad");
      } else {
        state.data = result.body;
        $("keyform").hidden = true;
        $("main").hidden = false;
        render();
        const when = window.MGCharts.clock(result.body.time);
        setStatus("live · updated " + when, "ok");
        refreshDrift(false);
        refreshVersions(false);
        refreshJobs();
        refreshQuality(false);
      }
    } catch (e) {
      setStatus("gateway unreachable — retrying", "bad");
    }
    schedule();
  }

  function schedule() {
    if (state.timer === null && !state.waitingForKey) {
      state.timer = window.setTimeout(poll, POLL_MS);
    }
  }

  // ------------------------------------------------------------------ rendering

  function currentModel() {
    const models = state.data.models;
    return models.find((m) => m.name === state.model) || models[0] || null;
  }

  function syncModelPicker() {
    const select = $("model");
    const names = state.data.models.map((m) => m.name);
    const have = Array.from(select.options).map((o) => o.value);
    if (names.join("\u0000") !== have.join("\u0000")) {
      clear(select);
      for (const name of names) select.appendChild(new Option(name, name));
    }
    if (!names.includes(state.model)) {
      const wanted = new URLSearchParams(window.location.search).get("model");
      state.model = names.includes(wanted) ? wanted : names[0] || null;
    }
    if (state.model !== null) select.value = state.model;
  }

  function markersOf(model) {
    return model.decisions.map((d) => {
      const flags = (d.panic ? " [panic]" : "") + (d.capped ? " [capped by budget]" : "");
      return {
        time: Math.floor(d.time),
        color: d.desired > d.current ? C.orange : d.desired < d.current ? C.violet : C.red,
        title: window.MGCharts.clock(d.time) + "  " + d.current + " → " + d.desired +
          " workers" + flags + ": " + d.reason,
      };
    });
  }

  function render() {
    const data = state.data;
    syncModelPicker();
    const model = currentModel();
    document.body.dataset.snapshot = String(data.time);
    if (model === null) {
      setStatus("this gateway serves no model", "warn");
      return;
    }
    document.body.dataset.model = model.name;
    renderTiles(data, model);
    renderCharts(data, model);
    renderDecisions(model);
  }

  function renderTiles(data, model) {
    const now = model.now;
    const auto = data.autoscaler;
    setNum("fig-throughput", now.completed_per_s, fmtRate);
    $("fig-throughput-detail").textContent = "in " + fmtRate(now.arrivals_per_s) + "/s · errors " +
      fmtRate(now.errors_per_s) + "/s · refused " + fmtRate(now.rejected_per_s) + "/s";
    setNum("fig-p95", now.p95_ms, fmtMs);
    $("fig-p95-detail").textContent = "p50 " + fmtMs(now.p50_ms) + " · p99 " + fmtMs(now.p99_ms) +
      " ms · queue " + fmtMs(now.queue_ms) + " + compute " + fmtMs(now.compute_ms) + " ms";
    setNum("fig-backlog", now.backlog, fmtInt);
    const backlog = model.series.backlog.filter(isNum);
    $("fig-backlog-detail").textContent = "waiting or in work · peak " +
      (backlog.length ? fmtInt(Math.max(...backlog)) : "–") + " in 5 min";
    setNum("fig-live", now.live, fmtInt);
    setNum("fig-desired", now.desired, fmtInt);
    $("fig-workers-detail").textContent = (now.starting ? now.starting + " starting · " : "") +
      (auto.running ? "autoscaler running" : "no autoscaler running");
    setNum("fig-cost", auto.cost_per_hour, fmtCost);
    const budget = auto.budget_per_hour;
    const share = isNum(auto.cost_per_hour) && isNum(budget) && budget > 0 ? auto.cost_per_hour / budget : null;
    const meter = $("fig-cost-meter");
    meter.style.width = (share === null ? 0 : Math.min(1, share) * 100) + "%";
    meter.className = "meter-fill" + (share !== null && share > 0.9 ? " hot" : "");
    let detail = isNum(budget) ? "budget " + fmtCost(budget) + "/h" +
      (share !== null ? " · " + Math.round(share * 100) + "% used" : "") : "no budget set";
    if (isNum(now.cost_per_hour)) detail += " · " + model.name + " " + fmtCost(now.cost_per_hour) + "/h";
    if (!isNum(auto.cost_per_hour)) detail = auto.running ? detail : "no autoscaler events";
    $("fig-cost-detail").textContent = detail;
  }

  // The charts start where the system was first seen (a gauge sample, an autoscaler event or
  // a request), at least a minute back: a gateway started a minute ago gets a minute-wide
  // timeline, not five minutes of nothing.
  function firstSeen(data, model) {
    const n = model.series.live.length;
    let first = n;
    const seen = (v) => v !== null && v !== undefined;
    const busy = (v) => isNum(v) && v > 0;
    for (const [values, test] of [[model.series.live, seen], [model.series.desired, seen],
      [model.series.completed, busy], [model.series.arrivals, busy], [data.autoscaler.cost, seen]]) {
      const i = values.findIndex(test);
      if (i >= 0) first = Math.min(first, i);
    }
    const span = [60, 120, 180, 240].find((c) => c >= n - first) || n;
    return Math.max(0, n - span);
  }

  function renderCharts(data, whole) {
    const from = firstSeen(data, whole);
    const s = {};
    for (const [name, values] of Object.entries(whole.series)) s[name] = values.slice(from);
    const model = Object.assign({}, whole, { series: s });
    const markers = markersOf(model);
    const charts = window.MGCharts;
    const start = data.start + from;
    const totalCost = data.autoscaler.cost.slice(from);

    const rate = [
      { name: "completed", color: C.blue, values: s.completed, width: 2.2 },
      { name: "arrivals", color: C.slate, values: s.arrivals, dash: true },
      { name: "errors", color: C.red, values: s.errors },
      { name: "refused (429)", color: C.amber, values: s.rejected },
    ];
    legend("legend-rate", rate);
    charts.lineChart($("chart-rate"), { start: start, series: rate, markers: markers, unit: "req/s", format: fmtRate });

    const latency = [
      { name: "p50", color: C.cyan, values: s.p50_ms },
      { name: "p95", color: C.violet, values: s.p95_ms, width: 2.2 },
      { name: "p99", color: C.pink, values: s.p99_ms },
    ];
    legend("legend-latency", latency);
    charts.lineChart($("chart-latency"), { start: start, series: latency, unit: "ms", format: fmtMs, empty: "no requests answered yet" });

    const split = [
      { name: "compute (per ORT run)", color: C.compute, values: s.compute_ms, stackOpacity: 0.35 },
      { name: "queue wait", color: C.queue, values: s.queue_ms, stackOpacity: 0.35 },
    ];
    legend("legend-split", split);
    charts.lineChart($("chart-split"), { start: start, series: split, stacked: true, unit: "ms", format: fmtMs, empty: "no requests answered yet" });

    const backlog = [{ name: "backlog", color: C.teal, values: s.backlog, area: true, width: 2 }];
    legend("legend-backlog", backlog);
    charts.lineChart($("chart-backlog"), { start: start, series: backlog, markers: markers, unit: "requests", format: fmtInt, integer: true });

    const workers = [
      { name: "live", color: C.blue, values: s.live, step: true, width: 2.4 },
      { name: "desired", color: C.orange, values: s.desired, step: true, dash: true, width: 2 },
      { name: "starting", color: C.grey, values: s.starting, step: true },
    ];
    legend("legend-workers", workers);
    charts.lineChart($("chart-workers"), { start: start, series: workers, markers: markers, unit: "workers", format: fmtInt, integer: true });

    const budget = data.autoscaler.budget_per_hour;
    const cost = [
      { name: "all models", color: C.green, values: totalCost, step: true, area: true, width: 2.2 },
      { name: model.name, color: C.teal, values: s.cost_per_hour, step: true, dash: true },
    ];
    legend("legend-cost", cost.concat(isNum(budget) ? [{ name: "budget", color: C.red, dash: true }] : []));
    charts.lineChart($("chart-cost"), {
      start: start, series: cost, unit: "per hour", format: fmtCost,
      hlines: isNum(budget) ? [{ value: budget, label: "budget " + fmtCost(budget) + "/h", color: C.red }] : [],
      empty: "no autoscaler events (cost comes from its decisions)",
    });
  }

  function renderDecisions(model) {
    const rows = model.decisions.slice(-DECISIONS_SHOWN).reverse();
    $("decisions-empty").hidden = rows.length > 0;
    const table = $("decisions-table");
    table.hidden = rows.length === 0;
    const body = table.tBodies[0];
    clear(body);
    for (const d of rows) {
      const tr = document.createElement("tr");
      tr.appendChild(el("td", "nowrap", window.MGCharts.clock(d.time)));
      const direction = d.desired > d.current ? "up" : d.desired < d.current ? "down" : "held";
      tr.appendChild(el("td", "nowrap " + direction, d.current + " → " + d.desired));
      const reason = el("td", "reason", d.reason);
      if (d.panic) reason.prepend(el("span", "badge bad", "panic"));
      if (d.capped) reason.prepend(el("span", "badge warn", "capped"));
      tr.appendChild(reason);
      body.appendChild(tr);
    }
  }

  // ------------------------------------------------------------------ drift

  function driftMessage(text) {
    $("drift-status").textContent = text;
    $("drift-body").hidden = true;
    $("feature-picker").hidden = true;
  }

  async function refreshDrift(force) {
    const data = state.data;
    if (!data || state.model === null) return;
    if (!data.drift) {
      driftMessage("drift: not available (this gateway has no drift endpoint)");
      return;
    }
    const model = state.model;
    if (!force && state.driftModel === model && Date.now() - state.driftAt < DRIFT_POLL_MS) return;
    state.driftAt = Date.now();
    state.driftModel = model;
    let result;
    try {
      result = await api("v2/models/" + encodeURIComponent(model) + "/drift");
    } catch (e) {
      driftMessage("drift: gateway unreachable");
      return;
    }
    if (model !== state.model) return;
    if (result.status === 404) {
      driftMessage("drift: not available for " + model);
    } else if (!result.ok || !result.body) {
      driftMessage("drift: unavailable (" + errorText(result) + ")");
    } else {
      state.drift = result.body;
      renderDrift();
    }
  }

  // Bin labels: classes for a categorical feature; else from the reference's bin edges, which
  // are either the inner edges (under- and overflow bins around them) or all of them.
  function binLabels(reference, count) {
    const edges = reference.edges;
    const short = [];
    const full = [];
    for (let i = 0; i < count; i++) {
      if (Array.isArray(reference.classes) && reference.classes.length === count) {
        full.push("class " + String(reference.classes[i]));
        short.push(String(reference.classes[i]));
      } else if (Array.isArray(edges) && edges.length === count + 1) {
        const lo = edges[i];
        const hi = edges[i + 1];
        full.push(fmtValue(lo) + " to " + fmtValue(hi));
        short.push(isNum(lo) && isNum(hi) ? fmtValue((lo + hi) / 2) : (isNum(lo) ? "> " + fmtValue(lo) : "< " + fmtValue(hi)));
      } else if (Array.isArray(edges) && edges.length === count - 1) {
        // Under- and overflow bins around the edges.
        const lo = i === 0 ? null : edges[i - 1];
        const hi = i === count - 1 ? null : edges[i];
        full.push((lo === null ? "below " + fmtValue(hi) : hi === null ? "above " + fmtValue(lo) : fmtValue(lo) + " to " + fmtValue(hi)));
        short.push(lo === null ? "< " + fmtValue(hi) : hi === null ? "> " + fmtValue(lo) : fmtValue((lo + hi) / 2));
      } else {
        full.push("bin " + (i + 1));
        short.push(String(i + 1));
      }
    }
    return { short: short, full: full };
  }

  function renderDrift() {
    const d = state.drift;
    const features = Array.isArray(d.features) ? d.features : [];
    if (!d.profile) {
      const message = typeof d.message === "string" ? d.message : "";
      driftMessage(message.startsWith("no reference profile") ? message
        : "no reference profile" + (message ? " — " + message : ""));
      return;
    }
    const alerting = features.filter((f) => f.alert);
    $("drift-status").textContent = (d.sampled_rows || 0) + " rows sampled · " + features.length +
      " features · " + (alerting.length ? alerting.length + " drifting" : "no drift alert") +
      (d.version ? " · version " + d.version : "");
    $("drift-status").className = alerting.length ? "bad-text" : "muted";
    if (!features.length) {
      $("drift-body").hidden = true;
      return;
    }
    $("drift-body").hidden = false;
    $("feature-picker").hidden = false;
    const names = features.map((f) => String(f.name));
    if (!names.includes(state.feature)) state.feature = (alerting[0] || features[0]).name;
    const select = $("feature");
    if (Array.from(select.options).map((o) => o.value).join("\u0000") !== names.join("\u0000")) {
      clear(select);
      for (const name of names) select.appendChild(new Option(name, name));
    }
    select.value = state.feature;

    const body = $("drift-table").tBodies[0];
    clear(body);
    for (const f of features) {
      const tr = document.createElement("tr");
      tr.className = "clickable" + (f.name === state.feature ? " selected" : "");
      tr.addEventListener("click", () => {
        state.feature = f.name;
        renderDrift();
      });
      const stats = f.statistics || {};
      const limits = f.thresholds || {};
      tr.appendChild(el("td", "mono", f.name));
      tr.appendChild(el("td", "", f.kind));
      tr.appendChild(el("td", "r", fmtValue(f.score)));
      tr.appendChild(el("td", "r", fmtValue(stats.cusum) + " / " + fmtValue(limits.cusum)));
      tr.appendChild(el("td", "r", fmtValue(stats.chi2) + " / " + fmtValue(limits.chi2)));
      tr.appendChild(el("td", "r", fmtInt(f.window_rows) + " / " + fmtInt(f.window_target)));
      const cell = el("td", "");
      cell.appendChild(el("span", "badge " + (f.alert ? "bad" : "ok"), f.alert ? "drift" : "ok"));
      tr.appendChild(cell);
      body.appendChild(tr);
    }

    const feature = features.find((f) => f.name === state.feature);
    const ref = feature.reference || {};
    const cur = feature.current || {};
    const refFractions = Array.isArray(ref.fractions) ? ref.fractions : [];
    const curFractions = Array.isArray(cur.fractions) ? cur.fractions : [];
    const labels = binLabels(ref, Math.max(refFractions.length, curFractions.length));
    const pair = {
      labels: labels.short, titles: labels.full,
      a: { name: "reference", color: C.slate, values: refFractions },
      b: { name: "current", color: feature.alert ? C.red : C.blue, values: curFractions },
    };
    legend("legend-drift", [pair.a, pair.b]);
    window.MGCharts.pairedBars($("chart-drift"), pair);
    const parts = [String(feature.name)];
    if (isNum(ref.mean)) parts.push("reference mean " + fmtValue(ref.mean) + " ± " + fmtValue(ref.std));
    if (isNum(cur.mean)) parts.push("current mean " + fmtValue(cur.mean) + " ± " + fmtValue(cur.std));
    if (!curFractions.length) parts.push("no rows in the current window yet");
    parts.push("score " + fmtValue(feature.score));
    if (feature.alert) {
      parts.push("drifting" + (isNum(feature.alert_since) ? " since " + window.MGCharts.clock(feature.alert_since) : ""));
    }
    $("drift-feature-detail").textContent = parts.join(" · ");
  }

  // ------------------------------------------------------------------ versions

  async function refreshVersions(force) {
    if (!state.data || state.model === null) return;
    const model = state.model;
    if (!force && state.versionsModel === model && Date.now() - state.versionsAt < VERSIONS_POLL_MS) return;
    state.versionsAt = Date.now();
    state.versionsModel = model;
    let result;
    try {
      result = await api("v2/models/" + encodeURIComponent(model) + "/versions");
    } catch (e) {
      $("versions-status").textContent = "versions: gateway unreachable";
      return;
    }
    if (model !== state.model) return;
    if (!result.ok || !result.body) {
      $("versions-status").textContent = "versions: unavailable (" + errorText(result) + ")";
      $("versions-table").hidden = true;
      return;
    }
    state.versions = result.body;
    renderVersions();
  }

  function entries(mapping, format) {
    const keys = Object.keys(mapping || {});
    const shown = keys.slice(0, SHOWN_ENTRIES).map((k) => k + "=" + format(mapping[k]));
    return shown.join(", ") + (keys.length > SHOWN_ENTRIES ? ", +" + (keys.length - SHOWN_ENTRIES) : "");
  }

  function agreementCell(a) {
    // Top-1 match rate for classifiers, else the mean |difference|, over shadowed calls.
    if (!a) return el("td", "r muted", "n/a");
    const text = a.top1 !== null && a.top1 !== undefined ? (100 * a.top1).toFixed(1) + "%"
      : "Δ " + fmtValue(a.mean_abs_delta);
    const cell = el("td", "r", text);
    cell.title = fmtInt(a.n) + " shadowed rows; mean |Δ| " + fmtValue(a.mean_abs_delta) +
      ", p99 |Δ| " + fmtValue(a.p99_abs_delta);
    return cell;
  }

  function safeLink(url) {
    // Only http(s) links: a run URL comes from files beside the model.
    return typeof url === "string" && /^https?:\/\//.test(url) ? url : null;
  }

  function renderVersions() {
    const v = state.versions;
    const source = v.source ? "source " + v.source : "";
    const registry = v.registry;
    $("versions-source").textContent = source + (registry && registry.registry_version
      ? " → registry version " + registry.registry_version : "");
    const status = $("versions-status");
    if (registry && registry.error) {
      status.textContent = "registry: " + registry.error + " (what serves stays)";
      status.className = "bad-text";
    } else {
      status.textContent = v.versions.length + " version(s) · live figures since each loaded · " + v.agreement;
      status.className = "muted small";
    }
    const body = $("versions-table").tBodies[0];
    clear(body);
    for (const row of v.versions) {
      const tr = el("tr");
      tr.dataset.version = row.version;
      const version = el("td", "", row.version);
      if (row.default) version.appendChild(el("span", "badge ok", "default"));
      tr.appendChild(version);
      const stateCell = el("td", "", row.state);
      const notes = [row.reason].concat(row.warnings || []).filter(Boolean);
      if (notes.length) stateCell.title = notes.join("; ");
      if (row.warnings && row.warnings.length) stateCell.appendChild(el("span", "badge warn", "signature"));
      tr.appendChild(stateCell);
      const lineage = row.lineage || {};
      const run = el("td", "mono");
      const runId = lineage.run_id ? String(lineage.run_id).slice(0, 12) : "–";
      const link = safeLink(row.run_url);
      if (link) {
        const a = el("a", "", runId);
        a.href = link;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        run.appendChild(a);
      } else {
        run.textContent = runId;
      }
      if (lineage.registry && lineage.registry.version) {
        run.appendChild(el("span", "muted small", " reg v" + lineage.registry.version));
      }
      tr.appendChild(run);
      tr.appendChild(el("td", "small", entries(lineage.params, String) || "–"));
      tr.appendChild(el("td", "small", entries(lineage.metrics, fmtValue) || "–"));
      const live = row.live;
      tr.appendChild(el("td", "r", live ? fmtInt(live.calls) : "–"));
      tr.appendChild(el("td", "r", live && live.error_rate !== null ? (100 * live.error_rate).toFixed(2) + "%" : "–"));
      tr.appendChild(el("td", "r", live ? fmtMs(live.p50_ms) : "–"));
      tr.appendChild(el("td", "r", live ? fmtMs(live.p99_ms) : "–"));
      tr.appendChild(agreementCell(live ? live.agreement : null));
      const drift = el("td");
      const d = row.drift;
      if (d) {
        const label = d.state === "alert" ? "drift" : d.state === "ok" ? "ok" : "no profile";
        const badge = el("span", "badge " + (d.state === "alert" ? "bad" : d.state === "ok" ? "ok" : ""), label);
        if (d.features && d.features.length) badge.title = d.features.join(", ");
        drift.appendChild(badge);
      } else {
        drift.textContent = "–";
      }
      tr.appendChild(drift);
      body.appendChild(tr);
    }
    $("versions-table").hidden = v.versions.length === 0;
  }

  // ------------------------------------------------------------------ batch jobs

  async function refreshJobs() {
    if (Date.now() - state.jobsAt < JOBS_POLL_MS) return;
    state.jobsAt = Date.now();
    let result;
    try {
      result = await api("v2/jobs");
    } catch (e) {
      $("jobs-status").textContent = "jobs: gateway unreachable";
      return;
    }
    if (!result.ok || !result.body || !Array.isArray(result.body.jobs)) {
      $("jobs-status").textContent = "jobs: unavailable (" + errorText(result) + ")";
      $("jobs-table").hidden = true;
      return;
    }
    renderJobs(result.body.jobs.slice(0, JOBS_SHOWN));
  }

  function renderJobs(jobs) {
    const active = jobs.filter((j) => j.state === "queued" || j.state === "running");
    $("jobs-status").textContent = jobs.length
      ? active.length + " active · the latest " + jobs.length + " shown"
      : "no batch job yet (POST /v2/jobs, or modelgate batch submit)";
    const body = $("jobs-table").tBodies[0];
    clear(body);
    for (const job of jobs) {
      const tr = el("tr");
      tr.dataset.job = job.id;
      const id = el("td", "mono", String(job.id).slice(0, 8));
      id.title = String(job.id);
      tr.appendChild(id);
      tr.appendChild(el("td", "", job.model + ":" + job.version));
      const stateCell = el("td");
      const kind = job.state === "succeeded" ? "ok" : job.state === "failed" ? "bad"
        : job.state === "completed_with_failures" ? "warn" : "";
      stateCell.appendChild(el("span", "badge " + kind, job.state));
      if (job.error) stateCell.title = String(job.error);
      tr.appendChild(stateCell);
      const rows = job.rows || {};
      const finished = (rows.done || 0) + (rows.failed || 0);
      const share = rows.total ? finished / rows.total : 0;
      const progress = el("td");
      const meter = el("div", "meter");
      const fill = el("div", "meter-fill" + (rows.failed ? " hot" : ""));
      fill.style.width = (100 * Math.min(1, share)).toFixed(1) + "%";
      meter.appendChild(fill);
      progress.appendChild(meter);
      progress.appendChild(el("span", "muted small", (100 * share).toFixed(1) + "%"));
      tr.appendChild(progress);
      tr.appendChild(el("td", "r", fmtInt(rows.done)));
      tr.appendChild(el("td", "r", fmtInt(rows.failed)));
      tr.appendChild(el("td", "r", rows.total === null || rows.total === undefined ? "–" : fmtInt(rows.total)));
      tr.appendChild(el("td", "r", isNum(job.rows_per_s) && job.rows_per_s > 0 ? fmtRate(job.rows_per_s) : "–"));
      tr.appendChild(el("td", "r", isNum(job.eta_s) ? Math.round(job.eta_s) + " s" : "–"));
      body.appendChild(tr);
    }
    $("jobs-table").hidden = jobs.length === 0;
  }

  // ------------------------------------------------------------------ quality

  function qualityMessage(text, className) {
    $("quality-status").textContent = text;
    $("quality-status").className = className || "muted";
    $("quality-table").hidden = true;
  }

  async function refreshQuality(force) {
    if (!state.data || state.model === null) return;
    const model = state.model;
    if (!force && state.qualityModel === model && Date.now() - state.qualityAt < QUALITY_POLL_MS) return;
    state.qualityAt = Date.now();
    state.qualityModel = model;
    let result;
    try {
      result = await api("v2/models/" + encodeURIComponent(model) + "/quality");
    } catch (e) {
      qualityMessage("quality: gateway unreachable");
      return;
    }
    if (model !== state.model) return;
    if (!result.ok || !result.body) {
      qualityMessage("quality: unavailable (" + errorText(result) + ")");
      return;
    }
    state.quality = result.body;
    renderQuality();
  }

  function fmtShare(v) {
    return isNum(v) ? (100 * v).toFixed(1) + "%" : "–";
  }

  function renderQuality() {
    const q = state.quality;
    const versions = Array.isArray(q.versions) ? q.versions : [];
    const labelled = versions.filter((v) => v.labelled > 0);
    const stored = q.stored || {};
    const labels = q.labels || {};
    const summary = fmtInt(stored.rows) + " answer rows kept of " + fmtInt(stored.max_rows) +
      " · labels " + fmtInt(labels.matched) + " matched, " +
      fmtInt((labels.unknown || 0) + (labels.expired || 0)) + " unknown or expired";
    if (!labelled.length) {
      qualityMessage("no labelled rows yet · " + summary);
      return;
    }
    const alerting = labelled.filter((v) => v.alert);
    $("quality-status").textContent = (alerting.length ? alerting.length + " version(s) below their reference · " : "") + summary;
    $("quality-status").className = alerting.length ? "bad-text" : "muted small";
    const body = $("quality-table").tBodies[0];
    clear(body);
    for (const v of labelled) {
      const tr = el("tr");
      tr.dataset.version = v.version;
      tr.appendChild(el("td", "", v.version));
      tr.appendChild(el("td", "r", fmtInt(v.labelled)));
      const since = v.since_load || {};
      const window_ = v.window || {};
      const accuracy = el("td", "r", fmtShare(since.accuracy));
      accuracy.dataset.value = isNum(since.accuracy) ? String(since.accuracy) : "";
      tr.appendChild(accuracy);
      const windowCell = el("td", "r", fmtShare(window_.accuracy));
      windowCell.title = fmtInt(window_.rows) + " last labelled rows";
      tr.appendChild(windowCell);
      tr.appendChild(el("td", "r", isNum(since.log_loss) ? since.log_loss.toFixed(3) : isNum(since.mae) ? "MAE " + fmtValue(since.mae) : "–"));
      tr.appendChild(el("td", "r", isNum(since.ece) ? since.ece.toFixed(3) : isNum(since.rmse) ? "RMSE " + fmtValue(since.rmse) : "–"));
      tr.appendChild(el("td", "r", isNum(v.label_delay_p50_s) ? fmtValue(v.label_delay_p50_s) + " s" : "–"));
      tr.appendChild(el("td", "r", fmtInt(v.unmatched)));
      const alarm = el("td");
      const test = v.test;
      const badge = el("span", "badge " + (v.alert ? "bad" : test ? "ok" : ""),
        v.alert ? "below reference" : test ? "ok" : "baseline…");
      if (test) {
        badge.title = "CUSUM " + fmtValue(test.value) + " of " + fmtValue(test.threshold) +
          " against accuracy " + fmtShare(test.reference_accuracy) + " (" + test.reference + ")";
      }
      alarm.appendChild(badge);
      tr.appendChild(alarm);
      body.appendChild(tr);
    }
    $("quality-table").hidden = false;
  }

  // ------------------------------------------------------------------ wiring

  function start() {
    takeKeyFromFragment();
    $("forget").hidden = !storedKey();
    $("model").addEventListener("change", (event) => {
      state.model = event.target.value;
      state.feature = null;
      const params = new URLSearchParams(window.location.search);
      params.set("model", state.model);
      window.history.replaceState(null, "", window.location.pathname + "?" + params.toString());
      if (state.data) render();
      refreshDrift(true);
      refreshVersions(true);
      refreshQuality(true);
    });
    $("feature").addEventListener("change", (event) => {
      state.feature = event.target.value;
      if (state.drift) renderDrift();
    });
    $("keyform").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (!key) return;
      storeKey(key);
      $("key").value = "";
      $("keyerror").textContent = "";
      $("keyform").hidden = true;
      state.waitingForKey = false;
      setStatus("connecting…", "");
      poll();
    });
    $("forget").addEventListener("click", () => {
      storeKey(null);
      window.location.reload();
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(() => {
        if (state.data) render();
        if (state.drift && state.data && state.data.drift) renderDrift();
      }, 150);
    });
    poll();
  }

  start();
})();
