// The mailhub demo form: submit, show field errors, then follow the task live
// over Server-Sent Events, or by polling the result endpoint when that fails.
"use strict";

(() => {
  const API = "/api/v1/email";
  const POLL_FIRST_MS = 500;
  const POLL_MAX_MS = 8000;

  const form = document.getElementById("contact");
  const send = document.getElementById("send");
  const formError = document.getElementById("form-error");
  const status = document.getElementById("status");
  const mode = document.getElementById("mode");
  const timeline = document.getElementById("timeline");
  const taskLabel = document.getElementById("task-id");

  let watching = 0; // bumped on each submit: older streams and polls stop
  let closeStream = () => {};
  let lastSeq = 0;
  let retryKey = null; // reused only when the last try got no answer at all

  loadConfig();
  form.addEventListener("submit", submit);
  form.addEventListener("input", () => { retryKey = null; });

  async function loadConfig() {
    try {
      const response = await fetch("/api/v1/demo-config");
      if (!response.ok) return;
      const config = await response.json();
      if (!form.elements.to.value) form.elements.to.value = config.recipient || "";
      if (config.inbox_url) {
        document.getElementById("inbox-link").href = config.inbox_url;
        document.getElementById("capture-note").hidden = false;
      }
    } catch (_) {
      // The form works without it; the recipient is simply not prefilled.
    }
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    const data = Object.fromEntries(new FormData(form));
    const key = retryKey || newKey();
    send.disabled = true;
    let response;
    try {
      response = await fetch(`${API}/received`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": key },
        body: JSON.stringify(data),
      });
    } catch (_) {
      retryKey = key; // sending again cannot make a second mail
      showFormError("Could not reach the server. Check your connection and send again.");
      send.disabled = false;
      return;
    }
    retryKey = null;
    send.disabled = false;
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      showErrors(answer, response);
      return;
    }
    follow(answer.task_id);
    // The answer is the queued state (transition 1); the stream may start later.
    render({ event: "queued", status: "pending", to: data.to, seq: 1,
      at: new Date().toISOString() });
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context (https or localhost).
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Errors

  function clearErrors() {
    formError.hidden = true;
    for (const element of form.querySelectorAll(".field-error")) {
      element.hidden = true;
      element.textContent = "";
    }
    for (const input of form.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
    }
  }

  function showErrors(answer, response) {
    const error = (answer && answer.error) || {};
    const fields = error.fields || {};
    let first = null;
    const other = [];
    for (const [name, messages] of Object.entries(fields)) {
      const input = form.elements[name];
      const slot = document.getElementById(`${name}-error`);
      if (!input || !slot) {
        other.push(...messages);
        continue;
      }
      slot.textContent = messages.join(" ");
      slot.hidden = false;
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
    if (first) {
      first.focus();
      if (other.length) showFormError(other.join(" "));
      return;
    }
    let message = error.message || `The server answered ${response.status}.`;
    const wait = response.headers.get("Retry-After");
    if (response.status === 429 && wait) message += ` Try again in ${wait} s.`;
    showFormError(message);
  }

  function showFormError(message) {
    formError.textContent = message;
    formError.hidden = false;
  }

  // Following a task

  function follow(taskId) {
    const generation = ++watching;
    closeStream();
    lastSeq = 0;
    timeline.replaceChildren();
    taskLabel.textContent = taskId;
    status.className = "card status";
    status.hidden = false;
    if (!("EventSource" in window)) {
      poll(taskId, generation,
        "Live updates are not available in this browser, so the page checks for news now and then.");
      return;
    }
    const source = new EventSource(`${API}/events?task_id=${encodeURIComponent(taskId)}`);
    closeStream = () => source.close();
    setMode("Live updates from the server.");
    source.onmessage = (message) => {
      const doc = JSON.parse(message.data);
      render(doc);
      if (isFinal(doc)) source.close();
    };
    source.onerror = () => {
      source.close();
      if (generation === watching && !status.classList.contains("done")) {
        poll(taskId, generation,
          "The live connection failed, so the page checks for news now and then.");
      }
    };
  }

  async function poll(taskId, generation, why) {
    setMode(why);
    let delay = POLL_FIRST_MS;
    while (generation === watching) {
      try {
        const url = `${API}/result?task_id=${encodeURIComponent(taskId)}`;
        const response = await fetch(url, { cache: "no-store" });
        if (response.ok) {
          const doc = await response.json();
          render(doc);
          if (isFinal(doc)) return;
        } else if (response.status === 404) {
          setMode("This task is unknown to the server (its result may have expired).");
          return;
        }
      } catch (_) {
        // Offline for a moment: the next round tries again, a little later.
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, POLL_MAX_MS);
    }
  }

  function setMode(text) {
    mode.textContent = text;
  }

  function isFinal(doc) {
    return doc.status === "success" || doc.status === "failed";
  }

  function render(doc) {
    // Polling may see a state twice, or miss one; each seq is shown once.
    if (doc.seq !== undefined && doc.seq <= lastSeq) return;
    lastSeq = doc.seq || lastSeq + 1;
    const item = document.createElement("li");
    const kind = doc.event || doc.status;
    item.className = `event-${kind}`;
    const text = document.createElement("span");
    text.textContent = describe(kind, doc);
    item.append(text);
    if (doc.at) {
      const time = document.createElement("time");
      time.dateTime = doc.at;
      time.textContent = new Date(doc.at).toLocaleTimeString();
      item.append(time);
    }
    timeline.append(item);
    if (isFinal(doc)) status.classList.add("done", doc.status);
  }

  function describe(kind, doc) {
    switch (kind) {
      case "queued":
        return `Queued for ${doc.to}`;
      case "attempt":
        return `Attempt ${doc.attempts}: sending…`;
      case "retry":
        return `Attempt ${doc.attempts} failed (${doc.last_error}); ` +
          `retry scheduled ${untilText(doc.next_attempt_at)}`;
      case "success":
        return `Delivered to ${doc.to}` +
          (doc.attempts > 1 ? ` on attempt ${doc.attempts}` : "");
      case "failed":
        return `Failed: ${doc.reason}`;
      case "requeued":
        return "Sent again by the site owner";
      default:
        return `Pending (attempts so far: ${doc.attempts})`;
    }
  }

  function untilText(when) {
    const seconds = (Date.parse(when) - Date.now()) / 1000;
    if (!Number.isFinite(seconds)) return "shortly";
    return seconds < 1 ? "in under a second" : `in ${Math.round(seconds)} s`;
  }
})();
