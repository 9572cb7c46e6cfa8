// The attention map: where in the input the model looked, drawn over the region it looked at.
//
// The API's `explanation.attention` is the attention rollout over the model's patch grid. The
// patch grid covers the model's *input*, not the uploaded picture: the digits models' "ink-grid"
// preprocessing (mmserve/tasks/image_classification.py) normalises the ink, crops its bounding box,
// scales the longest side to the model's canvas and centres it; "resize-crop" (imported ImageNet
// models) takes the centred square. So the page shows that square of the picture and lays the grid
// over it. The ink steps below follow the server's `normalized_ink` with the bundled models' settings
// (background flattening included)
// (tests/test_playground.py holds the square to the server's own crop); the server's later stroke
// re-thickening can move the box by a pixel or two, which the map does not follow.

const ANALYSIS_SIDE = 512; // pictures are analysed at most this big (the box is then scaled back)
const MIN_CONTRAST = 0.04; // ImagePreprocessing.min_contrast: below it an image is blank
const NOISE_FLOOR = 0.1; // ImagePreprocessing.noise_floor
const INK_THRESHOLD = 0.35; // ImagePreprocessing.ink_threshold: normalised ink above it is "ink"
const FLATTEN_BACKGROUND = true; // ImagePreprocessing.flatten_background, on in the bundled digits models
const FLAT_ENOUGH = 0.1; // the server's _FLAT_ENOUGH: a fitted background flatter than this is left alone
const BACKGROUND_SIDE = 64; // the server's _BACKGROUND_SIDE: the background is fitted on a copy this small

// A perceptually ordered map (dark purple -> orange -> light yellow), like matplotlib's "inferno".
const STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

export function heatColor(value) {
  const v = Math.min(1, Math.max(0, value)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(v));
  const f = v - i;
  return STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
}

/** Luminance in [0, 1] (1 = white; transparency over white), ITU-R 601 luma like PIL's convert("L"). */
function grayscale(source) {
  const scale = Math.min(1, ANALYSIS_SIDE / Math.max(source.width, source.height));
  const w = Math.max(1, Math.round(source.width * scale));
  const h = Math.max(1, Math.round(source.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(source, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const gray = new Float64Array(w * h);
  for (let p = 0; p < w * h; p++) gray[p] = (0.299 * rgba[4 * p] + 0.587 * rgba[4 * p + 1] + 0.114 * rgba[4 * p + 2]) / 255;
  return { gray, w, h, scale };
}

function median(values) {
  const sorted = Float64Array.from(values).sort();
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function percentile(values, q) { // numpy's default (linear interpolation)
  const sorted = Float64Array.from(values).sort();
  const at = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(at);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

/** Otsu's threshold of values in [0, 1] over 256 bins: the split with the largest between-class variance. */
function otsu(values) {
  const bins = 256;
  const hist = new Float64Array(bins);
  for (const v of values) hist[Math.min(bins - 1, Math.floor(v * bins))] += 1;
  let total = 0;
  let totalMass = 0;
  for (let i = 0; i < bins; i++) {
    total += hist[i];
    totalMass += hist[i] * (i + 0.5) / bins;
  }
  let w0 = 0;
  let m0 = 0;
  let best = -1;
  let bestIndex = 0;
  for (let i = 0; i < bins; i++) {
    w0 += hist[i];
    m0 += hist[i] * (i + 0.5) / bins;
    const w1 = total - w0;
    const between = w0 * w1 * (m0 / Math.max(w0, 1e-12) - (totalMass - m0) / Math.max(w1, 1e-12)) ** 2;
    if (between > best) {
      best = between;
      bestIndex = i;
    }
  }
  return (bestIndex + 1) / bins;
}

/** Area-average `values` (w x h) down to (sw x sh): each output pixel is the mean of the input area it
 * covers, fractional edge pixels weighted by their overlap (PIL's BOX resampling). */
function boxResize(values, w, h, sw, sh) {
  const out = new Float64Array(sw * sh);
  const fx = w / sw;
  const fy = h / sh;
  for (let oy = 0; oy < sh; oy++) {
    const ya = oy * fy, yb = ya + fy;
    for (let ox = 0; ox < sw; ox++) {
      const xa = ox * fx, xb = xa + fx;
      let sum = 0, weight = 0;
      for (let y = Math.floor(ya); y < Math.min(h, Math.ceil(yb)); y++) {
        const wy = Math.min(yb, y + 1) - Math.max(ya, y);
        for (let x = Math.floor(xa); x < Math.min(w, Math.ceil(xb)); x++) {
          const wxy = wy * (Math.min(xb, x + 1) - Math.max(xa, x));
          sum += wxy * values[y * w + x];
          weight += wxy;
        }
      }
      out[oy * sw + ox] = weight > 0 ? sum / weight : 0;
    }
  }
  return out;
}

function linspace(n) { // numpy.linspace(-1, 1, n)
  return Array.from({ length: n }, (_, i) => (n === 1 ? -1 : -1 + (2 * i) / (n - 1)));
}

/** Solve the 6x6 system a x = b by Gaussian elimination with partial pivoting; null if singular. */
function solve6(a, b) {
  const m = a.map((row, i) => [...row, b[i]]);
  for (let c = 0; c < 6; c++) {
    let p = c;
    for (let r = c + 1; r < 6; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r;
    if (Math.abs(m[p][c]) < 1e-12) return null;
    [m[c], m[p]] = [m[p], m[c]];
    for (let r = 0; r < 6; r++) {
      if (r === c) continue;
      const f = m[r][c] / m[c][c];
      for (let k = c; k < 7; k++) m[r][k] -= f * m[c][k];
    }
  }
  return m.map((row, i) => row[6] / row[i]);
}

/** The smooth part of an ink map, as the server's `_background` finds it: a quadratic surface in x and
 * y fitted (twice) to the pixels on the background side of an Otsu split of a <= 64 px copy, so a
 * shadow across a photo is not taken for ink; null when the picture is evenly lit. */
function shadingSurface(ink, w, h) {
  const scale = Math.min(1, BACKGROUND_SIDE / Math.max(w, h));
  const sw = Math.max(1, Math.round(w * scale));
  const sh = Math.max(1, Math.round(h * scale));
  const values = boxResize(ink, w, h, sw, sh);
  const xs = linspace(sw), ys = linspace(sh);
  const terms = [];
  for (let y = 0; y < sh; y++) for (let x = 0; x < sw; x++) {
    terms.push([1, xs[x], ys[y], xs[x] * xs[x], xs[x] * ys[y], ys[y] * ys[y]]);
  }
  const surface = (coef) => terms.map((t) => t.reduce((acc, v, k) => acc + v * coef[k], 0));
  let level = values;
  let coef = [0, 0, 0, 0, 0, 0];
  for (let round = 0; round < 2; round++) {
    const threshold = otsu(level.map((v) => Math.min(1, Math.max(0, v))));
    const rows = [];
    for (let i = 0; i < level.length; i++) if (level[i] < threshold) rows.push(i);
    if (rows.length < 12) break;
    const normal = Array.from({ length: 6 }, () => new Array(6).fill(0));
    const rhs = new Array(6).fill(0);
    for (const i of rows) {
      const t = terms[i];
      for (let r = 0; r < 6; r++) {
        rhs[r] += t[r] * values[i];
        for (let c = 0; c < 6; c++) normal[r][c] += t[r] * t[c];
      }
    }
    const solved = solve6(normal, rhs);
    if (!solved) break;
    coef = solved;
    const fit = surface(coef);
    level = values.map((v, i) => v - fit[i]);
  }
  const fitted = surface(coef);
  if (Math.max(...fitted) - Math.min(...fitted) < FLAT_ENOUGH) return null;
  const fx = linspace(w), fy = linspace(h);
  const full = new Float64Array(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    full[y * w + x] = coef[0] + coef[1] * fx[x] + coef[2] * fy[y] + coef[3] * fx[x] * fx[x]
      + coef[4] * fx[x] * fy[y] + coef[5] * fy[y] * fy[y];
  }
  return full;
}

/** Normalised ink per pixel (0 background .. 1 full ink), or null for a blank picture. */
function normalizedInk(gray, w, h) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of gray) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (hi - lo < MIN_CONTRAST) return null;
  const edge = Math.max(1, Math.floor(Math.min(h, w) / 16));
  const border = [];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (y < edge || y >= h - edge || x < edge || x >= w - edge) border.push(gray[y * w + x]);
    }
  }
  const darkInk = median(border) >= (lo + hi) / 2; // a light border: dark ink on light paper
  let ink = gray.map((v) => (darkInk ? 1 - v : v));
  const shading = FLATTEN_BACKGROUND ? shadingSurface(ink, w, h) : null;
  if (shading) ink = ink.map((v, i) => Math.min(1, Math.max(0, v - shading[i])));
  const threshold = otsu(ink);
  const background = ink.filter((v) => v < threshold);
  const strokes = ink.filter((v) => v >= threshold);
  const low = background.length ? median(background) : Math.min(...ink);
  const high = strokes.length ? percentile(strokes, 95) : Math.max(...ink);
  if (high - low < MIN_CONTRAST) return null;
  const normalized = ink.map((v) => {
    const n = Math.min(1, Math.max(0, (v - low) / (high - low)));
    return n < NOISE_FLOOR ? 0 : n;
  });
  return { ink: normalized, darkInk };
}

/** The square of `source` (in its pixels) that the ink-grid preprocessing maps onto the model input;
 * the picture's centred square when there is no ink to find. */
export function inkSquare(source) {
  const { gray, w, h, scale } = grayscale(source);
  const found = normalizedInk(gray, w, h);
  if (!found) return centredSquare(source);
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (found.ink[y * w + x] > INK_THRESHOLD) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return centredSquare(source);
  const side = Math.max(x1 - x0 + 1, y1 - y0 + 1) / scale;
  const cx = (x0 + x1 + 1) / 2 / scale;
  const cy = (y0 + y1 + 1) / 2 / scale;
  return { x: cx - side / 2, y: cy - side / 2, side, paper: found.darkInk ? "#fff" : "#000" };
}

export function centredSquare(source) {
  const side = Math.min(source.width, source.height);
  return { x: (source.width - side) / 2, y: (source.height - side) / 2, side, paper: "#fff" };
}

/** Draw the square `region` of `source` into `canvas`, filling it (outside the picture: paper). */
export function drawRegion(canvas, source, region) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = region.paper;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const k = canvas.width / region.side;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, -region.x * k, -region.y * k, source.width * k, source.height * k);
}

/** Paint the rollout grid (rows x cols, sums to 1) over the whole canvas: one cell per patch,
 * colour and opacity by the patch's share of the largest weight; a weight of 0 stays clear. */
export function drawAttention(canvas, attention) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const rows = attention.length;
  const cols = rows ? attention[0].length : 0;
  const peak = Math.max(0, ...attention.flat());
  if (!rows || !cols || peak <= 0) return;
  const cw = canvas.width / cols;
  const ch = canvas.height / rows;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const share = attention[r][c] / peak;
      if (share <= 0) continue;
      const [red, green, blue] = heatColor(share);
      ctx.fillStyle = `rgba(${red}, ${green}, ${blue}, ${(0.2 + 0.55 * share).toFixed(3)})`;
      ctx.fillRect(Math.round(c * cw), Math.round(r * ch), Math.ceil(cw), Math.ceil(ch));
    }
  }
  ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
  ctx.lineWidth = 1;
  for (let c = 1; c < cols; c++) {
    ctx.beginPath(); ctx.moveTo(Math.round(c * cw) + 0.5, 0); ctx.lineTo(Math.round(c * cw) + 0.5, canvas.height); ctx.stroke();
  }
  for (let r = 1; r < rows; r++) {
    ctx.beginPath(); ctx.moveTo(0, Math.round(r * ch) + 0.5); ctx.lineTo(canvas.width, Math.round(r * ch) + 0.5); ctx.stroke();
  }
}
