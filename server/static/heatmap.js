// The attention map: where in the input the model looked, drawn over the region it looked at.
//
// The API's `explanation.attention` is the attention rollout over the model's patch grid. The
// patch grid covers the model's *input*, not the uploaded picture: the digits models' "ink-grid"
// preprocessing crops the ink's bounding box, scales its longest side to the model's canvas and
// centres it; "resize-crop" (imported ImageNet models) takes the centred square. So the page shows
// that square of the picture and lays the grid over it; the ink box is found the way the server
// finds it (ink = pixels far from the border's background level), to within a pixel or two.

const ANALYSIS_SIDE = 256;
const INK_LEVEL = 0.5; // share of the background-to-ink contrast a pixel needs to count as ink
const MIN_CONTRAST = 0.04; // same as the preprocessing: below it an image is blank

// A perceptually ordered map (dark purple -> orange -> light yellow), like matplotlib's "inferno".
const STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];

export function heatColor(value) {
  const v = Math.min(1, Math.max(0, value)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(v));
  const f = v - i;
  return STOPS[i].map((c, k) => Math.round(c + (STOPS[i + 1][k] - c) * f));
}

function luminance(source) {
  const scale = Math.min(1, ANALYSIS_SIDE / Math.max(source.width, source.height));
  const w = Math.max(1, Math.round(source.width * scale));
  const h = Math.max(1, Math.round(source.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff"; // transparency over white, as the server composites it
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(source, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const lum = new Float32Array(w * h);
  for (let p = 0; p < w * h; p++) lum[p] = (0.299 * rgba[4 * p] + 0.587 * rgba[4 * p + 1] + 0.114 * rgba[4 * p + 2]) / 255;
  return { lum, w, h, scale };
}

/** The square of `source` (in its pixels) that the ink-grid preprocessing maps onto the model input;
 * the whole picture's centred square when there is no ink to find. */
export function inkSquare(source) {
  const { lum, w, h, scale } = luminance(source);
  const border = [];
  for (let x = 0; x < w; x++) border.push(lum[x], lum[(h - 1) * w + x]);
  for (let y = 0; y < h; y++) border.push(lum[y * w], lum[y * w + w - 1]);
  border.sort((a, b) => a - b);
  const background = border[Math.floor(border.length / 2)];
  let lo = 1;
  let hi = 0;
  for (const v of lum) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const darkInk = background - lo >= hi - background;
  const contrast = darkInk ? background - lo : hi - background;
  if (contrast < MIN_CONTRAST) return centredSquare(source);
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = lum[y * w + x];
      const ink = darkInk ? background - v : v - background;
      if (ink >= INK_LEVEL * contrast) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return centredSquare(source);
  const side = Math.max(x1 - x0 + 1, y1 - y0 + 1) / scale;
  const cx = (x0 + x1 + 1) / 2 / scale;
  const cy = (y0 + y1 + 1) / 2 / scale;
  return { x: cx - side / 2, y: cy - side / 2, side, paper: darkInk ? "#fff" : "#000" };
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
