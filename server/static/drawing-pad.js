// A canvas to draw a digit on with a mouse, pen or finger (Pointer Events).
// Dark ink on white, the way the classifier's preprocessing expects an upload; the stroke is a
// fixed fraction of the canvas so a drawing has roughly the stroke width of the training digits
// whatever size the canvas is shown at (pen pressure thickens or thins it a little).

const INK = "#111";
const PAPER = "#fff";
const STROKE_FRACTION = 0.075;

export function createDrawingPad(canvas, { onStrokeEnd = () => {} } = {}) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let drawing = false;
  let blank = true;
  let last = null;

  function clear() {
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    blank = true;
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * canvas.width,
      y: ((event.clientY - rect.top) / rect.height) * canvas.height,
      width: canvas.width * STROKE_FRACTION * (event.pointerType === "pen" && event.pressure > 0 ? 0.6 + event.pressure * 0.8 : 1),
    };
  }

  function segment(from, to) {
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = to.width;
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    blank = false;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    last = point(event);
    segment(last, last); // a tap leaves a dot
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    event.preventDefault();
    const events = typeof event.getCoalescedEvents === "function" ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const next = point(e);
      segment(last, next);
      last = next;
    }
  });

  function end(event) {
    if (!drawing) return;
    drawing = false;
    if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
    onStrokeEnd();
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  clear();
  return {
    clear,
    isBlank: () => blank,
    /** The drawing as a PNG file, exactly what is uploaded to /classify. */
    toBlob: () => new Promise((resolve, reject) =>
      canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the canvas could not be encoded"))), "image/png")),
  };
}
