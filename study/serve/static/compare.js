/* Compare: several studies side by side, from the same functions as `study compare`. */
"use strict";
(function () {
  const { api, el, poll, draw, ready } = Explorer;
  const names = (document.body.dataset.studies || "").split(",").filter(Boolean);
  const pick = document.getElementById("pick");
  for (const o of pick.options) o.selected = names.includes(o.value);
  document.getElementById("go").addEventListener("click", () => {
    const chosen = [...pick.selectedOptions].map(o => encodeURIComponent(o.value));
    location.href = "/compare?studies=" + chosen.join(",");
  });
  if (!names.length) { ready(); return; }
  let html = null;
  poll(async () => {
    const d = await api("/api/compare?studies=" + names.map(encodeURIComponent).join(","));
    const box = document.getElementById("compare");
    if (d.html !== html) {
      box.innerHTML = d.html;  // escaped by analysis.html
      html = d.html;
    }
    const target = box.querySelector("#best") || box;
    for (const f of d.figures) {
      const id = "fig-" + f.key.replace(/[^A-Za-z0-9_-]/g, "_");
      let div = document.getElementById(id);
      if (!div) { div = el("div", { cls: "plot", id: id }); target.appendChild(el("div", { cls: "fig" }, [div])); }
      await draw(div, f.figure);
    }
    if (d.skipped && d.skipped.length) box.prepend(el("p", { cls: "note", text: "No results yet: " + d.skipped.join(", ") }));
    ready();
  }, 10000);
})();
