// The page is a client of the public API, nothing more: POST /v1/edits, then long-poll
// GET /v1/jobs/{id} (Prefer: wait) for status and progress, then GET .../result for the image.
// Polling rather than EventSource because EventSource cannot send the Authorization header.
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
    throw Object.assign(new Error(error.message), { code: error.code });
  }
  return response;
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

async function watch(job) {
  while (current === job.id && !TERMINAL.has(job.status)) {
    job = await (await api(`/v1/jobs/${job.id}`, { headers: { Prefer: "wait=10" } })).json();
    if (current === job.id) showJob(job);
  }
  if (current === job.id && job.status === "succeeded") {
    const blob = await (await api(`/v1/jobs/${job.id}/result`)).blob();
    $("after").src = URL.createObjectURL(blob);
    $("after").hidden = false;
  }
}

$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError(null);
  $("after").hidden = true;
  const form = new FormData();
  form.append("image", $("image").files[0]);
  form.append("instruction", $("instruction").value);
  for (const name of ["model", "seed", "cfg", "tau"]) {
    if ($(name).value !== "") form.append(name, $(name).value);
  }
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

// The model's recommended settings, as its workers report them, are what an empty field means.
function showModelDefaults() {
  const model = models.find((m) => m.id === $("model").value);
  for (const name of ["cfg", "tau"]) {
    const value = model?.sampling?.[name];
    $(name).placeholder = value === undefined ? "default" : `default ${value}`;
  }
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

$("api-key").value = localStorage.getItem("varedit-api-key") || "";
loadModels();
