/* The scorecard over every study of the storage, from the same functions as `study scorecard`. */
"use strict";
(function () {
  const { api, poll, ready } = Explorer;
  let html = null;
  poll(async () => {
    const d = await api("/api/scorecard");
    if (d.html !== html) {
      document.getElementById("scorecard").innerHTML = d.html;  // escaped by analysis.scorecard
      html = d.html;
    }
    ready();
  }, 10000);
})();
