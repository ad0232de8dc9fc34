/* The index: every study of the storage, polled from /api/studies. */
"use strict";
(function () {
  const { api, el, studyUrl, fmtNum, fmtDuration, fmtTime, poll, ready, statusBadge } = Explorer;
  let rows = [];
  let sortKey = "updated", sortDir = -1;
  const selected = new Set();

  const family = document.getElementById("f-family");
  const status = document.getElementById("f-status");
  const text = document.getElementById("f-text");
  const compare = document.getElementById("compare-selected");

  function value(r, key) {
    if (key === "progress") return r.trials_total ? r.trials_done / r.trials_total : 0;
    if (key === "claims") return Object.values(r.claims || {}).reduce((a, b) => a + b, 0);
    const v = r[key];
    return v === null || v === undefined ? "" : v;
  }

  function claimsCell(claims) {
    const parts = Object.entries(claims || {}).map(([k, n]) => el("span", { cls: "verdict " + verdictClass(k), text: n + " " + k }));
    return parts.length ? parts : [el("span", { cls: "note", text: "—" })];
  }

  function verdictClass(k) {
    return /support/.test(k) ? "good" : /contradict/.test(k) ? "bad" : "open";
  }

  function render() {
    const fam = family.value, st = status.value, q = text.value.trim().toLowerCase();
    const shown = rows.filter(r =>
      (!fam || r.trainable === fam) && (!st || r.status === st) &&
      (!q || [r.name, r.trainable, r.data_source, r.status].join(" ").toLowerCase().includes(q)));
    shown.sort((a, b) => {
      const x = value(a, sortKey), y = value(b, sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir || (a.name < b.name ? -1 : 1);
    });
    const body = document.querySelector("#studies tbody");
    body.replaceChildren(...shown.map(r => {
      const pct = r.trials_total ? Math.round(100 * r.trials_done / r.trials_total) : 0;
      const box = el("input", { type: "checkbox", "aria-label": "select " + r.name });
      box.checked = selected.has(r.name);
      box.addEventListener("change", () => { box.checked ? selected.add(r.name) : selected.delete(r.name); updateCompare(); });
      const bar = el("span", { cls: "bar" }, [el("span", {})]);
      bar.firstChild.style.width = pct + "%";
      const eta = r.status === "running" && r.eta_s !== null ? "about " + fmtDuration(r.eta_s) + " left" : "";
      return el("tr", { "data-name": r.name, "data-status": r.status }, [
        el("td", {}, [box]),
        el("td", {}, [el("a", { href: studyUrl(r.name), text: r.name }), r.smoke ? el("span", { cls: "pill smoke", text: "smoke" }) : null,
          r.error ? el("div", { cls: "err-line", text: r.error }) : null]),
        el("td", { text: r.trainable || "—" }),
        el("td", { text: r.data_source || "—" }),
        el("td", {}, [statusBadge(r.status)]),
        el("td", { cls: "num" }, [el("span", { cls: "trials-done", text: r.trials_done }), " / " + r.trials_total,
          el("div", { cls: "note", text: r.trials_running + " running, " + r.trials_failed + " failed" })]),
        el("td", {}, [bar, el("div", { cls: "note", text: pct + "% " + eta })]),
        el("td", { cls: "num", text: r.best === null ? "—" : fmtNum(r.best, r.metric) + " " }, [el("span", { cls: "note", text: r.metric ? r.metric + " (" + r.mode + ")" : "" })]),
        el("td", {}, claimsCell(r.claims)),
        el("td", { text: fmtTime(r.updated) }),
      ]);
    }));
    document.getElementById("shown").textContent = shown.length + " of " + rows.length + " studies";
    document.getElementById("empty").hidden = rows.length > 0;
  }

  function updateCompare() {
    compare.disabled = selected.size < 1;
    compare.textContent = "Compare selected (" + selected.size + ")";
  }

  compare.addEventListener("click", () => {
    location.href = "/compare?studies=" + [...selected].map(encodeURIComponent).join(",");
  });
  for (const th of document.querySelectorAll("#studies th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      sortDir = key === sortKey ? -sortDir : 1;
      sortKey = key;
      render();
    });
  }
  for (const input of [family, status, text]) input.addEventListener("input", render);

  poll(async () => {
    rows = await api("/api/studies");
    const families = [...new Set(rows.map(r => r.trainable).filter(Boolean))].sort();
    const current = family.value;
    family.replaceChildren(el("option", { value: "", text: "all" }), ...families.map(f => el("option", { value: f, text: f })));
    family.value = families.includes(current) ? current : "";
    render();
    ready();
  });
  updateCompare();
})();
