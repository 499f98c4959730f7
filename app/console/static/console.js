// The smedit console: sign in with a key, then one page per task (submit, queue, history,
// versions, review, KPIs), each a thin view over the /v1 API. Text from the service is always
// put in the page with textContent, never as HTML.

import { Api, ApiError } from "./api.js";
import { lineChart } from "./charts.js";

const KEY_STORAGE = "smedit.apiKey";
const PAGES = ["submit", "queue", "history", "versions", "review", "kpis"];
const PAGE_SIZE = 25;
let batch = 64; // facts per POST /v1/edits when uploading: the service's max_batch once signed in (GET /v1/model)

const $ = (selector) => document.querySelector(selector);
let api = null;
let me = null;
let refreshTimer = null;
const offsets = { history: 0, versions: 0 };

// ---- small helpers --------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

const pct = (v) => (v === null || v === undefined ? "—" : `${Math.round(v * 100)}%`);
const secs = (v) => (v === null || v === undefined ? "—" : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} s`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const statusBadge = (status) => el("span", { class: "status", dataset: { status } }, status);

function can(scope) {
  return Boolean(me) && (me.scopes.includes("admin") || me.scopes.includes(scope));
}

function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.textContent = ""; }, 6000);
}

function fail(err) {
  if (err instanceof ApiError && err.status === 401) return signOut("Your key is no longer valid: sign in again.");
  toast(err instanceof ApiError ? `Error ${err.status || ""}: ${err.message}` : String(err));
}

// A modal asking to confirm an action, with a reason field; resolves to the reason or null.
function confirmAction(title, text) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-reason").value = "";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? $("#confirm-reason").value.trim() : null);
    }, { once: true });
  });
}

// ---- sign in --------------------------------------------------------------------------------
async function signIn(key) {
  const candidate = new Api(key);
  me = await candidate.get("/v1/keys/me");
  api = candidate;
  if (can("read")) {  // upload chunks as large as this service takes (its SMEDIT_MAX_BATCH)
    candidate.get("/v1/model").then((m) => {
      batch = m.limits?.max_batch || batch;
      $("#upload-batch").textContent = String(batch);
    }, () => {});
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#who-name").textContent = me.name;
  $("#who-scopes").textContent = `(${me.scopes.join(", ")})`;
  for (const node of document.querySelectorAll("[data-scope]")) {
    const allowed = can(node.dataset.scope);
    node.hidden = node.classList.contains("needs-scope") ? allowed : !allowed;
  }
  $("#sign-in").hidden = true;
  $("#who").hidden = $("#nav").hidden = $("#main").hidden = false;
  route();
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  api = me = null;
  clearInterval(refreshTimer);
  $("#sign-in").hidden = false;
  $("#who").hidden = $("#nav").hidden = $("#main").hidden = true;
  $("#sign-in-error").textContent = message;
  $("#api-key").value = "";
}

// ---- routing --------------------------------------------------------------------------------
function route() {
  if (!api) return;
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "history";
  for (const section of document.querySelectorAll("[data-page]")) section.hidden = section.dataset.page !== page;
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === page);
  clearInterval(refreshTimer);
  const render = RENDER[page];
  const run = () => render().catch(fail);
  run();
  refreshHeader();
  if (page === "queue") refreshTimer = setInterval(run, 2000);
}

async function refreshHeader() {
  try {
    const models = await api.get("/v1/models");
    const live = models.data[0]?.smedit_live_version;
    $("#live-version").textContent = live === null || live === undefined ? "" : `live version ${live}`;
    const held = await api.get("/v1/edits", { status: "needs_review", limit: 1 });
    $("#review-count").textContent = held.total ? String(held.total) : "";
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 503)) fail(err); // 503: the model is still loading
  }
}

// ---- submit ---------------------------------------------------------------------------------
function editSummary(edit) {
  const m = edit.metrics ?? {};
  let text = `Edit #${edit.id}: ${edit.status}`;
  if (m.es !== undefined) text += ` (ES ${pct(m.es)}, GS ${pct(m.gs)})`;
  if (edit.error) text += ` — ${edit.error}`;
  return text;
}

async function followEdit(id, line) {
  for (;;) {
    const edit = await api.get(`/v1/edits/${id}`, { wait_s: 10 });
    line.textContent = editSummary(edit);
    line.dataset.status = edit.status;
    if (edit.status !== "queued" && edit.status !== "running") return edit;
  }
}

async function submitOne(event) {
  event.preventDefault();
  const button = $("#edit-submit");
  button.disabled = true;
  const line = $("#edit-result");
  try {
    const paraphrases = $("#edit-paraphrases").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const body = { prompt: $("#edit-prompt").value, target: $("#edit-target").value, paraphrases };
    for (const [field, id] of [["author", "#edit-author"], ["reason", "#edit-reason"]]) {
      if ($(id).value.trim()) body[field] = $(id).value.trim();
    }
    const out = await api.post("/v1/edits", body);
    const id = out.edit_ids[0];
    line.textContent = `Edit #${id} queued`;
    line.dataset.status = "queued";
    await followEdit(id, line);
  } catch (err) {
    line.textContent = "";
    fail(err);
  } finally {
    button.disabled = false;
  }
}

function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  const [header, ...body] = rows.filter((r) => r.some((cell) => cell.trim()));
  if (!header || !header.includes("prompt") || !header.includes("target")) {
    throw new Error("the CSV needs a header row with prompt and target columns");
  }
  return body.map((cells) => {
    const record = Object.fromEntries(header.map((name, i) => [name.trim(), cells[i] ?? ""]));
    const fact = { prompt: record.prompt, target: record.target };
    if (record.paraphrases) fact.paraphrases = record.paraphrases.split("|").map((s) => s.trim()).filter(Boolean);
    return fact;
  });
}

function parseJsonl(text) {
  return text.split(/\r?\n/).map((line, n) => [line.trim(), n + 1]).filter(([line]) => line).map(([line, n]) => {
    let record;
    try { record = JSON.parse(line); } catch { throw new Error(`line ${n} is not JSON`); }
    if (typeof record !== "object" || record === null || !("prompt" in record) || !("target" in record)) {
      throw new Error(`line ${n} needs "prompt" and "target"`);
    }
    return record;
  });
}

async function submitFile(event) {
  event.preventDefault();
  const file = $("#upload-file").files[0];
  const line = $("#upload-result");
  if (!file) return;
  const button = $("#upload-submit");
  button.disabled = true;
  try {
    const text = await file.text();
    const facts = /\.csv$/i.test(file.name) ? parseCsv(text) : parseJsonl(text);
    if (!facts.length) throw new Error("the file holds no facts");
    const ids = [];
    for (let start = 0; start < facts.length; start += batch) {
      const body = { edits: facts.slice(start, start + batch) };
      if ($("#upload-author").value.trim()) body.author = $("#upload-author").value.trim();
      if ($("#upload-reason").value.trim()) body.reason = $("#upload-reason").value.trim();
      const out = await api.post("/v1/edits", body);
      ids.push(...out.edit_ids);
      line.textContent = `Submitted ${ids.length} of ${facts.length} facts`;
    }
    line.textContent = `Submitted ${ids.length} facts as edits #${ids[0]}–#${ids[ids.length - 1]}: see the queue and history.`;
  } catch (err) {
    if (err instanceof ApiError) fail(err);
    else toast(`Upload refused: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- queue ----------------------------------------------------------------------------------
async function renderQueue() {
  const [running, queued] = await Promise.all([
    api.get("/v1/edits", { status: "running", limit: 100 }), api.get("/v1/edits", { status: "queued", limit: 100 }),
  ]);
  const rows = [...running.items, ...queued.items.reverse()];
  $("#queue-table tbody").replaceChildren(...rows.map((e) => el("tr", { dataset: { edit: e.id } },
    el("td", {}, `#${e.id}`), el("td", {}, statusBadge(e.status)), el("td", {}, e.prompt), el("td", {}, e.target),
    el("td", {}, e.author ?? ""), el("td", {}, when(e.created_at)))));
  $("#queue-empty").hidden = rows.length > 0;
}

// ---- history --------------------------------------------------------------------------------
function gateVerdict(metrics) {
  const gate = metrics?.gate;
  if (!gate) return "—";
  if (gate.approved_by_review) return "approved in review";
  if (!gate.enabled) return "off";
  return gate.passed ? "passed" : (gate.failures ?? []).join("; ") || "failed";
}

async function revert(edit) {
  const reason = await confirmAction(`Revert edit #${edit.id}?`,
    `The model stops answering "${edit.target}" to "${edit.prompt}"; a new version is made without this edit.`);
  if (reason === null) return;
  try {
    const accepted = await api.post(`/v1/edits/${edit.id}/revert`, reason ? { reason } : {});
    toast(`Revert of edit #${edit.id} queued (job ${accepted.job_id})`);
    const job = await api.waitJob(accepted.job_id);
    toast(job.status === "done" ? `Edit #${edit.id} reverted: version ${job.result_version} is live`
      : `Revert of edit #${edit.id}: ${job.status} ${job.error ?? ""}`);
  } catch (err) {
    fail(err);
  }
  route();
}

// One edit in full: what was asked, what the gate measured, where it lives in the history.
async function showEdit(id) {
  let e;
  try {
    e = await api.get(`/v1/edits/${id}`);
  } catch (err) {
    fail(err);
    return;
  }
  const m = e.metrics ?? {};
  const version = (n) => (n === null || n === undefined ? "—" : `v${n}`);
  const rows = [
    ["Status", statusBadge(e.status)], ["Prompt", e.prompt], ["Target", e.target],
    ["Paraphrases", e.paraphrases.length ? e.paraphrases.join(" · ") : "—"],
    ["Locality probes", e.locality.length ? e.locality.map((p) => p.answer ? `${p.prompt} → ${p.answer}` : p.prompt).join(" · ") : "—"],
    ["Author", e.author ?? "—"], ["Reason", e.reason ?? "—"], ["Submitted by", e.submitted_by ?? "—"],
    ["Submitted", when(e.created_at)], ["Finished", when(e.finished_at)],
    ["Queued / ran", `${secs(e.timings?.queued_s)} / ${secs(e.timings?.run_s)}`],
    ["Applied in", version(e.applied_version)], ["Reverted in", version(e.reverted_version)],
    ["Delta", e.delta_id ?? "—"],
    ["Supersedes", e.supersedes ? `#${e.supersedes}` : "—"], ["Superseded by", e.superseded_by ? `#${e.superseded_by}` : "—"],
    ["Edit success (ES)", pct(m.es)], ["Paraphrase success (GS)", pct(m.gs)],
    ["Canaries it changed", pct(m.canary_new ?? m.canary_changed)], ["Gate", gateVerdict(m)],
    ["Error", e.error ?? "—"],
  ];
  $("#edit-title").textContent = `Edit #${e.id}`;
  $("#edit-fields").replaceChildren(...rows.flatMap(([name, value]) => [
    el("dt", {}, name), el("dd", { dataset: { field: name } }, value)]));
  $("#edit-dialog").showModal();
}

async function renderHistory() {
  const since = $("#filter-since").value, until = $("#filter-until").value;
  const page = await api.get("/v1/edits", {
    author: $("#filter-author").value.trim(), q: $("#filter-q").value.trim(), status: $("#filter-status").value,
    since: since ? new Date(`${since}T00:00:00`).toISOString() : "",
    until: until ? new Date(`${until}T23:59:59.999`).toISOString() : "",
    limit: PAGE_SIZE, offset: offsets.history,
  });
  $("#history-table tbody").replaceChildren(...page.items.map((e) => {
    const m = e.metrics ?? {};
    const action = e.status === "applied" && can("admin")
      ? el("button", { class: "danger", type: "button", dataset: { action: "revert" }, onclick: () => revert(e) }, "Revert") : "";
    return el("tr", { dataset: { edit: e.id, status: e.status } },
      el("td", {}, el("button", { class: "link", type: "button", dataset: { action: "details" }, title: "Details",
        onclick: () => showEdit(e.id) }, `#${e.id}`)),
      el("td", {}, statusBadge(e.status)), el("td", {}, e.prompt), el("td", {}, e.target),
      el("td", {}, e.author ?? ""), el("td", {}, e.reason ?? ""), el("td", { class: "num" }, pct(m.es)),
      el("td", { class: "num" }, pct(m.gs)), el("td", { class: "num" }, pct(m.canary_new ?? m.canary_changed)),
      el("td", {}, gateVerdict(m)), el("td", {}, when(e.finished_at)), el("td", {}, action));
  }));
  pager("history", page);
}

function pager(name, page) {
  const last = Math.min(page.offset + page.items.length, page.total);
  $(`#${name}-range`).textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "none";
  $(`#${name}-prev`).disabled = page.offset === 0;
  $(`#${name}-next`).disabled = last >= page.total;
}

// ---- versions -------------------------------------------------------------------------------
async function restore(version) {
  const reason = await confirmAction(`Restore version ${version.number}?`,
    `A new version is made with exactly version ${version.number}'s live edits (${version.active_deltas.length} deltas), bit for bit.`);
  if (reason === null) return;
  try {
    const accepted = await api.post(`/v1/versions/${version.number}/restore`, reason ? { reason } : {});
    toast(`Restore of version ${version.number} queued (job ${accepted.job_id})`);
    const job = await api.waitJob(accepted.job_id);
    toast(job.status === "done" ? `Version ${version.number} restored as version ${job.result_version}`
      : `Restore of version ${version.number}: ${job.status} ${job.error ?? ""}`);
  } catch (err) {
    fail(err);
  }
  route();
}

async function renderVersions() {
  const page = await api.get("/v1/versions", { limit: PAGE_SIZE, offset: offsets.versions });
  $("#versions-table tbody").replaceChildren(...page.items.map((v) => {
    const action = !v.live && can("admin")
      ? el("button", { class: "secondary", type: "button", dataset: { action: "restore" }, onclick: () => restore(v) }, "Restore") : "";
    return el("tr", { dataset: { version: v.number, live: v.live } },
      el("td", {}, String(v.number), v.live ? el("span", { class: "live" }, "live") : ""), el("td", {}, v.kind),
      el("td", {}, when(v.created_at)), el("td", {}, v.created_by ?? ""), el("td", {}, v.note ?? ""),
      el("td", { class: "num" }, v.edit_ids.length ? v.edit_ids.map((i) => `#${i}`).join(" ") : "—"),
      el("td", { class: "num" }, pct(v.side_effects?.share)), el("td", {}, action));
  }));
  pager("versions", page);
}

// ---- review ---------------------------------------------------------------------------------
async function review(edit, verdict, note) {
  try {
    const out = await api.post(`/v1/edits/${edit.id}/${verdict}`, note ? { note } : {});
    if (verdict === "approve") {
      toast(`Edit #${edit.id} approved: recomputing (job ${out.job_id})`);
      const job = await api.waitJob(out.job_id);
      const after = await api.get(`/v1/edits/${edit.id}`);
      toast(job.status === "done" ? editSummary(after) : `Approval of edit #${edit.id}: ${job.status} ${job.error ?? ""}`);
    } else toast(`Edit #${edit.id} rejected`);
  } catch (err) {
    fail(err);
  }
  route();
}

async function renderReview() {
  const page = await api.get("/v1/edits", { status: "needs_review", limit: 100 });
  $("#review-table tbody").replaceChildren(...page.items.map((e) => {
    const m = e.metrics ?? {};
    const note = el("input", { placeholder: "note (optional)", maxlength: "2000", dataset: { role: "note" } });
    const actions = can("admin") ? el("td", {}, note,
      el("button", { type: "button", dataset: { action: "approve" }, onclick: () => review(e, "approve", note.value.trim()) }, "Approve"),
      el("button", { class: "danger", type: "button", dataset: { action: "reject" }, onclick: () => review(e, "reject", note.value.trim()) }, "Reject"))
      : el("td", {});
    return el("tr", { dataset: { edit: e.id } }, el("td", {}, `#${e.id}`), el("td", {}, e.prompt), el("td", {}, e.target),
      el("td", {}, e.author ?? ""), el("td", {}, e.reason ?? ""), el("td", { class: "num" }, pct(m.es)),
      el("td", { class: "num" }, pct(m.gs)), el("td", {}, gateVerdict(m)), actions);
  }));
  $("#review-empty").hidden = page.items.length > 0;
}

// ---- KPIs -----------------------------------------------------------------------------------
const KPI_CHARTS = [
  ["Edit success (mean ES)", "edit_success", pct, 1],
  ["Accepted by the gate", "accept_rate", pct, 1],
  ["Generalisation (mean GS)", "generalisation", pct, 1],
  ["Side effects per edit (canaries changed)", "side_effects", pct, 1],
  ["Side effects vs the base model", "side_effects_vs_base", pct, 1],
  ["Cost per edit (compute)", "cost_s_per_edit", secs, undefined],
  ["Latency, submission to decision (p50)", "latency_p50_s", secs, undefined],
];

async function renderKpis() {
  const series = await api.get("/v1/kpis", { bucket: $("#kpi-bucket").value });
  const points = (field) => series.buckets.map((b) => ({ t: new Date(b.start), y: b[field] }));
  $("#kpi-charts").replaceChildren(...KPI_CHARTS.map(([title, field, format, top]) => lineChart(title, points(field), format, top)));
  $("#kpi-empty").hidden = series.buckets.length > 0;
}

const RENDER = { submit: async () => {}, queue: renderQueue, history: renderHistory, versions: renderVersions,
  review: renderReview, kpis: renderKpis };

// ---- wiring ---------------------------------------------------------------------------------
function start() {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("#sign-in-error").textContent = "";
    signIn($("#api-key").value.trim()).catch((err) => {
      $("#sign-in-error").textContent = err instanceof ApiError && err.status === 401
        ? "This key is not valid (unknown or revoked)." : `Sign-in failed: ${err.message}`;
    });
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#edit-form").addEventListener("submit", submitOne);
  $("#upload-form").addEventListener("submit", submitFile);
  $("#history-filter").addEventListener("submit", (event) => { event.preventDefault(); offsets.history = 0; route(); });
  $("#kpi-form").addEventListener("submit", (event) => { event.preventDefault(); route(); });
  for (const name of ["history", "versions"]) {
    $(`#${name}-prev`).addEventListener("click", () => { offsets[name] = Math.max(0, offsets[name] - PAGE_SIZE); route(); });
    $(`#${name}-next`).addEventListener("click", () => { offsets[name] += PAGE_SIZE; route(); });
  }
  window.addEventListener("hashchange", route);
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) signIn(saved).catch(() => signOut("Your saved key is no longer valid: sign in again."));
}

start();
