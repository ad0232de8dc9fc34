/* Shared helpers of the explorer's pages. No inline script anywhere (strict CSP): every page loads
   this file and its own. Text from a study is put into the page with textContent only; HTML comes
   only from the server's report functions, which escape every string they are given. */
"use strict";

const Explorer = (function () {
  const POLL_MS = 5000;

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options || {}));
    if (response.status === 304) return null;
    let body = null;
    try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
    if (!response.ok) {
      const err = new Error((body && body.error) || response.statusText);
      err.status = response.status;
      throw err;
    }
    return body;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "cls") node.className = v;
      else if (k === "href") node.setAttribute("href", safeHref(v));
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  function safeHref(v) {  // only same-origin paths and fragments
    const s = String(v);
    return s.startsWith("/") && !s.startsWith("//") || s.startsWith("#") || s.startsWith("?") ? s : "#";
  }

  function studyUrl(name) { return "/study/" + encodeURIComponent(name); }
  function apiStudy(name) { return "/api/study/" + encodeURIComponent(name); }

  function fmtNum(v, metric) {
    if (v === null || v === undefined || Number.isNaN(v)) return "—";
    if (typeof v !== "number") return String(v);
    if (metric && /acc/.test(metric) && Math.abs(v) <= 1) return (100 * v).toFixed(2) + "%";
    if (Math.abs(v) >= 1e4 && Number.isInteger(v)) return v.toLocaleString("en");
    return Number(v.toPrecision(4)).toString();
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "";
    s = Math.round(s);
    if (s >= 86400) return Math.floor(s / 86400) + "d" + String(Math.floor((s % 86400) / 3600)).padStart(2, "0") + "h";
    if (s >= 3600) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString("en-GB", { hour12: false });
  }

  function live(text, ok) {
    const node = document.getElementById("live");
    if (!node) return;
    node.textContent = text;
    node.className = "live " + (ok ? "ok" : "bad");
  }

  /* Calls fn now and every POLL_MS; a failed call is shown in the top bar and retried. */
  function poll(fn, ms) {
    let busy = false;
    async function tick() {
      if (busy) return;
      busy = true;
      try {
        await fn();
        live("live · " + new Date().toLocaleTimeString("en-GB", { hour12: false }), true);
      } catch (e) {
        live("not refreshed: " + e.message, false);
      } finally {
        busy = false;
      }
    }
    tick();
    return setInterval(tick, ms || POLL_MS);
  }

  const FIGURE_CONFIG = { displaylogo: false, responsive: true };

  function draw(div, fig) {  // Plotly.react keeps zoom and selections: layout.uirevision is the figure key
    return Plotly.react(div, fig.data || [], fig.layout || {}, FIGURE_CONFIG);
  }

  function ready() {  // a marker the browser tests wait on
    document.body.dataset.ready = "1";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  }

  function statusBadge(status) {
    return el("span", { cls: "status-badge " + String(status).replace(/\s+/g, "-"), text: status });
  }

  return { api, el, studyUrl, apiStudy, fmtNum, fmtDuration, fmtTime, poll, draw, ready, statusBadge, live };
})();
