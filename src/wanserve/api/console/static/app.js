// The wanserve console: a client of the public DashScope API, with no dependencies and no build step.
//
// - The API key lives in sessionStorage (this tab only) and goes out as `Authorization: Bearer <key>`.
// - Each model's form is drawn from GET /console/catalog.json, so it offers exactly the catalog's choices.
// - Files go through the upload flow the SDK uses (policy, multipart POST, then `oss://` URLs).
// - A task is watched through GET /api/v1/tasks/{id}/events (Server-Sent Events, read with fetch() since
//   EventSource cannot send the key); where that is missing or breaks, GET /api/v1/tasks/{id} every second.
// - Every error shown is the API's own `message`.
"use strict";

const KEY_STORAGE = "wanserve.apiKey";
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"]);
const POLL_MS = 1000;
const LIST_REFRESH_MS = 5000;
const SEED_MAX = 2147483647;

const $ = (selector) => document.querySelector(selector);
const state = { catalog: null, tasks: new Map(), watchers: new Map(), listTimer: null };

// ---- small helpers -----------------------------------------------------------------------------------

/** A DOM element: el("label", {for: "x"}, "text", child). Attributes set to false/null are left out. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function showMessage(text, isError = false) {
  const box = $("#message");
  box.textContent = text;
  box.classList.toggle("error", isError);
  box.hidden = !text;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

class ApiError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

const apiKey = () => sessionStorage.getItem(KEY_STORAGE);
const authHeaders = () => ({ Authorization: `Bearer ${apiKey()}` });

/** fetch() a path relative to the page, with the key; the JSON body, or an ApiError with the API's message. */
async function api(path, { method = "GET", headers = {}, body, signal, auth = true } = {}) {
  const response = await fetch(path, { method, body, signal,
                                       headers: { ...(auth ? authHeaders() : {}), ...headers } });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON: report the status below */ }
  if (!response.ok) {
    const message = json?.message || `${method} ${path} failed: HTTP ${response.status}`;
    throw new ApiError(message, response.status, json?.code);
  }
  return json;
}

function formatEta(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.ceil(seconds);
  return s >= 60 ? `about ${Math.floor(s / 60)} min ${s % 60} s left` : `about ${s} s left`;
}

// ---- signing in and out ------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const key = $("#api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    await api("api/v1/tasks?page_size=1");  // checks the key before the console opens
  } catch (err) {
    sessionStorage.removeItem(KEY_STORAGE);
    showMessage(err.message, true);
    return;
  }
  $("#api-key").value = "";
  showMessage("");
  await openConsole();
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  for (const controller of state.watchers.values()) controller.abort();
  state.watchers.clear();
  state.tasks.clear();
  clearInterval(state.listTimer);
  $("#tasks tbody").replaceChildren();
  $("#player").removeAttribute("src");
  $("#player-section").hidden = true;
  $("#console").hidden = $("#account").hidden = true;
  $("#sign-in").hidden = false;
  showMessage("Signed out.");
}

async function openConsole() {
  $("#sign-in").hidden = true;
  $("#console").hidden = $("#account").hidden = false;
  if (!state.catalog) {
    try {
      state.catalog = await api("console/catalog.json", { auth: false });
    } catch (err) {
      showMessage(err.message, true);
      return;
    }
    const select = $("#model");
    select.replaceChildren(...state.catalog.models.map((m) => el("option", { value: m.name }, m.name)));
    drawForm();
  }
  await refreshTasks();
  clearInterval(state.listTimer);
  state.listTimer = setInterval(() => refreshTasks().catch(() => {}), LIST_REFRESH_MS);
}

// ---- the create form, drawn from the catalog ---------------------------------------------------------

const currentModel = () => state.catalog.models.find((m) => m.name === $("#model").value);

function select(id, label, values, chosen, blank = null) {
  const options = values.map((v) => el("option", { value: String(v), selected: String(v) === String(chosen) },
                                       String(v)));
  if (blank !== null) options.unshift(el("option", { value: "" }, blank));
  return el("div", {}, el("label", { for: id }, label), el("select", { id }, ...options));
}

function checkbox(id, label, checked) {
  return el("label", { class: "check" }, el("input", { id, type: "checkbox", checked }), label);
}

/** The fields of the chosen model's body: what its DashScope request takes, with the catalog's choices. */
function drawForm() {
  const m = currentModel();
  const promptCounter = el("span", { class: "counter", id: "prompt-counter" });
  const prompt = el("textarea", { id: "f-prompt", placeholder: "Describe the video" });
  const count = () => {
    promptCounter.textContent = `${prompt.value.length} / ${m.prompt_max}` +
      (prompt.value.length > m.prompt_max ? " (the rest is cut off)" : "");
    promptCounter.classList.toggle("over", prompt.value.length > m.prompt_max);
  };
  prompt.addEventListener("input", count);
  count();

  const choices = el("div", { class: "row" },
    m.sizes.length ? select("f-size", "Size", m.sizes, m.default_size)
                   : select("f-resolution", "Resolution", m.resolutions, m.default_resolution),
    select("f-duration", "Duration (s)", m.durations, m.default_duration),
    m.templates.length ? select("f-template", "Effect template", m.templates, "", "(none)") : null,
    m.shot_type ? select("f-shot_type", "Shots", ["single", "multi"], "single") : null,
    el("div", {}, el("label", { for: "f-seed" }, "Seed"),
       el("input", { id: "f-seed", type: "number", min: "0", max: String(SEED_MAX), placeholder: "random" })));

  const files = m.inputs.map((input, i) => el("div", {},
    el("label", { for: `f-file-${i}` }, input.label),
    el("input", { id: `f-file-${i}`, type: "file", accept: `${input.accept}/*`, "data-field": input.field,
                  "data-media-type": input.media_type, "data-required": input.required })));

  const switches = el("div", {},
    checkbox("f-prompt_extend", "Prompt rewriting (prompt_extend)", true),
    checkbox("f-watermark", "Watermark", false),
    m.audio_switch ? checkbox("f-audio", "Sound", true) : null);

  $("#model-note").textContent = `${m.kind} model, POST ${m.path}` +
    (m.audio === "silent" ? ", silent video" : ", with sound");
  $("#fields").replaceChildren(
    el("label", { for: "f-prompt" }, "Prompt", promptCounter), prompt,
    el("label", { for: "f-negative_prompt" }, "Negative prompt"),
    el("textarea", { id: "f-negative_prompt", maxlength: String(state.catalog.negative_prompt_max) }),
    choices, ...files, switches);
}

const value = (id) => document.getElementById(id)?.value ?? "";
const checked = (id) => document.getElementById(id)?.checked;

/** A file name the upload policy accepts under its directory: no slashes, plain characters. */
function safeName(prefix, file) {
  return `${prefix}-${file.name.replace(/[^A-Za-z0-9._-]+/g, "_")}`.slice(0, 120);
}

/** Upload one file as the SDK does: a policy for the model, then a multipart POST to its upload_host. */
async function upload(policyPromise, name, file) {
  const policy = await policyPromise;
  const key = `${policy.upload_dir}/${name}`;
  const form = new FormData();
  form.append("OSSAccessKeyId", policy.oss_access_key_id);
  form.append("Signature", policy.signature);
  form.append("policy", policy.policy);
  form.append("key", key);
  form.append("x-oss-object-acl", policy.x_oss_object_acl);
  form.append("x-oss-forbid-overwrite", policy.x_oss_forbid_overwrite);
  form.append("success_action_status", "200");
  form.append("x-oss-content-type", file.type || "application/octet-stream");
  form.append("file", file, name);  // last: the server checks the policy before reading the file
  await api(policy.upload_host, { method: "POST", body: form, auth: false });
  return `oss://${key}`;
}

async function submitTask(event) {
  event.preventDefault();
  const m = currentModel();
  const button = $("#submit");
  button.disabled = true;
  showMessage("");
  try {
    const input = {};
    const parameters = { duration: Number(value("f-duration")), prompt_extend: checked("f-prompt_extend"),
                         watermark: checked("f-watermark") };
    if (value("f-prompt").trim()) input.prompt = value("f-prompt");
    if (value("f-negative_prompt").trim()) input.negative_prompt = value("f-negative_prompt");
    if (value("f-template")) input.template = value("f-template");
    if (m.sizes.length) parameters.size = value("f-size");
    else parameters.resolution = value("f-resolution");
    if (m.shot_type) parameters.shot_type = value("f-shot_type");
    if (m.audio_switch) parameters.audio = checked("f-audio");
    if (value("f-seed") !== "") parameters.seed = Number(value("f-seed"));

    const chosen = [...document.querySelectorAll("#fields input[type=file]")].filter((f) => f.files.length);
    let policy = null;
    for (const [i, fileInput] of chosen.entries()) {
      policy ??= api(`api/v1/uploads?action=getPolicy&model=${encodeURIComponent(m.name)}`).then((r) => r.data);
      const { field, mediaType } = fileInput.dataset;
      showMessage(`Uploading ${fileInput.files[0].name}...`);
      const url = await upload(policy, safeName(mediaType || field || `file${i}`, fileInput.files[0]),
                               fileInput.files[0]);
      if (field === "media") (input.media ??= []).push({ type: mediaType, url });
      else input[field] = url;
    }
    const headers = { "Content-Type": "application/json", "X-DashScope-Async": "enable" };
    if (chosen.length) headers["X-DashScope-OssResourceResolve"] = "enable";
    const created = await api(m.path.replace(/^\//, ""), {
      method: "POST", headers, body: JSON.stringify({ model: m.name, input, parameters }) });
    const id = created.output.task_id;
    showMessage(`Created task ${id}.`);
    updateTask({ task_id: id, task_status: created.output.task_status }, { model: m.name, submitted: Date.now() });
    watch(id);
  } catch (err) {
    showMessage(err.message, true);
  } finally {
    button.disabled = false;
  }
}

// ---- the task list -----------------------------------------------------------------------------------

/** Merge what the API said about a task (a task body's `output`) into the list, and redraw its row. */
function updateTask(output, extra = {}) {
  const id = output.task_id;
  const task = state.tasks.get(id) ?? { id, model: "", submitted: null };
  Object.assign(task, extra, { status: output.task_status ?? task.status });
  task.progress = task.status === "RUNNING" ? (output.progress ?? task.progress ?? null) : null;
  if (output.video_url) task.videoUrl = output.video_url;
  if (output.message) task.failure = `${output.code}: ${output.message}`;
  const isNew = !state.tasks.has(id);
  state.tasks.set(id, task);
  drawRow(task, isNew);
}

function progressCell(task) {
  if (task.status === "PENDING") return [el("progress", { max: "100", value: "0" }), el("span", { class: "eta" }, "queued")];
  if (task.status === "SUCCEEDED") return [el("progress", { max: "100", value: "100" })];
  if (task.status !== "RUNNING") return [];
  if (!task.progress) return [el("progress", { max: "100" }), el("span", { class: "eta" }, "starting")];
  const p = task.progress;
  return [el("progress", { max: "100", value: String(p.percent) }),
          el("span", { class: "eta" }, `${p.percent}% ${formatEta(p.eta_seconds)}`)];
}

function actionsCell(task) {
  if (task.status === "PENDING" || task.status === "RUNNING") {
    return [el("button", { type: "button", class: "secondary cancel", onclick: () => cancelTask(task.id) }, "Cancel")];
  }
  if (task.status === "SUCCEEDED") {
    return [el("button", { type: "button", class: "play", onclick: () => play(task.id) }, "Play"),
            task.videoUrl ? el("a", { href: task.videoUrl, download: `${task.id}.mp4`, class: "download" }, "Download") : null];
  }
  if (task.failure) return [el("span", { class: "failure" }, task.failure)];
  return [];
}

function drawRow(task, isNew) {
  const row = document.getElementById(`task-${task.id}`) ??
    el("tr", { id: `task-${task.id}`, "data-task-id": task.id });
  row.dataset.status = task.status;
  row.replaceChildren(
    el("td", {}, task.submitted ? new Date(task.submitted).toLocaleString() : ""),
    el("td", {}, task.model),
    el("td", {}, el("code", { title: task.id }, task.id.slice(0, 8))),
    el("td", {}, el("span", { class: `status ${task.status}` }, task.status)),
    el("td", { class: "progress" }, ...progressCell(task)),
    el("td", { class: "actions" }, ...actionsCell(task)));
  if (isNew || !row.isConnected) $("#tasks tbody").prepend(row);
  $("#no-tasks").hidden = state.tasks.size > 0;
}

/** The newest tasks of the last 24 h; unfinished ones are watched, finished ones fetched once for their video. */
async function refreshTasks() {
  const list = await api("api/v1/tasks?page_size=20");
  for (const item of [...list.data].reverse()) {  // oldest first, so each prepend leaves the newest on top
    const known = state.tasks.get(item.task_id);
    // a watched or finished task's own updates are newer than the list's
    const keep = known && (TERMINAL.has(known.status) || state.watchers.has(item.task_id));
    updateTask({ task_id: item.task_id, task_status: keep ? known.status : item.status },
               { model: item.model_name, submitted: item.gmt_create });
    const task = state.tasks.get(item.task_id);
    const needsDetails = (task.status === "SUCCEEDED" && !task.videoUrl) || (task.status === "FAILED" && !task.failure);
    if (!TERMINAL.has(task.status) || needsDetails) watch(item.task_id);
  }
  $("#no-tasks").hidden = state.tasks.size > 0;
}

async function cancelTask(id) {
  try {
    await api(`api/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    showMessage(`Canceled task ${id}.`);
    watch(id);
  } catch (err) {
    showMessage(err.message, true);
  }
}

// ---- live updates ------------------------------------------------------------------------------------

/** Follow one task until it ends: its event stream if the server has one, else a GET every second. */
function watch(id) {
  if (state.watchers.has(id)) return;
  const controller = new AbortController();
  state.watchers.set(id, controller);
  (async () => {
    try {
      const ended = await followEvents(id, controller.signal).catch((err) => {
        if (err.name === "AbortError") throw err;
        return false;  // the stream broke: poll instead
      });
      if (!ended) await poll(id, controller.signal);
    } catch (err) {
      if (err.name !== "AbortError") showMessage(err.message, true);
    } finally {
      if (state.watchers.get(id) === controller) state.watchers.delete(id);
    }
  })();
}

async function poll(id, signal) {
  while (!signal.aborted) {
    const body = await api(`api/v1/tasks/${encodeURIComponent(id)}`, { signal });
    updateTask(body.output);
    if (TERMINAL.has(body.output.task_status)) return;
    await sleep(POLL_MS, signal);
  }
}

/** Read GET /tasks/{id}/events; true once a terminal status arrived, false if there is no stream (404...). */
async function followEvents(id, signal) {
  const response = await fetch(`api/v1/tasks/${encodeURIComponent(id)}/events`,
                               { headers: { ...authHeaders(), Accept: "text/event-stream" }, signal });
  if (!response.ok || !response.body ||
      !(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
    response.body?.cancel().catch(() => {});
    return false;
  }
  let ended = false;
  await readEventStream(response.body, (type, data) => {
    if (type !== "task") return;
    const body = JSON.parse(data);
    updateTask(body.output);
    ended = TERMINAL.has(body.output.task_status);
  });
  return ended;
}

/** A Server-Sent Events parser over a ReadableStream of bytes: calls onEvent(type, data) per event. */
async function readEventStream(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  const line = (text) => {
    if (text === "") {  // a blank line ends an event
      if (data.length) onEvent(type, data.join("\n"));
      type = "message";
      data = [];
      return;
    }
    if (text.startsWith(":")) return;  // a comment (keep-alive)
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    const rest = colon < 0 ? "" : text.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = rest;
    else if (field === "data") data.push(rest);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split(/\r\n|\r(?!$)|\n/);  // a trailing \r may be half of a \r\n: keep it
    buffer = lines.pop();
    lines.forEach(line);
  }
  if (buffer) line(buffer.replace(/\r$/, ""));
  line("");
}

// ---- the player --------------------------------------------------------------------------------------

async function play(id) {
  const task = state.tasks.get(id);
  try {
    if (!task.videoUrl) updateTask((await api(`api/v1/tasks/${encodeURIComponent(id)}`)).output);
  } catch (err) {
    showMessage(err.message, true);
    return;
  }
  const player = $("#player");
  player.src = task.videoUrl;
  $("#download").href = task.videoUrl;
  $("#download").setAttribute("download", `${id}.mp4`);
  $("#player-task").textContent = `${task.model} ${id}`;
  $("#player-section").hidden = false;
  player.play().catch(() => {});  // a browser that blocks autoplay leaves the controls to the user
}

// ---- start -------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#create-form").addEventListener("submit", submitTask);
  $("#model").addEventListener("change", drawForm);
  $("#refresh").addEventListener("click", () => refreshTasks().catch((err) => showMessage(err.message, true)));
  if (apiKey()) openConsole().catch((err) => showMessage(err.message, true));
  else $("#sign-in").hidden = false;
});
