// The bulsajo page: one snapshot, then server-sent events (live), or the
// snapshot embedded in the page (a report). No libraries: nothing to fetch.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const data = { events: [], steps: [], summary: {}, state: "", status: null, now: null, live: false };
  const $ = (id) => document.getElementById(id);

  function svgEl(name, attrs, parent) {
    const el = document.createElementNS(NS, name);
    for (const k in attrs) el.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(el);
    return el;
  }
  const t = (x) => new Date(x).getTime();
  const fmtS = (s) => (s >= 100 ? s.toFixed(0) : s.toFixed(1)) + " s";
  const ms = (v) => (v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");

  // The right edge of the plots: now, or the end of a finished run.
  function nowMs() {
    const last = data.events[data.events.length - 1];
    if (last && last.type === "run_finished") return t(last.time);
    if (data.now) return t(data.now);
    return Date.now();
  }

  // Generations as [start, end) spans; faults and recoveries as points.
  function spans() {
    const gens = [], marks = [];
    let cur = null;
    for (const e of data.events) {
      if (e.type === "generation_started") {
        if (cur) cur.end = t(e.time);
        cur = { gen: e.gen, start: t(e.time), end: null, world: e.world_size };
        gens.push(cur);
      } else if (e.type === "fault" || e.type === "recovered") {
        marks.push(e);
      } else if (e.type === "run_finished" && cur) {
        cur.end = t(e.time);
      }
    }
    if (cur && cur.end === null) cur.end = nowMs();
    return { gens, marks };
  }

  function markTitle(e) {
    if (e.type === "recovered") {
      let s = "recovered: generation " + e.gen + " training after " + ms(e.recover_ms || 0);
      if (e.rolled_back_steps) s += ", rolled back " + e.rolled_back_steps + " steps";
      return s;
    }
    const parts = ["fault: " + (e.cause || "?")];
    if (e.rank !== undefined) parts.push("rank " + e.rank);
    if (e.node) parts.push("node " + e.node);
    if (e.detect_ms !== undefined) parts.push("detected in " + ms(e.detect_ms));
    const rec = data.events.find((r) => r.type === "recovered" && t(r.time) >= t(e.time));
    if (rec) parts.push("cost " + ms(rec.recover_ms || 0) + " to recover");
    if (e.detail) parts.push(e.detail);
    return parts.join(" · ");
  }

  function drawTimeline() {
    const svg = $("timeline");
    svg.textContent = "";
    const w = svg.clientWidth || 900, h = 90, pad = 30;
    if (!data.events.length) return;
    const t0 = t(data.events[0].time), t1 = Math.max(nowMs(), t0 + 1000);
    const x = (v) => pad + ((v - t0) / (t1 - t0)) * (w - 2 * pad);
    const { gens, marks } = spans();
    gens.forEach((g, i) => {
      const r = svgEl("rect", { x: x(g.start), y: 30, width: Math.max(1, x(g.end) - x(g.start)), height: 28,
        class: "gen" + (i % 2 ? " odd" : ""), "data-gen": g.gen }, svg);
      svgEl("title", {}, r).textContent = "generation " + g.gen + " · world " + (g.world || "?");
    });
    for (const e of marks) {
      const cx = x(t(e.time));
      const isFault = e.type === "fault";
      const p = isFault ? `${cx - 6},14 ${cx + 6},14 ${cx},26` : `${cx - 6},74 ${cx + 6},74 ${cx},62`;
      const m = svgEl("polygon", { points: p, class: isFault ? "fault" : "recovered", "data-gen": e.gen }, svg);
      svgEl("title", {}, m).textContent = markTitle(e);
    }
    svgEl("text", { x: pad, y: 86 }, svg).textContent = "0 s";
    svgEl("text", { x: w - pad - 40, y: 86 }, svg).textContent = fmtS((t1 - t0) / 1000);
  }

  function drawRate() {
    const svg = $("rate-chart");
    svg.textContent = "";
    const s = data.steps;
    // A report has no progress series (the event log keeps faults, not steps).
    svg.style.display = data.live || s.length > 1 ? "" : "none";
    svg.previousElementSibling.style.display = svg.style.display;
    if (s.length < 2 || !data.events.length) return;
    const w = svg.clientWidth || 900, h = 120, pad = 30;
    const t0 = t(data.events[0].time), t1 = Math.max(nowMs(), t0 + 1000);
    // Rate between consecutive samples; a gap far longer than usual (a
    // restart: no step advanced) breaks the line instead of averaging over it.
    const gaps = [];
    for (let i = 1; i < s.length; i++) gaps.push(t(s[i].t) - t(s[i - 1].t));
    const usual = gaps.slice().sort((a, b) => a - b)[Math.floor(gaps.length / 2)] || 1;
    const lines = [[]];
    for (let i = 1; i < s.length; i++) {
      const dt = gaps[i - 1] / 1000;
      if (gaps[i - 1] > 4 * usual && gaps[i - 1] > 1000) {
        lines.push([]);
        continue;
      }
      if (dt > 0) lines[lines.length - 1].push([t(s[i].t), (s[i].step - s[i - 1].step) / dt]);
    }
    const all = [].concat(...lines);
    if (!all.length) return;
    const ymax = Math.max(...all.map((p) => p[1])) * 1.1 || 1;
    const x = (v) => pad + ((v - t0) / (t1 - t0)) * (w - 2 * pad);
    const y = (v) => h - 15 - (v / ymax) * (h - 30);
    for (const pts of lines) {
      if (pts.length) svgEl("polyline", { class: "rate", points: pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ") }, svg);
    }
    svgEl("text", { x: 2, y: 14 }, svg).textContent = ymax.toFixed(1) + "/s";
  }

  function drawNodes() {
    const st = data.status;
    const nodes = st && st.nodes;
    $("nodes-section").hidden = !nodes;
    if (!nodes) return;
    const body = $("nodes").tBodies[0];
    body.textContent = "";
    for (const n of nodes) {
      const tr = body.insertRow();
      tr.dataset.node = n.name;
      if (n.quarantined) tr.classList.add("quarantined");
      if (n.state === "lost") tr.classList.add("lost");
      const cells = [n.name, n.state + (n.quarantined ? " · quarantined" : ""), n.spare ? "spare" : "worker",
        n.nproc || "", (n.ranks || []).join(" "), n.faults || 0, n.reason || ""];
      for (const c of cells) tr.insertCell().textContent = c;
    }
  }

  function drawEvents() {
    const body = $("events").tBodies[0];
    body.textContent = "";
    // "steps" events carry the accounting's stretches: not news for a person.
    const evs = data.events.filter((e) => e.type !== "steps").slice(-500).reverse();
    for (const e of evs) {
      const tr = body.insertRow();
      tr.className = "ev-" + e.type;
      const d = e.detail || e.cause || e.outcome || "";
      const cells = [new Date(e.time).toLocaleTimeString(), e.type.replace(/_/g, " "), e.gen || "",
        e.rank === undefined ? "" : e.rank, e.node || "", d];
      cells.forEach((c, i) => {
        const td = tr.insertCell();
        td.textContent = c;
        if (i === 5) td.className = "detail";
      });
    }
  }

  function drawHeader() {
    const sum = data.summary || {};
    const first = data.events.find((e) => e.run_id);
    $("job").textContent = first ? first.run_id : "";
    const st = $("state");
    st.textContent = data.state || "waiting";
    st.className = "state " + (data.state || "").split(" ")[0];
    $("goodput").textContent = sum.goodput !== undefined ? sum.goodput.toFixed(2) : "–";
    $("lost").textContent = fmtS(sum.lost_s || 0);
    const by = [];
    for (const k of ["detect", "restart", "rollback", "grow", "smaller_world", "other"]) {
      if (sum[k + "_s"]) by.push(k + " " + sum[k + "_s"].toFixed(1));
    }
    $("lostby").textContent = by.join(" · ");
    $("faults").textContent = (sum.faults || 0) + " / " + (sum.recoveries || 0);
    const gens = data.events.filter((e) => e.type === "generation_started");
    const g = gens[gens.length - 1];
    $("gen").textContent = g ? g.gen + " · " + (g.world_size || "?") : "–";
    const s = data.steps[data.steps.length - 1];
    $("step").textContent = s ? s.step : (sum.steps || "–");
    const n = data.steps.length;
    if (n > 1) {
      const a = data.steps[Math.max(0, n - 9)], b = data.steps[n - 1];
      const dt = (t(b.t) - t(a.t)) / 1000;
      $("rate").textContent = dt > 0 ? ((b.step - a.step) / dt).toFixed(1) + " steps/s" : "";
    }
    $("wall").textContent = fmtS(sum.wall_s || 0);
  }

  function draw() {
    drawHeader();
    drawTimeline();
    drawRate();
    drawNodes();
    drawEvents();
  }

  function apply(snap) {
    Object.assign(data, snap);
    data.events = data.events || [];
    data.steps = data.steps || [];
    draw();
  }

  function connect() {
    const es = new EventSource("/api/stream");
    es.addEventListener("event", (m) => {
      const e = JSON.parse(m.data);
      if (e.type === "run_started") { data.events = []; data.steps = []; }
      data.events.push(e);
      data.now = null;
      draw();
    });
    es.addEventListener("step", (m) => {
      data.steps.push(JSON.parse(m.data));
    });
    es.addEventListener("live", (m) => {
      const l = JSON.parse(m.data);
      data.state = l.state; data.summary = l.summary; data.status = l.status; data.now = null;
      draw();
    });
    es.onerror = () => {
      $("state").textContent = "disconnected";
      es.close();
      // Reload the data, not the page, once the server answers again.
      setTimeout(start, 2000);
    };
  }

  function start() {
    fetch("/api/snapshot").then((r) => r.json()).then((snap) => {
      snap.now = null;
      apply(snap);
      connect();
    }).catch(() => setTimeout(start, 2000));
  }

  window.addEventListener("resize", draw);
  if (window.BULSAJO_SNAPSHOT) apply(window.BULSAJO_SNAPSHOT);
  else start();
})();
