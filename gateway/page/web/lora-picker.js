// The LoRA adapters of the chosen model (GET /v1/models: each model's "lora"): one row per adapter,
// a checkbox to apply it and its weight. Sent as the task's "lora" list of {model, weight}, checked
// with the gateway's range and worded as its refusals are (lora[0].weight: must be in [-4.0, 4.0]).

export class LoraPicker {
  constructor(section, control) {
    this.section = section;
    this.control = control; // the catalog's "lora" control: maxItems and the weight's range
    this.rows = [];
  }

  // The rows for one model's adapters; none: a line that says so.
  show(adapters) {
    this.rows = [];
    this.section.replaceChildren();
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = adapters.length
      ? `Apply up to ${this.control.maxItems}, each at a weight in ${this.control.weight.range} (negative steers away).`
      : "This model serves no LoRA adapters (its registry entry declares none).";
    this.section.append(hint);
    adapters.forEach((adapter, index) => this.section.append(this.#row(adapter, index)));
  }

  #row(adapter, index) {
    const wrap = document.createElement("div");
    wrap.className = "field field-check lora-row";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `f-lora-${index}`;
    box.dataset.adapter = adapter;
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.textContent = adapter;
    const weight = document.createElement("input");
    weight.type = "number";
    weight.id = `f-lora-${index}-weight`;
    weight.step = "0.05";
    weight.inputMode = "decimal";
    weight.min = String(this.control.weight.min);
    weight.max = String(this.control.weight.max);
    weight.value = String(this.control.weight.default);
    weight.setAttribute("aria-label", `${adapter} weight`);
    const sync = () => (weight.disabled = !box.checked);
    box.addEventListener("change", sync);
    sync();
    this.rows.push({ adapter, box, weight });
    wrap.append(box, label, weight);
    return wrap;
  }

  // The chosen adapters as the task's list (undefined: none), and the refusals, named as the gateway's.
  read() {
    const chosen = this.rows.filter((row) => row.box.checked);
    const problems = [];
    const items = chosen.map((row, index) => {
      const text = row.weight.value.trim();
      const value = text === "" ? this.control.weight.default : Number(text);
      const { min, max, range } = this.control.weight;
      if (row.weight.validity.badInput || Number.isNaN(value) || value < min || value > max) {
        problems.push({ name: "lora", message: `lora[${index}].weight: must be in ${range}, got ${text || "''"}` });
      }
      row.weight.setAttribute("aria-invalid", problems.length > 0);
      return { model: row.adapter, weight: value };
    });
    if (items.length > this.control.maxItems) {
      problems.push({ name: "lora", message: `lora: at most ${this.control.maxItems} adapters a task, got ${items.length}` });
    }
    return { items: items.length ? items : undefined, problems };
  }

  focus() {
    (this.rows.find((row) => row.box.checked)?.weight ?? this.rows[0]?.box)?.focus();
  }
}
