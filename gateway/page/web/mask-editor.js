// The image and the mask painted over it, both at the image's own pixel size.
//
// The mask is a canvas whose alpha is the mask (opaque = regenerate), drawn in a tint over the image;
// it is sent as a greyscale PNG (white = regenerate, black = keep, grey where a soft brush feathered
// it), which is the mask format the API takes. Canvas has no brush engine, so strokes are stamped by
// hand: a disc (hard) or a radial gradient (soft) every quarter brush width along the pointer's path.

const TINT = [255, 40, 90];
const HISTORY = 40;

export class MaskEditor extends EventTarget {
  constructor(stage, imageCanvas, maskCanvas) {
    super();
    this.stage = stage;
    this.imageCanvas = imageCanvas;
    this.maskCanvas = maskCanvas;
    this.mask = maskCanvas.getContext("2d", { willReadFrequently: true });
    this.tool = "brush";
    this.size = 40;
    this.soft = false;
    this.zoom = "fit";
    this.undoStack = [];
    this.redoStack = [];
    this.image = null;
    this.last = null;
    this.painting = false;
    this.changed = false;
    maskCanvas.addEventListener("pointerdown", (e) => this.#down(e));
    maskCanvas.addEventListener("pointermove", (e) => this.#move(e));
    maskCanvas.addEventListener("pointerup", (e) => this.#up(e));
    maskCanvas.addEventListener("pointercancel", (e) => this.#up(e));
    new ResizeObserver(() => this.#layout()).observe(stage);
  }

  get width() {
    return this.maskCanvas.width;
  }

  get height() {
    return this.maskCanvas.height;
  }

  // Show a decoded image (an HTMLImageElement or ImageBitmap) and start an empty mask for it.
  setImage(image) {
    this.image = image;
    const w = image.naturalWidth ?? image.width;
    const h = image.naturalHeight ?? image.height;
    for (const canvas of [this.imageCanvas, this.maskCanvas]) {
      canvas.width = w;
      canvas.height = h;
    }
    this.imageCanvas.getContext("2d").drawImage(image, 0, 0);
    this.mask.clearRect(0, 0, w, h);
    this.undoStack = [];
    this.redoStack = [];
    this.stage.classList.add("has-image");
    this.#layout();
    this.#emit();
  }

  setZoom(zoom) {
    this.zoom = zoom;
    this.#layout();
  }

  // Room around the image, in image pixels (the outpainting border): shown, and counted when fitting.
  setPadding(padding) {
    this.padding = padding;
    this.#layout();
  }

  // The displayed size: fitted into the stage, or the chosen scale (the stage then scrolls).
  #layout() {
    if (!this.image) return;
    const { top = 0, right = 0, bottom = 0, left = 0 } = this.padding ?? {};
    let scale = Number(this.zoom);
    if (this.zoom === "fit") {
      const width = this.stage.clientWidth - 2;
      // Small images are shown larger (up to 4x), large ones shrunk to the stage.
      const outer = [this.width + left + right, this.height + top + bottom];
      scale = Math.min(4, width / outer[0], (window.innerHeight * 0.72 - 4) / outer[1]);
    }
    const px = (value) => `${Math.round(value * scale)}px`;
    for (const canvas of [this.imageCanvas, this.maskCanvas]) {
      canvas.style.width = px(this.width);
      canvas.style.height = px(this.height);
      canvas.style.margin = [top, right, bottom, left].map(px).join(" ");
    }
    this.scale = scale;
    this.dispatchEvent(new Event("layout"));
  }

  // -- painting -------------------------------------------------------------------------------------

  #point(event) {
    const box = this.maskCanvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.width,
      y: ((event.clientY - box.top) / box.height) * this.height,
    };
  }

  #down(event) {
    if (!this.image || event.button !== 0) return;
    event.preventDefault();
    this.maskCanvas.setPointerCapture(event.pointerId);
    this.#remember();
    this.painting = true;
    this.last = this.#point(event);
    this.#stamp(this.last);
  }

  #move(event) {
    if (!this.painting) return;
    const point = this.#point(event);
    const step = Math.max(1, this.size / 4);
    const dx = point.x - this.last.x;
    const dy = point.y - this.last.y;
    const distance = Math.hypot(dx, dy);
    for (let travelled = step; travelled <= distance; travelled += step) {
      this.#stamp({ x: this.last.x + (dx * travelled) / distance, y: this.last.y + (dy * travelled) / distance });
    }
    if (distance >= step) this.last = point;
  }

  #up(event) {
    if (!this.painting) return;
    this.painting = false;
    if (this.maskCanvas.hasPointerCapture(event.pointerId)) this.maskCanvas.releasePointerCapture(event.pointerId);
    this.#emit();
  }

  #stamp({ x, y }) {
    const ctx = this.mask;
    const radius = this.size / 2;
    ctx.save();
    ctx.globalCompositeOperation = this.tool === "eraser" ? "destination-out" : "source-over";
    const [r, g, b] = TINT;
    if (this.soft) {
      const gradient = ctx.createRadialGradient(x, y, 0, x, y, radius);
      gradient.addColorStop(0, `rgba(${r},${g},${b},0.35)`);
      gradient.addColorStop(1, `rgba(${r},${g},${b},0)`);
      ctx.fillStyle = gradient;
    } else {
      ctx.fillStyle = `rgb(${r},${g},${b})`;
    }
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, Math.PI * 2);
    ctx.fill();
    ctx.restore();
  }

  // -- whole-mask edits -----------------------------------------------------------------------------

  #remember() {
    if (!this.image) return;
    this.undoStack.push(this.mask.getImageData(0, 0, this.width, this.height));
    if (this.undoStack.length > HISTORY) this.undoStack.shift();
    this.redoStack = [];
  }

  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(this.mask.getImageData(0, 0, this.width, this.height));
    this.mask.putImageData(this.undoStack.pop(), 0, 0);
    this.#emit();
  }

  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(this.mask.getImageData(0, 0, this.width, this.height));
    this.mask.putImageData(this.redoStack.pop(), 0, 0);
    this.#emit();
  }

  clear() {
    if (!this.image) return;
    this.#remember();
    this.mask.clearRect(0, 0, this.width, this.height);
    this.#emit();
  }

  invert() {
    if (!this.image) return;
    this.#remember();
    const data = this.mask.getImageData(0, 0, this.width, this.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      px[i] = TINT[0];
      px[i + 1] = TINT[1];
      px[i + 2] = TINT[2];
      px[i + 3] = 255 - px[i + 3];
    }
    this.mask.putImageData(data, 0, 0);
    this.#emit();
  }

  // Replace the mask with a greyscale mask image (white = regenerate), e.g. one a detector made.
  loadMask(image) {
    this.#remember();
    const scratch = new OffscreenCanvas(this.width, this.height);
    const sctx = scratch.getContext("2d", { willReadFrequently: true });
    sctx.drawImage(image, 0, 0, this.width, this.height);
    const data = sctx.getImageData(0, 0, this.width, this.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const level = Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
      px[i] = TINT[0];
      px[i + 1] = TINT[1];
      px[i + 2] = TINT[2];
      px[i + 3] = level;
    }
    this.mask.putImageData(data, 0, 0);
    this.#emit();
  }

  // -- output ---------------------------------------------------------------------------------------

  hasMask() {
    if (!this.image) return false;
    const px = this.mask.getImageData(0, 0, this.width, this.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i]) return true;
    return false;
  }

  // The mask as the API takes it: a PNG data URI at the image's size, white where painted.
  // Pixels are written directly (not composited) so a painted alpha a becomes exactly grey level a.
  maskDataURL() {
    const source = this.mask.getImageData(0, 0, this.width, this.height).data;
    const out = new ImageData(this.width, this.height);
    for (let i = 0; i < source.length; i += 4) {
      const level = source[i + 3];
      out.data[i] = level;
      out.data[i + 1] = level;
      out.data[i + 2] = level;
      out.data[i + 3] = 255;
    }
    const canvas = document.createElement("canvas");
    canvas.width = this.width;
    canvas.height = this.height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    return canvas.toDataURL("image/png");
  }

  #emit() {
    this.dispatchEvent(new CustomEvent("change", { detail: { undo: this.undoStack.length, redo: this.redoStack.length } }));
  }
}
