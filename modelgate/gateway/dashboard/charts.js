// Small SVG charts for the modelgate dashboard: time-series lines and paired bars.
// No dependencies. Every label is inserted with textContent (never as markup), so strings
// from the API cannot become HTML or SVG.
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";
  const MARGIN = { top: 12, right: 14, bottom: 26, left: 52 };

  function svgEl(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function svgText(parent, x, y, text, attrs) {
    const node = svgEl("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    node.textContent = text;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // About `count` round tick values covering [lo, hi].
  function niceTicks(lo, hi, count, integer) {
    if (!(hi > lo)) hi = lo + 1;
    const raw = Math.max((hi - lo) / Math.max(1, count), integer ? 1 : 0);
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude)
      .filter((s) => !integer || Number.isInteger(s)).find((s) => s >= raw) || raw;
    // From the first tick at or below lo to the first at or above hi: data never overflows.
    const ticks = [];
    const first = Math.floor(lo / step + 1e-9);
    const last = Math.ceil(hi / step - 1e-9);
    for (let k = first; k <= last; k++) ticks.push(k * step);
    return { ticks: ticks, step: step };
  }

  function formatTick(value, step) {
    if (Math.abs(value) >= 10000) return (value / 1000).toFixed(0) + "k";
    if (Math.abs(value) >= 1000) return (value / 1000).toFixed(step >= 1000 ? 0 : 1) + "k";
    const digits = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)) + 1);
    return String(parseFloat(value.toFixed(digits)));
  }

  function clock(epochS) {
    const d = new Date(epochS * 1000);
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // Path commands for one series; a null breaks the line. Isolated points are returned apart.
  function linePath(values, x, y, step) {
    let d = "";
    const lonely = [];
    let open = false;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined) {
        open = false;
        continue;
      }
      const prevNull = i === 0 || values[i - 1] === null || values[i - 1] === undefined;
      const nextNull = i === values.length - 1 || values[i + 1] === null ||
        values[i + 1] === undefined;
      if (prevNull && nextNull) lonely.push([x(i), y(v)]);
      if (!open) {
        d += "M" + x(i).toFixed(1) + "," + y(v).toFixed(1);
        open = true;
      } else if (step) {
        d += "H" + x(i).toFixed(1) + "V" + y(v).toFixed(1);
      } else {
        d += "L" + x(i).toFixed(1) + "," + y(v).toFixed(1);
      }
    }
    return { d: d, lonely: lonely };
  }

  // Closed area paths between `lower` and `upper` (arrays of equal length; null breaks).
  function areaPath(lower, upper, x, y) {
    let d = "";
    let run = [];
    const flush = () => {
      if (run.length > 1) {
        d += "M" + run.map((i) => x(i).toFixed(1) + "," + y(upper[i]).toFixed(1)).join("L");
        d += "L" + run.slice().reverse()
          .map((i) => x(i).toFixed(1) + "," + y(lower[i]).toFixed(1)).join("L") + "Z";
      }
      run = [];
    };
    for (let i = 0; i < upper.length; i++) {
      if (upper[i] === null || upper[i] === undefined) flush();
      else run.push(i);
    }
    flush();
    return d;
  }

  // A time-series chart into `container` (its previous content is replaced).
  // opts: {start, series: [{name, color, values, step, dash, area, width}], stacked,
  //        markers: [{time, label, title, color}], hlines: [{value, label, color}],
  //        unit, format, height, empty, integer (whole-number ticks)}
  function lineChart(container, opts) {
    clear(container);
    const width = Math.max(280, container.clientWidth || 480);
    const height = opts.height || 190;
    const n = Math.max(...opts.series.map((s) => s.values.length), 2);
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = height - MARGIN.top - MARGIN.bottom;
    const format = opts.format || ((v) => String(v));

    let drawn = opts.series;
    if (opts.stacked) {
      const sums = new Array(n).fill(0);
      drawn = opts.series.map((s) => {
        const lower = sums.slice();
        const upper = s.values.map((v, i) => (v === null || v === undefined ? null : (sums[i] += v)));
        return Object.assign({}, s, { values: upper, lower: lower, area: true });
      });
    }
    let hi = 0;
    let any = false;
    for (const s of drawn) {
      for (const v of s.values) {
        if (v !== null && v !== undefined) {
          any = true;
          hi = Math.max(hi, v);
        }
      }
    }
    for (const h of opts.hlines || []) {
      if (h.value !== null && h.value !== undefined) hi = Math.max(hi, h.value);
    }
    const { ticks, step } = niceTicks(0, hi > 0 ? hi * 1.05 : 1, 4, opts.integer);
    const top = ticks[ticks.length - 1] || 1;
    const x = (i) => MARGIN.left + (n > 1 ? (i / (n - 1)) * plotW : 0);
    const y = (v) => MARGIN.top + plotH - (Math.min(v, top) / top) * plotH;

    const svg = svgEl("svg", {
      viewBox: "0 0 " + width + " " + height, width: width, height: height,
      class: "chart-svg", role: "img",
    }, container);
    const grid = svgEl("g", { class: "grid" }, svg);
    for (const t of ticks) {
      svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(t), y2: y(t) }, grid);
      svgText(grid, MARGIN.left - 6, y(t) + 4, formatTick(t, step), { class: "tick", "text-anchor": "end" });
    }
    if (opts.unit) {
      svgText(svg, 12, MARGIN.top + plotH / 2, opts.unit, {
        class: "axis-label", "text-anchor": "middle",
        transform: "rotate(-90 12 " + (MARGIN.top + plotH / 2) + ")",
      });
    }
    // Time axis: ticks back from the newest second, labelled relative to now.
    const axis = svgEl("g", { class: "axis" }, svg);
    svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH }, axis);
    const every = n <= 70 ? 10 : n <= 130 ? 20 : n <= 190 ? 30 : 60;
    for (let back = 0; back < n; back += every) {
      const i = n - 1 - back;
      svgEl("line", { x1: x(i), x2: x(i), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }, axis);
      const label = back === 0 ? "now" : back % 60 === 0 ? "−" + back / 60 + " min" : "−" + back + " s";
      svgText(axis, x(i), height - 8, label, { class: "tick", "text-anchor": back === 0 ? "end" : "middle" });
    }

    const plot = svgEl("g", { class: "plot" }, svg);
    for (const s of drawn) {
      if (s.area) {
        const lower = s.lower || new Array(n).fill(0);
        const d = areaPath(lower, s.values, x, y);
        if (d) svgEl("path", { d: d, fill: s.color, "fill-opacity": s.stackOpacity || 0.18, stroke: "none" }, plot);
      }
    }
    for (const s of drawn) {
      const { d, lonely } = linePath(s.values, x, y, s.step);
      if (d) {
        const attrs = { d: d, fill: "none", stroke: s.color, "stroke-width": s.width || 1.8,
          "stroke-linejoin": "round", "stroke-linecap": "round" };
        if (s.dash) attrs["stroke-dasharray"] = "5 4";
        svgEl("path", attrs, plot);
      }
      for (const [px, py] of lonely) svgEl("circle", { cx: px, cy: py, r: 2, fill: s.color }, plot);
    }
    for (const h of opts.hlines || []) {
      if (h.value === null || h.value === undefined) continue;
      svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(h.value), y2: y(h.value),
        stroke: h.color, "stroke-width": 1.5, "stroke-dasharray": "6 4" }, plot);
      svgText(plot, width - MARGIN.right - 4, y(h.value) - 5, h.label, { class: "hline-label", "text-anchor": "end", fill: h.color });
    }
    // Scaling decisions: a dashed rule and a flag; the native tooltip carries the reason.
    const markers = svgEl("g", { class: "markers" }, svg);
    for (const m of opts.markers || []) {
      const i = m.time - opts.start;
      if (i < 0 || i > n - 1) continue;
      const g = svgEl("g", { class: "marker" }, markers);
      const title = svgEl("title", {}, g);
      title.textContent = m.title;
      svgEl("line", { x1: x(i), x2: x(i), y1: MARGIN.top, y2: MARGIN.top + plotH, stroke: m.color, "stroke-dasharray": "2 3" }, g);
      svgEl("path", { d: "M" + x(i).toFixed(1) + "," + MARGIN.top + "l-5,-7h10z", fill: m.color }, g);
      svgEl("rect", { x: x(i) - 6, y: MARGIN.top - 8, width: 12, height: plotH + 8, fill: "transparent" }, g);
    }
    if (!any) {
      svgText(svg, MARGIN.left + plotW / 2, MARGIN.top + plotH / 2, opts.empty || "no data yet", {
        class: "empty", "text-anchor": "middle",
      });
    }
    addHover(container, svg, { opts: opts, n: n, x: x, plotW: plotW, plotH: plotH, format: format, height: height });
    svg.appendChild(markers); // above the hover overlay, so a flag shows its reason
    return svg;
  }

  // A guide line and a readout of every series at the pointer's second. The second stays
  // selected across redraws (the page redraws every second) until the pointer leaves.
  function addHover(container, svg, c) {
    const guide = svgEl("line", { class: "guide", y1: MARGIN.top, y2: MARGIN.top + c.plotH, visibility: "hidden" }, svg);
    const tip = document.createElement("div");
    tip.className = "tooltip";
    tip.hidden = true;
    container.appendChild(tip);
    const overlay = svgEl("rect", { x: MARGIN.left, y: MARGIN.top, width: c.plotW, height: c.plotH, fill: "transparent", class: "overlay" }, svg);

    function show(i) {
      guide.setAttribute("x1", c.x(i));
      guide.setAttribute("x2", c.x(i));
      guide.setAttribute("visibility", "visible");
      clear(tip);
      const head = document.createElement("div");
      head.className = "tooltip-time";
      head.textContent = clock(c.opts.start + i);
      tip.appendChild(head);
      for (const s of c.opts.series) {
        const row = document.createElement("div");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = s.color;
        row.appendChild(swatch);
        const v = s.values[i];
        row.appendChild(document.createTextNode(s.name + ": " + (v === null || v === undefined ? "–" : c.format(v))));
        tip.appendChild(row);
      }
      for (const m of c.opts.markers || []) {
        if (Math.abs(m.time - (c.opts.start + i)) <= 1) {
          const row = document.createElement("div");
          row.className = "tooltip-reason";
          row.textContent = m.title;
          tip.appendChild(row);
        }
      }
      tip.hidden = false;
      const box = svg.getBoundingClientRect();
      const scale = box.width > 0 ? box.width / parseFloat(svg.getAttribute("width")) : 1;
      const x = c.x(i) * scale;
      // Right of the guide, or left of it near the right edge.
      const left = x + 12 + tip.offsetWidth <= container.clientWidth ? x + 12 : x - 12 - tip.offsetWidth;
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = "8px";
    }

    overlay.addEventListener("mousemove", (event) => {
      const box = svg.getBoundingClientRect();
      const scale = box.width > 0 ? parseFloat(svg.getAttribute("width")) / box.width : 1;
      const px = (event.clientX - box.left) * scale;
      const i = Math.max(0, Math.min(c.n - 1, Math.round(((px - MARGIN.left) / c.plotW) * (c.n - 1))));
      container.dataset.hoverBack = String(c.n - 1 - i); // seconds before the newest
      show(i);
    });
    overlay.addEventListener("mouseleave", () => {
      delete container.dataset.hoverBack;
      guide.setAttribute("visibility", "hidden");
      tip.hidden = true;
    });
    if (container.dataset.hoverBack !== undefined) {
      const i = c.n - 1 - Number(container.dataset.hoverBack);
      if (i >= 0 && i < c.n) show(i);
    }
  }

  // Two distributions over the same bins, side by side per bin.
  // opts: {labels, a: {name, color, values}, b: {name, color, values}, height}
  function pairedBars(container, opts) {
    clear(container);
    const width = Math.max(280, container.clientWidth || 480);
    const height = opts.height || 220;
    const bottom = 44;
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = height - MARGIN.top - bottom;
    const n = Math.max(opts.a.values.length, opts.b.values.length, 1);
    let hi = 0;
    for (const v of opts.a.values.concat(opts.b.values)) {
      if (typeof v === "number" && isFinite(v)) hi = Math.max(hi, v);
    }
    const { ticks } = niceTicks(0, hi > 0 ? hi * 1.05 : 1, 4);
    const top = ticks[ticks.length - 1] || 1;
    const y = (v) => MARGIN.top + plotH - (Math.min(Math.max(v, 0), top) / top) * plotH;
    const svg = svgEl("svg", { viewBox: "0 0 " + width + " " + height, width: width, height: height, class: "chart-svg", role: "img" }, container);
    const grid = svgEl("g", { class: "grid" }, svg);
    for (const t of ticks) {
      svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(t), y2: y(t) }, grid);
      svgText(grid, MARGIN.left - 6, y(t) + 4, Math.round(t * 100) + "%", { class: "tick", "text-anchor": "end" });
    }
    const slot = plotW / n;
    const bar = Math.max(1, Math.min(28, slot * 0.38));
    const labelEvery = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(plotW / 46))));
    for (let i = 0; i < n; i++) {
      const cx = MARGIN.left + slot * (i + 0.5);
      [[opts.a, -1], [opts.b, 0]].forEach(([s, offset]) => {
        const v = s.values[i];
        if (typeof v !== "number" || !isFinite(v)) return;
        const rect = svgEl("rect", { x: cx + offset * bar, y: y(v), width: bar - 1, height: Math.max(0, MARGIN.top + plotH - y(v)), fill: s.color, rx: 1.5 }, svg);
        const title = svgEl("title", {}, rect);
        title.textContent = s.name + " · " + ((opts.titles || opts.labels)[i] || "bin " + (i + 1)) + ": " + (v * 100).toFixed(1) + "%";
      });
      if (i % labelEvery === 0) {
        svgText(svg, cx, MARGIN.top + plotH + 15, opts.labels[i] || String(i + 1), { class: "tick", "text-anchor": "middle" });
      }
    }
    svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH, class: "axis-line" }, svg);
    svgText(svg, MARGIN.left + plotW / 2, height - 6, opts.xLabel || "feature value (bins of the reference profile)", { class: "axis-label", "text-anchor": "middle" });
    return svg;
  }

  window.MGCharts = { lineChart: lineChart, pairedBars: pairedBars, clock: clock };
})();
