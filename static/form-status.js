// The built-in thank-you page of mailhub's forms: follow the mail's status
// live over Server-Sent Events, or by polling the result when that fails.
// The texts come from the page (data-text-*), in the visitor's language.
"use strict";

(() => {
  const POLL_FIRST_MS = 1000;
  const POLL_MAX_MS = 8000;
  const box = document.getElementById("form-status");
  if (!box) return;
  const state = document.getElementById("form-state");
  const reason = document.getElementById("form-reason");
  const data = box.dataset;
  let finished = false;

  const swap = (hide, show) => {
    const a = document.getElementById(hide);
    const b = document.getElementById(show);
    if (a) a.hidden = true;
    if (b) b.hidden = false;
  };
  swap("form-follow", "form-live");

  function show(doc) {
    if (!doc || !doc.status || finished) return;
    box.classList.remove("pending", "success", "failed", "unknown");
    box.classList.add(doc.status);
    state.textContent = data[`text${doc.status[0].toUpperCase()}${doc.status.slice(1)}`] || "";
    if (doc.status === "failed" && doc.reason) {
      reason.textContent = doc.reason;
      reason.hidden = false;
    }
    if (doc.status !== "pending") {
      finished = true;
      const live = document.getElementById("form-live");
      if (live) live.hidden = true;
    }
  }

  function poll(delay) {
    if (finished) return;
    setTimeout(async () => {
      try {
        const response = await fetch(data.resultUrl, { headers: { Accept: "application/json" } });
        if (response.ok) show(await response.json());
        if (response.status === 404) return;
      } catch (_) {
        // The network may come back; keep trying, more slowly.
      }
      poll(Math.min(POLL_MAX_MS, delay * 2));
    }, delay);
  }

  if (!window.EventSource) {
    poll(POLL_FIRST_MS);
    return;
  }
  const events = new EventSource(data.eventsUrl);
  events.onmessage = (message) => {
    try {
      show(JSON.parse(message.data));
    } catch (_) {
      return;
    }
    if (finished) events.close();
  };
  events.onerror = () => {
    if (finished) return;
    events.close();
    poll(POLL_FIRST_MS);
  };
})();
