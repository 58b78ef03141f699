// The teaching page: draw or upload a symbol, teach it under a label, classify new drawings.
// It talks to the same HTTP API as any client (docs/SERVER.md), from the same origin.
"use strict";

const KEY_STORAGE = "metanet-api-key"; // sessionStorage: gone when the tab closes
const TASK_STORAGE = "metanet-task"; // localStorage: the task last worked on
const DEFAULT_TASK = "sketchpad";
const TOP_K = 5;
// A drawing is sent as a 105x105 PNG framed like an Omniglot character (the data the model was
// trained on): its strokes re-drawn 4 px wide, the drawing's bounding box scaled to about half of
// the image and centred. The server then applies its own preprocessing (polarity, 28x28).
const EXPORT_SIZE = 105;
const EXPORT_STROKE = 4;
const EXPORT_FILL = 0.5;

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const state = {
  task: localStorage.getItem(TASK_STORAGE) || DEFAULT_TASK,
  strokes: [], // [[{x, y}, ...], ...] in canvas pixels
  drawing: null,
  files: [], // [{name, dataUrl}] chosen uploads: used instead of the drawing while present
  labels: [],
};

// ---- messages -------------------------------------------------------------------------------
function showStatus(message, kind = "error") {
  const el = $("status");
  el.textContent = message;
  el.className = kind;
  el.hidden = !message;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---- API ------------------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, "network", `Cannot reach the server (${err.message}). Is it running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error;
    const message = error ? error.message : `${response.status} ${response.statusText}`;
    if (response.status === 401) {
      $("key-button").hidden = false;
      $("key-form").hidden = false;
      $("api-key").focus();
      throw new ApiError(401, "unauthorized", `This server needs an API key: ${message}`);
    }
    if (response.status === 422 && data && Array.isArray(data.detail)) {
      throw new ApiError(422, "invalid", data.detail.map((d) => d.msg).join("; "));
    }
    throw new ApiError(response.status, error ? error.code : "http_error", message);
  }
  return data;
}

const taskPath = (suffix = "") => `/tasks/${encodeURIComponent(state.task)}${suffix}`;

// Runs an action with its button disabled; any error is shown in words.
async function act(button, action) {
  if (button) button.disabled = true;
  try {
    await action();
  } catch (err) {
    showStatus(err.message || String(err));
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- drawing pad ----------------------------------------------------------------------------
function canvasPoint(event) {
  const rect = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) / rect.width) * pad.width,
    y: ((event.clientY - rect.top) / rect.height) * pad.height,
  };
}

function strokeWidth() {
  return pad.width / 26;
}

function drawStrokes(target, strokes, transform, width) {
  target.lineCap = "round";
  target.lineJoin = "round";
  target.strokeStyle = "#000";
  target.fillStyle = "#000";
  target.lineWidth = width;
  for (const stroke of strokes) {
    const points = stroke.map(transform);
    if (points.length === 1) {
      target.beginPath();
      target.arc(points[0].x, points[0].y, width / 2, 0, 2 * Math.PI);
      target.fill();
      continue;
    }
    target.beginPath();
    target.moveTo(points[0].x, points[0].y);
    for (const p of points.slice(1)) target.lineTo(p.x, p.y);
    target.stroke();
  }
}

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  drawStrokes(ctx, state.strokes, (p) => p, strokeWidth());
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  state.drawing = [canvasPoint(event)];
  state.strokes.push(state.drawing);
  redraw();
});
pad.addEventListener("pointermove", (event) => {
  if (!state.drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) state.drawing.push(canvasPoint(e));
  redraw();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    state.drawing = null;
  });
}

function clearPad() {
  state.strokes = [];
  redraw();
}

// The drawing as a PNG data URL framed like an Omniglot character, or null when nothing is drawn.
function drawingPng() {
  const points = state.strokes.flat();
  if (!points.length) return null;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const [left, right, top, bottom] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const side = Math.max(right - left, bottom - top, pad.width / 8);
  const scale = (EXPORT_SIZE * EXPORT_FILL) / side;
  const cx = (left + right) / 2;
  const cy = (top + bottom) / 2;
  const out = document.createElement("canvas");
  out.width = out.height = EXPORT_SIZE;
  const octx = out.getContext("2d");
  octx.fillStyle = "#fff";
  octx.fillRect(0, 0, EXPORT_SIZE, EXPORT_SIZE);
  const half = EXPORT_SIZE / 2;
  drawStrokes(octx, state.strokes, (p) => ({ x: half + (p.x - cx) * scale, y: half + (p.y - cy) * scale }), EXPORT_STROKE);
  return out.toDataURL("image/png");
}

// ---- uploads --------------------------------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, dataUrl: reader.result });
    reader.onerror = () => reject(new Error(`Cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function showPending() {
  const box = $("pending");
  box.hidden = state.files.length === 0;
  $("pending-text").textContent = `${state.files.length} uploaded image(s) will be used instead of the drawing:`;
  const images = $("pending-images");
  images.replaceChildren(
    ...state.files.map((f) => {
      const img = document.createElement("img");
      img.src = f.dataUrl;
      img.alt = f.name;
      img.title = f.name;
      return img;
    }),
  );
}

$("upload").addEventListener("change", (event) =>
  act(null, async () => {
    const files = [...event.target.files];
    event.target.value = "";
    state.files = await Promise.all(files.map(readFile));
    showPending();
  }),
);
$("pending-clear").addEventListener("click", () => {
  state.files = [];
  showPending();
});

// What teach / classify send: the uploads if any, else the drawing (as base64 data URLs).
function currentImages() {
  if (state.files.length) return state.files.map((f) => ({ name: f.name, image: f.dataUrl }));
  const png = drawingPng();
  if (!png) throw new Error("Draw a symbol first (or upload an image).");
  return [{ name: "drawing", image: png }];
}

function resetInputs() {
  clearPad();
  state.files = [];
  showPending();
}

// ---- tasks ----------------------------------------------------------------------------------
async function loadTasks() {
  const data = await api("GET", "/tasks");
  const ids = data.tasks.map((t) => t.task_id);
  if (!ids.includes(state.task)) ids.unshift(state.task); // a new task exists once taught
  const select = $("task-select");
  select.replaceChildren(
    ...ids.map((id) => {
      const option = document.createElement("option");
      option.value = option.textContent = id;
      return option;
    }),
  );
  select.value = state.task;
}

async function switchTask(taskId) {
  state.task = taskId;
  localStorage.setItem(TASK_STORAGE, taskId);
  $("result").replaceChildren(hint("Draw a symbol and press Classify."));
  await loadTasks();
  await loadConcepts();
}

$("task-select").addEventListener("change", (event) => act(null, () => switchTask(event.target.value)));
$("new-task-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("new-task").value.trim();
  act(event.submitter, async () => {
    await switchTask(name);
    $("new-task").value = "";
    showStatus(`Task "${name}" starts empty: teach it a concept.`, "info");
  });
});
$("delete-task").addEventListener("click", (event) =>
  act(event.currentTarget, async () => {
    if (!confirm(`Delete task "${state.task}" and every example it holds?`)) return;
    try {
      await api("DELETE", taskPath());
    } catch (err) {
      if (err.status !== 404) throw err; // never taught: nothing stored to delete
    }
    const deleted = state.task;
    const data = await api("GET", "/tasks");
    const next = data.tasks.length ? data.tasks[0].task_id : DEFAULT_TASK;
    await switchTask(next);
    showStatus(`Deleted task "${deleted}".`, "info");
  }),
);

// ---- download and upload a task (GET /tasks/{id}/export, POST /tasks/{id}/import) ------------------
$("export-task").addEventListener("click", (event) =>
  act(event.currentTarget, async () => {
    const data = await api("GET", taskPath("/export"));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(data)], { type: "application/json" }));
    link.download = `${state.task}.metanet.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
    showStatus(`Downloaded task "${state.task}": ${data.examples.length} examples.`, "info");
  }),
);
$("import-task").addEventListener("change", (event) => {
  const input = event.target;
  const file = input.files[0];
  input.value = ""; // the same file can be chosen again
  if (!file) return;
  act(null, async () => {
    let data;
    try {
      data = JSON.parse(await file.text());
    } catch {
      throw new Error(`${file.name} is not a downloaded task (JSON).`);
    }
    const name = $("new-task").value.trim() || data.task_id;
    const result = await api("POST", `/tasks/${encodeURIComponent(name)}/import`, data);
    $("new-task").value = "";
    await switchTask(name);
    const other = result.model_matches ? "" : " It was made under another model, so answers may differ.";
    showStatus(`Uploaded ${file.name} as task "${name}": ${result.num_examples} examples.${other}`, "info");
  });
});

// ---- concepts -------------------------------------------------------------------------------
function hint(text) {
  const p = document.createElement("p");
  p.className = "hint";
  p.textContent = text;
  return p;
}

async function loadConcepts() {
  let labels = [];
  try {
    labels = (await api("GET", taskPath("/labels"))).labels;
  } catch (err) {
    if (err.status !== 404) throw err; // a task not taught yet has no concepts
  }
  state.labels = labels;
  $("concept-count").textContent = labels.length ? `(${labels.length})` : "";
  const list = $("concepts");
  if (!labels.length) {
    list.replaceChildren(hint("None yet: draw a symbol, give it a label and press Teach."));
    return;
  }
  list.replaceChildren(
    ...labels.map((entry) => {
      const li = document.createElement("li");
      li.dataset.label = entry.label;
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${entry.image}`;
      img.alt = `first example of ${entry.label}`;
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = entry.label;
      const count = document.createElement("div");
      count.className = "count";
      count.textContent = `${entry.examples} example${entry.examples === 1 ? "" : "s"}`;
      const forget = document.createElement("button");
      forget.type = "button";
      forget.className = "danger forget";
      forget.textContent = "Forget";
      forget.setAttribute("aria-label", `forget ${entry.label}`);
      forget.addEventListener("click", () =>
        act(forget, async () => {
          if (!confirm(`Forget "${entry.label}" and its ${entry.examples} example(s)?`)) return;
          await api("DELETE", taskPath(`/labels/${encodeURIComponent(entry.label)}`));
          await loadConcepts();
          await loadTasks();
          showStatus(`Forgot "${entry.label}".`, "info");
        }),
      );
      li.append(img, name, count, forget);
      return li;
    }),
  );
}

// ---- teach and classify ---------------------------------------------------------------------
$("teach-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act($("teach"), async () => {
    const label = $("label").value.trim();
    if (!label) throw new Error("Give the drawing a label first.");
    const images = currentImages();
    const result = await api("POST", taskPath("/support"), {
      examples: images.map((i) => ({ label, image: i.image })),
    });
    resetInputs();
    $("label").value = "";
    await loadConcepts();
    await loadTasks();
    showStatus(`Taught "${label}" (${images.length} example${images.length === 1 ? "" : "s"}; task version ${result.version}).`, "info");
  });
});

function renderPrediction(name, prediction, threshold) {
  const item = document.createElement("div");
  item.className = "result-item";
  const answer = document.createElement("p");
  const known = prediction.label !== null;
  answer.className = `answer ${known ? "known" : "none"}`;
  answer.textContent = known ? prediction.label : "None of these";
  const detail = document.createElement("p");
  detail.className = "hint";
  const novelty = prediction.novelty.toFixed(3);
  const limit = threshold === null ? "no threshold set" : `threshold ${threshold.toFixed(3)}`;
  detail.textContent = known
    ? `${name}: ${(100 * prediction.score).toFixed(1)}% · novelty ${novelty} (${limit})`
    : `${name}: unlike every concept of this task (novelty ${novelty} > ${limit}). Nearest concepts:`;
  const list = document.createElement("ol");
  list.className = known ? "topk" : "topk guesses";
  for (const entry of prediction.top_k) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = entry.label;
    if (!known) {
      // The scores share out certainty among the task's concepts, assuming the drawing is one of
      // them; for a drawing judged to be none of them they are no confidence, so none is shown.
      li.append(label);
      list.append(li);
      continue;
    }
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * entry.score).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * entry.score).toFixed(1)}%`;
    li.append(label, bar, value);
    list.append(li);
  }
  item.append(answer, detail, list);
  return item;
}

$("classify").addEventListener("click", (event) =>
  act(event.currentTarget, async () => {
    if (!state.labels.length) throw new Error("This task has no concepts yet: teach one first.");
    const images = currentImages();
    $("result").replaceChildren(hint("Classifying…"));
    let result;
    try {
      result = await api("POST", taskPath("/classify"), { images: images.map((i) => i.image), top_k: TOP_K });
    } catch (err) {
      $("result").replaceChildren(hint("No answer: see the message above."));
      throw err;
    }
    showStatus("");
    $("result").replaceChildren(
      ...result.predictions.map((p, i) => renderPrediction(images[i].name, p, result.novelty_threshold)),
    );
  }),
);

// ---- buttons, key, start --------------------------------------------------------------------
$("undo").addEventListener("click", () => {
  state.strokes.pop();
  redraw();
});
$("clear").addEventListener("click", clearPad);
$("key-button").addEventListener("click", () => {
  $("key-form").hidden = !$("key-form").hidden;
  if (!$("key-form").hidden) $("api-key").focus();
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  $("key-form").hidden = true;
  act(null, async () => {
    await start();
    showStatus("Key accepted.", "info");
  });
});
$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  showStatus("Key forgotten for this tab.", "info");
});

async function showKeyButton() {
  // The key button only where the server asks for keys; a 401 shows it too (see api).
  const info = await api("GET", "/info");
  $("key-button").hidden = !info.api_keys && !sessionStorage.getItem(KEY_STORAGE);
}

async function start() {
  showStatus("");
  await showKeyButton();
  await loadTasks();
  await loadConcepts();
}

redraw();
act(null, start);
