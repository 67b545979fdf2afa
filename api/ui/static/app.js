/* siprec-server web interface: the small behaviour every page shares. No framework, no
   inline script (the Content-Security-Policy forbids it): this file is loaded with defer.
   Changes go to the API mounted under /ui/api/v1 with the session's CSRF token. */
"use strict";

const Ui = (() => {
  const meta = (name) => {
    const el = document.querySelector(`meta[name="${name}"]`);
    return el ? el.getAttribute("content") : "";
  };
  const csrf = meta("csrf-token");

  function toast(text, kind) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = text;
    box.className = "toast show " + (kind || "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.className = "toast"; }, 8000);
  }

  let idleTimer = null;
  function touch() {
    const seconds = parseInt(meta("idle-timeout"), 10);
    if (!seconds) return;
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      const audio = document.getElementById("audio");
      if (audio && !audio.paused) { touch(); return; }  // playing keeps the session alive
      window.location.assign("/ui/login?expired=1");
    }, seconds * 1000 + 2000);
  }

  /* One call of the API; resolves to {status, body}; a dead session goes to the log-in. */
  async function api(method, url, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      return { status: 0, body: { error: { words: "The server cannot be reached. Check the network and try again." } } };
    }
    touch();
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (response.status === 401) {
      window.location.assign("/ui/login?expired=1");
    }
    return { status: response.status, body: data };
  }

  function words(answer) {
    const err = answer.body && answer.body.error;
    if (!err) return "The request could not be completed.";
    return err.words || err.message || "The request could not be completed.";
  }

  function localTimes(root) {
    for (const el of (root || document).querySelectorAll("time[datetime]")) {
      const when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) {
        el.title = el.getAttribute("datetime");
        el.textContent = when.toLocaleString();
      }
    }
  }

  function sortable(table) {
    const buttons = table.querySelectorAll("thead button[data-sort]");
    buttons.forEach((button, column) => {
      button.addEventListener("click", () => {
        const th = button.closest("th");
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const index = Array.from(th.parentNode.children).indexOf(th);
        const rows = Array.from(table.tBodies[0].rows);
        const key = (row) => {
          const cell = row.cells[index];
          const value = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
          return button.dataset.sort === "number" ? parseFloat(value) : value.toLowerCase();
        };
        rows.sort((a, b) => {
          const x = key(a), y = key(b);
          return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
        });
        rows.forEach((row) => table.tBodies[0].appendChild(row));
      });
    });
  }

  /* A form's fields as the JSON body the API expects: data-list fields become lists,
     data-optional ones are left out when empty, "a.b" names nest. */
  function formBody(form) {
    if (form.dataset.body) return JSON.parse(form.dataset.body);
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.type === "submit" || el.type === "button") continue;
      let value = el.type === "checkbox" ? el.checked : el.value.trim();
      if (el.hasAttribute("data-optional") && value === "") continue;
      if (el.hasAttribute("data-list")) value = value.split(/[\s,]+/).filter(Boolean);
      const path = el.name.split(".");
      let target = body;
      while (path.length > 1) { const k = path.shift(); target = target[k] = target[k] || {}; }
      target[path[0]] = value;
    }
    return body;
  }

  /* Follows a background job (retention run, subject request, rotation) to its end. */
  async function followJob(jobId, box) {
    box.hidden = false;
    const bar = box.querySelector("progress");
    const text = box.querySelector(".job-words");
    const result = box.querySelector(".job-result");
    for (;;) {
      const answer = await api("GET", `/ui/api/v1/jobs/${encodeURIComponent(jobId)}`);
      if (answer.status !== 200) { text.textContent = words(answer); return null; }
      const job = answer.body;
      if (job.total) { bar.max = job.total; bar.value = job.done; }
      else { bar.removeAttribute("value"); }
      text.textContent = job.state === "done" ? "Finished." :
        job.state === "failed" ? `Failed: ${job.error || "see the server log"}` :
        job.state === "queued" ? "Waiting to start…" :
        `Working: ${job.done} of ${job.total || "?"}`;
      if (job.state === "done" || job.state === "failed") {
        bar.max = 1; bar.value = 1;
        if (result) result.replaceChildren(describe(job.result));
        return job;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  function describe(value) {
    if (value === null || value === undefined) return document.createTextNode("");
    if (typeof value !== "object") return document.createTextNode(String(value));
    const dl = document.createElement("dl");
    dl.className = "result";
    for (const [k, v] of Object.entries(value)) {
      const dt = document.createElement("dt");
      dt.textContent = k.replaceAll("_", " ");
      const dd = document.createElement("dd");
      dd.appendChild(describe(v));
      dl.append(dt, dd);
    }
    return dl;
  }

  async function submitApi(el, body) {
    if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
    const answer = await api(el.dataset.api, el.dataset.href, body);
    if (answer.status >= 400 || answer.status === 0) { toast(words(answer), "bad"); return; }
    const jobId = answer.body.job_id || (answer.body.kind && answer.body.state && answer.body.id);
    if (el.dataset.job && jobId) {
      const job = await followJob(jobId, document.getElementById(el.dataset.job));
      if (el.id === "retention-dry-run" && job && job.state === "done" && job.result) {
        const run = document.getElementById("retention-run");
        const total = job.result.total || 0;
        const held = job.result.held || 0;
        const words = document.querySelector("#retention-job .job-words");
        words.textContent = `Dry run finished: ${total} recording${total === 1 ? "" : "s"} would be erased` +
          (held ? `, ${held} kept by legal holds.` : ". Nothing was erased.");
        if (run && total > 0) {
          run.dataset.confirm = `Erase the ${total} expired recording${total === 1 ? "" : "s"} the dry run found? This cannot be undone.`;
          run.hidden = false;
        }
      }
      return;
    }
    if (el.dataset.show && answer.body[el.dataset.show]) {
      const out = document.getElementById(el.id + "-result");
      out.textContent = `Created. The password, shown only now: ${answer.body[el.dataset.show]}`;
      return;
    }
    toast(answer.status === 202 ? "Recorded: it now waits for a second user's approval." : "Done.", "ok");
    setTimeout(() => window.location.reload(), 600);
  }

  function wireApiControls() {
    for (const form of document.querySelectorAll("form[data-api]")) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        if (form.hasAttribute("data-needs-count") && form.dataset.counted !== "yes") {
          toast("Count the person's recordings first, so you know what the request covers.", "bad");
          return;
        }
        submitApi(form, formBody(form));
      });
    }
    for (const button of document.querySelectorAll("button[data-api]")) {
      button.addEventListener("click", () =>
        submitApi(button, button.dataset.body ? JSON.parse(button.dataset.body) : undefined));
    }
  }

  function wireSubjectCount() {
    const button = document.getElementById("subject-count");
    if (!button) return;
    const form = button.closest("form");
    const out = document.getElementById("subject-count-words");
    form.participant.addEventListener("input", () => { form.dataset.counted = "no"; });
    button.addEventListener("click", async () => {
      const who = form.participant.value.trim();
      if (!who) { out.textContent = "Enter a number or address first."; return; }
      const answer = await api("GET", "/ui/api/v1/recordings?" +
        new URLSearchParams({ participant: who, limit: "500" }));
      if (answer.status !== 200) { out.textContent = words(answer); return; }
      const n = answer.body.items.length;
      const more = answer.body.next_cursor ? " or more" : "";
      const held = form.kind.value === "erasure" ? " Recordings under a legal hold are refused, not erased." : "";
      out.textContent = `${n}${more} recording${n === 1 ? "" : "s"} found (dry run: nothing changed).${held}`;
      form.dataset.counted = "yes";
    });
  }

  function wireAnnotations() {
    const form = document.getElementById("annotate");
    if (form) {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const id = form.dataset.recording;
        const answer = await api("POST", `/ui/api/v1/recordings/${id}/annotations`,
          { kind: form.kind.value, value: form.value.value.trim() });
        if (answer.status !== 201) { toast(words(answer), "bad"); return; }
        window.location.reload();
      });
    }
    for (const button of document.querySelectorAll("[data-remove-annotation]")) {
      button.addEventListener("click", async () => {
        const id = document.getElementById("annotate").dataset.recording;
        const answer = await api("DELETE", `/ui/api/v1/recordings/${id}/annotations`,
          { id: button.dataset.removeAnnotation });
        if (answer.status !== 200) { toast(words(answer), "bad"); return; }
        window.location.reload();
      });
    }
  }

  function wireErase() {
    const form = document.getElementById("erase");
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const reason = form.reason.value.trim();
      if (!reason) { toast("Give a reason: it goes into the audit trail.", "bad"); return; }
      if (!window.confirm("Erase this recording for good? This cannot be undone.")) return;
      const answer = await api("DELETE", `/ui/api/v1/recordings/${form.dataset.recording}`, { reason });
      if (answer.status !== 200) { toast(words(answer), "bad"); return; }
      window.location.reload();
    });
  }

  async function keyBanner() {
    if (meta("keys-api") !== "1") return;
    const answer = await api("GET", "/ui/api/v1/keys");
    if (answer.status !== 200) return;
    const banner = document.getElementById("key-banner");
    const soon = Date.now() + 30 * 86400 * 1000;
    const due = (answer.body.versions || []).filter((v) => v.state === "active" && v.rotation_due_at &&
      Date.parse(v.rotation_due_at) < soon);
    if (answer.body.sealed) {
      banner.textContent = "The key store is sealed: recordings cannot be played or written until custodians unseal it.";
      banner.hidden = false;
    } else if (due.length) {
      banner.textContent = `The master key reaches the end of its cryptoperiod on ${new Date(due[0].rotation_due_at).toLocaleDateString()}: start a rotation.`;
      banner.hidden = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const offset = String(-new Date().getTimezoneOffset());
    for (const el of document.querySelectorAll("input[data-tz]")) el.value = offset;
    localTimes();
    document.querySelectorAll("table.sortable").forEach(sortable);
    wireApiControls();
    wireSubjectCount();
    wireAnnotations();
    wireErase();
    keyBanner();
    touch();
  });

  return { api, words, toast, followJob, touch };
})();
