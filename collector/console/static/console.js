// The alert queue keeps itself current: every 15 s it fetches its rows again (same filters,
// same page) unless the officer has chosen alerts or is typing a note. No build step, no library.
"use strict";
(function () {
  const table = document.querySelector("table[data-refresh]");
  if (!table) return;
  const body = table.querySelector("tbody");
  const busy = () =>
    table.querySelector("input[type=checkbox]:checked") ||
    (document.activeElement && ["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement.tagName));
  async function refresh() {
    if (busy()) return;
    try {
      const answer = await fetch(table.dataset.refresh, { credentials: "same-origin" });
      if (answer.ok && !busy()) body.innerHTML = await answer.text();
    } catch (e) {
      /* the collector restarting: try again next time */
    }
  }
  setInterval(refresh, 15000);
})();
