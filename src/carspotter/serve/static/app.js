// carspotter's app: the model runs in this browser (onnxruntime-web, WASM); no photo leaves the device.
// The model takes uint8 RGB pixels (1×H×W×3) at the photo's own size and resizes and normalises them itself, so the
// page only decodes the photo. createImageBitmap applies the EXIF orientation, as `carspotter predict` does.
import * as ort from "./ort/ort.wasm.bundle.min.mjs"; // its WASM glue inside; the .wasm beside it

const TOP_K = 5;
const $ = (id) => document.getElementById(id);
const body = document.body;
let previewUrl = null;

// Threads need a cross-origin-isolated page (COOP/COEP headers), which a plain static host does not give.
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;

function setState(state, message = "") {
  body.dataset.state = state;
  $("status").textContent = state === "busy" || state === "loading" ? message : "";
  $("error").textContent = state === "error" ? message : "";
}

async function loadModel() {
  setState("loading", "Loading the model …");
  const meta = await (await fetch("model.json")).json();
  const session = await ort.InferenceSession.create("model.onnx", {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  return { meta, session };
}

// The photo's pixels, unscaled, as a 1×H×W×3 uint8 tensor. colorSpaceConversion "none": the file's values, as PIL
// decodes them (no ICC conversion).
async function pixelsOf(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch {
    throw new Error(`${file.name}: not an image (choose a JPEG, PNG or WebP photo)`);
  }
  const { width, height } = bitmap;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return new ort.Tensor("uint8", rgb, [1, height, width, 3]);
}

// Calibrated probabilities: softmax(logits / temperature), the temperature fitted when the model was trained
// (`carspotter calibrate`); 1 for a model without one. The same numbers as `carspotter predict`.
function probabilitiesOf(logits, temperature) {
  const z = Array.from(logits, (v) => v / temperature);
  const max = Math.max(...z);
  const exps = z.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

function topK(probs, names, k) {
  return probs
    .map((p, i) => ({ class_id: i, class_name: names[i], probability: p }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}

// The most likely make (or model): the probabilities of its classes summed.
function topGroup(probs, labels) {
  const sums = new Map();
  probs.forEach((p, i) => sums.set(labels[i], (sums.get(labels[i]) || 0) + p));
  let best = null;
  for (const [name, probability] of sums) {
    if (!best || probability > best.probability) best = { name, probability };
  }
  return best;
}

const pct = (p) => Math.round(100 * p) + "%";
const article = (word) => ("aeiou".includes(word[0].toLowerCase()) ? "an" : "a");

// As `carspotter.inference.answers.answer`: below the threshold, name the model or the make that is sure, or say
// that nothing is.
function answerOf(probs, meta, k) {
  const names = meta.class_names;
  const classes = meta.classes || names.map((n) => ({ make: n, model: n, year: null }));
  const minConfidence = meta.calibration?.min_confidence ?? 0;
  const predictions = topK(probs, names, k);
  const make = topGroup(probs, classes.map((c) => c.make));
  const model = topGroup(probs, classes.map((c) => c.model));
  const unsure = predictions[0].probability < minConfidence;
  let answer;
  if (!unsure) answer = predictions[0].class_name;
  else if (model.probability >= minConfidence && model.name !== predictions[0].class_name) {
    answer = `${model.name} — year not sure`;
  } else if (make.probability >= minConfidence) answer = `${article(make.name)} ${make.name} — model not sure`;
  else {
    const top3 = topK(probs, names, 3).map((p) => `${p.class_name} (${pct(p.probability)})`).join(", ");
    answer = `not sure; most likely ${top3}`;
  }
  return { predictions, make, model, unsure, answer };
}

function showAnswer(result) {
  body.dataset.unsure = String(result.unsure);
  $("answer").textContent = result.unsure ? `Not sure: ${result.answer.replace(/^not sure; /, "")}` : result.answer;
  $("levels").textContent = `Make: ${result.make.name} (${pct(result.make.probability)}) · ` +
    `model: ${result.model.name} (${pct(result.model.probability)})`;
}

function show(predictions) {
  $("predictions").replaceChildren(...predictions.map((p) => {
    const li = document.createElement("li");
    li.dataset.classId = p.class_id;
    li.dataset.probability = p.probability;
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.class_name; // text, never HTML: class names come from a file
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = (100 * p.probability).toFixed(1) + "%";
    row.append(name, prob);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    bar.append(fill);
    li.append(row, bar);
    return li;
  }));
}

async function recognise(model, file) {
  if (!file) return;
  const start = performance.now();
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("predictions").replaceChildren();
  $("answer").textContent = "";
  $("levels").textContent = "";
  $("result").hidden = false;
  setState("busy", "Recognising " + file.name + " …");
  try {
    const pixels = await pixelsOf(file);
    const ran = performance.now();
    const out = await model.session.run({ [model.meta.input_name]: pixels });
    const done = performance.now();
    const probs = probabilitiesOf(out[model.meta.output_name].data, model.meta.calibration?.temperature ?? 1);
    const result = answerOf(probs, model.meta, TOP_K);
    showAnswer(result);
    show(result.predictions);
    body.dataset.ms = (done - start).toFixed(1);
    body.dataset.modelMs = (done - ran).toFixed(1);
    body.dataset.photo = file.name;
    $("timing").textContent = `${file.name}: ${Math.round(done - start)} ms on this device ` +
      `(model ${Math.round(done - ran)} ms).`;
    setState("done");
  } catch (err) {
    body.dataset.photo = file.name;
    setState("error", "Could not recognise this file: " + err.message);
  }
}

function offerInstall() {
  window.addEventListener("beforeinstallprompt", (event) => {
    event.preventDefault();
    const button = $("install");
    button.hidden = false;
    button.onclick = async () => {
      button.hidden = true;
      await event.prompt();
    };
  });
}

function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("sw.js")
    .then(() => navigator.serviceWorker.ready)
    .then(() => {
      body.dataset.offline = "ready"; // the service worker holds every file of the app: it works offline now
      $("offline").textContent = "Works offline.";
    })
    .catch((err) => console.warn("no offline mode:", err));
}

async function main() {
  registerServiceWorker();
  offerInstall();
  let model;
  try {
    model = await loadModel();
  } catch (err) {
    setState("error", "Could not load the model: " + err.message);
    return;
  }
  setState("ready");
  for (const id of ["file", "camera"]) {
    const input = $(id);
    input.addEventListener("change", () => recognise(model, input.files[0]));
  }
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => recognise(model, e.dataTransfer.files[0]));
}

main();
