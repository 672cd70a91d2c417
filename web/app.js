// The page: drives the wasm engine (pkg/, built by `make web`). `?test=1` runs a fixed job
// (scripts/web-test.sh): fetches the model folder and CSVs named by `model`, `train`, `dev`,
// trains, predicts, exports, and writes the result as JSON into #result.
import init, { Session } from "./pkg/peft_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const testMode = params.get("test") === "1";
let session = null;
let losses = [];

function log(line) { $("log").textContent += line + "\n"; }

function fail(where, e) {
  const msg = `${where}: ${e && e.message ? e.message : e}`;
  $("status").innerHTML = "";
  const el = document.createElement("div");
  el.className = "error";
  el.textContent = msg;
  $("status").appendChild(el);
  return msg;
}

function drawLoss(dev) {
  const c = $("loss"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (losses.length === 0) return;
  const pad = 34, w = c.width - 2 * pad, h = c.height - 2 * pad;
  const max = Math.max(...losses), min = Math.min(0, ...losses);
  const x = (i) => pad + (losses.length === 1 ? 0 : (i * w) / (losses.length - 1));
  const y = (v) => pad + h - ((v - min) * h) / (max - min || 1);
  g.strokeStyle = "#999"; g.strokeRect(pad, pad, w, h);
  g.fillStyle = "#555"; g.font = "12px sans-serif";
  g.fillText(`loss ${max.toFixed(3)}`, 2, pad - 6);
  g.fillText(`${min.toFixed(2)}`, 2, pad + h);
  g.fillText(`step ${losses.length}`, pad + w - 50, pad + h + 16);
  g.strokeStyle = "#1565c0"; g.lineWidth = 1.5; g.beginPath();
  losses.forEach((v, i) => (i === 0 ? g.moveTo(x(i), y(v)) : g.lineTo(x(i), y(v))));
  g.stroke();
  if (dev && dev.length) {
    const best = Math.max(...dev);
    g.fillText(`dev accuracy: ${dev[dev.length - 1].toFixed(3)} after epoch ${dev.length} (best ${best.toFixed(3)}, ` +
      `epoch ${dev.indexOf(best) + 1})`, pad + 6, pad + 14);
  }
}

async function loadModel(folder, files) {
  for (const [name, bytes] of files) session.add_file(name, bytes);
  const line = session.load_model(folder);
  $("model").textContent = line;
  $("train").disabled = false;
  return line;
}

function options() {
  const o = {
    epochs: +$("epochs").value, lr: +$("lr").value, batch_size: +$("batch").value,
    max_length: +$("max-length").value, reduction_factor: +$("rf").value,
  };
  // A budget such as "64MiB" (empty: every layer on the GPU), planned as `peft train` plans it.
  if ($("max-memory").value.trim()) o.max_gpu_memory = $("max-memory").value.trim();
  if ($("precision").value) o.precision = $("precision").value;
  return o;
}

async function train(trainCsv, devCsv, opts) {
  losses = [];
  $("train").disabled = true;
  const started = performance.now();
  const report = JSON.parse(await session.train(trainCsv, devCsv, JSON.stringify(opts), (json) => {
    const s = JSON.parse(json);
    losses.push(s.loss);
    $("progress").max = s.total; $("progress").value = s.step;
    $("status").textContent = `epoch ${s.epoch}, step ${s.step}/${s.total}, loss ${s.loss.toFixed(4)}, ` +
      `${s.tokens_per_second.toFixed(0)} tokens/s`;
    drawLoss();
  }));
  drawLoss(report.dev_accuracy);
  log(`memory: ${report.memory}`);
  // The adapter kept (predict, download) is the best dev epoch's, as `peft train` keeps it.
  const kept = (report.best_epoch || report.dev_accuracy.length) - 1;
  const acc = report.dev_accuracy[kept];
  $("status").textContent = `done: kept epoch ${kept + 1}, dev accuracy ${acc.toFixed(4)} (macro-F1 ` +
    `${report.dev_macro_f1[kept].toFixed(4)}), ${report.tokens_per_second.toFixed(0)} ` +
    `tokens/s, ${((performance.now() - started) / 1000).toFixed(1)} s, ${report.trainable_parameters} trainable parameters`;
  $("train").disabled = false; $("predict").disabled = false; $("download").disabled = false;
  return report;
}

async function predict(text) {
  const p = JSON.parse(await session.predict(text));
  $("prediction").textContent = `${p.label} (${p.labels.map((l, i) => `${l} ${p.probabilities[i].toFixed(3)}`).join(", ")})`;
  return p;
}

const readFile = (f) => f.arrayBuffer().then((b) => new Uint8Array(b));
const readText = (f) => (f ? f.text() : Promise.resolve(""));

function wireControls() {
  $("model-files").addEventListener("change", async (ev) => {
    const files = [...ev.target.files];
    if (!files.length) return;
    const folder = (files[0].webkitRelativePath || files[0].name).split("/")[0];
    try {
      const wanted = /^(config\.json|model\.safetensors|vocab\.txt|tokenizer\.json|tokenizer_config\.json)$/;
      // Only the folder's own files (sentence-transformers folders hold another config.json in 1_Pooling/).
      const top = (f) => !f.webkitRelativePath || f.webkitRelativePath.split("/").length === 2;
      const picked = await Promise.all(
        files.filter((f) => top(f) && wanted.test(f.name)).map(async (f) => [f.name, await readFile(f)]));
      await loadModel(folder, picked);
    } catch (e) { fail("loading the model", e); }
  });
  $("train").addEventListener("click", async () => {
    try {
      const trainCsv = await readText($("train-file").files[0]);
      if (!trainCsv) throw new Error("pick a training CSV");
      await train(trainCsv, await readText($("dev-file").files[0]), options());
    } catch (e) { fail("training", e); $("train").disabled = false; }
  });
  $("predict").addEventListener("click", () => predict($("text").value).catch((e) => fail("predicting", e)));
  $("download").addEventListener("click", async () => {
    try {
      const zip = await session.export_zip("adapter");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([zip], { type: "application/zip" }));
      a.download = "adapter.zip";
      a.click();
    } catch (e) { fail("exporting", e); }
  });
}

// Test mode: the fixed job; the result (JSON) goes into #result for `--dump-dom`.
async function testJob() {
  const fetchBytes = async (url) => {
    const r = await fetch(url);
    return r.ok ? new Uint8Array(await r.arrayBuffer()) : null;
  };
  const model = params.get("model");
  const names = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"];
  const files = [];
  for (const n of names) {
    const b = await fetchBytes(`${model}/${n}`);
    if (b) files.push([n, b]);
  }
  await loadModel(model.split("/").pop(), files);
  const text = async (u) => (u ? (await fetch(u)).text() : "");
  const opts = JSON.parse(params.get("options") || "{}");
  const fields = {
    epochs: "epochs", lr: "lr", batch_size: "batch", max_length: "max-length", reduction_factor: "rf",
    max_gpu_memory: "max-memory", precision: "precision",
  };
  for (const [k, v] of Object.entries(opts)) if (fields[k]) $(fields[k]).value = v;
  const report = await train(await text(params.get("train")), await text(params.get("dev")), opts);
  const sentences = JSON.parse(params.get("sentences") || "[]");
  const predictions = [];
  for (const s of sentences) {
    $("text").value = s;
    predictions.push({ text: s, ...(await predict(s)) });
  }
  const zip = await session.export_zip("adapter");
  let bin = "";
  for (let i = 0; i < zip.length; i += 0x8000) bin += String.fromCharCode(...zip.subarray(i, i + 0x8000));
  return { ok: true, gpu: $("gpu").textContent, gpu_details: session.gpu_details(), report, predictions, zip_base64: btoa(bin) };
}

// The browser names its adapter in `info` (vendor, architecture, description); wgpu passes on the
// description only, often empty.
async function gpuName() {
  let named = "";
  try {
    const a = await navigator.gpu.requestAdapter();
    const i = a && a.info;
    if (i) named = [i.vendor, i.architecture, i.description].filter((x) => x).join(" ");
  } catch (e) { /* the engine's own line below */ }
  return `${named || "(unnamed adapter)"} — ${session.gpu_name()}`;
}

async function main() {
  // In test mode the page's load event waits for this request, which the test server answers
  // once the job posted its result (so --dump-dom and --screenshot see the finished page).
  if (testMode) {
    const hold = document.createElement("img");
    hold.src = "/__hold__"; hold.style.display = "none";
    document.body.appendChild(hold);
  }
  let result;
  try {
    await init();
    session = await Session.open();
    $("gpu").textContent = await gpuName();
    $("gpu-details").textContent = session.gpu_details();
    wireControls();
    if (testMode) result = await testJob();
  } catch (e) {
    const msg = fail("error", e);
    if (!session) $("gpu").textContent = "no WebGPU: " + msg;
    result = { ok: false, error: msg };
  }
  if (testMode) {
    $("result").textContent = JSON.stringify(result);
    await fetch("/__done__", { method: "POST" }).catch(() => {});
  }
}

main();
