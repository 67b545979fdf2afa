/* Key custody screens against the INTERFACES.md contract: GET /api/v1/keys, POST
   /api/v1/keys/unseal, POST /api/v1/keys/ceremonies, POST .../{id}/approve, GET /api/v1/jobs/{id}.
   Shown only when the server has those endpoints. */
"use strict";

(() => {
  const status = document.getElementById("keys-status");
  if (!status) return;
  const tbody = document.querySelector("#key-versions tbody");

  async function refresh() {
    const answer = await Ui.api("GET", "/ui/api/v1/keys");
    if (answer.status !== 200) { status.textContent = Ui.words(answer); return; }
    const keys = answer.body;
    status.textContent = keys.sealed
      ? `Sealed: ${keys.threshold} of ${keys.shares} custodians must enter their shares.`
      : `Unsealed. Shares: ${keys.shares}, threshold: ${keys.threshold}.`;
    document.getElementById("unseal-panel").hidden = !keys.sealed;
    tbody.replaceChildren();
    for (const v of keys.versions || []) {
      const tr = document.createElement("tr");
      const when = (text) => (text && !isNaN(Date.parse(text)) ? new Date(text).toLocaleString() : text);
      for (const value of [v.id, v.state, when(v.created_at), when(v.activated_at), `${v.age_days} days`,
                           when(v.rotation_due_at)]) {
        const td = document.createElement("td");
        td.textContent = value || "—";
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  document.getElementById("unseal").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const answer = await Ui.api("POST", "/ui/api/v1/keys/unseal", { share: form.share.value });
    form.share.value = "";
    if (answer.status !== 200) { Ui.toast(Ui.words(answer), "bad"); return; }
    const [k, t] = answer.body.progress || [0, 1];
    const bar = document.getElementById("unseal-progress");
    bar.max = t; bar.value = k;
    document.getElementById("unseal-words").textContent = answer.body.sealed ? `${k} of ${t} shares` : "Unsealed.";
    refresh();
  });

  function showCeremony(c) {
    const box = document.getElementById("ceremony");
    const approvals = (c.approvals || []).map((a) => a.user).join(", ") || "none yet";
    box.textContent = `Ceremony ${c.id} (${c.kind}): ${c.state}; approvals ${c.approvals.length} of ${c.needed} (${approvals}).`;
    document.getElementById("ceremony-id").value = c.id;
    if (c.job_id) Ui.followJob(c.job_id, document.getElementById("rotation-job")).then(refresh);
  }

  document.getElementById("start-ceremony").addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await Ui.api("POST", "/ui/api/v1/keys/ceremonies", { kind: event.target.kind.value });
    if (answer.status >= 400) { Ui.toast(Ui.words(answer), "bad"); return; }
    showCeremony(answer.body);
  });

  document.getElementById("approve-ceremony").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const answer = await Ui.api("POST", `/ui/api/v1/keys/ceremonies/${encodeURIComponent(form.id.value)}/approve`,
      { password: form.password.value });
    form.password.value = "";
    if (answer.status >= 400) { Ui.toast(Ui.words(answer), "bad"); return; }
    showCeremony(answer.body);
  });

  refresh();
})();
