// The live page: face-api.js's Tiny Face Detector finds faces, onnxruntime-web runs this series' model (ONNX) on
// each face, prepared as fer_utils.prediction.preprocess_faces prepares it (crop grown by the record's margin,
// TensorFlow's gray for grayscale (gray_as_trained), tf.image.resize's bilinear without antialias), all in this page.
// Nothing is uploaded: the only requests are for this site's own files. State for tests: window.ferLive.
"use strict";

const $ = (id) => document.getElementById(id);
const live = (window.ferLive = { ready: false, mode: null, faces: [], inputs: [], fps: 0, frames: 0, error: "",
                                 detections: 0 });
let session = null, meta = null, stream = null, running = false;
const canvas = $("canvas"), ctx = canvas.getContext("2d", { willReadFrequently: true });

function say(text) { $("status").textContent = text; live.status = text; }
function fail(text) { $("error").textContent = text; live.error = text; }

async function start() {
  try {
    // The detector's tfjs backend: WebAssembly by default (about ten times faster than WebGL without a GPU,
    // benchmarks/results/detectors.md); ?backend=webgl for a machine with a GPU. Its .wasm come from this site.
    const wanted = new URLSearchParams(location.search).get("backend") || "wasm";
    if (wanted === "wasm") faceapi.tf.setWasmPaths(new URL("vendor/tfjs-wasm/", location.href).href);
    const backend = (await faceapi.tf.setBackend(wanted).catch(() => false)) ? wanted : "cpu";
    if (backend === "cpu") await faceapi.tf.setBackend("cpu");
    await faceapi.tf.ready();
    live.backend = faceapi.tf.getBackend();
    await faceapi.nets.tinyFaceDetector.loadFromUri("vendor/model");
    ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href;  // the .wasm from this site, no CDN
    ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain static server lacks
    const answer = await fetch("model/model.json");
    if (!answer.ok) throw new Error("this site has no model (model/model.json: HTTP " + answer.status + "). " +
      "Train one (notebook 05), then build the site with `python -m fer_utils site`: it exports the work " +
      "folder's model.keras to model/model.onnx beside this page.");
    meta = await answer.json();
    const t0 = performance.now();
    session = await ort.InferenceSession.create("model/model.onnx", { executionProviders: ["wasm"] });
    live.modelLoadMs = performance.now() - t0;
    live.detectorBackend = backend;
    live.ready = true;
    $("camera").disabled = false;
    say(`Ready: ${meta.model} (${meta.image_size.join("×")} ${meta.color_mode}, ${meta.class_names.length} ` +
        `classes, ${(meta.onnx_bytes / 1e6).toFixed(2)} MB) loaded in ${live.modelLoadMs.toFixed(0)} ms. ` +
        "Choose a photo or start the camera.");
  } catch (err) {
    say("Not ready.");
    fail("Could not start: " + (err && err.message ? err.message : err));
  }
}

// ---- the face → model input, as Python's preprocess_faces does it ------------------------------------------

function cropBox(box, W, H) {  // fer_utils.prediction.detection.crop_box
  const dx = meta.margin * box.width, dy = meta.margin * box.height;
  const left = Math.max(0, Math.round(box.x - dx)), top = Math.max(0, Math.round(box.y - dy));
  const right = Math.min(W, Math.round(box.x + box.width + dx)), bottom = Math.min(H, Math.round(box.y + box.height + dy));
  return [left, top, Math.max(right, left + 1), Math.max(bottom, top + 1)];
}

function faceInput(image, crop, out, offset) {  // image: ImageData of the whole frame
  const [l, t, r, b] = crop, w = r - l, h = b - t, [H, W] = meta.image_size;
  const C = meta.color_mode === "grayscale" ? 1 : 3, px = new Float32Array(w * h * C), d = image.data;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const i = ((t + y) * image.width + (l + x)) * 4, o = (y * w + x) * C;
    if (C === 1) px[o] = (d[i] * 9797 + d[i + 1] * 19234 + d[i + 2] * 3737) >> 15;  // libpng's gray, as training
    else { px[o] = d[i]; px[o + 1] = d[i + 1]; px[o + 2] = d[i + 2]; }
  }
  const sy = h / H, sx = w / W;  // tf.image.resize, bilinear, half-pixel centres, no antialias
  for (let y = 0; y < H; y++) {
    const fy = (y + 0.5) * sy - 0.5, y0 = Math.max(Math.floor(fy), 0), y1 = Math.min(Math.ceil(fy), h - 1);
    const ly = fy - Math.floor(fy);
    for (let x = 0; x < W; x++) {
      const fx = (x + 0.5) * sx - 0.5, x0 = Math.max(Math.floor(fx), 0), x1 = Math.min(Math.ceil(fx), w - 1);
      const lx = fx - Math.floor(fx);
      for (let c = 0; c < C; c++) {
        const p = (yy, xx) => px[(yy * w + xx) * C + c];
        const top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * lx, bot = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * lx;
        out[offset + (y * W + x) * C + c] = top + (bot - top) * ly;
      }
    }
  }
}

async function analyse(source, width, height) {
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  ctx.drawImage(source, 0, 0, width, height);
  const image = ctx.getImageData(0, 0, width, height);
  const t0 = performance.now();
  const found = await faceapi.detectAllFaces(canvas,
    new faceapi.TinyFaceDetectorOptions({ inputSize: meta.detector_input || 416, scoreThreshold: 0.5 }));
  const t1 = performance.now();
  const [H, W] = meta.image_size, C = meta.color_mode === "grayscale" ? 1 : 3, n = found.length;
  const faces = found.map((f) => ({ box: [f.box.x, f.box.y, f.box.width, f.box.height], score: f.score,
                                    crop: cropBox(f.box, width, height) }));
  if (n) {
    const batch = new Float32Array(n * H * W * C);
    faces.forEach((f, k) => faceInput(image, f.crop, batch, k * H * W * C));
    const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", batch, [n, H, W, C]) };
    const probs = (await session.run(feeds))[session.outputNames[0]].data;
    const K = meta.class_names.length;
    faces.forEach((f, k) => {
      f.probs = Array.from(probs.slice(k * K, (k + 1) * K));
      f.label = meta.class_names[f.probs.indexOf(Math.max(...f.probs))];
    });
    live.inputs = faces.map((f, k) => Array.from(batch.slice(k * H * W * C, (k + 1) * H * W * C)));
  } else live.inputs = [];
  live.detectMs = t1 - t0; live.modelMs = performance.now() - t1;
  draw(faces);
  live.faces = faces; live.frames += 1; live.detections += n;
  return faces;
}

function draw(faces) {
  ctx.lineWidth = Math.max(2, canvas.width / 320); ctx.font = `${Math.max(14, canvas.width / 40)}px sans-serif`;
  for (const f of faces) {
    const [x, y, w, h] = f.box, text = `${f.label} ${(100 * Math.max(...f.probs)).toFixed(0)}%`;
    ctx.strokeStyle = "#00e676"; ctx.strokeRect(x, y, w, h);
    const tw = ctx.measureText(text).width + 8, th = parseInt(ctx.font) + 6, ty = Math.max(0, y - th);
    ctx.fillStyle = "#00e676"; ctx.fillRect(x, ty, tw, th);
    ctx.fillStyle = "#000"; ctx.fillText(text, x + 4, ty + th - 6);
  }
  $("count").textContent = faces.length;
  const rows = [`<tr><th>face</th>${meta.class_names.map((c) => `<th>${c}</th>`).join("")}</tr>`];
  faces.forEach((f, k) => rows.push(`<tr><td>${k + 1}</td>${f.probs.map((p) =>
    `<td>${p.toFixed(3)}</td>`).join("")}</tr>`));
  $("probs").innerHTML = faces.length ? rows.join("") : "";
}

// ---- a photo ---------------------------------------------------------------------------------------------

$("photo").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file || !live.ready) return;
  stopCamera(); fail(""); live.mode = "photo";
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (err) {
    live.faces = []; live.inputs = [];
    fail(`Could not read “${file.name}” as an image (${err.name || err}). Choose a JPEG, PNG, WebP or GIF photo.`);
    return;
  }
  const faces = await analyse(bitmap, bitmap.width, bitmap.height);
  say(`${file.name}: ${faces.length} face(s); detector ${live.detectMs.toFixed(0)} ms, model ` +
      `${live.modelMs.toFixed(0)} ms.`);
  live.photoDone = (live.photoDone || 0) + 1;
});

// ---- the camera ------------------------------------------------------------------------------------------

$("camera").addEventListener("click", async () => {
  fail("");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    fail("This browser gives no camera to this page: open it from http://localhost or an https address.");
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (err) {
    const why = { NotAllowedError: "the camera was not allowed. Allow it in the browser's settings for this site " +
                  "and try again, or choose a photo instead", NotFoundError: "no camera was found",
                  NotReadableError: "the camera is in use by another program" }[err.name] || err.message;
    fail(`No camera: ${why} (${err.name}).`);
    return;
  }
  const video = $("video");
  video.srcObject = stream; await video.play();
  live.mode = "camera"; running = true; $("stop").disabled = false;
  say("Camera on: the picture stays in this page.");
  let windowStart = performance.now(), count = 0;
  while (running) {
    if (video.videoWidth) {
      await analyse(video, video.videoWidth, video.videoHeight);
      count += 1;
      const now = performance.now();
      if (now - windowStart >= 1000) {
        live.fps = (1000 * count) / (now - windowStart); windowStart = now; count = 0;
        $("fps").textContent = live.fps.toFixed(1);
      }
    }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
});

function stopCamera() {
  running = false; $("stop").disabled = true;
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
}
$("stop").addEventListener("click", () => { stopCamera(); say("Camera off."); });

start();
