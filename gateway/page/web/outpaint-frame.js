// Outpainting on the stage: the frame around the image shows the canvas the task asks for, and its edges
// are handles. Dragging an edge (or an arrow key on a focused edge) moves it in the API's steps (the
// fields' own step, 64 px); the four "Extend" fields of the form hold the values, so the task reads them
// as it reads every other field, and typing into a field moves the frame too.

const SIDES = ["top", "right", "bottom", "left"];
// Which way a drag grows each side: +1 along the axis (right, down), -1 against it (left, up).
const GROWTH = { top: [0, -1], right: [1, 0], bottom: [0, 1], left: [-1, 0] };

export class OutpaintFrame {
  constructor(frame, editor, inputs) {
    this.frame = frame;
    this.editor = editor;
    this.inputs = inputs; // side -> the form's <input type=number>
    for (const side of SIDES) {
      const input = inputs[side];
      if (!input) return; // the gateway offers no outpainting: the frame stays a plain outline
      input.addEventListener("input", () => this.show());
      const edge = frame.querySelector(`.edge-${side}`);
      edge.setAttribute("aria-valuemin", input.min);
      edge.setAttribute("aria-valuemax", input.max);
      edge.addEventListener("pointerdown", (event) => this.#drag(event, side, edge));
      edge.addEventListener("keydown", (event) => this.#key(event, side));
    }
    editor.addEventListener("layout", () => this.#label());
    this.show();
  }

  sides() {
    return Object.fromEntries(SIDES.map((side) => [side, Number(this.inputs[side]?.value) || 0]));
  }

  extends() {
    return Object.values(this.sides()).some((value) => value > 0);
  }

  show() {
    this.editor.setPadding(this.sides());
    this.#label();
  }

  #label() {
    for (const [side, value] of Object.entries(this.sides())) {
      const edge = this.frame.querySelector(`.edge-${side}`);
      edge.setAttribute("aria-valuenow", String(value));
      edge.title = `Extend ${side}: ${value} px (drag, or arrow keys)`;
    }
  }

  // A value as the field allows it: its step, within its range.
  #set(side, value) {
    const input = this.inputs[side];
    const step = Number(input.step) || 1;
    const snapped = Math.round(value / step) * step;
    input.value = String(Math.min(Number(input.max), Math.max(Number(input.min), snapped)));
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }

  #drag(event, side, edge) {
    event.preventDefault();
    edge.setPointerCapture(event.pointerId);
    // The scale at the start: with "fit" zoom the stage shrinks as the canvas grows, and the drag's
    // distance must keep meaning the same number of image pixels.
    const start = { x: event.clientX, y: event.clientY, value: this.sides()[side], scale: this.editor.scale };
    const [gx, gy] = GROWTH[side];
    const move = (e) => {
      const moved = (gx * (e.clientX - start.x) + gy * (e.clientY - start.y)) / start.scale;
      this.#set(side, start.value + moved);
    };
    const stop = () => {
      edge.removeEventListener("pointermove", move);
      edge.removeEventListener("pointerup", stop);
      edge.removeEventListener("pointercancel", stop);
    };
    edge.addEventListener("pointermove", move);
    edge.addEventListener("pointerup", stop);
    edge.addEventListener("pointercancel", stop);
  }

  #key(event, side) {
    const [gx, gy] = GROWTH[side];
    const along = { ArrowRight: gx, ArrowLeft: -gx, ArrowDown: gy, ArrowUp: -gy }[event.key];
    if (!along) return;
    event.preventDefault();
    this.#set(side, this.sides()[side] + along * (Number(this.inputs[side].step) || 1));
  }
}
