// Wires the page to the public API: /v1/models says what is served, /classify (multipart upload
// with explain=true and the panel's `model`) fills one panel per served classifier - the MultiMax
// model and its SoftMax twin side by side, each with its attention map and sparsity - and
// /translate fills the translation box.

import { callApi, describeError, formatMs, getApiKey, setApiKey } from "./api.js";
import { createClassifierPanel } from "./classifier-panel.js";
import { createDrawingPad } from "./drawing-pad.js";

const TOP_K = 5;
const MAX_PANELS = 4; // side by side: more would leave each map too small to read
const $ = (id) => document.getElementById(id);

const state = {
  panels: [], // one per served classifier
  topK: TOP_K,
  sequence: 0, // only the newest classification is shown, whatever order the answers come in
};

async function loadModels() {
  const list = $("model-list");
  try {
    const { data, ms } = await callApi("/v1/models");
    const timing = document.createElement("li");
    timing.className = "meta";
    timing.textContent = `listed in ${formatMs(ms)}`;
    list.replaceChildren(...data.models.map((m) => {
      const item = document.createElement("li");
      item.className = "model-chip";
      const ready = !m.state || m.state === "ready";
      item.textContent = ready ? `${m.name} · ${m.task} · ${m.backend}/${m.device}` : `${m.name} · ${m.state}`;
      if (!ready) item.classList.add("unavailable");
      if (m.reason) item.title = m.reason;
      return item;
    }), timing);
    return data.models;
  } catch (err) {
    const item = document.createElement("li");
    item.className = "error";
    item.textContent = `/v1/models: ${describeError(err)}`;
    list.replaceChildren(item);
    return null;
  }
}

function setupClassifier(models) {
  const container = $("classifier-panels");
  const template = $("classifier-panel-template");
  const classifiers = (models || []).filter(
    (m) => m.task === "image-classification" && (!m.state || m.state === "ready"));
  // The default model first (what /classify answers without a `model`), the others beside it.
  classifiers.sort((a, b) => Number(Boolean(b.default)) - Number(Boolean(a.default)));
  const served = classifiers.length ? classifiers.slice(0, MAX_PANELS) : [{ name: "classifier", extra: {} }];
  for (const m of served) {
    state.panels.push(createClassifierPanel(container, template, {
      name: m.name, preprocessing: (m.extra || {}).preprocessing || "ink-grid", served: classifiers.includes(m),
      attention: (m.extra || {}).attention_fn,
    }));
    if (m.labels && m.labels.length) state.topK = Math.min(TOP_K, m.labels.length);
  }
  if (models && !classifiers.length) {
    $("source-line").textContent = "This server serves no classifier (start it with --classifier).";
  }
}

/** Classify one input. `prepare` resolves to {file, picture}; the request's place in line is taken
 * before it runs, so an answer to an earlier input can never overwrite a later one, even one still
 * being encoded. */
async function classify(prepare, sourceName) {
  const sequence = ++state.sequence;
  const current = () => sequence === state.sequence;
  $("source-line").textContent = `Classifying ${sourceName}…`;
  state.panels.forEach((p) => p.setBusy(true));
  try {
    const { file, picture } = await prepare();
    // One request per panel, all in flight together: each panel shows its own model's answer.
    const outcomes = await Promise.all(state.panels.map(async (panel) => {
      const form = new FormData();
      form.append("files", file, file.name || "drawing.png");
      form.append("top_k", String(state.topK));
      form.append("explain", "true");
      if (panel.model.served) form.append("model", panel.model.name);
      try {
        const { data, ms } = await callApi("/classify", { method: "POST", body: form });
        return () => panel.showPrediction(data.predictions[0], picture, ms);
      } catch (err) {
        return () => panel.showError(err);
      }
    }));
    if (!current()) return;
    outcomes.forEach((show) => show());
    $("source-line").textContent = `Showing ${sourceName}.`;
  } catch (err) {
    if (!current()) return;
    state.panels.forEach((p) => p.showError(err));
    $("source-line").textContent = `${sourceName} could not be classified.`;
  } finally {
    if (current()) state.panels.forEach((p) => p.setBusy(false));
  }
}

function setupDrawing() {
  const canvas = $("draw-canvas");
  const pad = createDrawingPad(canvas, { onStrokeEnd: () => classifyDrawing() });
  function classifyDrawing() {
    if (pad.isBlank()) {
      $("source-line").textContent = "Draw a digit first, or upload an image.";
      return;
    }
    classify(async () => {
      const blob = await pad.toBlob();
      const picture = await createImageBitmap(canvas); // the map shows what was sent, not later strokes
      return { file: new File([blob], "drawing.png", { type: "image/png" }), picture };
    }, "your drawing");
  }
  $("classify-button").addEventListener("click", classifyDrawing);
  $("clear-button").addEventListener("click", () => {
    pad.clear();
    $("source-line").textContent = "Cleared. Draw a digit.";
  });
}

function classifyFile(file) {
  classify(async () => {
    // The picture only shows the input under the map; whether it is an image is the API's to say.
    const picture = await createImageBitmap(file).catch(() => null);
    return { file, picture };
  }, file.name || "the upload");
}

function setupUpload() {
  const input = $("image-input");
  const zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) classifyFile(input.files[0]);
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  // A file dropped beside the box would make the browser leave the page to open it: take it instead.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) event.preventDefault();
    });
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) classifyFile(file);
  });
}

function setupTranslate() {
  const form = $("translate-form");
  const input = $("translate-input");
  const beam = $("beam-size");
  const output = $("translate-output");
  const meta = $("translate-meta");
  const error = $("translate-error");
  const result = $("translate-result");
  let sequence = 0;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const mine = ++sequence;
    const beamSize = Number.parseInt(beam.value, 10);
    const body = { texts: [input.value] };
    if (Number.isFinite(beamSize)) body.beam_size = beamSize;
    result.setAttribute("aria-busy", "true");
    try {
      const { data, ms } = await callApi("/translate", { method: "POST", json: body });
      if (mine !== sequence) return;
      const t = data.translations[0];
      error.hidden = true;
      output.textContent = t.text;
      meta.textContent = `score ${t.score.toFixed(4)} (log-probability${body.beam_size > 1 ? ", length-penalised" : ""}) · ` +
        `beam ${body.beam_size ?? "default"} · ${data.model} · round trip ${formatMs(ms)}`;
    } catch (err) {
      if (mine !== sequence) return;
      output.textContent = "";
      meta.textContent = err.ms ? `round trip ${formatMs(err.ms)}` : "";
      error.textContent = describeError(err);
      error.hidden = false;
    } finally {
      if (mine === sequence) result.setAttribute("aria-busy", "false");
    }
  });
  for (const chip of document.querySelectorAll("[data-example]")) {
    chip.addEventListener("click", () => {
      input.value = chip.dataset.example;
      form.requestSubmit();
    });
  }
}

function setupSettings() {
  const key = $("api-key");
  key.value = getApiKey();
  // A new key can change what /v1/models answers (it refuses without one), so the page starts over
  // with it; sessionStorage keeps the key across the reload, in this tab only.
  $("settings-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(key.value.trim());
    window.location.reload();
  });
}

async function main() {
  setupSettings();
  setupDrawing();
  setupUpload();
  setupTranslate();
  const models = await loadModels();
  setupClassifier(models);
  if (models && !models.some((m) => m.task === "translation")) {
    $("translate-meta").textContent = "This server serves no translator (start it with --translator).";
  }
  document.body.dataset.ready = "true";
}

main();
