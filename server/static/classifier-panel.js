// One classifier's answer rendered into one panel: top label, top-k bars, the attention map over
// the input with its sparsity, latency, or the API's error.
//
// A panel knows one model and nothing about where its input came from, so showing a second model
// (the SoftMax twin next to MultiMax) is one more `createClassifierPanel` call in a side-by-side
// container (main.js makes one per served classifier).

import { describeError, formatMs } from "./api.js";
import { centredSquare, drawAttention, drawRegion, inkSquare } from "./heatmap.js";

function percent(x, digits = 1) {
  return `${(100 * x).toFixed(digits)} %`;
}

export function createClassifierPanel(container, template, model) {
  const panel = template.content.firstElementChild.cloneNode(true);
  const $ = (selector) => panel.querySelector(selector);
  const inputView = $(".input-view");
  const attentionMap = $(".attention-map");
  const error = $(".error");
  panel.dataset.model = model.name;
  $(".panel-model").textContent = model.name;
  if (model.attention) $(".panel-attention").textContent = `${model.attention} attention`;
  attentionMap.setAttribute("aria-label", `Attention of ${model.name} over the input`);
  container.append(panel);

  function setBusy(busy) {
    panel.setAttribute("aria-busy", String(busy));
  }

  function showPrediction(prediction, picture, ms) {
    error.hidden = true;
    $(".prediction-label").textContent = prediction.label;
    $(".prediction-score").textContent = `${percent(prediction.score)} sure`;
    $(".latency").textContent = `round trip ${formatMs(ms)}`;
    const bars = $(".bars");
    bars.replaceChildren(...prediction.top_k.map(({ label, score }) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = label;
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${(100 * score).toFixed(2)}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(score);
      item.append(name, track, value);
      item.setAttribute("aria-label", `${label}: ${percent(score)}`);
      return item;
    }));
    const explanation = prediction.explanation;
    if (picture) {
      const region = model.preprocessing === "ink-grid" ? inkSquare(picture) : centredSquare(picture);
      drawRegion(inputView, picture, region);
      // where the grid sits, in the picture's pixels: lets a test hold the page to the server's crop
      $(".map-figure").dataset.region = [region.x, region.y, region.side].map((v) => v.toFixed(1)).join(",");
    }
    if (explanation) {
      drawAttention(attentionMap, explanation.attention);
      $(".sparsity").dataset.sparsity = String(explanation.sparsity);
      $(".sparsity").textContent =
        `Attention sparsity: ${percent(explanation.sparsity)} of the weights are below ${explanation.threshold}, ` +
        `${percent(explanation.zero_fraction)} exactly zero. Brighter cells: more attention (rollout over the ` +
        `${explanation.grid[0]}×${explanation.grid[1]} patch grid).`;
    }
    panel.classList.add("has-result");
  }

  function showError(err) {
    // An old answer next to a new error would read as the answer to the failed input: clear it.
    panel.classList.remove("has-result");
    for (const selector of [".prediction-label", ".prediction-score", ".sparsity"]) $(selector).textContent = "";
    $(".bars").replaceChildren();
    error.textContent = describeError(err);
    error.hidden = false;
    $(".latency").textContent = err.ms ? `round trip ${formatMs(err.ms)}` : "";
  }

  return { element: panel, model, setBusy, showPrediction, showError };
}
