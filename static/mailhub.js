// mailhub.js: the drop-in script for mailhub's server-side forms.
//
// <form data-mailhub method="post" action="https://mail.example.com/api/v1/forms/contact">
// <script src="https://mail.example.com/static/mailhub.js" defer></script>
//
// A marked form is posted as JSON instead of changing pages; field errors are
// shown next to their fields; the delivery status is followed live (SSE, else
// polling). What was typed, and the Idempotency-Key of a send, are kept in
// localStorage until the server says `success`, so a reload or a lost
// connection resumes the same send and never makes a second mail. Without the
// script (or when its messages cannot be loaded) the form posts as plain HTML.
// README: "Forms > The drop-in script".
"use strict";

(() => {
  const SCRIPT_URL = document.currentScript ? document.currentScript.src : document.baseURI;
  const STORAGE_PREFIX = "mailhub:form:";
  // The server keeps an Idempotency-Key for 24 h: a later resend could send twice.
  const KEPT_MS = 23 * 60 * 60 * 1000;
  const POLL_FIRST_MS = 1000;
  const POLL_MAX_MS = 15000;
  const FINAL = new Set(["success", "failed"]);
  // CAPTCHA widgets' own fields: a token is spent once, so a resend takes the current one.
  const TOKEN_FIELDS = ["cf-turnstile-response", "h-captcha-response", "g-recaptcha-response"];
  // The controls whose typed value comes back after a reload (never hidden or secret ones).
  const RESTORED = new Set(["text", "email", "tel", "url", "search", "number", "textarea", "select-one"]);
  const locales = new Map();
  let formsSeen = 0;

  // Texts: static/locales/<language>.json from where this script came: its "script" object,
  // and the "pages" object's field and error texts (shared with the built-in pages).

  function languageOf(form) {
    const wanted = form.dataset.mailhubLang || document.documentElement.lang || navigator.language || "en";
    const primary = wanted.toLowerCase().split("-")[0];
    return /^[a-z]{2,3}$/.test(primary) ? primary : "en";
  }

  function messagesFor(language) {
    if (!locales.has(language)) locales.set(language, loadMessages(language));
    return locales.get(language);
  }

  async function loadMessages(language) {
    for (const candidate of new Set([language, "en"])) {
      try {
        const response = await fetch(new URL(`locales/${candidate}.json`, SCRIPT_URL));
        const texts = response.ok ? await response.json() : null;
        if (texts && texts.script) return { script: texts.script, pages: texts.pages || {} };
      } catch (_) {
        // Try the next language; with none at all the form stays a plain HTML form.
      }
    }
    return null;
  }

  function fill(template, values) {
    // One pass: an inserted value is never read as a placeholder again.
    return template.replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context (https or localhost): a version 4 UUID by hand.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
  }

  function sameValues(a, b) {
    if (!a || !b) return false;
    const names = (values) => Object.keys(values).filter((name) => !TOKEN_FIELDS.includes(name));
    const [left, right] = [names(a), names(b)];
    return left.length === right.length && left.every((name) => a[name] === b[name]);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** A spent or refused token: ask the CAPTCHA widget (its provider's script) for a new one. */
  function resetCaptcha(form) {
    if (!TOKEN_FIELDS.some((name) => form.elements.namedItem(name))) return;
    for (const widget of [window.turnstile, window.hcaptcha, window.grecaptcha]) {
      try {
        if (widget && typeof widget.reset === "function") widget.reset();
      } catch (_) {
        // Not rendered (yet): the visitor can still complete it by hand.
      }
    }
  }

  // The draft: one localStorage record per form action.
  // {values, savedAt} while typing; + {key, body, sentAt} once sent; + {taskId, resultUrl} once
  // queued, or + {answered: true} once refused (a reload then does not send it again by itself).
  // The key is dropped only when the mail ends (success, failed) or the task is gone: sending the
  // same values again under it can never make a second mail.

  class Draft {
    constructor(action) {
      this.name = STORAGE_PREFIX + action;
    }

    load() {
      try {
        const record = JSON.parse(localStorage.getItem(this.name)) || {};
        if (Date.now() - (record.sentAt || record.savedAt || 0) < KEPT_MS) return record;
        this.clear();
      } catch (_) {
        // Storage unavailable (private mode) or a damaged record: start afresh.
      }
      return {};
    }

    save(record) {
      try {
        localStorage.setItem(this.name, JSON.stringify(record));
      } catch (_) {
        // Full or unavailable: the form still works, only without a draft.
      }
    }

    clear() {
      try {
        localStorage.removeItem(this.name);
      } catch (_) {
        // Nothing was kept.
      }
    }

    update(changes) {
      this.save({ ...this.load(), ...changes });
    }

    /** Keep the typed values, forget the send: its mail has ended. */
    forgetSend() {
      const { values, savedAt } = this.load();
      this.save({ values, savedAt });
    }
  }

  class MailhubForm {
    constructor(form) {
      this.form = form;
      this.number = ++formsSeen; // unique ids for the error slots of several forms
      // getAttribute: `form.action` is shadowed by a field named "action".
      this.action = new URL(form.getAttribute("action") || "", document.baseURI).href;
      this.draft = new Draft(this.action);
      this.language = languageOf(form);
      this.texts = null;
      this.messages = messagesFor(this.language).then((texts) => (this.texts = texts));
      this.busy = false;
      this.watching = 0; // bumped on each new follow: older streams and polls stop
      this.stopStream = () => {};
      this.lastSeq = 0;
      this.status = this.statusElement();
      form.addEventListener("submit", (event) => this.onSubmit(event));
      form.addEventListener("input", () => this.keepValues());
      window.addEventListener("online", () => this.resendWaiting());
      this.resume();
    }

    // Sending

    async onSubmit(event) {
      event.preventDefault();
      if (this.busy) return;
      if (!(await this.messages)) {
        HTMLFormElement.prototype.submit.call(this.form); // no messages to show: post as plain HTML
        return;
      }
      if (this.busy) return; // a second click while the texts loaded
      const values = this.collect();
      let record = this.draft.load();
      // The same values go again under the same key: the server queues them at most once.
      if (!(record.key && !record.taskId && sameValues(record.body, values))) {
        record = { key: newKey(), body: values, sentAt: Date.now() };
      }
      record = { ...record, values, savedAt: Date.now(), answered: false };
      this.draft.save(record);
      await this.post(record);
    }

    async post(record) {
      this.setBusy(true);
      this.clearErrors();
      this.show("sending", "sending");
      const body = { ...record.body, ...this.currentTokens() };
      let response;
      try {
        response = await fetch(this.action, {
          method: "POST",
          headers: {
            "Content-Type": "application/json",
            Accept: "application/json",
            "Accept-Language": this.language,
            "Idempotency-Key": record.key,
          },
          body: JSON.stringify(body),
        });
      } catch (_) {
        this.setBusy(false);
        this.show("offline", "error"); // no answer: a reload or the next Send tries again
        return;
      }
      const answer = await response.json().catch(() => null);
      if (response.ok && answer && answer.task_id) {
        const resultUrl = new URL(answer.result_url || this.resultPath(answer.task_id), this.action).href;
        this.draft.update({ taskId: answer.task_id, resultUrl });
        this.follow(answer.task_id, resultUrl);
        return;
      }
      this.setBusy(false);
      if (response.status >= 500) {
        this.show("server_error", "error"); // nothing was queued: a reload tries again
        return;
      }
      this.draft.update({ answered: true });
      this.showRefusal(response, answer);
      if (answer && answer.error && String(answer.error.code).startsWith("captcha_")) resetCaptcha(this.form);
    }

    resultPath(taskId) {
      return `../email/result?task_id=${encodeURIComponent(taskId)}`;
    }

    collect() {
      const values = {};
      for (const [name, value] of new FormData(this.form)) {
        // The first value of a repeated name, as the server takes it; files are not sent.
        if (typeof value === "string" && !(name in values)) values[name] = value;
      }
      return values;
    }

    currentTokens() {
      const tokens = {};
      for (const name of TOKEN_FIELDS) {
        const field = this.form.elements.namedItem(name);
        if (field && field.value) tokens[name] = field.value;
      }
      return tokens;
    }

    keepValues() {
      this.draft.save({ ...this.draft.load(), values: this.collect(), savedAt: Date.now() });
    }

    restoreValues(values) {
      for (const [name, value] of Object.entries(values || {})) {
        const field = this.form.elements.namedItem(name);
        if (field && RESTORED.has(field.type) && !TOKEN_FIELDS.includes(name)) field.value = value;
      }
    }

    /** After a reload: the typed values back; a queued task followed; an unanswered send resent. */
    async resume() {
      const record = this.draft.load();
      this.restoreValues(record.values);
      if (!record.key || (record.answered && !record.taskId)) return;
      this.setBusy(true); // no second send while the messages load
      if (!(await this.messages)) {
        this.setBusy(false);
        return;
      }
      if (record.taskId) {
        this.show("resuming", "pending");
        this.follow(record.taskId, record.resultUrl || new URL(this.resultPath(record.taskId), this.action).href);
      } else {
        await this.post(record);
      }
    }

    resendWaiting() {
      const record = this.draft.load();
      if (this.texts && !this.busy && record.key && !record.taskId && !record.answered) this.post(record);
    }

    setBusy(busy) {
      this.busy = busy;
      this.form.setAttribute("aria-busy", String(busy));
      for (const button of this.form.querySelectorAll("button:not([type=button]):not([type=reset]), input[type=submit]")) {
        button.disabled = busy;
      }
    }

    // Following the task: SSE, else polling with backoff

    follow(taskId, resultUrl) {
      const generation = ++this.watching;
      this.stopStream();
      this.lastSeq = 0;
      if (!("EventSource" in window)) {
        this.poll(resultUrl, generation);
        return;
      }
      const events = new URL(`events?task_id=${encodeURIComponent(taskId)}`, resultUrl);
      const source = new EventSource(events.href);
      this.stopStream = () => source.close();
      source.onmessage = (message) => {
        let doc;
        try {
          doc = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        if (FINAL.has(doc.status)) source.close();
        if (generation === this.watching) this.update(doc);
      };
      source.onerror = () => {
        source.close();
        if (generation === this.watching && this.busy) this.poll(resultUrl, generation);
      };
    }

    async poll(resultUrl, generation) {
      let delay = POLL_FIRST_MS;
      while (generation === this.watching && this.busy) {
        try {
          const response = await fetch(resultUrl, { cache: "no-store", headers: { Accept: "application/json" } });
          if (response.ok) {
            if (this.update(await response.json())) return;
          } else if (response.status === 404) {
            this.lost();
            return;
          }
        } catch (_) {
          // Offline for a moment: the next round tries again, a little later.
        }
        await sleep(delay);
        delay = Math.min(delay * 2, POLL_MAX_MS);
      }
    }

    /** Show a result document; true once it is final. */
    update(doc) {
      if (typeof doc.seq === "number") {
        if (doc.seq < this.lastSeq) return false; // polling may see an older state
        this.lastSeq = doc.seq;
      }
      if (doc.status === "success") {
        this.watching++;
        this.draft.clear();
        this.form.reset();
        resetCaptcha(this.form);
        this.setBusy(false);
        this.show("success", "success");
        return true;
      }
      if (doc.status === "failed") {
        this.watching++;
        this.draft.forgetSend(); // the values stay: the visitor may send again
        resetCaptcha(this.form); // the token was spent on this send
        this.setBusy(false);
        this.show("failed", "failed");
        return true;
      }
      this.show(doc.event === "attempt" || doc.event === "retry" ? doc.event : "queued", "pending");
      return false;
    }

    lost() {
      this.watching++;
      this.draft.forgetSend();
      this.setBusy(false);
      this.show("unknown_task", "error");
    }

    // What the visitor sees

    statusElement() {
      let element = this.form.querySelector("[data-mailhub-status]");
      if (!element) {
        element = document.createElement("p");
        element.setAttribute("data-mailhub-status", "");
        this.form.append(element);
      }
      element.classList.add("mailhub-status");
      element.setAttribute("role", "status");
      element.setAttribute("aria-live", "polite");
      element.hidden = true;
      return element;
    }

    show(name, state, values = {}) {
      const script = this.texts.script;
      this.showText(fill(script[name] || script.error, values), state);
    }

    showText(text, state) {
      this.status.textContent = text;
      this.status.dataset.mailhubState = state;
      this.status.hidden = false;
    }

    showRefusal(response, answer) {
      const error = (answer && answer.error) || {};
      if (response.status === 422 && error.fields) {
        const unplaced = this.showFieldErrors(error);
        if (unplaced.length) this.showText(unplaced.join(" "), "error");
        else this.show("field_errors", "error");
        return;
      }
      if (response.status === 429) {
        const seconds = Number.parseInt(response.headers.get("Retry-After"), 10);
        if (!(seconds > 0)) this.show("rate_limited_later", "error");
        else if (seconds <= 90) this.show("rate_limited", "error", { seconds });
        else this.show("rate_limited_minutes", "error", { minutes: Math.ceil(seconds / 60) });
        return;
      }
      // The built-in pages' texts for each error code; the server's own message is English.
      const pages = this.texts.pages;
      this.showText(pages[`error_${error.code}`] || pages.error_other || this.texts.script.error, "error");
    }

    /** Each message next to its field; returns the messages of fields the form lacks. */
    showFieldErrors(error) {
      const unplaced = [];
      let first = null;
      for (const [name, messages] of Object.entries(error.fields)) {
        const field = this.form.elements.namedItem(name);
        const control = field && field.nodeType === 1 ? field : field && field[0];
        if (!control) {
          unplaced.push(...messages);
          continue;
        }
        const slot = this.errorSlot(name, control);
        slot.textContent = this.fieldText(error, name, messages);
        slot.hidden = false;
        control.setAttribute("aria-invalid", "true");
        first = first || control;
      }
      if (first) first.focus();
      return unplaced;
    }

    /** The field's problem in the visitor's language (by its code), else the server's words. */
    fieldText(error, name, messages) {
      const code = (error.field_codes || {})[name];
      const template = code && this.texts.pages[`field_${code}`];
      const max = (error.field_max || {})[name];
      if (!template || (template.includes("{max}") && !max)) return messages.join(" ");
      return fill(template, { max });
    }

    errorSlot(name, control) {
      let slot = [...this.form.querySelectorAll("[data-mailhub-error]")].find(
        (element) => element.dataset.mailhubError === name,
      );
      if (!slot) {
        slot = document.createElement("p");
        slot.setAttribute("data-mailhub-error", name);
        control.insertAdjacentElement("afterend", slot);
      }
      slot.classList.add("mailhub-field-error");
      if (!slot.id) slot.id = `mailhub-${this.number}-${name}-error`;
      const described = (control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
      if (!described.includes(slot.id)) control.setAttribute("aria-describedby", [...described, slot.id].join(" "));
      return slot;
    }

    clearErrors() {
      for (const slot of this.form.querySelectorAll("[data-mailhub-error]")) {
        slot.hidden = true;
        slot.textContent = "";
      }
      for (const control of this.form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
    }
  }

  function start() {
    for (const form of document.querySelectorAll("form[data-mailhub]")) new MailhubForm(form);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
