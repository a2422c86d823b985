// firepbt views: one script for the live dashboard and the offline report.
// Input: run payloads built by firepbt/dashboard/data.py. Every text from the store goes
// through textContent (never innerHTML), so a hyperparameter named "<b>" stays text.
/* global Plotly */
"use strict";

const FP = (() => {
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const EDGE = { exploit: "#d62728", transfer: "#2ca02c", replace: "#ff7f0e",
    start_evaluator: "#9467bd", handoff: "#7f7f7f" };
  const REASON = { success: "#2ca02c", failed: "#d62728", end: "#7f7f7f", running: "#bcbd22" };
  // Other stop reasons: colours none of the named reasons use.
  const SPARE = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const PER_MEMBER_TRACES = 60; // above this, one trace per sub-population (fast to draw)
  const CONFIG = { displaylogo: false, responsive: true, scrollZoom: true };
  const state = { runs: [], live: null, logY: {}, metricOf: {}, fireHistory: {} };
  const timings = {}; // milliseconds each view took to draw, by section id

  // ---- small DOM helpers --------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const kid of kids) if (kid != null) node.append(kid);
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v === "number") {
      if (!Number.isFinite(v)) return String(v);
      if (Number.isInteger(v)) return String(v);
      return Number(v.toPrecision(4)).toString();
    }
    if (Array.isArray(v)) return "[" + v.map(fmt).join(", ") + "]";
    return String(v);
  }
  function hpText(hp) {
    return Object.entries(hp || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(", ");
  }
  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }
  function table(head, rows, opts) {
    // rows: arrays of cells (string | Node); opts.sortable: click a header to sort.
    const t = el("table", { class: opts && opts.cls ? opts.cls : "" });
    const thead = el("thead", {}, el("tr", {}, ...head.map((h, i) => el("th", {
      text: h, title: opts && opts.sortable ? "click to sort" : "",
      onclick: opts && opts.sortable ? () => sortBy(t, i) : null,
    }))));
    const tbody = el("tbody");
    rows.forEach((r, i) => {
      const tr = el("tr", { class: opts && opts.rowClass ? opts.rowClass(i) : "" });
      r.forEach((c) => {
        const td = el("td");
        if (c instanceof Node) td.append(c); else td.textContent = c;
        if (typeof c === "string" && /^-?[\d.]+(e[-+]?\d+)?$/.test(c)) td.className = "num";
        tr.append(td);
      });
      tbody.append(tr);
    });
    t.append(thead, tbody);
    return t;
  }
  function sortBy(t, col) {
    const tbody = t.tBodies[0];
    const dir = t.dataset.sortCol === String(col) && t.dataset.sortDir === "asc" ? "desc" : "asc";
    t.dataset.sortCol = String(col);
    t.dataset.sortDir = dir;
    const key = (tr) => {
      const s = tr.cells[col].textContent.replace(/^[PW]/, "");
      const n = parseFloat(s);
      return Number.isNaN(n) || s === "-" ? null : n;
    };
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const ka = key(a), kb = key(b);
      let c;
      if (ka !== null && kb !== null) c = ka - kb;
      else if (ka === null && kb === null) c = a.cells[col].textContent.localeCompare(
        b.cells[col].textContent);
      else c = ka === null ? 1 : -1; // missing values last either way
      return dir === "asc" ? c : -c;
    });
    tbody.append(...rows);
    t.querySelectorAll("th").forEach((th, i) => {
      th.dataset.sorted = i === col ? dir : "";
    });
  }
  function note(text) { return el("p", { class: "note", text }); }
  function section(id, title, ...kids) {
    return el("section", { id, class: "view" }, el("h2", { text: title }), ...kids);
  }
  function colour(i) { return PALETTE[((i % 10) + 10) % 10]; }

  // ---- payload indexes ------------------------------------------------------------------------
  function index(run) {
    const ix = { seg: new Map(), segsOf: new Map(), segOfCkpt: new Map(), worker: new Map() };
    for (const s of run.segments || []) {
      const rec = { id: s[0], worker: s[1], start: s[2], end: s[3], hp: s[4], from: s[5],
        to: s[6], status: s[7], attempts: s[8] };
      ix.seg.set(rec.id, rec);
      if (!ix.segsOf.has(rec.worker)) ix.segsOf.set(rec.worker, []);
      ix.segsOf.get(rec.worker).push(rec);
      if (rec.status === "completed" && rec.to !== null) ix.segOfCkpt.set(rec.to, rec);
    }
    for (const w of run.workers) ix.worker.set(w.id, w);
    return ix;
  }
  // Points are columns: [steps, fitness, then one per name of run.extra_metrics]. Metric m is
  // 0 for the fitness, k for the k-th other name; a segment without that column has no values.
  function values(pts, m) {
    return pts[1 + m] || pts[0].map(() => null);
  }
  function lastPoint(run, ix, ckpt, m) {
    const seg = ix.segOfCkpt.get(ckpt);
    if (!seg) return null;
    const pts = run.points[String(seg.id)];
    if (!pts) return null;
    const ys = values(pts, m || 0);
    for (let i = pts[0].length - 1; i >= 0; i--) if (ys[i] !== null) return [pts[0][i], ys[i]];
    return null;
  }
  function metricName(run) { return `${run.metric.name} (${run.metric.direction})`; }
  // The names the curves panel can show: the run's metric (the fitness) first.
  function metricNames(run) { return [run.metric.name, ...(run.extra_metrics || [])]; }

  // ---- tooltip ------------------------------------------------------------------------------
  function tooltip() {
    let tip = document.getElementById("fp-tooltip");
    if (!tip) {
      tip = el("div", { id: "fp-tooltip", class: "tooltip", role: "tooltip" });
      document.body.append(tip);
    }
    return tip;
  }
  function showTip(ev, lines) {
    const tip = tooltip();
    tip.replaceChildren(...lines.filter((l) => l).map((l, i) => el(i === 0 ? "b" : "div",
      { text: l })));
    tip.style.display = "block";
    const e = ev.event || {};
    tip.style.left = `${(e.pageX || 0) + 14}px`;
    tip.style.top = `${(e.pageY || 0) + 14}px`;
  }
  function hideTip() { tooltip().style.display = "none"; }

  // ---- views --------------------------------------------------------------------------------
  function statusView(run, ri) {
    const p = run.progress;
    const frac = p.total ? Math.min(1, p.done / p.total) : 0;
    const c = run.counts || {};
    const failures = (c.failure || 0) + (c.failed || 0);
    const cards = [
      ["status", run.status], ["best member (P1)", run.best === null ? "-" : `worker ${run.best}`],
      [run.metric.name, fmt(run.best_metric)],
      ["progress", p.total ? `${Math.round(100 * frac)}% (${p.done} / ${p.total} member-steps)`
        : `${p.done} member-steps`],
      ["elapsed", duration(p.elapsed_s)], ["ETA", run.status === "running" ? duration(p.eta_s) : "-"],
      ["exploits", String(c.exploit || 0)], ["transfers", String(c.transfer || 0)],
      ["failures", String(failures)],
    ];
    const bar = el("div", { class: "progress" }, el("div", { class: "bar" }));
    bar.firstChild.style.width = `${(100 * frac).toFixed(1)}%`;
    const grid = el("div", { class: "cards", "data-testid": `status-${ri}` },
      ...cards.map(([k, v]) => el("div", { class: "card" }, el("div", { class: "k", text: k }),
        el("div", { class: "v", text: v }))));
    const lock = run.lock ? note(`Locked by pid ${run.lock.pid} on ${run.lock.host}.`) : null;
    return section(`status-${ri}`, "Status", grid, bar, lock,
      ...(run.notes || []).map(note));
  }

  function curveTraces(run, ix, sub, negate, m) {
    const members = run.workers.filter((w) => w.role === "member" && w.subpop === sub);
    const perMember = run.workers.length <= PER_MEMBER_TRACES;
    const groups = new Map();
    const sign = negate ? -1 : 1;
    // One polyline per member, its segments in order: after an exploit or a transfer the line
    // drops (or climbs) at that step to the donor's value, where its new weights came from.
    // No gap between segments: every gap would be a separate SVG path, and 80,000 of them
    // took seconds to draw.
    for (const w of members) {
      const key = perMember ? w.id : sub;
      if (!groups.has(key)) groups.set(key, { x: [], y: [], c: [] });
      const g = groups.get(key);
      if (g.x.length) { g.x.push(null); g.y.push(null); g.c.push(null); } // next member
      for (const seg of ix.segsOf.get(w.id) || []) {
        const pts = run.points[String(seg.id)];
        if (!pts) continue;
        const join = seg.from !== null ? lastPoint(run, ix, seg.from, m) : null;
        if (join) { g.x.push(join[0]); g.y.push(sign * join[1]); g.c.push(seg.id); }
        const ys = values(pts, m);
        for (let i = 0; i < pts[0].length; i++) {
          g.x.push(pts[0][i]); g.y.push(ys[i] === null ? null : sign * ys[i]);
          g.c.push(seg.id);
        }
      }
    }
    const traces = [];
    for (const [key, g] of groups) {
      traces.push({ type: "scatter", mode: "lines", x: g.x, y: g.y, customdata: g.c,
        name: perMember ? `worker ${key}` : `P${key}`, hoverinfo: "none",
        line: { width: 1, color: perMember ? colour(key) : colour(sub - 1) },
        opacity: perMember ? 0.6 : 0.3, connectgaps: false, showlegend: false });
    }
    if (run.best !== null && ix.worker.get(run.best) && ix.worker.get(run.best).subpop === sub
      && members.length) {
      traces.push({ type: "scatter", mode: "lines", x: run.best_curve[0],
        y: values(run.best_curve, m).map((v) => (v === null ? null : sign * v)),
        name: `best: worker ${run.best}`, hoverinfo: "none", customdata: null,
        line: { width: 3, color: "black" }, showlegend: true });
    }
    return traces;
  }

  function curvesView(run, ri, ix) {
    const subs = run.subpops.length ? run.subpops : [1];
    const key = `curves-${ri}`;
    const names = metricNames(run);
    // The metric shown: the fitness unless the user picked another (kept across redraws).
    const metric = () => Math.min(state.metricOf[key] || 0, names.length - 1);
    // A metric whose every value is negative (e.g. -loss) is drawn negated on the log axis.
    const canNegate = () => {
      const all = [];
      for (const k of Object.keys(run.points)) {
        for (const v of values(run.points[k], metric())) if (v !== null) all.push(v);
      }
      return all.length > 0 && all.every((v) => v < 0);
    };
    const panels = subs.map((k) => el("div", { id: `curves-${ri}-P${k}`, class: "plot",
      "data-testid": "curves" }));
    const toggle = el("button", { text: "log y", class: "toggle", id: `logy-${ri}` });
    // Which metric the curves show: the fitness, or another name evaluate() returned.
    const picker = names.length > 1 ? el("select", { id: `metric-${ri}`, class: "picker",
      "aria-label": "metric shown", title: "the metric the curves show" },
    ...names.map((n, i) => el("option", { value: String(i),
      text: i === 0 ? `${n} (fitness)` : n }))) : null;
    const draw = () => {
      const m = metric();
      const log = !!state.logY[key];
      const negatable = canNegate();
      const neg = log && negatable;
      const name = names[m];
      toggle.classList.toggle("on", log);
      toggle.title = negatable ? `${name} is negative: the log view shows -${name}` : "";
      if (picker) picker.value = String(m);
      subs.forEach((k, i) => {
        const yname = neg ? `−${name} (log)` : m === 0 ? metricName(run) : name;
        const layout = {
          title: { text: subs.length > 1 ? `P${k}` : "members", x: 0.01, font: { size: 13 } },
          xaxis: { title: { text: "training step" } },
          yaxis: { title: { text: yname }, type: log ? "log" : "linear" },
          margin: { l: 70, r: 10, t: 30, b: 40 }, height: 340, hovermode: "closest",
          uirevision: `${key}-${log}-${m}`, legend: { x: 1, xanchor: "right", y: 0 },
          dragmode: "zoom",
        };
        Plotly.react(panels[i], curveTraces(run, ix, k, neg, m), layout, CONFIG);
      });
    };
    toggle.addEventListener("click", () => { state.logY[key] = !state.logY[key]; draw(); });
    if (picker) picker.addEventListener("change", () => {
      state.metricOf[key] = Number(picker.value);
      draw();
    });
    const node = section(`curves-${ri}`, names.length > 1 ? "Metric curves" : "Fitness curves",
      note("Every member's recorded metric; a jump is an exploit or a transfer (the member " +
        "continued from other weights). Bold: the best member's lineage. Hover for the member " +
        "and its hyperparameters; drag to zoom, double-click to reset." +
        (picker ? " Pick the metric to show: the fitness (what PBT ranks by) or another one " +
          "the task's evaluate() returned." : "")),
      el("div", { class: "tools" }, picker, toggle), ...panels);
    node.draw = () => {
      draw();
      panels.forEach((p) => {
        p.removeAllListeners && p.removeAllListeners("plotly_hover");
        p.on("plotly_hover", (ev) => {
          const pt = ev.points[0];
          const name = names[metric()];
          const shown = state.logY[key] && canNegate() ? -pt.y : pt.y;
          if (pt.customdata === null || pt.customdata === undefined) {
            // The best lineage: its hyperparameters at this step come from its schedule.
            const piece = (run.schedules[String(run.best)] || []).find(
              ([s, e]) => s < pt.x && pt.x <= e);
            showTip(ev, [`worker ${run.best} (best lineage)`, `step ${pt.x}`,
              `${name} ${fmt(shown)}`,
              piece ? `trained by worker ${piece[3]}` : "",
              piece ? hpText(run.hparams[piece[2]]) : ""]);
            return;
          }
          const seg = ix.seg.get(pt.customdata);
          const w = ix.worker.get(seg.worker);
          showTip(ev, [`worker ${w.id} (P${w.subpop})`, `step ${pt.x}`,
            `${name} ${fmt(shown)}`, `segment ${seg.id}: steps ${seg.start}-${seg.end}`,
            hpText(run.hparams[seg.hp])]);
        });
        p.on("plotly_unhover", hideTip);
      });
    };
    return node;
  }

  function scheduleView(run, ri, ix) {
    if (!run.hp_keys.length) return section(`schedules-${ri}`, "Hyperparameter schedules",
      note("No numeric hyperparameters to plot."));
    const panels = run.hp_keys.map((h, i) => el("div", { id: `schedule-${ri}-${i}`, class: "plot small" }));
    const node = section(`schedules-${ri}`, "Hyperparameter schedules",
      note("The hyperparameters each worker's current weights were trained with, along its " +
        "lineage (faint); the best member's bold. Log axes where the space is log-uniform."),
      ...panels);
    node.draw = () => run.hp_keys.forEach((h, i) => {
      const groups = new Map();
      const perMember = run.workers.length <= PER_MEMBER_TRACES;
      for (const [wid, pieces] of Object.entries(run.schedules)) {
        const w = ix.worker.get(Number(wid));
        if (!w || w.role !== "member") continue;
        const key = perMember ? w.id : w.subpop;
        if (!groups.has(key)) groups.set(key, { x: [], y: [], c: [] });
        const g = groups.get(key);
        for (const [s, e, hp] of pieces) {
          const v = run.hparams[hp][h.key];
          g.x.push(s, e); g.y.push(typeof v === "number" ? v : null, typeof v === "number" ? v : null);
          g.c.push(w.id, w.id);
        }
        g.x.push(null); g.y.push(null); g.c.push(null);
      }
      const traces = [];
      for (const [key, g] of groups) {
        traces.push({ type: "scatter", mode: "lines", x: g.x, y: g.y, customdata: g.c,
          hovertemplate: "worker %{customdata}<br>step %{x}<br>" + "%{y}<extra></extra>",
          line: { width: 1, color: perMember ? colour(key) : colour(key - 1) },
          opacity: perMember ? 0.5 : 0.25, showlegend: false });
      }
      const best = run.best !== null ? run.schedules[String(run.best)] : null;
      if (best) {
        const x = [], y = [];
        for (const [s, e, hp] of best) { const v = run.hparams[hp][h.key]; x.push(s, e); y.push(v, v); }
        traces.push({ type: "scatter", mode: "lines", x, y, name: `best: worker ${run.best}`,
          line: { width: 3, color: "black" }, hovertemplate: `best (worker ${run.best})<br>` +
            "step %{x}<br>%{y}<extra></extra>" });
      }
      Plotly.react(panels[i], traces, {
        xaxis: { title: { text: "training step" } },
        yaxis: { title: { text: h.key }, type: h.log ? "log" : "linear" },
        margin: { l: 70, r: 10, t: 10, b: 40 }, height: 220, hovermode: "closest",
        uirevision: `sched-${ri}-${i}`, showlegend: false,
      }, CONFIG);
    });
    return node;
  }

  function lineageView(run, ri, ix) {
    const plot = el("div", { id: `lineage-${ri}-plot`, class: "plot tall", "data-testid": "lineage" });
    const detail = el("div", { id: `lineage-${ri}-detail`, class: "detail", "data-testid": "node-detail" },
      note("Click a node to see that segment's hyperparameters, metric and checkpoint."));
    const rows = (run.lineage || []).map((e) => [String(e.step), e.kind, `worker ${e.worker}`,
      e.donor === null ? "-" : `worker ${e.donor} (checkpoint ${e.donor_checkpoint})`,
      e.kind === "transfer" ? `via evaluator ${fmt(e.evaluator)} (p=${fmt(e.p_value)}, Δ=${fmt(e.delta)})`
        : e.changes]);
    const lineageTable = rows.length ? table(["step", "event", "member", "from", "details"], rows,
      { sortable: true, rowClass: (i) => (run.lineage[i].best ? "best" : "") })
      : note("No exploits, transfers or replacements.");
    const node = section(`lineage-${ri}`, "Lineage",
      note("One row per worker, one node per completed segment (at its end step), coloured by " +
        "its metric. Edges between rows hand weights over: exploits (red), transfers (green), " +
        "replacements (orange), evaluator starts (purple), labelled with donor and checkpoint. " +
        "Outlined: the best member's lineage."),
      el("div", { class: "split" }, plot, detail),
      el("details", {}, el("summary", { text: `Lineage events (${rows.length})` }), lineageTable));
    const nodes = run.graph.nodes;
    const best = new Set(run.best_lineage);
    node.draw = () => {
      const edges = new Map();
      const idxOf = new Map(nodes.map((n, i) => [n.ckpt, i]));
      for (const n of nodes) {
        if (n.parent_worker === null) continue;
        const kind = n.edge || "continue";
        if (!edges.has(kind)) edges.set(kind, { x: [], y: [], t: [], c: [] });
        const g = edges.get(kind);
        g.x.push(n.parent_step, n.step, null); g.y.push(n.parent_worker, n.worker, null);
        // An edge's ends sit on nodes: a click that lands on the edge opens that node.
        const p = idxOf.has(n.parent) ? idxOf.get(n.parent) : null;
        g.c.push(p, idxOf.get(n.ckpt), null);
        const label = `${kind}: checkpoint ${n.parent} (worker ${n.parent_worker}, step ` +
          `${n.parent_step}) → worker ${n.worker}`;
        g.t.push(label, label, null);
      }
      const traces = [];
      for (const [kind, g] of edges) {
        // Hand-overs name donor and checkpoint version on hover; plain continuations are
        // too many to be worth a label.
        const labelled = kind !== "continue";
        traces.push({ type: "scatter", mode: "lines", x: g.x, y: g.y,
          hoverinfo: labelled ? "text" : "skip", text: labelled ? g.t : undefined,
          customdata: g.c,
          name: kind, line: { width: kind === "continue" ? 1 : 1.5,
            color: EDGE[kind] || "#bbbbbb", dash: kind === "start_evaluator" ? "dot" : "solid" },
          showlegend: kind !== "continue" });
      }
      traces.push({ type: "scatter", mode: "markers", name: "segments", showlegend: false,
        x: nodes.map((n) => n.step), y: nodes.map((n) => n.worker),
        customdata: nodes.map((_, i) => i),
        marker: { size: nodes.length > 800 ? 5 : 9, color: nodes.map((n) => n.metric),
          colorscale: "Viridis", showscale: true,
          colorbar: { title: { text: run.metric.name }, thickness: 10 },
          line: { width: nodes.map((n) => (best.has(n.ckpt) ? 2 : 0)), color: "black" } },
        hovertemplate: "worker %{y}, step %{x}<br>click for details<extra></extra>" });
      const workers = run.workers.map((w) => w.id);
      Plotly.react(plot, traces, {
        xaxis: { title: { text: "training step" } },
        yaxis: { title: { text: "worker" }, tickvals: workers.length <= 40 ? workers : undefined,
          ticktext: workers.length <= 40 ? run.workers.map((w) =>
            `${w.role === "evaluator" ? "E" : "W"}${w.id} P${w.subpop}`) : undefined,
          autorange: "reversed" },
        margin: { l: 80, r: 10, t: 10, b: 40 }, height: Math.min(900, 200 + 18 * workers.length),
        hovermode: "closest", uirevision: `lineage-${ri}`, legend: { orientation: "h", y: 1.08 },
      }, CONFIG);
      plot.removeAllListeners && plot.removeAllListeners("plotly_click");
      plot.on("plotly_click", (ev) => {
        const pt = ev.points.find((p) => p.customdata !== undefined && p.customdata !== null);
        if (pt) showNode(run, ix, nodes[pt.customdata], detail);
      });
    };
    return node;
  }

  function showNode(run, ix, n, detail) {
    const seg = ix.seg.get(n.seg);
    const w = ix.worker.get(n.worker);
    const rows = [
      ["worker", `${w ? w.role : "worker"} ${n.worker}${w ? ` (P${w.subpop})` : ""}`],
      ["segment", `${n.seg}: steps ${seg ? seg.start : "?"}-${n.step}`],
      ["checkpoint", `${n.ckpt}${n.deleted ? " (files deleted by retention)" : ""}`],
      ["trained from", n.parent === null ? "scratch" : `checkpoint ${n.parent} of worker ` +
        `${n.parent_worker}${n.edge ? ` (${n.edge})` : ""}`],
      [run.metric.name, fmt(n.metric)],
      ...Object.entries(n.hparams).map(([k, v]) => [k, fmt(v)]),
    ];
    detail.replaceChildren(el("h3", { text: `Segment ${n.seg}` }),
      table(["", ""], rows, { cls: "kv" }));
    detail.dataset.segment = String(n.seg);
  }

  function evaluatorView(run, ri) {
    const ev = run.evaluations;
    const gantt = el("div", { id: `gantt-${ri}`, class: "plot", "data-testid": "gantt" });
    const fire = el("div", { id: `firefit-${ri}`, class: "plot small" });
    const tr = run.transfers.length ? table(
      ["step", "parent", "evaluator", "child", "checkpoint", "p-value", "Δ"],
      run.transfers.map((t) => [String(t.step), `worker ${fmt(t.parent)}`, `worker ${fmt(t.evaluator)}`,
        `worker ${t.child}`, fmt(t.checkpoint), fmt(t.p_value), fmt(t.delta)]), { sortable: true })
      : note("No transfers.");
    const reasons = Object.entries(run.reasons || {}).map(([r, n]) => `${r} ${n}`).join(", ");
    const node = section(`evaluators-${ri}`, "FIRE: evaluators and transfers",
      note(`One row per evaluator: a bar from each start to its stop, coloured by the stop ` +
        `reason (${reasons || "none yet"}). Hover for parent, child and p-value.`),
      gantt, el("h3", { text: "Transfers" }), tr,
      el("h3", { text: "FIRE fitness" }),
      note("Each member's FIRE fitness (the improvement rate FIRE ranks by); the live " +
        "dashboard also draws it over time while it watches."), fire);
    node.draw = () => {
      const by = new Map();
      for (const s of ev.spans) {
        if (!by.has(s.reason)) by.set(s.reason, []);
        by.get(s.reason).push(s);
      }
      const traces = [];
      let spare = 0;
      for (const [reason, spans] of by) {
        traces.push({ type: "bar", orientation: "h", name: `${reason} (${spans.length})`,
          base: spans.map((s) => s.start), x: spans.map((s) => Math.max(s.stop - s.start, 1e-9)),
          y: spans.map((s) => `evaluator ${s.evaluator}`),
          marker: { color: REASON[reason] || SPARE[spare++ % SPARE.length] },
          customdata: spans.map((s) => [s.parent, s.child, fmt(s.p_value), fmt(s.delta)]),
          hovertemplate: `${reason}<br>parent worker %{customdata[0]} → child worker ` +
            "%{customdata[1]}<br>p=%{customdata[2]}, Δ=%{customdata[3]}<extra></extra>" });
      }
      Plotly.react(gantt, traces, {
        barmode: "overlay", xaxis: { title: { text: ev.axis } },
        yaxis: { categoryorder: "category ascending" },
        margin: { l: 100, r: 10, t: 10, b: 80 }, height: 160 + 26 * Math.max(2, ev.evaluators.length),
        uirevision: `gantt-${ri}`, legend: { orientation: "h", y: -0.3, yanchor: "top" },
      }, CONFIG);
      const members = run.workers.filter((w) => w.role === "member");
      const hist = state.fireHistory[ri] || [];
      let ftraces;
      if (hist.length >= 2) {
        ftraces = members.map((w) => ({ type: "scatter", mode: "lines", name: `worker ${w.id}`,
          x: hist.map((h) => h.t), y: hist.map((h) => h.v[w.id]),
          line: { color: colour(w.subpop - 1), width: 1 } }));
      } else {
        ftraces = run.subpops.map((k) => {
          const ws = members.filter((w) => w.subpop === k);
          return { type: "bar", name: `P${k}`, x: ws.map((w) => `W${w.id}`), y: ws.map((w) => w.fire),
            marker: { color: colour(k - 1) } };
        });
      }
      Plotly.react(fire, ftraces, {
        margin: { l: 70, r: 10, t: 10, b: 40 }, height: 220, uirevision: `fire-${ri}`,
        xaxis: { title: { text: hist.length >= 2 ? "seconds watched" : "member" } },
        yaxis: { title: { text: "FIRE fitness" } },
      }, CONFIG);
    };
    return node;
  }

  function failuresView(run, ri) {
    if (!run.failures.length) return section(`failures-${ri}`, "Failures", note("No failures."));
    const rows = run.failures.map((f) => [f.kind, `worker ${f.worker}`, fmt(f.segment),
      fmt(f.attempt), String(f.step), f.exception || "-",
      f.error ? el("details", {}, el("summary", { text: "traceback" }),
        el("pre", { text: f.error })) : "-"]);
    return section(`failures-${ri}`, `Failures (${run.failures.length})`,
      note("Every failed attempt (failure), member given up (failed) and member replaced from " +
        "a donor (replace), with the error text the worker reported."),
      table(["what", "member", "segment", "attempt", "step", "exception", "traceback"], rows,
        { sortable: true, cls: "failures" }));
  }

  function membersView(run, ri) {
    const fire = run.workers.some((w) => w.fire !== null);
    const head = ["worker", "role", "sub-pop", "status", "step", `${run.metric.name} (current)`,
      "final (lineage)"];
    if (fire) head.push("FIRE fitness");
    head.push("overwrites", "failures", "hyperparameters");
    const rows = run.workers.map((w) => {
      const r = [String(w.id), w.role, `P${w.subpop}`, w.status, String(w.step), fmt(w.metric),
        fmt(run.final ? run.final[String(w.id)] : null)];
      if (fire) r.push(fmt(w.fire));
      r.push(String(w.overwrites), String(w.failures), hpText(w.hparams));
      return r;
    });
    return section(`members-${ri}`, "Members",
      note("Click a column header to sort. The best member is highlighted."),
      table(head, rows, { sortable: true, cls: "members",
        rowClass: (i) => (run.workers[i].id === run.best ? "best" : "") }));
  }

  function settingsView(run, ri) {
    return section(`settings-${ri}`, "Settings", table(["setting", "value"], run.settings || [],
      { cls: "kv" }));
  }

  function comparisonView(runs) {
    const rows = runs.map((r) => [r.label, r.algorithm, r.status,
      r.best === null ? "-" : `worker ${r.best}`, fmt(r.best_metric),
      String((r.counts || {}).exploit || 0), String((r.counts || {}).transfer || 0),
      String((r.compute ? r.compute.member + r.compute.evaluator : 0))]);
    // The best run by each run's own direction (a loss: the lowest).
    const score = (r) => (r.best_metric === null ? -Infinity
      : (r.metric.mode === "min" ? -1 : 1) * r.best_metric);
    const top = Math.max(...runs.map(score));
    const curves = el("div", { id: "compare-curves", class: "plot" });
    const keys = [...new Set(runs.flatMap((r) => r.hp_keys.map((h) => h.key)))];
    const scheds = keys.map((k, i) => el("div", { id: `compare-sched-${i}`, class: "plot small" }));
    const node = section("compare", "Comparison",
      table(["run", "algorithm", "status", "best member", `final ${runs[0].metric.name}`,
        "exploits", "transfers", "training steps"], rows,
      { sortable: true, rowClass: (i) => (score(runs[i]) === top ? "best" : "") }),
      el("h3", { text: "Best lineage's metric, per run" }), curves,
      keys.length ? el("h3", { text: "Best lineage's schedules, per run" }) : null, ...scheds);
    node.draw = () => {
      Plotly.react(curves, runs.map((r, i) => ({ type: "scatter", mode: "lines",
        name: `${r.label} (worker ${r.best})`, x: r.best_curve[0], y: r.best_curve[1],
        line: { color: colour(i), width: 2 } })), {
        xaxis: { title: { text: "training step" } },
        yaxis: { title: { text: metricName(runs[0]) } }, height: 360,
        margin: { l: 70, r: 10, t: 10, b: 40 }, uirevision: "compare",
      }, CONFIG);
      keys.forEach((key, j) => {
        const log = runs.some((r) => r.hp_keys.some((h) => h.key === key && h.log));
        Plotly.react(scheds[j], runs.map((r, i) => {
          const x = [], y = [];
          for (const [s, e, hp] of (r.best !== null && r.schedules[String(r.best)]) || []) {
            const v = r.hparams[hp][key]; x.push(s, e); y.push(v, v);
          }
          return { type: "scatter", mode: "lines", name: r.label, x, y,
            line: { color: colour(i), width: 2 } };
        }), { xaxis: { title: { text: "training step" } },
          yaxis: { title: { text: key }, type: log ? "log" : "linear" }, height: 220,
          margin: { l: 70, r: 10, t: 10, b: 40 }, uirevision: `cs-${j}` }, CONFIG);
      });
    };
    return node;
  }

  // ---- page ---------------------------------------------------------------------------------
  function runPage(run, ri) {
    const ix = index(run);
    const parts = [statusView(run, ri), curvesView(run, ri, ix), scheduleView(run, ri, ix),
      lineageView(run, ri, ix)];
    if (run.is_fire) parts.push(evaluatorView(run, ri));
    parts.push(failuresView(run, ri), membersView(run, ri), settingsView(run, ri));
    const page = el("div", { class: "run", id: `run-${ri}`, "data-version": run.version },
      el("p", { class: "note", text: `Store ${run.url} · task ${run.task} · ${run.algorithm} · ` +
        `metric: ${metricName(run)}` }), ...parts);
    page.drawAll = () => parts.forEach((p) => {
      if (!p.draw) return;
      const t = performance.now();
      p.draw();
      timings[p.id] = Math.round(performance.now() - t); // read by the benchmark
    });
    return page;
  }

  function render(root, runs, firstTab) {
    state.runs = runs;
    const multi = runs.length > 1;
    const tabs = el("nav", { class: "tabs" });
    const body = el("div", { class: "pages" });
    const pages = runs.map((r, i) => runPage(r, i));
    if (multi) pages.push(comparisonView(runs));
    const labels = runs.map((r) => r.label).concat(multi ? ["Compare"] : []);
    let current = 0;
    const draw = (page) => { if (page.drawAll) page.drawAll(); else if (page.draw) page.draw(); };
    const select = (i) => {
      current = i;
      pages.forEach((page, j) => { page.style.display = j === i ? "" : "none"; });
      tabs.querySelectorAll("button").forEach((b, j) => b.classList.toggle("on", j === i));
      draw(pages[i]);
    };
    labels.forEach((label, i) => tabs.append(el("button", { text: label, onclick: () => select(i) })));
    body.append(...pages);
    root.replaceChildren(...(multi ? [tabs] : []), body);
    select(Math.min(Math.max(firstTab || 0, 0), pages.length - 1));

    // Put a rebuilt page in place of pages[j]: the user's zoom survives, and the old charts
    // are purged (each holds a window resize listener that would keep it alive).
    const swap = (j, page) => {
      const old = pages[j];
      const zoom = {};
      old.querySelectorAll(".js-plotly-plot").forEach((gd) => {
        const l = gd.layout || {};
        const z = {};
        for (const ax of ["xaxis", "yaxis"]) {
          if (l[ax] && l[ax].autorange === false && l[ax].range) z[`${ax}.range`] = l[ax].range.slice();
        }
        if (Object.keys(z).length) zoom[gd.id] = z;
        Plotly.purge(gd);
      });
      hideTip();
      page.style.display = j === current ? "" : "none";
      old.replaceWith(page);
      pages[j] = page;
      if (j !== current) return;
      draw(page);
      for (const [id, z] of Object.entries(zoom)) {
        const gd = document.getElementById(id);
        if (gd && gd.layout) Plotly.relayout(gd, z);
      }
    };
    const redraw = (i, run) => {
      state.runs[i] = run;
      const opened = pages[i].querySelector(".detail").dataset.segment;
      const page = runPage(run, i);
      if (opened) { // keep the lineage node the user opened
        const n = run.graph.nodes.find((x) => String(x.seg) === opened);
        if (n) showNode(run, index(run), n, page.querySelector(".detail"));
      }
      swap(i, page);
      if (multi) swap(runs.length, comparisonView(state.runs));
    };
    return { redraw };
  }

  // ---- entry points -------------------------------------------------------------------------
  function offline(root, data) {
    render(root, data.runs, data.tab);
    document.body.dataset.ready = "1";
  }

  function skeleton(ov) {
    // An overview dressed as a full payload with empty views (while those load).
    const members = ov.workers.filter((w) => w.role === "member");
    const subpops = [...new Set(members.map((w) => w.subpop))].sort((a, b) => a - b);
    return { ...ov, hparams: [], hp_keys: [], segments: [], points: {},
      best_curve: [[], []], best_lineage: [], schedules: {}, graph: { nodes: [] }, lineage: [],
      evaluations: { spans: [], axis: "", evaluators: [] }, transfers: [], failures: [],
      compute: null, final: null, settings: [], subpops, reasons: {},
      is_fire: subpops.length > 1 || ov.workers.some((w) => w.role === "evaluator"),
      notes: ["Loading the charts…"] };
  }

  async function live(root, opts) {
    const every = opts.pollMs || 2000;
    const list = await (await fetch("api/runs")).json();
    // The overviews answer in milliseconds, the full views of a 2,000-member run take the
    // server seconds: show status and members at once, the charts when they arrive.
    const overviews = await Promise.all(list.map((_, i) =>
      fetch(`api/runs/${i}/overview`).then((r) => r.json())));
    const runs = overviews.map(skeleton);
    const ui = render(root, runs);
    const banner = document.getElementById("live");
    const versions = runs.map(() => null);
    for (let i = 0; i < runs.length; i++) {
      const run = await (await fetch(`api/runs/${i}`)).json();
      versions[i] = run.version;
      runs[i] = run;
      ui.redraw(i, run);
    }
    document.body.dataset.ready = "1";
    const started = Date.now();
    async function poll() {
      for (let i = 0; i < runs.length; i++) {
        try {
          const ov = await (await fetch(`api/runs/${i}/overview`)).json();
          if (state.runs[i].is_fire && ov.status === "running") { // a history while it moves
            const v = {};
            for (const w of ov.workers) if (w.role === "member") v[w.id] = w.fire;
            (state.fireHistory[i] = state.fireHistory[i] || []).push({ t: (Date.now() - started) / 1000, v });
          }
          if (ov.version !== versions[i]) {
            // The server may answer with its cached views for a while (big runs): redraw
            // only what is new.
            const run = await (await fetch(`api/runs/${i}`)).json();
            if (run.version !== versions[i]) {
              versions[i] = run.version;
              ui.redraw(i, run);
            }
          }
          if (banner) banner.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
        } catch (err) {
          if (banner) banner.textContent = `live · cannot reach the dashboard server (${err})`;
        }
      }
      setTimeout(poll, every);
    }
    setTimeout(poll, every);
  }

  return { offline, live, fmt, timings };
})();
