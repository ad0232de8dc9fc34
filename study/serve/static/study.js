/* A study page: the report's sections and figures (built by the same functions as report.html),
   refreshed in place while trials run; selections in the figures filter the trial table and the
   curves of the selected trials. */
"use strict";
(function () {
  const { api, el, apiStudy, studyUrl, fmtNum, fmtDuration, poll, draw, ready, statusBadge } = Explorer;
  const name = document.body.dataset.study;
  const base = apiStudy(name);
  const TABLE_ROWS = 200, CURVE_TRIALS = 20;

  let report = null;          // the last report payload drawn
  let trials = { rows: [], columns: [], searched: [] };
  let trialsVersion = null;
  const selection = {};       // key -> {values: Set of label texts} or {range: [lo, hi], log: bool}
  const filters = {};         // key -> label text chosen in a filter
  let curvesKey = "";

  // ---------------------------------------------------------------- the report part

  function sectionNode(id, title) {
    let node = document.getElementById("sec-" + id);
    if (!node) {
      node = el("section", { id: id }, [el("h2", { text: title }), el("div", { cls: "section-body", id: "sec-" + id })]);
      document.getElementById("sections").appendChild(node);
      node = document.getElementById("sec-" + id);
    }
    return node;
  }

  function renderReport(payload) {
    const header = document.getElementById("report-header");
    header.innerHTML = "<header>" + payload.header + "</header>";  // escaped by analysis.html
    const figuresBySection = {};
    for (const f of payload.figures) (figuresBySection[f.section] = figuresBySection[f.section] || []).push(f);
    for (const id of payload.order) {
      const sec = payload.sections[id];
      if (!sec) continue;
      const body = sectionNode(id, sec.title.replace(/&amp;/g, "&"));
      const figs = figuresBySection[id];
      if (payload.figure_sections.includes(id) && figs && figs.length) {
        if (body.dataset.kind !== "figures") { body.replaceChildren(); body.dataset.kind = "figures"; }
        if (id === "effects" && figs.length > 1) body.classList.add("grid"); else body.classList.remove("grid");
        const keep = new Set(figs.map(f => "fig-" + f.key));
        for (const child of [...body.children]) if (!keep.has(child.dataset.key)) child.remove();
        for (const f of figs) drawReportFigure(body, f);
      } else {
        body.dataset.kind = "html";
        body.innerHTML = sec.html;  // escaped by analysis.html
      }
    }
    report = payload;
    buildFilters();
    applySelection();
    const state = document.getElementById("report-state");
    state.textContent = payload.stale ? "figures updating…" : "";
  }

  function drawReportFigure(body, f) {
    const key = "fig-" + f.key;
    let box = [...body.children].find(c => c.dataset.key === key);
    if (!box) {
      box = el("div", { cls: "fig" }, [el("div", { cls: "plot", id: key.replace(/[^A-Za-z0-9_-]/g, "_") }),
        f.caption ? el("div", { cls: "caption", text: f.caption }) : null]);
      box.dataset.key = key;
      body.appendChild(box);
    }
    const div = box.querySelector(".plot");
    const first = !div.classList.contains("js-plotly-plot");
    draw(div, f.figure).then(() => { if (first) attachEvents(div, f); });
    div._explorer = f;
  }

  // ---------------------------------------------------------------- selections from figures

  function attachEvents(div, f) {
    if (f.section === "parallel") {
      div.on("plotly_restyle", () => readBrush(div));
    } else if (f.section === "effects" || f.section === "heatmaps") {
      div.on("plotly_click", ev => {
        const t = div._explorer.targets || {};
        const p = ev.points && ev.points[0];
        if (!p) return;
        if (t.x) setValue(t.x, p.x);
        if (t.y && p.y !== undefined) setValue(t.y, p.y);
        const traceName = p.data && p.data.name;
        if (f.section === "effects" && traceName && traceName.includes("=")) {
          const [group, level] = [traceName.slice(0, traceName.indexOf("=")), traceName.slice(traceName.indexOf("=") + 1)];
          const key = (report.searched || []).find(k => escText(k) === group);
          if (key) setValue(key, unescText(level));
        }
        applySelection();
      });
    }
  }

  function escText(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }
  function unescText(s) { const d = document.createElement("textarea"); d.innerHTML = s; return d.value; }

  function setValue(key, v) { selection[key] = { values: new Set([labelOf(v)]) }; }
  function labelOf(v) { return typeof v === "number" ? String(Number(v.toPrecision(6))) : unescText(String(v)); }

  function readBrush(div) {
    const dims = (div.data && div.data[0] && div.data[0].dimensions) || [];
    const keys = (div._explorer.targets || {}).dims || [];
    dims.forEach((d, i) => {
      const key = keys[i];
      if (!key) return;
      const ranges = d.constraintrange ? (Array.isArray(d.constraintrange[0]) ? d.constraintrange : [d.constraintrange]) : null;
      if (!ranges) { delete selection[key]; return; }
      const log = / \(log10\)$/.test(d.label || "");
      if (d.ticktext && !log) {
        const chosen = new Set();
        d.tickvals.forEach((tv, j) => { if (ranges.some(r => tv >= r[0] && tv <= r[1])) chosen.add(unescText(d.ticktext[j])); });
        selection[key] = { values: chosen };
      } else {
        selection[key] = { ranges: ranges, log: log };
      }
    });
    applySelection();
  }

  function matches(row) {
    for (const [key, sel] of Object.entries(selection)) {
      const isMetric = report && key === report.metric_col;
      const raw = row[key];
      if (sel.values) {
        const label = isMetric ? String(raw) : unescText(String(row["_text_" + key] !== undefined ? row["_text_" + key] : raw));
        const numeric = typeof raw === "number" ? String(Number(raw.toPrecision(6))) : null;
        if (!sel.values.has(label) && !(numeric && sel.values.has(numeric))) return false;
      } else if (sel.ranges) {
        if (typeof raw !== "number") return false;
        const x = sel.log ? Math.log10(raw) : raw;
        if (!sel.ranges.some(r => x >= r[0] && x <= r[1])) return false;
      }
    }
    for (const [key, label] of Object.entries(filters)) {
      if (label && unescText(String(row["_text_" + key])) !== label) return false;
    }
    const q = document.getElementById("t-text").value.trim().toLowerCase();
    if (q && ![row.trial_id, row.status, row.error].join(" ").toLowerCase().includes(q)) return false;
    return true;
  }

  function describeSelection() {
    const parts = [];
    for (const [key, sel] of Object.entries(selection)) {
      if (sel.values) parts.push(key + " ∈ {" + [...sel.values].join(", ") + "}");
      else parts.push(key + " in " + sel.ranges.map(r => "[" + fmtNum(r[0]) + ", " + fmtNum(r[1]) + "]" + (sel.log ? " (log10)" : "")).join(" or "));
    }
    for (const [key, label] of Object.entries(filters)) if (label) parts.push(key + " = " + label);
    return parts.join("; ");
  }

  // ---------------------------------------------------------------- filters and the trial table

  function buildFilters() {
    const box = document.getElementById("hp-filters");
    const keys = trials.searched || [];
    if (box.dataset.keys === keys.join("\u0000") && box.dataset.n === String(trials.rows.length)) return;
    box.dataset.keys = keys.join("\u0000");
    box.dataset.n = String(trials.rows.length);
    box.replaceChildren(...keys.map(key => {
      const values = [...new Set(trials.rows.map(r => unescText(String(r["_text_" + key]))))].sort(byNumberOrText);
      const select = el("select", { "data-key": key }, [el("option", { value: "", text: "all" }),
        ...values.slice(0, 500).map(v => el("option", { value: v, text: v }))]);
      select.value = filters[key] || "";
      select.addEventListener("input", () => { filters[key] = select.value; applySelection(); });
      return el("label", {}, [key + " ", select]);
    }));
  }

  function byNumberOrText(a, b) {
    const x = Number(a), y = Number(b);
    return !isNaN(x) && !isNaN(y) ? x - y : a < b ? -1 : a > b ? 1 : 0;
  }

  function metricOrder(rows) {
    if (!report) return rows;
    const col = report.metric_col, sign = report.mode === "max" ? -1 : 1;
    return rows.slice().sort((a, b) => {
      const x = a[col], y = b[col];
      if (typeof x !== "number") return 1;
      if (typeof y !== "number") return -1;
      return sign * (x - y);
    });
  }

  function renderTrials() {
    const chosen = metricOrder(trials.rows.filter(matches));
    const searched = trials.searched || [];
    const metricCol = report ? report.metric_col : null;
    const cols = ["trial_id", "status", ...searched, ...(metricCol ? [metricCol] : []), "epochs_done", "wall_time_s", "error"];
    document.querySelector("#trials thead").replaceChildren(el("tr", {}, cols.map(c => el("th", { text: c }))));
    document.querySelector("#trials tbody").replaceChildren(...chosen.slice(0, TABLE_ROWS).map(r => el("tr", {}, cols.map(c => {
      if (c === "trial_id") return el("td", {}, [el("a", { href: studyUrl(name) + "/trial/" + encodeURIComponent(r.trial_id), text: r.trial_id })]);
      if (c === "status") return el("td", {}, [el("span", { cls: "pill " + r.status, text: r.status })]);
      if (c === "wall_time_s") return el("td", { cls: "num", text: fmtDuration(r[c]) });
      if (c === "error") return el("td", {}, [r.error ? el("code", { cls: "err", text: String(r.error).slice(0, 200) }) : null]);
      const v = r[c];
      return el("td", { cls: typeof v === "number" ? "num" : "", text: searched.includes(c) ? unescText(String(r["_text_" + c])) : fmtNum(v, c) });
    }))));
    const sel = describeSelection();
    document.getElementById("selection").textContent = sel ? "Selected: " + sel : "No selection: all trials.";
    document.getElementById("trials-more").textContent = chosen.length + " of " + trials.rows.length + " trials match" +
      (chosen.length > TABLE_ROWS ? " (the first " + TABLE_ROWS + " by " + metricCol + " shown)" : "");
    return chosen;
  }

  async function renderCurves(chosen) {
    const ids = chosen.filter(r => r.epochs_done > 0).slice(0, CURVE_TRIALS).map(r => r.trial_id);
    const key = ids.join(",") + "|" + trialsVersion + "|" + (report ? report.metric : "");
    if (key === curvesKey) return;
    curvesKey = key;
    const div = document.getElementById("fig-selected-curves");
    const metric = report ? report.metric : null;
    const data = ids.length ? (await api(base + "/epochs?trials=" + ids.map(encodeURIComponent).join(","))).trials : {};
    const traces = Object.entries(data).map(([tid, c]) => ({
      x: c.epoch, y: c[metric] || [], mode: "lines+markers", name: tid, type: "scatter",
      hovertemplate: "epoch %{x}: %{y:.4g}<extra>" + escText(tid) + "</extra>",
    }));
    await draw(div, { data: traces, layout: {
      title: { text: escText((metric || "metric") + " per epoch, selected trials"), x: 0.01, font: { size: 15 } },
      height: 380, template: undefined, uirevision: "selected-curves", margin: { l: 60, r: 20, t: 50, b: 45 },
      xaxis: { title: { text: "epoch" } }, yaxis: { title: { text: escText(metric || "") } }, showlegend: traces.length <= 10,
    } });
  }

  function applySelection() {
    const chosen = renderTrials();
    renderCurves(chosen).catch(() => {});
  }

  document.getElementById("t-text").addEventListener("input", applySelection);
  document.getElementById("clear-selection").addEventListener("click", () => {
    for (const k of Object.keys(selection)) delete selection[k];
    for (const k of Object.keys(filters)) delete filters[k];
    for (const s of document.querySelectorAll("#hp-filters select")) s.value = "";
    for (const div of document.querySelectorAll("#sec-parallel .js-plotly-plot")) {
      const update = {};
      div.data[0].dimensions.forEach((d, i) => { update["dimensions[" + i + "].constraintrange"] = null; });
      Plotly.restyle(div, update, [0]);
    }
    applySelection();
  });

  // ---------------------------------------------------------------- the live part

  function renderSummary(s) {
    document.getElementById("live-status").replaceWith(Object.assign(statusBadge(s.status), { id: "live-status" }));
    document.getElementById("trials-done").textContent = s.trials_done;
    document.getElementById("trials-total").textContent = s.trials_total;
    document.getElementById("trials-running").textContent = s.trials_running;
    document.getElementById("trials-failed").textContent = s.trials_failed;
    const pct = s.trials_total ? Math.round(100 * s.trials_done / s.trials_total) : 0;
    document.getElementById("progress").style.width = pct + "%";
    document.getElementById("eta").textContent = pct + "%" + (s.status === "running" && s.eta_s !== null ? ", about " + fmtDuration(s.eta_s) + " left" : "");
    const notes = document.getElementById("notes");
    const lines = [...(s.error ? ["This study cannot be read: " + s.error] : []), ...(s.notes || [])];
    notes.replaceChildren(...lines.map(t => el("div", { cls: "banner " + (s.error ? "bad" : "warn"), text: t })));
    if (s.error && !report) {
      document.getElementById("report-header").replaceChildren(el("header", {}, [el("h1", { text: name }),
        el("p", { cls: "desc", text: "Broken: the study cannot be read; the reason is below. The other studies work as usual." })]));
    }
    document.title = name + " (" + s.trials_done + "/" + s.trials_total + ") · study serve";
  }

  function renderDownloads() {
    const links = ["trials", "epochs", "summary", "best", "comparisons", "paper", "claims", "importance", "curves"].map(t =>
      el("div", {}, [el("b", { text: t }), " ", el("a", { href: base + "/table/" + t + ".csv", text: "CSV" }), " ",
        el("a", { href: base + "/table/" + t + ".parquet", text: "Parquet" })]));
    links.push(el("div", {}, [el("a", { href: studyUrl(name) + "/report.html", text: "The static report (report.html, as last written by study report)" })]));
    document.getElementById("download-links").replaceChildren(...links);
  }

  async function refreshTrials(version) {
    if (version === trialsVersion) return;
    const body = await api(base + "/trials");
    if (body) { trials = body; trialsVersion = body.version; }
    buildFilters();
    if (report) applySelection();
  }

  async function refreshReport(summary) {
    if (summary.error) return;
    if (report && summary.report_version === report.version) return;
    renderReport(await api(base + "/report"));
  }

  renderDownloads();
  poll(async () => {
    const s = await api(base);
    renderSummary(s);
    await refreshTrials(s.version);
    await refreshReport(s);
    document.getElementById("report-state").textContent = report && s.version !== report.version ? "figures updating…" : "";
    ready();
  });
})();
