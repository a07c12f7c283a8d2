// The web page: drop or pick images, score each through /v1/predict, show heatmaps from /v1/explain.
// Plain JavaScript, no build step, no network beyond this server.
"use strict";

const MAX_PARALLEL = 4; // requests in flight from this page; the server batches them together
const MAX_RETRIES = 3; // on 503 (server busy), after its Retry-After

const state = { model: null, queue: [], running: 0, done: 0, failed: 0 };
const $ = (sel, root = document) => root.querySelector(sel);

function fmt(p) {
  return p === null || p === undefined ? "–" : p.toFixed(3);
}

async function loadModel() {
  try {
    const res = await fetch("/v1/model");
    const m = await res.json();
    state.model = m;
    $("#model").textContent = `Model: ${m.name} · ${m.experts.length} experts · ${m.input_size} px · ` +
      `"fake" when P(fake) ≥ ${fmt(m.threshold)}`;
    const mb = (m.limits.max_upload_bytes / 1048576).toFixed(0);
    $("#limits").textContent = `${m.limits.formats.join(", ")}; up to ${mb} MB each`;
  } catch (err) {
    $("#model").textContent = `Cannot reach the server: ${err}`;
  }
}

function addFiles(files) {
  const images = Array.from(files);
  if (!images.length) return;
  $("#toolbar").hidden = false;
  for (const file of images) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    $(".name", card).textContent = file.name;
    $(".name", card).title = file.name;
    $(".thumb", card).src = URL.createObjectURL(file);
    $(".thumb", card).alt = file.name;
    $("#results").append(card);
    state.queue.push({ file, card });
  }
  summarize();
  pump();
}

function pump() {
  while (state.running < MAX_PARALLEL && state.queue.length) {
    const job = state.queue.shift();
    state.running += 1;
    score(job).finally(() => {
      state.running -= 1;
      summarize();
      pump();
    });
  }
}

async function post(path, file) {
  for (let attempt = 0; ; attempt += 1) {
    const body = new FormData();
    body.append("file", file, file.name);
    const res = await fetch(path, { method: "POST", body });
    if (res.status !== 503 || attempt >= MAX_RETRIES) return res;
    const wait = Number(res.headers.get("Retry-After")) || 1;
    await new Promise((resolve) => setTimeout(resolve, wait * 1000 * (attempt + 1)));
  }
}

async function score({ file, card }) {
  await modelReady; // the verdict's threshold marker and the expert names come from /v1/model
  let result;
  try {
    const res = await post("/v1/predict", file);
    const data = await res.json();
    result = data.results ? data.results[0] : { error: data.reason || res.statusText, status: res.status };
  } catch (err) {
    result = { error: `request failed: ${err}`, status: 0 };
  }
  if (result.error) {
    showError(card, result.error);
  } else {
    showResult(card, result, file);
  }
}

function showError(card, message) {
  state.failed += 1;
  card.dataset.state = "error";
  $(".verdict", card).textContent = "error";
  $(".error", card).textContent = message;
  $(".bar", card).hidden = true;
  $(".experts", card).hidden = true;
}

function showResult(card, r, file) {
  state.done += 1;
  card.dataset.state = "done";
  card.dataset.verdict = r.verdict;
  $(".verdict", card).textContent = r.verdict;
  $(".fill", card).style.width = `${(100 * r.probability).toFixed(1)}%`;
  $(".mark", card).style.left = `${(100 * r.threshold).toFixed(1)}%`;
  $(".bar", card).setAttribute("aria-valuenow", r.probability);
  let text = `P(fake) ${fmt(r.probability)} · threshold ${fmt(r.threshold)}`;
  if (typeof r.uncertainty === "number") text += ` · uncertainty ${fmt(r.uncertainty)}`;
  $(".prob", card).textContent = text;
  const names = state.model ? state.model.experts.map((e) => e.backbone) : [];
  const list = $(".expert-list", card);
  r.expert_probabilities.forEach((p, i) => {
    const li = document.createElement("li");
    li.textContent = `${names[i] || "expert"}: ${fmt(p)}`;
    list.append(li);
  });
  if (state.model && state.model.explain) {
    const button = $(".explain", card);
    button.hidden = false;
    button.addEventListener("click", () => toggleHeatmap(card, file, button));
  }
}

async function toggleHeatmap(card, file, button) {
  const img = $(".heatmap", card);
  if (img.src) {
    img.hidden = !img.hidden;
    button.textContent = img.hidden ? "Show heatmap" : "Hide heatmap";
    return;
  }
  button.disabled = true;
  button.textContent = "Computing heatmap…";
  try {
    const res = await post("/v1/explain", file);
    if (!res.ok) throw new Error((await res.json()).reason || res.statusText);
    img.src = URL.createObjectURL(await res.blob());
    img.hidden = false;
    button.textContent = "Hide heatmap";
  } catch (err) {
    $(".error", card).textContent = `heatmap: ${err.message}`;
    button.textContent = "Show heatmap";
  } finally {
    button.disabled = false;
  }
}

function summarize() {
  const total = $("#results").children.length;
  const pending = total - state.done - state.failed;
  $("#summary").textContent = `${total} image(s): ${state.done} scored` +
    (state.failed ? `, ${state.failed} failed` : "") + (pending ? `, ${pending} pending` : "");
}

function clearAll() {
  for (const img of document.querySelectorAll("#results img")) {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  }
  $("#results").replaceChildren();
  state.queue = [];
  state.done = 0;
  state.failed = 0;
  $("#toolbar").hidden = true;
}

function setupDrop() {
  const drop = $("#drop");
  const picker = $("#picker");
  picker.addEventListener("change", () => {
    addFiles(picker.files);
    picker.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.remove("over");
    });
  }
  drop.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
  // Dropping outside the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("#clear").addEventListener("click", clearAll);
}

const modelReady = loadModel();
setupDrop();
