// The task settings form, built from the gateway's declaration of every imageInference control
// (GET /v1/models): each field with its range, choices and hint. Values are checked here with the
// gateway's rules and worded as its refusals are, so the page refuses what the API would, and says so
// the same way.

// Where each field goes and what it is called on the page; fields not listed go under "More".
const LAYOUT = {
  main: ["positivePrompt", "negativePrompt", "strength", "steps", "CFGScale", "seed", "scheduler", "numberResults"],
  mask: ["maskBlur", "maskExpand", "maskMargin", "softInpainting"],
  outpaint: ["outpaint.top", "outpaint.right", "outpaint.bottom", "outpaint.left", "outpaint.blur"],
  speed: [
    "acceleration",
    "acceleratorOptions.deepCache",
    "acceleratorOptions.deepCacheInterval",
    "acceleratorOptions.deepCacheBranchId",
    "acceleratorOptions.deepCacheSkipMode",
    "acceleratorOptions.fbcache",
    "acceleratorOptions.cacheDistance",
    "acceleratorOptions.cacheStartStep",
    "acceleratorOptions.cacheStopStep",
    "acceleratorOptions.cacheStartStepPercentage",
    "acceleratorOptions.cacheEndStepPercentage",
    "acceleratorOptions.cacheMaxConsecutiveSteps",
  ],
};
// Task fields the page leaves out: the API refuses them whatever their value (TeaCache is not served).
const NOT_ON_PAGE = new Set(["acceleratorOptions.teaCache", "acceleratorOptions.teaCacheDistance"]);
const LABELS = {
  positivePrompt: "Prompt",
  negativePrompt: "Negative prompt",
  strength: "Strength",
  steps: "Steps",
  CFGScale: "Guidance (CFG scale)",
  seed: "Seed",
  scheduler: "Scheduler",
  numberResults: "Number of results",
  maskBlur: "Mask blur",
  maskExpand: "Mask expand",
  maskMargin: "Mask margin (crop)",
  maskInvert: "Invert mask",
  softInpainting: "Soft inpainting",
  width: "Width",
  height: "Height",
  outputFormat: "Output format",
  outputQuality: "Output quality",
  "outpaint.top": "Extend top",
  "outpaint.right": "Extend right",
  "outpaint.bottom": "Extend bottom",
  "outpaint.left": "Extend left",
  "outpaint.blur": "Seam blur",
  acceleration: "Acceleration",
  "acceleratorOptions.deepCache": "DeepCache (UNet models)",
  "acceleratorOptions.deepCacheInterval": "DeepCache interval",
  "acceleratorOptions.deepCacheBranchId": "DeepCache branch",
  "acceleratorOptions.deepCacheSkipMode": "DeepCache skip mode",
  "acceleratorOptions.fbcache": "First-block cache (FLUX)",
  "acceleratorOptions.cacheDistance": "First-block cache threshold",
  "acceleratorOptions.cacheStartStep": "Cache from step",
  "acceleratorOptions.cacheStopStep": "Cache until step",
  "acceleratorOptions.cacheStartStepPercentage": "Cache from (% of steps)",
  "acceleratorOptions.cacheEndStepPercentage": "Cache until (% of steps)",
  "acceleratorOptions.cacheMaxConsecutiveSteps": "Most cached steps in a row",
};
// Values the page starts with where the API's own default is not the best first try.
const PAGE_DEFAULTS = { positivePrompt: "" };

// What Python's repr() prints for a number the page sends as JSON: the API quotes values that way.
export function quoted(value) {
  return typeof value === "string" ? `'${value}'` : String(value);
}

// The gateway's refusal of one value, or null. Mirrors gateway/tasks.py (field_errors, the prompt
// rule) and the model's own range checks (multiple of 8).
export function refusal(control, value) {
  const name = control.name;
  if (value === undefined) return control.required ? `${name}: is required` : null;
  if (control.type === "integer" || control.type === "number") {
    if (control.type === "integer" && !Number.isInteger(value)) {
      const within = control.range ? ` in ${control.range}` : "";
      return `${name}: must be an integer${within}, got ${quoted(value)}`;
    }
    if (control.range && (value < control.min || value > control.max)) {
      return `${name}: must be in ${control.range}, got ${quoted(value)}`;
    }
    if (control.multipleOf && value % control.multipleOf) {
      return `${name}: must be a multiple of ${control.multipleOf}, got ${value}`;
    }
  }
  if (control.type === "string" && control.blank !== undefined && value !== control.blank) {
    const length = [...value].length; // characters, as Python counts them
    if (length < control.minLength || length > control.maxLength) {
      return `${name}: must be ${control.minLength}-${control.maxLength} characters (or ${control.blank}), got ${length}`;
    }
  }
  return null;
}

// The page's id of a field: task names may hold a dot (outpaint.top), which a CSS selector would misread.
export function fieldId(name) {
  return `f-${name.replace(/\./g, "-")}`;
}

// A value into the task: "outpaint.top" goes to task.outpaint.top.
function put(task, name, value) {
  const [owner, leaf] = name.includes(".") ? name.split(".") : [null, name];
  if (owner) task[owner] = { ...task[owner], [leaf]: value };
  else task[leaf] = value;
}

import { LoraPicker } from "./lora-picker.js";

export class SettingsForm {
  constructor(form, catalog) {
    this.form = form;
    this.controls = new Map(catalog.controls.filter((c) => !NOT_ON_PAGE.has(c.name)).map((c) => [c.name, c]));
    this.models = catalog.models;
    this.inputs = new Map();
    this.#build();
  }

  #build() {
    const sections = {
      main: this.form.querySelector("[data-section=main]"),
      mask: this.form.querySelector("[data-section=mask]"),
      outpaint: this.form.querySelector("[data-section=outpaint]"),
      speed: this.form.querySelector("[data-section=speed]"),
      more: this.form.querySelector("[data-section=more]"),
    };
    const lora = this.controls.get("lora");
    this.controls.delete("lora"); // not a field of its own: the picker's rows for the chosen model
    this.lora = lora ? new LoraPicker(this.form.querySelector("[data-section=lora]"), lora) : null;
    for (const section of Object.values(sections)) section.replaceChildren();
    sections.main.append(this.#modelField());
    const placed = new Set(Object.values(LAYOUT).flat());
    for (const [section, names] of Object.entries(LAYOUT)) {
      for (const name of names) if (this.controls.has(name)) sections[section].append(this.#field(this.controls.get(name)));
    }
    for (const control of this.controls.values()) {
      if (!placed.has(control.name)) sections.more.append(this.#field(control));
    }
    this.modelSelect.addEventListener("change", () => this.#showModelDefaults());
    this.#showModelDefaults();
  }

  #modelField() {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const label = document.createElement("label");
    label.htmlFor = "f-model";
    label.textContent = "Model";
    const select = document.createElement("select");
    select.id = "f-model";
    select.name = "model";
    for (const model of this.models) {
      const option = document.createElement("option");
      option.value = model.id;
      option.textContent = `${model.id} (${model.family}, ${model.nativeResolution}px)`;
      select.append(option);
    }
    const hint = document.createElement("small");
    hint.id = "f-model-hint";
    hint.textContent = this.models.length ? "the served models" : "no model is served yet";
    select.setAttribute("aria-describedby", hint.id);
    this.modelSelect = select;
    wrap.append(label, select, hint);
    return wrap;
  }

  #field(control) {
    const id = fieldId(control.name);
    const wrap = document.createElement("div");
    wrap.className = `field field-${control.type}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = LABELS[control.name] ?? control.name;
    let input;
    if (control.choices && control.type === "string") {
      input = document.createElement("select");
      const placeholder = document.createElement("option");
      placeholder.value = "";
      placeholder.textContent = control.default ? String(control.default) : `default: ${control.defaultText}`;
      if (!control.default) input.append(placeholder);
      for (const choice of control.choices) {
        const option = document.createElement("option");
        option.value = choice;
        option.textContent = choice;
        input.append(option);
      }
      if (control.default) input.value = control.default;
    } else if (control.type === "boolean") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = Boolean(control.default);
    } else if (control.type === "string") {
      input = document.createElement("textarea");
      input.rows = control.name === "positivePrompt" ? 3 : 2;
      if (control.maxLength) input.maxLength = control.maxLength;
      input.value = PAGE_DEFAULTS[control.name] ?? "";
    } else {
      input = document.createElement("input");
      input.type = "number";
      input.inputMode = control.type === "integer" ? "numeric" : "decimal";
      input.step = control.type === "integer" ? String(control.multipleOf ?? 1) : "any";
      if (control.range) {
        input.min = String(control.min);
        input.max = String(control.max);
      }
      if (control.default !== null && control.default !== undefined) input.value = String(control.default);
    }
    input.id = id;
    input.name = control.name;
    const hint = document.createElement("small");
    hint.id = `${id}-hint`;
    const parts = [control.description];
    if (control.range) parts.push(`${control.range}${control.multipleOf ? `, multiple of ${control.multipleOf}` : ""}`);
    if (!control.required && control.type !== "boolean") parts.push(`default ${control.defaultText}`);
    hint.textContent = parts.join(" · ");
    input.setAttribute("aria-describedby", hint.id);
    if (control.required) input.required = true;
    this.inputs.set(control.name, input);
    if (control.type === "boolean") {
      wrap.classList.add("field-check");
      wrap.append(input, label, hint);
    } else {
      wrap.append(label, input, hint);
    }
    if (control.name === "seed") wrap.append(this.#randomSeedToggle(input));
    return wrap;
  }

  #randomSeedToggle(seedInput) {
    const row = document.createElement("div");
    row.className = "field-check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = "f-seed-random";
    box.checked = true;
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.textContent = "Random seed";
    const sync = () => {
      seedInput.disabled = box.checked;
      if (box.checked) seedInput.placeholder = "random";
    };
    box.addEventListener("change", sync);
    sync();
    this.randomSeed = box;
    row.append(box, label);
    return row;
  }

  // The chosen model's own defaults as placeholders of the fields it decides.
  #showModelDefaults() {
    const model = this.models.find((m) => m.id === this.modelSelect.value);
    if (!model) return;
    this.lora?.show(model.lora ?? []);
    for (const [name, value] of Object.entries(model.defaults)) {
      const input = this.inputs.get(name);
      if (!input || value === null || value === undefined) continue;
      if (input.tagName === "SELECT") {
        const first = input.querySelector("option[value='']");
        if (first) first.textContent = `model default (${value})`;
      } else {
        input.placeholder = `model default: ${value}`;
      }
    }
  }

  useSeed(seed) {
    this.randomSeed.checked = false;
    this.randomSeed.dispatchEvent(new Event("change"));
    this.inputs.get("seed").value = seed;
  }

  // Each field's value as the task sends it (absent: left out), and the refusals, each naming its field.
  read() {
    const values = { model: this.modelSelect.value };
    const problems = [];
    for (const [name, input] of this.inputs) {
      const control = this.controls.get(name);
      let value;
      if (input.disabled) value = undefined;
      // A switch with no fixed default (deepCache: the acceleration preset's) is sent only when on.
      else if (control.type === "boolean") value = input.checked || control.default !== null ? input.checked : undefined;
      else if (control.type === "integer" || control.type === "number") {
        const text = input.value.trim();
        if (text === "" && input.validity.badInput) {
          problems.push({ name, message: `${name}: must be ${control.type === "integer" ? "an integer" : "a number"}${control.range ? ` in ${control.range}` : ""}, got ''` });
          continue;
        }
        value = text === "" ? undefined : Number(text);
        if (name === "seed" && value !== undefined && /^\d+$/.test(text)) {
          // Beyond 2^53 a JS number is not exact: compare and send the digits themselves.
          const digits = BigInt(text);
          if (digits > BigInt(control.range.slice(1, -1).split(", ")[1])) {
            problems.push({ name, message: `${name}: must be in ${control.range}, got ${text}` });
            continue;
          }
          values.seed = digits.toString();
          continue;
        }
      } else {
        value = input.value === "" && !control.required ? undefined : input.value;
      }
      const message = refusal(control, value);
      if (message) problems.push({ name, message });
      else if (value !== undefined) put(values, name, value);
    }
    for (const [name, input] of this.inputs) input.setAttribute("aria-invalid", problems.some((p) => p.name === name));
    if (this.lora) {
      const lora = this.lora.read();
      problems.push(...lora.problems);
      if (lora.items) values.lora = lora.items;
    }
    return { values, problems };
  }

  focus(name) {
    if (name === "lora" || name.startsWith("lora[")) return this.lora?.focus();
    this.inputs.get(name)?.focus();
  }
}
