// The page: open an image, paint or make a mask, set the controls, run imageInference through the
// gateway's /v1 API, and show, compare, download and reuse the results.

import { ApiError, apiKey, models, readiness, runTask, runTaskWithProgress, sameOrigin, setApiKey } from "./api.js";
import { MaskEditor } from "./mask-editor.js";
import { SettingsForm } from "./controls.js";
import { OutpaintFrame } from "./outpaint-frame.js";

const $ = (id) => document.getElementById(id);

const editor = new MaskEditor($("stage"), $("image-layer"), $("mask-layer"));
const state = {
  image: null, // {url, uuid (once uploaded or when it is a result), name, bytes (a Blob, until uploaded)}
  form: null,
  outpaint: null, // the frame around the image, once the form holds the outpainting fields
  catalog: null,
  running: false,
  history: [],
  ready: null,
};

// -- server status and the served models ----------------------------------------------------------

async function loadCatalog() {
  try {
    state.catalog = await models();
  } catch (error) {
    const message = error instanceof ApiError ? error.readable : String(error);
    document.querySelector("[data-section=main]").innerHTML = "";
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `The controls could not be loaded: ${message}`;
    document.querySelector("[data-section=main]").append(p);
    return false;
  }
  state.form = new SettingsForm($("settings"), state.catalog);
  const sides = Object.fromEntries(["top", "right", "bottom", "left"].map((s) => [s, state.form.inputs.get(`outpaint.${s}`)]));
  state.outpaint = new OutpaintFrame($("outpaint-frame"), editor, sides);
  const detectors = $("mask-detector");
  detectors.replaceChildren(new Option("a detector…", ""));
  for (const name of state.catalog.masking.detectors) detectors.append(new Option(name, name));
  const masking = state.catalog.masking.served;
  for (const id of ["mask-detector", "mask-prompt", "make-mask"]) $(id).disabled = !masking;
  $("mask-prompt").placeholder = state.catalog.masking.anyPhrase ? "any phrase, e.g. hair" : "e.g. eyes, face, background";
  if (!masking) $("make-mask").title = "no detector models are served (triton-inpaint export detectors)";
  return true;
}

async function watchServer() {
  const status = await readiness();
  const ready = status.status === "ready";
  const line = $("server-status");
  line.textContent = ready ? `Ready · models: ${status.models.join(", ")}` : `Unavailable: ${status.reason}`;
  line.classList.toggle("bad", !ready);
  if (ready && !state.form) await loadCatalog();
  if (ready && state.ready === false) $("run-error").textContent = ""; // recovered: clear the old 503
  state.ready = ready;
  setTimeout(watchServer, ready ? 10000 : 2000);
}

// -- opening images ----------------------------------------------------------------------------------

async function openBlob(blob, name) {
  if (!/^image\/(png|jpeg|webp)$/.test(blob.type)) {
    showRunError(`${name}: not a PNG, JPEG or WEBP image`);
    return;
  }
  await openURL(URL.createObjectURL(blob), { bytes: blob, name });
}

async function openURL(url, { uuid = null, bytes = null, name = "image" } = {}) {
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    showRunError(`${name}: the image could not be decoded`);
    return;
  }
  state.image = { url, uuid, bytes, name };
  editor.setImage(image);
  $("run-error").textContent = "";
}

async function openSample() {
  const response = await fetch("/ui/samples/sample.png");
  await openBlob(await response.blob(), "sample.png");
}

function fileToDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// The image's UUID on the gateway: uploaded once (imageUpload), then reused by every task.
async function imageUUID() {
  if (!state.image.uuid) {
    const [item] = await runTask({ taskType: "imageUpload", image: await fileToDataURL(state.image.bytes) });
    state.image.uuid = item.imageUUID;
  }
  return state.image.uuid;
}

// -- progress and errors ------------------------------------------------------------------------------

let ticker = null;
let progressLabel = "";
let progressStarted = 0;

function showProgressText() {
  $("progress-text").textContent = `${progressLabel} · ${((performance.now() - progressStarted) / 1000).toFixed(1)} s`;
}

function startProgress(text) {
  progressStarted = performance.now();
  $("progress").hidden = false;
  progressLabel = text;
  showProgressText();
  ticker = setInterval(showProgressText, 200);
}

function setProgress(text) {
  progressLabel = text;
  showProgressText();
}

// A progress item of the running task: the bar shows its step, the thumbnail its first preview.
function showStep(item) {
  const bar = $("progress-bar");
  bar.max = item.steps;
  bar.value = item.step;
  setProgress(`Inpainting: step ${item.step} of ${item.steps}`);
  const preview = item.previewImages?.[0];
  if (preview) {
    $("progress-preview").src = preview;
    $("progress-preview").hidden = false;
  }
}

function stopProgress() {
  clearInterval(ticker);
  $("progress").hidden = true;
  $("progress-bar").removeAttribute("value"); // back to indeterminate for the next task
  $("progress-preview").hidden = true;
  $("progress-preview").removeAttribute("src");
}

function showRunError(message) {
  $("run-error").textContent = message;
}

function describe(error) {
  return error instanceof ApiError ? error.readable : `Unexpected error: ${error.message || error}`;
}

// -- automatic masks -------------------------------------------------------------------------------

async function makeMask(event) {
  event.preventDefault();
  if (!state.image) return showRunError("Open an image first.");
  const detector = $("mask-detector").value;
  const words = $("mask-prompt").value.trim();
  if (!detector && !words) return showRunError("Choose a detector or type what to mask.");
  const task = { taskType: "imageMasking", inputImage: null, outputType: "URL" };
  if (words) task.maskPrompt = words;
  else task.model = detector;
  setBusy(true);
  startProgress("Making the mask");
  try {
    task.inputImage = await imageUUID();
    const [item] = await runTask(task);
    const image = new Image();
    image.src = sameOrigin(item.maskImageURL);
    await image.decode();
    editor.loadMask(image);
    const found = item.detections?.length ?? 0;
    $("run-error").textContent = "";
    $("mask-status").textContent = found ? `Mask made: ${found} region(s) found; edit it with the brush.` : "Nothing found: the mask is empty.";
  } catch (error) {
    showRunError(describe(error));
  } finally {
    stopProgress();
    setBusy(false);
  }
}

// -- running ---------------------------------------------------------------------------------------------

function setBusy(busy) {
  state.running = busy;
  $("run").disabled = busy;
  $("make-mask").disabled = busy || !state.catalog?.masking.served;
  $("run").textContent = busy ? "Working…" : "Inpaint";
}

async function run(event) {
  event?.preventDefault();
  if (state.running) return;
  $("form-error").textContent = "";
  if (!state.form) return void ($("form-error").textContent = "The controls are not loaded yet: the server is unavailable.");
  const { values, problems } = state.form.read();
  if (problems.length) {
    $("form-error").textContent = problems.map((p) => p.message).join("\n");
    state.form.focus(problems[0].name);
    return;
  }
  if (!state.image) return void ($("form-error").textContent = "seedImage: open an image first");
  const outpainting = state.outpaint?.extends();
  if (!editor.hasMask() && !outpainting) {
    return void ($("form-error").textContent =
      "maskImage: paint the area to regenerate, make a mask automatically, or extend the canvas (Outpainting)");
  }
  const before = state.image.url;
  const mask = editor.hasMask() ? editor.maskDataURL() : undefined; // outpainting needs none
  setBusy(true);
  $("run-error").textContent = "";
  startProgress(state.image.uuid ? "Inpainting" : "Uploading the image");
  try {
    const seedImage = await imageUUID();
    setProgress(`Inpainting (${values.steps ?? "default"} steps, ${values.numberResults ?? 1} result(s))`);
    const task = { taskType: "imageInference", seedImage, outputType: "URL", ...values };
    if (mask) task.maskImage = mask;
    // Models served with progress stream it (server-sent events): the bar fills and a preview shows.
    const model = state.catalog.models.find((m) => m.id === values.model);
    const items = model?.progress
      ? await runTaskWithProgress({ ...task, includePreviews: true }, showStep)
      : await runTask(task);
    const entry = { before, values, items, mask, when: new Date() };
    state.history.unshift(entry);
    showResults(entry);
    renderHistory();
  } catch (error) {
    showRunError(describe(error));
    if (error instanceof ApiError && error.status === 401) $("api-key").focus();
  } finally {
    stopProgress();
    setBusy(false);
  }
}

// -- results -----------------------------------------------------------------------------------------------

function showResults(entry) {
  const grid = $("result-grid");
  grid.replaceChildren();
  const format = (entry.values.outputFormat ?? "PNG").toLowerCase();
  entry.items.forEach((item, index) => {
    const url = sameOrigin(item.imageURL);
    const figure = document.createElement("figure");
    figure.className = "result";
    const img = document.createElement("img");
    img.src = url;
    img.alt = `Result ${index + 1}, seed ${item.seed}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `seed ${item.seed}`;
    const actions = document.createElement("div");
    actions.className = "actions";
    const download = document.createElement("a");
    download.className = "button";
    download.href = url;
    download.download = `inpaint-${item.seed}.${format === "jpg" ? "jpg" : format}`;
    download.textContent = "Download";
    const reuse = button("Use as input", () => openURL(url, { uuid: item.imageUUID, name: `result ${item.seed}` }));
    const compare = button("Compare", () => showCompare(entry.before, url));
    const seed = button("Reuse seed", () => state.form.useSeed(item.seed));
    actions.append(download, reuse, compare, seed);
    figure.append(img, caption, actions);
    grid.append(figure);
  });
  if (entry.items.length) showCompare(entry.before, sameOrigin(entry.items[0].imageURL));
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function showCompare(before, after) {
  $("compare").hidden = false;
  $("compare-before").src = before;
  $("compare-after").src = after;
  updateCompare();
}

function updateCompare() {
  $("compare-after").style.clipPath = `inset(0 0 0 ${$("compare-slider").value}%)`;
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const entry of state.history) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "history-item";
    const thumb = document.createElement("img");
    thumb.src = sameOrigin(entry.items[0]?.imageURL ?? "");
    thumb.alt = "";
    const text = document.createElement("span");
    const seeds = entry.items.map((i) => i.seed).join(", ");
    text.textContent = `${entry.when.toLocaleTimeString()} · “${entry.values.positivePrompt}” · seed ${seeds}`;
    b.append(thumb, text);
    b.addEventListener("click", () => showResults(entry));
    li.append(b);
    list.append(li);
  }
}

// -- wiring ------------------------------------------------------------------------------------------------

function setTool(tool) {
  editor.tool = tool;
  $(`tool-${tool}`).checked = true;
}

function setSize(size) {
  const slider = $("brush-size");
  const value = Math.max(Number(slider.min), Math.min(Number(slider.max), Math.round(size)));
  slider.value = value;
  editor.size = value;
  $("brush-size-value").textContent = `${value} px`;
}

function typing(target) {
  return target.closest?.("input:not([type=range]):not([type=checkbox]):not([type=radio]), textarea, select");
}

function shortcuts(event) {
  const mod = event.ctrlKey || event.metaKey;
  if (mod && event.key === "Enter") return void (event.preventDefault(), run());
  if (typing(event.target)) return;
  const key = event.key.toLowerCase();
  if (mod && key === "z") {
    event.preventDefault();
    return void (event.shiftKey ? editor.redo() : editor.undo());
  }
  if (mod && key === "y") return void (event.preventDefault(), editor.redo());
  if (mod || event.altKey) return;
  if (event.key === "[") setSize(editor.size * 0.8);
  else if (event.key === "]") setSize(editor.size * 1.25);
  else if (key === "b") setTool("brush");
  else if (key === "e") setTool("eraser");
  else if (key === "i") editor.invert();
}

function init() {
  $("key-form").addEventListener("submit", (e) => e.preventDefault());
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", async () => {
    setApiKey($("api-key").value.trim());
    if (!state.form) await loadCatalog();
  });
  $("open-file").addEventListener("change", (e) => e.target.files[0] && openBlob(e.target.files[0], e.target.files[0].name));
  $("open-sample").addEventListener("click", openSample);
  const stage = $("stage");
  stage.addEventListener("dragover", (e) => (e.preventDefault(), stage.classList.add("dropping")));
  stage.addEventListener("dragleave", () => stage.classList.remove("dropping"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("dropping");
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) openBlob(file, file.name);
  });
  document.addEventListener("paste", (e) => {
    if (typing(e.target)) return;
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) (e.preventDefault(), openBlob(file, "pasted image"));
  });
  for (const radio of document.querySelectorAll("input[name=tool]")) radio.addEventListener("change", () => setTool(radio.value));
  $("brush-size").addEventListener("input", (e) => setSize(Number(e.target.value)));
  $("brush-soft").addEventListener("change", (e) => (editor.soft = e.target.checked));
  $("undo").addEventListener("click", () => editor.undo());
  $("redo").addEventListener("click", () => editor.redo());
  $("clear-mask").addEventListener("click", () => editor.clear());
  $("invert-mask").addEventListener("click", () => editor.invert());
  $("zoom").addEventListener("change", (e) => editor.setZoom(e.target.value));
  $("download-mask").addEventListener("click", (e) => {
    if (!state.image) return e.preventDefault();
    e.currentTarget.href = editor.maskDataURL(); // made now: the mask as it is at the click
  });
  editor.addEventListener("change", (e) => {
    $("undo").disabled = !e.detail.undo;
    $("redo").disabled = !e.detail.redo;
    $("download-mask").setAttribute("aria-disabled", String(!state.image));
  });
  $("auto-mask").addEventListener("submit", makeMask);
  $("settings").addEventListener("submit", run);
  $("compare-slider").addEventListener("input", updateCompare);
  document.addEventListener("keydown", shortcuts);
  setSize(40);
  watchServer();
}

init();
