/* A trial page: configuration, status, learning curves, cost, error text, checkpoints (listed only). */
"use strict";
(function () {
  const { api, el, apiStudy, studyUrl, fmtNum, fmtDuration, poll, draw, ready } = Explorer;
  const name = document.body.dataset.study, tid = document.body.dataset.trial;
  document.getElementById("study-link").setAttribute("href", studyUrl(name));
  const url = apiStudy(name) + "/trial/" + encodeURIComponent(tid);
  const COSTS = ["step_time_s", "peak_mem_mb", "params", "flops"];

  function esc(s) { const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }
  function fmtBytes(n) { return n >= 1e9 ? (n / 1e9).toFixed(2) + " GB" : n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : (n / 1e3).toFixed(1) + " kB"; }
  function pairRows(table, pairs) {
    table.querySelector("tbody").replaceChildren(...pairs.map(([k, v]) => el("tr", {}, [el("th", { text: k }), el("td", { text: v })])));
  }

  let timer = null;
  async function refresh() {
    const d = await api(url);
    const t = d.trial;
    const facts = [["Status", t.status], ["Epochs done", t.epochs_done], ["Wall time", fmtDuration(t.wall_time_s)],
      ["Seed", t.seed], ["Failures (retried)", t.num_failures]];
    document.getElementById("facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v === null ? "—" : v })]));
    document.getElementById("error-section").hidden = !t.error;
    document.getElementById("error-text").textContent = t.error || "";
    pairRows(document.getElementById("config-table"), Object.entries(d.config).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]));
    const costs = [];
    for (const c of COSTS) for (const p of ["final_", "best_", ""]) if (t[p + c] !== undefined && t[p + c] !== null) costs.push([p + c, fmtNum(t[p + c])]);
    pairRows(document.getElementById("cost-table"), costs.length ? costs : [["—", "no cost metrics reported"]]);
    document.querySelector("#ckpt-table tbody").replaceChildren(...(d.checkpoints.length ? d.checkpoints.map(c =>
      el("tr", {}, [el("td", { text: c.name }), el("td", { cls: "num", text: c.files }), el("td", { cls: "num", text: fmtBytes(c.bytes) })]))
      : [el("tr", {}, [el("td", { colspan: 3, cls: "note", text: "no checkpoints on disk" })])]));
    const box = document.getElementById("curve-figs");
    const metrics = Object.keys(d.epochs).filter(k => k !== "epoch" && k !== "time_total_s");
    const groups = [metrics.filter(m => !/loss/.test(m) && !COSTS.includes(m)), metrics.filter(m => /loss/.test(m)), metrics.filter(m => COSTS.includes(m))];
    groups.forEach((ms, i) => {
      const id = "curve-" + i;
      let div = document.getElementById(id);
      if (!ms.length) { if (div) div.parentNode.remove(); return; }
      if (!div) { div = el("div", { cls: "plot", id: id }); box.appendChild(el("div", { cls: "fig" }, [div])); }
      draw(div, { data: ms.map(m => ({ x: d.epochs.epoch, y: d.epochs[m], name: esc(m), mode: "lines+markers", type: "scatter" })),
        layout: { title: { text: ["Metrics", "Losses", "Cost"][i], x: 0.01 }, height: 340, uirevision: id,
          margin: { l: 55, r: 15, t: 45, b: 40 }, xaxis: { title: { text: "epoch" } } } });
    });
    ready();
    if (!["RUNNING", "PENDING", "PAUSED"].includes(t.status) && timer) { clearInterval(timer); timer = null; }
  }
  timer = poll(refresh);
})();
