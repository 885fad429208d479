// The page is a client of the public API, nothing more: POST /v1/edits, then the job's event stream
// GET /v1/jobs/{id}/events (status, progress and, with "show previews", a preview per scale, fetched
// from GET .../previews/{k}), then GET .../result for the image. The stream is read with fetch because
// EventSource cannot send the Authorization header; should it break, the page long-polls
// GET /v1/jobs/{id} (Prefer: wait) instead.
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
let current = null;  // the job being watched

function authHeaders() {
  const key = $("api-key").value.trim();
  localStorage.setItem("varedit-api-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let error = { code: `http_${response.status}`, message: response.statusText };
    try { error = (await response.json()).error || error; } catch (_) { /* not JSON */ }
    throw Object.assign(new Error(explain(error)), { code: error.code });
  }
  return response;
}

// The API's message, with the fields at fault that its details name when the message does not say
// them already: "the request is not valid (tau: Input should be greater than 0)".
function explain(error) {
  const details = Array.isArray(error.details) ? error.details : [];
  const said = details
    .filter((detail) => detail && detail.msg && !String(error.message).includes(detail.msg))
    .map((detail) => {
      const where = (detail.loc || []).filter((part) => part !== "body" && part !== "query").join(".");
      return where ? `${where}: ${detail.msg}` : detail.msg;
    });
  return said.length ? `${error.message} (${said.join("; ")})` : error.message;
}

function showError(error) {
  $("error").textContent = error ? `${error.code || "error"}: ${error.message}` : "";
  $("error").hidden = !error;
}

function showJob(job) {
  $("job").hidden = false;
  $("job-id").textContent = job.id;
  $("status").textContent = job.status;
  const p = job.progress;
  $("scale").textContent = p ? `scale ${p.scale} of ${p.scales}` : "";
  $("progress").value = job.status === "succeeded" ? 1 : p ? p.scale / p.scales : 0;
  $("cancel").hidden = TERMINAL.has(job.status);
  if (job.error) showError(job.error);
}

// The after image shows `blob`; resolves once it has loaded, so every preview is seen before the next.
function showImage(blob, caption, preview) {
  const after = $("after");
  const old = after.src;
  after.classList.toggle("preview", Boolean(preview));
  if (preview) after.dataset.preview = preview;
  else delete after.dataset.preview;
  const shown = new Promise((resolve) => {
    const done = () => {
      after.removeEventListener("load", done);
      after.removeEventListener("error", done);
      resolve();
    };
    after.addEventListener("load", done);
    after.addEventListener("error", done);
  });
  after.src = URL.createObjectURL(blob);
  after.hidden = false;
  $("after-caption").textContent = caption;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  return shown;
}

// Server-Sent Events of `path`, parsed from the fetched body: yields {name, data} per event.
async function* events(path) {
  const response = await api(path, { headers: { Accept: "text/event-stream" } });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        const name = lines.find((l) => l.startsWith("event:"))?.slice(6).trim() || "message";
        const data = lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
        if (data.length) yield { name, data: JSON.parse(data.join("\n")) };  // comments (pings) have none
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// A preview event: fetch the image and show it (one that could not be stored is skipped).
async function showPreview(jobId, preview) {
  let blob;
  try {
    blob = await (await api(preview.url)).blob();
  } catch (_) {
    return;
  }
  const label = `${preview.scale}/${preview.scales}`;
  if (current === jobId) await showImage(blob, `Preview, scale ${preview.scale} of ${preview.scales}`, label);
}

// Follows the job's event stream until it ends; returns the job as last seen.
async function follow(job) {
  for await (const { name, data } of events(`/v1/jobs/${job.id}/events`)) {
    if (current !== job.id) break;
    if (name === "preview") {
      await showPreview(job.id, data);
      continue;
    }
    if (name === "status") job = data;
    else if (name === "progress") {
      job = { ...job, status: data.status, progress: { scale: data.scale, scales: data.scales } };
    }
    showJob(job);
  }
  return job;
}

async function watch(job) {
  try {
    job = await follow(job);
  } catch (error) {
    if (current !== job.id) return;  // the stream broke: poll instead
  }
  while (current === job.id && !TERMINAL.has(job.status)) {
    job = await (await api(`/v1/jobs/${job.id}`, { headers: { Prefer: "wait=10" } })).json();
    if (current === job.id) showJob(job);
  }
  if (current === job.id && job.status === "succeeded") {
    const blob = await (await api(`/v1/jobs/${job.id}/result`)).blob();
    if (current !== job.id) return;
    await showImage(blob, "After", null);
    offerDownload(blob, job.id);
  }
}

// The result as a file named after its job (saving the image itself would give it a random name).
function offerDownload(blob, jobId) {
  const link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.download = `edit-${jobId}.png`;
  link.hidden = false;
}

$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  $("after").hidden = true;
  $("after-caption").textContent = "After";
  $("download").hidden = true;
  const form = new FormData();
  form.append("image", $("image").files[0]);
  form.append("instruction", $("instruction").value);
  for (const name of ["negative_instruction", "model", "seed", "cfg", "tau"]) {
    if ($(name).value !== "") form.append(name, $(name).value);
  }
  if ($("previews").checked) form.append("previews", "true");
  $("submit").disabled = true;
  try {
    const job = await (await api("/v1/edits", { method: "POST", body: form })).json();
    current = job.id;
    showJob(job);
    await watch(job);
  } catch (error) {
    showError(error);
  } finally {
    $("submit").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  if (!current) return;
  try {
    showJob(await (await api(`/v1/jobs/${current}/cancel`, { method: "POST" })).json());
  } catch (error) {
    showError(error);
  }
});

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  $("before").hidden = !file;
  if (file) $("before").src = URL.createObjectURL(file);
});

let models = [];

// The model's recommended settings, as its workers report them, are what an empty field means; its
// note and examples come from its folder (a converted release has none).
function showModelDefaults() {
  const model = models.find((m) => m.id === $("model").value);
  for (const name of ["cfg", "tau"]) {
    const value = model?.sampling?.[name];
    $(name).placeholder = value === undefined ? "default" : `default ${value}`;
  }
  $("model-note").textContent = model?.description || "";
  $("samples").replaceChildren(...(model?.examples || []).map(sampleButton));
  $("about").hidden = !(model?.description || model?.examples?.length);
}

// One click loads an example: its image into the file field (as if chosen) and its instruction.
function sampleButton(example) {
  const button = document.createElement("button");
  button.type = "button";
  const thumbnail = document.createElement("img");
  thumbnail.alt = "";
  button.append(thumbnail, example.instruction);
  // Fetched like every other call (with the API key when there is one), not by an <img src>.
  const image = api(example.image_url).then((response) => response.blob());
  image.then((blob) => { thumbnail.src = URL.createObjectURL(blob); }).catch(() => {});
  button.addEventListener("click", async () => {
    try {
      const blob = await image;
      const files = new DataTransfer();
      files.items.add(new File([blob], "example.png", { type: blob.type }));
      $("image").files = files.files;
      $("image").dispatchEvent(new Event("change"));
      $("instruction").value = example.instruction;
    } catch (error) {
      showError(error);
    }
  });
  return button;
}

async function loadModels() {
  try {
    models = (await (await api("/v1/models")).json()).data;
    const label = (m) => (m.default_resolution ? `${m.id} (${m.default_resolution} px)` : `${m.id} (starting)`);
    $("model").replaceChildren(...models.map((m) => new Option(label(m), m.id)));
    showModelDefaults();
  } catch (error) {
    showError(error);
  }
}

$("model").addEventListener("change", showModelDefaults);
// A key typed in (the server asks for one) reloads what it lets the page read: the models, their
// recommended values, note and examples.
$("api-key").addEventListener("change", () => {
  showError(null);
  loadModels();
});

$("api-key").value = localStorage.getItem("varedit-api-key") || "";
loadModels();
