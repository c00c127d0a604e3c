// Draw on the canvas; while drawing, send it (throttled) to /api/predict as a PNG and show
// every class's probability and the 28x28 image the model received.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const THROTTLE_MS = 150;
let drawing = false, last = null, pending = false, again = false, dirty = false;
// Which drawing is on the pad: Clear starts a new one, and an answer about an earlier one,
// still in flight, is dropped rather than painted over the cleared page.
let drawingId = 0;

function clearPad() {
  drawingId += 1;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  dirty = false;
  document.getElementById("digit").textContent = "?";
  document.getElementById("confidence").textContent = "draw something";
  document.getElementById("bars").innerHTML = "";
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 112, 112);
  showError("");
}

function point(event) {
  const r = pad.getBoundingClientRect();
  return { x: (event.clientX - r.left) * pad.width / r.width, y: (event.clientY - r.top) * pad.height / r.height };
}

function stroke(to) {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(last.x, last.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  last = to;
  dirty = true;
}

pad.addEventListener("pointerdown", (e) => {
  drawing = true;
  pad.setPointerCapture(e.pointerId);
  last = point(e);
  stroke(last);
  schedule();
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  stroke(point(e));
  schedule();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { drawing = false; schedule(); });
}
document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) { clearPad(); predict(file, file.type || "image/png", drawingId); }
  e.target.value = "";
});

// At most one request in flight; a change during it is sent when it ends.
function schedule() {
  if (!dirty) return;
  if (pending) { again = true; return; }
  pending = true;
  const id = drawingId;
  setTimeout(() => {
    if (id !== drawingId || !dirty) { pending = false; again = false; return; }
    pad.toBlob((blob) => predict(blob, "image/png", id), "image/png");
  }, THROTTLE_MS);
}

// Sends `body`, an image of drawing `id`, and shows the answer if that drawing is still on the pad.
async function predict(body, type, id) {
  pending = true;
  try {
    const response = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": type }, body });
    const json = await response.json();
    if (id !== drawingId) return;
    if (!response.ok) throw new Error(json.error || response.statusText);
    show(json);
    showError("");
  } catch (err) {
    if (id === drawingId) showError(String(err.message || err));
  } finally {
    pending = false;
    if (again) { again = false; schedule(); }
  }
}

// The classes' names from /api/model; numbers until they arrive.
let classNames = [];
const className = (c) => classNames[c] ?? String(c);

function show(p) {
  const answer = document.getElementById("digit");
  answer.textContent = className(p.class);
  // A class name longer than a digit or two (Fashion-MNIST's "Ankle boot") is set smaller.
  answer.className = answer.textContent.length > 2 ? "long" : "";
  document.getElementById("confidence").textContent = (100 * p.probabilities[p.class]).toFixed(1) + "% sure";
  const bars = document.getElementById("bars");
  bars.innerHTML = "";
  p.probabilities.forEach((prob, c) => {
    const li = document.createElement("li");
    li.className = c === p.class ? "best" : "";
    li.dataset.probability = prob;
    const label = document.createElement("span");
    label.textContent = className(c);
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * prob).toFixed(1)}%`;
    track.appendChild(fill);
    const percent = document.createElement("span");
    percent.textContent = `${(100 * prob).toFixed(1)}%`;
    li.append(label, track, percent);
    bars.appendChild(li);
  });
  const image = seen.createImageData(28, 28);
  p.input.forEach((v, i) => {
    const g = Math.round(255 * v);
    image.data.set([g, g, g, 255], 4 * i);
  });
  const tmp = document.createElement("canvas");
  tmp.width = tmp.height = 28;
  tmp.getContext("2d").putImageData(image, 0, 0);
  seen.imageSmoothingEnabled = false;
  seen.drawImage(tmp, 0, 0, 112, 112);
}

function showError(message) {
  const el = document.getElementById("error");
  el.textContent = message;
  el.hidden = !message;
}

fetch("/api/model").then((r) => r.json()).then((m) => {
  classNames = m.class_names ?? [];
  // The bars' label column fits the longest name.
  const longest = Math.max(1, ...classNames.map((n) => n.length));
  document.getElementById("bars").style.setProperty("--label", `max(1.5em, ${longest + 1}ch)`);
  const accuracy = m.test_accuracy == null ? "" : `, ${(100 * m.test_accuracy).toFixed(2)}% test accuracy`;
  document.getElementById("facts").textContent = `Model: ${m.architecture.replaceAll(",", ", ")}; ${m.parameters.toLocaleString()} parameters${accuracy}.`;
}).catch(() => { document.getElementById("facts").textContent = "The model's facts could not be loaded."; });

clearPad();
