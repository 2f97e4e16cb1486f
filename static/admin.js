// The mailhub dashboard (/admin): the overview, the list of mail with filters, one
// mail's timeline, re-send and delete, kept current by the admin event stream.
// No framework. Every value from the server is inserted as text (textContent).
"use strict";

(() => {
  const API = "/api/v1/admin";
  const TOKEN_KEY = "mailhub-admin-token";
  const PAGE_SIZE = 50;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const ui = {
    live: $("live-state"), signOut: $("sign-out"), off: $("off"),
    login: $("login"), token: $("token"), loginError: $("login-error"),
    dashboard: $("dashboard"), sending: $("sending"), stats: $("stats"), chart: $("chart"),
    workers: $("workers"), alerts: $("alerts"), webhooksNote: $("webhooks-note"),
    webhooks: $("webhooks"), webhookRows: $("webhook-rows"), filters: $("filters"), tasksNote: $("tasks-note"), tasks: $("tasks"),
    more: $("more"), resendFailed: $("resend-failed"), detail: $("detail"),
    detailFields: $("detail-fields"), timeline: $("detail-timeline"), detailNote: $("detail-note"),
    resend: $("resend"), remove: $("delete"), closeDetail: $("close-detail"),
  };

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  const rows = new Map(); // task id -> its <tr>
  let cursor = null;
  let shown = null; // the task id in the detail panel
  let source = null;
  let retryDelay = 1000;
  const later = { list: null, overview: null, detail: null };
  // A list load answers with the state of when it was read: what the stream
  // brings meanwhile is applied again once it is shown, or a deleted mail
  // would come back and a finished one look pending.
  let loads = 0;
  let replay = [];

  class Refused extends Error {}

  ui.login.addEventListener("submit", (event) => {
    event.preventDefault();
    token = ui.token.value.trim();
    start(true);
  });
  ui.signOut.addEventListener("click", () => { forget(); showLogin(""); });
  ui.filters.addEventListener("submit", (event) => { event.preventDefault(); loadTasks(true); });
  ui.more.addEventListener("click", () => loadTasks(false));
  ui.resendFailed.addEventListener("click", resendFailed);
  ui.resend.addEventListener("click", resendShown);
  ui.remove.addEventListener("click", deleteShown);
  ui.closeDetail.addEventListener("click", () => { shown = null; ui.detail.hidden = true; });

  start(false);

  // Signing in

  async function start(typed) {
    let response;
    try {
      response = await fetch(`${API}/overview`, { headers: headers(), cache: "no-store" });
    } catch (_) {
      setLive("The server cannot be reached.");
      return;
    }
    if (response.status === 404) {
      ui.off.hidden = false;
      return;
    }
    if (response.status === 401) {
      forget();
      showLogin(typed ? "This token was refused." : "");
      return;
    }
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    ui.login.hidden = true;
    ui.dashboard.hidden = false;
    ui.signOut.hidden = !token;
    renderOverview(await response.json());
    loadTasks(true);
    connect();
  }

  function showLogin(error) {
    stopLive();
    ui.dashboard.hidden = true;
    ui.signOut.hidden = true;
    ui.login.hidden = false;
    ui.loginError.textContent = error;
    ui.loginError.hidden = !error;
    if (error) ui.token.setAttribute("aria-invalid", "true");
    else ui.token.removeAttribute("aria-invalid");
    ui.token.value = "";
    ui.token.focus();
  }

  function forget() {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
  }

  function headers(extra) {
    return Object.assign(token ? { Authorization: `Bearer ${token}` } : {}, extra || {});
  }

  async function api(method, path, body) {
    const options = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
    if (body) options.body = JSON.stringify(body);
    const response = await fetch(API + path, options);
    if (response.status === 401) {
      forget();
      showLogin("The token is no longer accepted.");
      throw new Refused();
    }
    const answer = response.status === 204 ? null : await response.json().catch(() => null);
    return { status: response.status, answer };
  }

  // Live updates

  async function connect() {
    stopLive();
    let ticket = "";
    try {
      const { status, answer } = await api("POST", "/events/ticket");
      if (status !== 200) throw new Error(`ticket: ${status}`);
      ticket = answer.ticket;
    } catch (error) {
      if (!(error instanceof Refused)) reconnectSoon();
      return;
    }
    source = new EventSource(`${API}/events?ticket=${encodeURIComponent(ticket)}`);
    source.addEventListener("ready", () => {
      retryDelay = 1000;
      setLive("Live: updates as they happen.");
      loadTasks(true); // what happened before the stream listened
      loadOverview();
    });
    source.addEventListener("message", (message) => applyEvent(JSON.parse(message.data)));
    source.addEventListener("deleted", (message) => removeTask(JSON.parse(message.data).task_id));
    source.addEventListener("resync", () => { loadTasks(true); loadOverview(); });
    source.onerror = () => { stopLive(); reconnectSoon(); };
  }

  function stopLive() {
    if (source) source.close();
    source = null;
  }

  function reconnectSoon() {
    setLive("Live updates lost; reconnecting…");
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  }

  function setLive(text) {
    ui.live.textContent = text;
  }

  function soon(what, action, ms) {
    if (later[what]) return;
    later[what] = setTimeout(() => { later[what] = null; action(); }, ms);
  }

  function applyEvent(doc) {
    if (loads) replay.push(() => applyEvent(doc));
    const row = rows.get(doc.task_id);
    const wanted = ui.filters.elements.status.value;
    if (row) {
      if (wanted && doc.status !== wanted) removeRow(doc.task_id);
      else updateRow(row, doc);
    } else if (!wanted || doc.status === wanted) {
      soon("list", () => loadTasks(true), 500); // a task this page does not show yet
    }
    if (doc.task_id === shown) soon("detail", () => showDetail(shown), 300);
    soon("overview", loadOverview, 2000);
  }

  // The overview

  async function loadOverview() {
    try {
      const { status, answer } = await api("GET", "/overview");
      if (status === 200) renderOverview(answer);
    } catch (_) {
      // Shown again at the next event or reconnect.
    }
  }

  function renderOverview(view) {
    const sending = view.sending;
    ui.sending.className = `sending ${sending.paused ? "paused" : "running"}`;
    ui.sending.textContent = sending.paused
      ? `Sending is paused: ${sending.reason}`
      : sending.capture_mode ? "Capture mode: mail is kept in the dev inbox, not delivered."
        : "Sending works.";
    const q = view.queue;
    const hour = view.tasks.last_hour;
    const day = view.tasks.last_day;
    const stats = [
      ["Waiting", q.waiting], ["Sending now", q.in_flight], ["Retries waiting", q.retries_waiting],
      ["Oldest pending", q.oldest_pending_seconds === null ? "none" : ago(q.oldest_pending_seconds)],
      ["Last hour", `${hour.success} delivered, ${hour.failed} failed`],
      ["Last day", `${day.success} delivered, ${day.failed} failed`],
    ];
    ui.stats.replaceChildren(...stats.map(([name, value]) => {
      const item = element("div", "stat");
      item.append(element("dt", "", name), element("dd", "", String(value)));
      return item;
    }));
    drawChart(view.per_minute);
    ui.workers.replaceChildren(...view.workers.map((worker) => {
      const row = element("tr");
      row.append(element("td", "", worker.name), element("td", "", String(worker.holding)),
        element("td", "", ago(worker.idle_seconds)));
      return row;
    }));
    if (!view.workers.length) {
      const row = element("tr");
      const cell = element("td", "", "No worker is running.");
      cell.colSpan = 3;
      row.append(cell);
      ui.workers.append(row);
    }
    renderNotifications(view.webhooks, view.alerts);
  }

  function renderNotifications(webhooks, alerts) {
    ui.alerts.textContent = alerts
      ? `Alert mails go to ${alerts.email}: ${alerts.notices_waiting} pause or resume notices and ` +
        `${alerts.failures_waiting} failed mails wait for the next one.`
      : "Alert mails are off (ALERT_EMAIL).";
    if (!webhooks || !webhooks.configured) {
      ui.webhooksNote.textContent = "Webhooks are off (WEBHOOK_URL).";
      ui.webhooks.hidden = true;
      return;
    }
    ui.webhooksNote.textContent = webhooks.next_attempt_at
      ? `Next webhook attempt: ${new Date(webhooks.next_attempt_at).toLocaleString()}.` : "";
    ui.webhooks.hidden = false;
    ui.webhookRows.replaceChildren(...webhooks.endpoints.map((endpoint) => {
      const row = element("tr");
      // The last error with its time: a later success does not clear it, so it is dated.
      const error = endpoint.last_error
        ? `${endpoint.last_error} (${new Date(endpoint.last_failure_at).toLocaleString()})` : "";
      row.append(element("td", "col-subject", endpoint.url), element("td", "", String(endpoint.pending)),
        element("td", "", String(endpoint.delivered)), element("td", "", String(endpoint.failed_attempts)),
        element("td", "", String(endpoint.dropped)), element("td", "col-detail", error));
      return row;
    }));
  }

  function drawChart(perMinute) {
    const width = 900;
    const height = 150;
    const bottom = height - 16;
    const top = 12;
    const minutes = perMinute.success.length;
    const most = Math.max(1, ...perMinute.success.map((n, i) => n + perMinute.failed[i]));
    const scale = (bottom - top) / most;
    const slot = width / minutes;
    const start = Date.parse(perMinute.start);
    const parts = [svg("line", { x1: 0, x2: width, y1: bottom, y2: bottom, class: "axis" })];
    for (let i = 0; i < minutes; i++) {
      const sent = perMinute.success[i];
      const failed = perMinute.failed[i];
      const group = svg("g", {});
      const title = svg("title", {});
      const when = new Date(start + i * 60000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      title.textContent = `${when}: ${sent} delivered, ${failed} failed`;
      group.append(title);
      const x = i * slot + 1;
      group.append(svg("rect", { x, width: slot - 2, y: bottom - sent * scale, height: sent * scale,
        class: "bar-sent" }));
      group.append(svg("rect", { x, width: slot - 2, y: bottom - (sent + failed) * scale,
        height: failed * scale, class: "bar-failed" }));
      parts.push(group);
    }
    parts.push(label(0, height - 2, "start", "60 min ago"), label(width, height - 2, "end", "now"),
      label(0, 10, "start", `${most} per minute`));
    ui.chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
    ui.chart.replaceChildren(...parts);
  }

  function label(x, y, anchor, text) {
    const node = svg("text", { x, y, "text-anchor": anchor, class: "chart-label" });
    node.textContent = text;
    return node;
  }

  function svg(name, attributes) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    return node;
  }

  // The list of mail

  async function loadTasks(fromTop) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const status = ui.filters.elements.status.value;
    const to = ui.filters.elements.to.value.trim();
    if (status) query.set("status", status);
    if (to) query.set("to", to);
    if (!fromTop && cursor) query.set("cursor", cursor);
    loads += 1;
    try {
      await showTasks(fromTop, query);
    } finally {
      loads -= 1;
      if (!loads) {
        const missed = replay;
        replay = [];
        for (const apply of missed) apply();
      }
    }
  }

  async function showTasks(fromTop, query) {
    let result;
    try {
      result = await api("GET", `/tasks?${query}`);
    } catch (_) {
      return;
    }
    if (result.status !== 200) {
      const error = (result.answer && result.answer.error) || {};
      ui.tasksNote.textContent = error.message || `The server answered ${result.status}.`;
      return;
    }
    if (fromTop) {
      rows.clear();
      ui.tasks.replaceChildren();
    }
    for (const task of result.answer.tasks) addRow(task);
    cursor = result.answer.next_cursor;
    ui.more.hidden = !cursor;
    ui.tasksNote.textContent = rows.size ? "" : "No mail here.";
  }

  function addRow(task) {
    if (rows.has(task.task_id)) return;
    const row = element("tr", "task");
    row.dataset.taskId = task.task_id;
    row.tabIndex = 0;
    for (const name of ["at", "status", "to", "subject", "attempts", "detail"]) {
      row.append(element("td", `col-${name}`));
    }
    row.addEventListener("click", () => showDetail(task.task_id));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") showDetail(task.task_id); });
    rows.set(task.task_id, row);
    ui.tasks.append(row);
    updateRow(row, task);
  }

  function updateRow(row, doc) {
    if (doc.seq < Number(row.dataset.seq || 0)) return; // older than what the row shows
    row.dataset.seq = String(doc.seq);
    const cell = (name) => row.querySelector(`.col-${name}`);
    cell("at").textContent = new Date(doc.at).toLocaleString();
    const status = cell("status");
    status.textContent = doc.status;
    status.className = `col-status status-${doc.status}`;
    if (doc.subject !== undefined) {
      cell("to").textContent = doc.to;
      cell("subject").textContent = doc.subject;
    }
    cell("attempts").textContent = String(doc.attempts);
    if (doc.detail !== undefined || doc.event === "requeued") cell("detail").textContent = doc.detail || "";
    row.dataset.status = doc.status;
  }

  function removeRow(taskId) {
    const row = rows.get(taskId);
    if (row) row.remove();
    rows.delete(taskId);
    if (!rows.size) ui.tasksNote.textContent = "No mail here.";
  }

  function removeTask(taskId) {
    if (loads) replay.push(() => removeTask(taskId));
    removeRow(taskId);
    if (taskId === shown) {
      shown = null;
      ui.detail.hidden = true;
    }
    soon("overview", loadOverview, 2000);
  }

  async function resendFailed() {
    const since = new Date(Date.now() - 86400000).toISOString();
    if (!confirm("Re-send every mail that failed in the last 24 hours?")) return;
    try {
      const { status, answer } = await api("POST", "/tasks/resend", { status: "failed", since });
      ui.tasksNote.textContent = status === 200
        ? `${answer.requeued} sent again${answer.remaining ? `; ${answer.remaining} more: press again` : ""}.`
        : (answer && answer.error && answer.error.message) || `The server answered ${status}.`;
    } catch (_) {
      // Refused: the login form says so.
    }
  }

  // One mail

  async function showDetail(taskId) {
    let result;
    try {
      result = await api("GET", `/tasks/${encodeURIComponent(taskId)}`);
    } catch (_) {
      return;
    }
    if (result.status === 404) {
      removeTask(taskId);
      return;
    }
    const task = result.answer;
    shown = taskId;
    ui.detail.hidden = false;
    const fields = [
      ["Status", task.status], ["To", task.to], ["Reply-To", task.reply_to], ["Subject", task.subject],
      ["Accepted", new Date(task.created_at).toLocaleString()], ["Attempts", String(task.attempts)],
      ["Re-sent", task.resends ? `${task.resends} time(s)` : ""], ["Message-ID", task.message_id],
      ["Last error", task.detail], ["Task", task.task_id],
    ];
    ui.detailFields.replaceChildren(...fields.filter(([, value]) => value).map(([name, value]) => {
      const item = element("div");
      item.append(element("dt", "", name), element("dd", "", value));
      return item;
    }));
    ui.timeline.replaceChildren(...timelineItems(task.timeline));
    ui.resend.disabled = task.status !== "failed";
    ui.detailNote.textContent = "";
  }

  function timelineItems(timeline) {
    const items = [];
    let previous = 0;
    for (const step of timeline) {
      if (previous && step.seq > previous + 1) {
        items.push(element("li", "gap", `… ${step.seq - previous - 1} earlier events not kept`));
      }
      previous = step.seq;
      const item = element("li", `event-${step.event}`);
      let text = `${step.event} (attempts: ${step.attempts})`;
      if (step.detail) text += `: ${step.detail}`;
      item.append(element("span", "", text));
      const time = element("time", "", new Date(step.at).toLocaleString());
      time.dateTime = step.at;
      item.append(time);
      items.push(item);
    }
    return items;
  }

  async function resendShown() {
    if (!shown) return;
    const taskId = shown;
    try {
      const { status, answer } = await api("POST", `/tasks/${encodeURIComponent(taskId)}/resend`);
      if (status === 200) {
        ui.detailNote.textContent = "Queued again.";
        ui.resend.disabled = true;
        const row = rows.get(taskId);
        if (row) updateRow(row, answer);
      } else {
        ui.detailNote.textContent = (answer && answer.error && answer.error.message) || `Refused (${status}).`;
      }
    } catch (_) {
      // Refused: the login form says so.
    }
  }

  async function deleteShown() {
    if (!shown) return;
    const taskId = shown;
    if (!confirm("Delete this mail and everything kept about it?")) return;
    try {
      const { status, answer } = await api("DELETE", `/tasks/${encodeURIComponent(taskId)}`);
      if (status === 204 || status === 404) removeTask(taskId);
      else ui.detailNote.textContent = (answer && answer.error && answer.error.message) || `Refused (${status}).`;
    } catch (_) {
      // Refused: the login form says so.
    }
  }

  // Helpers

  function element(name, className, text) {
    const node = document.createElement(name);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function ago(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
    return `${Math.round(seconds / 86400)} days`;
  }
})();
