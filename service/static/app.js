// Playground for the image inference service: pick a task, upload a photo (two for faces),
// call the endpoint and draw the answer; "identify" also enrols faces into a gallery. Plain
// browser JavaScript, no dependencies, so the page works offline and needs no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "iis-api-key";
  // Card task served by each endpoint (verify-faces also needs a face-detect model).
  const CARD_TASK = {
    classify: "classify", detect: "detect", segment: "segment", "verify-faces": "face-embed",
    identify: "face-embed", // the gallery's own embedder: no model picker on that tab
  };
  // service/gallery/schemas.py NAME_PATTERN: gallery and subject names go in the URL path.
  const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
  const UNKNOWN = "#475467";
  const PALETTE = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
    "#f032e6", "#bfef45", "#469990", "#9a6324", "#800000", "#000075",
  ];
  // Canvases are capped so a 40-megapixel upload does not allocate a 160 MB bitmap.
  const MAX_CANVAS_SIDE = 2048;

  const state = {
    task: "classify", files: { a: null, b: null }, enrolFile: null, models: null, busy: false,
    drawing: 0, // bumped by clearResult: a preview still decoding then draws nowhere
  };
  // For tests and the curious: the last answer and what the page decoded from it.
  window.playground = {
    state, lastResult: null, decodedAreas: [], drawnTags: [], lastEnrol: null,
  };

  const colour = (i) => PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length];
  const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const pct = (x) => `${(100 * x).toFixed(1)}%`;

  function authHeaders() {
    const key = $("api-key").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // fetch + the API's error shape ({"error": {code, message, request_id}}) as an Error.
  async function callApi(path, init = {}) {
    const headers = { ...authHeaders(), ...(init.headers || {}) };
    const r = await fetch(path, { ...init, headers });
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const e = body && body.error ? body.error
        : { code: `http_${r.status}`, message: r.statusText || "no answer" };
      throw Object.assign(new Error(e.message), {
        code: e.code, requestId: e.request_id, status: r.status,
      });
    }
    return body;
  }

  function errorText(err) {
    let text = err.code ? `${err.code}: ${err.message}` : String(err.message || err);
    if (err.requestId) text += ` (request ${err.requestId})`;
    return text;
  }

  const galleryPath = (gallery) => `v1/faces/galleries/${encodeURIComponent(gallery)}`;

  function checkName(what, value) {
    if (!value) throw new Error(`type a ${what} name`);
    if (!NAME.test(value)) {
      throw new Error(`${what} name "${value}" is not URL-safe: use 1 to 64 letters, digits, ` +
        `". _ -", starting with a letter or digit`);
    }
    return value;
  }

  function setStatus(kind, text) {
    $("status").dataset.state = kind;
    $("status").textContent = text;
  }

  // ---- models and controls ------------------------------------------------------------

  async function loadModels() {
    try {
      const r = await fetch("v1/models", { headers: authHeaders() });
      const body = await r.json().catch(() => null);
      if (!r.ok) {
        state.models = null;
        const why = body && body.error ? body.error.message : `HTTP ${r.status}`;
        setStatus("error", `cannot list models: ${why}`);
      } else {
        state.models = body;
        const ready = body.models.filter((m) => m.ready).map((m) => m.card.name);
        const failed = Object.keys(body.failed || {});
        setStatus(
          ready.length ? "ready" : "error",
          ready.length
            ? `${ready.length} models ready` + (failed.length ? `, ${failed.length} failed` : "")
            : "no models loaded: build them with scripts/build_models.py",
        );
      }
    } catch (err) {
      state.models = null;
      setStatus("error", `service unreachable: ${err.message}`);
    }
    fillModelSelect($("model"), CARD_TASK[state.task]);
    fillModelSelect($("detector"), "face-detect");
    refreshRunButton();
    loadGalleries();
  }

  // The caller's galleries as suggestions for the gallery field (a new name is fine too).
  async function loadGalleries() {
    let body;
    try {
      body = await callApi("v1/faces/galleries");
    } catch (_) {
      return; // no key yet, or no gallery database: typing a name still works
    }
    $("gallery-list").replaceChildren(...body.galleries.map((g) => {
      const option = new Option(`${g.subjects} subjects, ${g.faces} faces (${g.model})`, g.gallery);
      option.value = g.gallery;
      return option;
    }));
  }

  function fillModelSelect(select, task) {
    const previous = select.value;
    select.replaceChildren();
    const models = state.models ? state.models.models.filter((m) => m.card.task === task) : [];
    const fallback = state.models ? state.models.defaults[task] : undefined;
    for (const m of models) {
      const option = new Option(m.card.name + (m.card.name === fallback ? " (default)" : ""),
        m.card.name);
      option.selected = previous ? m.card.name === previous : m.card.name === fallback;
      select.add(option);
    }
    if (!models.length) select.add(new Option(`no ${task} model loaded`, ""));
  }

  function selectTask(task) {
    state.task = task;
    const pair = task === "verify-faces";
    for (const part of document.querySelectorAll("#controls [data-for]")) {
      part.hidden = !part.dataset.for.split(" ").includes(task);
    }
    $("drop-b").hidden = !pair;
    const title = $("drop-a").querySelector(".drop-title");
    title.textContent = pair ? title.dataset.pair
      : task === "identify" ? title.dataset.identify : title.dataset.single;
    $("model").value = "";
    fillModelSelect($("model"), CARD_TASK[task]);
    refreshRunButton();
    showPreview();
  }

  function refreshRunButton() {
    const needed = state.task === "verify-faces" ? ["a", "b"] : ["a"];
    const haveFiles = needed.every((slot) => state.files[slot]);
    const identify = state.task === "identify";
    const haveModel = identify ? $("detector").value && $("gallery").value.trim()
      : $("model").value;
    $("run").disabled = state.busy || !haveFiles || !haveModel;
    $("enrol").disabled = state.busy || !state.enrolFile || !$("detector").value ||
      !$("gallery").value.trim() || !$("subject").value.trim();
  }

  function setFile(slot, file) {
    if (!file) return;
    state.files[slot] = file;
    $(`name-${slot}`).textContent = `${file.name} (${Math.round(file.size / 1024)} kB)`;
    refreshRunButton();
    showPreview();
  }

  function wireDrop(slot) {
    const zone = $(`drop-${slot}`);
    $(`file-${slot}`).addEventListener("change", (e) => setFile(slot, e.target.files[0]));
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      setFile(slot, e.dataTransfer.files[0]);
    });
  }

  // ---- calling the service ------------------------------------------------------------

  function queryFor(task) {
    const q = new URLSearchParams();
    const put = (name, id = name) => {
      const v = $(id).value.trim();
      if (v !== "") q.set(name, v);
    };
    if (task !== "identify") put("model");
    if (task === "classify" || task === "identify") put("top_k");
    if (task === "detect" || task === "segment") {
      ["score_threshold", "iou_threshold", "max_detections", "classes"].forEach((n) => put(n));
      if ($("tiling").value !== "off") {
        ["tiling", "tile_size", "tile_overlap", "max_tiles"].forEach((n) => put(n));
      }
    }
    if (task === "segment") ["mask_threshold", "mask_format"].forEach((n) => put(n));
    if (task === "verify-faces") ["detector", "metric", "threshold"].forEach((n) => put(n));
    if (task === "identify") put("detector");
    return q;
  }

  async function run(event) {
    event.preventDefault();
    const task = state.task;
    const form = new FormData();
    if (task === "verify-faces") {
      form.append("image_a", state.files.a);
      form.append("image_b", state.files.b);
    } else {
      form.append("image", state.files.a);
    }
    state.busy = true;
    refreshRunButton();
    $("result").dataset.state = "running";
    $("error").hidden = true;
    try {
      const path = task === "identify"
        ? `${galleryPath(checkName("gallery", $("gallery").value.trim()))}/identify`
        : task;
      const body = await callApi(`${path}?${queryFor(task)}`, { method: "POST", body: form });
      window.playground.lastResult = { task, body };
      await render(task, body);
      $("result").dataset.task = task;
      $("result").dataset.state = "done";
    } catch (err) {
      showError(err);
      $("result").dataset.state = "error";
    } finally {
      state.busy = false;
      refreshRunButton();
    }
  }

  function showError(err) {
    const box = $("error");
    box.hidden = false;
    box.textContent = errorText(err);
    if (err.code === "gallery_not_found") {
      box.textContent += ". Enrol a face into it first (\"Enrol a face\", on the left).";
    }
  }

  // Enrol the chosen photo under the subject: create the subject (and the gallery, if new;
  // an existing subject is fine), then add the face. Reported next to the button.
  async function enrol() {
    const note = $("enrol-status");
    const file = state.enrolFile;
    state.busy = true;
    refreshRunButton();
    note.dataset.state = "running";
    note.textContent = `enrolling ${file.name}…`;
    try {
      const gallery = checkName("gallery", $("gallery").value.trim());
      const subject = checkName("subject", $("subject").value.trim());
      const base = galleryPath(gallery);
      try {
        await callApi(`${base}/subjects`, {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ subject }),
        });
      } catch (err) {
        if (err.code !== "subject_exists") throw err; // more faces of a known subject
      }
      const form = new FormData();
      form.append("image", file);
      const q = new URLSearchParams({ detector: $("detector").value });
      const path = `${base}/subjects/${encodeURIComponent(subject)}/faces?${q}`;
      const body = await callApi(path, { method: "POST", body: form });
      window.playground.lastEnrol = body;
      const face = body.faces[0];
      note.textContent = `Enrolled ${file.name} as "${subject}" in gallery "${gallery}" ` +
        `(face ${face.face_id}, detector score ${face.score.toFixed(2)}, ` +
        `quality ${face.quality.toFixed(2)}).`;
      note.dataset.state = "done";
      loadGalleries();
    } catch (err) {
      note.textContent = `Not enrolled: ${errorText(err)}`;
      note.dataset.state = "error";
    } finally {
      state.busy = false;
      refreshRunButton();
    }
  }

  // ---- drawing -----------------------------------------------------------------------

  async function bitmapOf(file) {
    try {
      // Apply EXIF orientation: the service reports coordinates of the image as displayed.
      return await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (_) {
      return await createImageBitmap(file);
    }
  }

  // A canvas showing `file` at the size the service measured (or its own), scaled down to
  // MAX_CANVAS_SIDE; `k` maps image pixels to canvas pixels.
  async function canvasFor(file, caption, size) {
    const drawing = state.drawing;
    const bitmap = await bitmapOf(file);
    const w = size ? size.width : bitmap.width;
    const h = size ? size.height : bitmap.height;
    const k = Math.min(1, MAX_CANVAS_SIDE / Math.max(w, h));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(w * k));
    canvas.height = Math.max(1, Math.round(h * k));
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const figure = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    figure.append(canvas, cap);
    if (drawing === state.drawing) $("canvases").append(figure);
    const side = Math.max(canvas.width, canvas.height);
    return {
      canvas, ctx, k,
      line: Math.max(2, Math.round(side / 300)),
      font: Math.max(12, Math.round(side / 40)),
    };
  }

  async function showPreview() {
    if ($("result").dataset.state === "running") return;
    clearResult();
    const slots = state.task === "verify-faces" ? ["a", "b"] : ["a"];
    for (const slot of slots) {
      if (state.files[slot]) await canvasFor(state.files[slot], state.files[slot].name);
    }
  }

  function clearResult() {
    state.drawing += 1;
    $("canvases").replaceChildren();
    $("items").replaceChildren();
    $("verdict").hidden = true;
    $("timing").textContent = "";
    $("json").textContent = "";
    $("result").dataset.state = "idle";
    window.playground.decodedAreas = [];
    window.playground.drawnTags = [];
  }

  function tag(view, text, x, y, fill) {
    const { ctx, font } = view;
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    const pad = Math.round(font / 4);
    const w = ctx.measureText(text).width + 2 * pad;
    const h = font + 2 * pad;
    const top = y - h >= 0 ? y - h : y; // above the box, or inside when at the top edge
    const left = Math.max(0, Math.min(x, view.canvas.width - w)); // never cut at the edge
    ctx.fillStyle = fill;
    ctx.fillRect(left, top, w, h);
    ctx.fillStyle = "#fff";
    ctx.textBaseline = "top";
    ctx.fillText(text, left + pad, top + pad);
    window.playground.drawnTags.push(text);
  }

  function drawBox(view, box, stroke, text) {
    const [x1, y1, x2, y2] = box.map((v) => v * view.k);
    view.ctx.lineWidth = view.line;
    view.ctx.strokeStyle = stroke;
    view.ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (text) tag(view, text, x1, y1, stroke);
  }

  function addItem(html, colourHex, extra = {}) {
    const li = document.createElement("li");
    if (colourHex) {
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colourHex;
      li.append(sw);
    }
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = html;
    li.append(text);
    Object.assign(li.dataset, extra);
    $("items").append(li);
    return li;
  }

  async function render(task, body) {
    clearResult();
    $("json").textContent = JSON.stringify(body, null, 2);
    const t = body.timing_ms || {};
    const model = task === "verify-faces" || task === "identify"
      ? `${body.model} + ${body.detector}` : body.model;
    $("timing").textContent =
      `model ${model} · total ${Math.round(t.total || 0)} ms` +
      (t.inference !== undefined ? ` · inference ${Math.round(t.inference)} ms` : "") +
      (body.tiling && body.tiling.tiles
        ? ` · ${body.tiling.tiles} tiles of ${body.tiling.tile_size} px + whole photo` +
          ` (tiling ${Math.round((t.tile_preprocess || 0) + (t.merge || 0))} ms)`
        : "");
    if (task === "classify") await renderClassify(body);
    else if (task === "detect") await renderDetect(body);
    else if (task === "segment") await renderSegment(body);
    else if (task === "identify") await renderIdentify(body);
    else await renderFaces(body);
  }

  async function renderClassify(body) {
    const view = await canvasFor(state.files.a, state.files.a.name, body.image);
    const { ctx, font } = view;
    const rows = body.predictions;
    const lineH = Math.round(font * 1.5);
    const panelW = Math.min(view.canvas.width, font * 16);
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.fillRect(0, 0, panelW, lineH * rows.length + font / 2);
    ctx.textBaseline = "top";
    ctx.font = `600 ${font}px system-ui, sans-serif`;
    rows.forEach((p, i) => {
      const y = font / 4 + i * lineH;
      ctx.fillStyle = colour(i);
      ctx.fillRect(0, y, Math.max(2, p.score * panelW), lineH - 4);
      ctx.fillStyle = "#fff";
      ctx.fillText(`${p.label} ${pct(p.score)}`, font / 3, y + font / 8);
      const li = addItem(`${p.label} ${pct(p.score)}`, colour(i), {
        label: p.label, score: String(p.score),
      });
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(p.score * 200)}px`;
      li.append(bar);
    });
  }

  async function renderDetect(body) {
    const view = await canvasFor(state.files.a, state.files.a.name, body.image);
    if (!body.detections.length) addItem("nothing found above the score threshold", null);
    for (const d of body.detections) {
      const c = colour(d.class_id);
      drawBox(view, d.box, c, `${d.label} ${d.score.toFixed(2)}`);
      addItem(`${d.label} ${d.score.toFixed(3)} [${d.box.map((v) => Math.round(v)).join(", ")}]`,
        c, { label: d.label, score: String(d.score) });
    }
  }

  // ---- masks: every wire format becomes a row-major 0/1 array of the image's size -----

  // pycocotools' rleFrString: 6-bit chunks (5 data bits + continuation), sign-extended,
  // each count after the second stored as a difference from the count two before.
  function rleCounts(text) {
    const counts = [];
    let p = 0;
    while (p < text.length) {
      let x = 0;
      let k = 0;
      let more = 1;
      while (more) {
        const c = text.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p += 1;
        k += 1;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  function rleBits(mask) {
    const [h, w] = mask.size;
    const bits = new Uint8Array(h * w);
    let pos = 0; // column-major position: runs go down each column, then the next
    rleCounts(mask.counts).forEach((n, i) => {
      if (i % 2 === 1) {
        for (let j = pos; j < pos + n; j++) bits[(j % h) * w + Math.floor(j / h)] = 1;
      }
      pos += n;
    });
    return bits;
  }

  function canvasBits(h, w, draw) {
    const off = document.createElement("canvas");
    off.width = w;
    off.height = h;
    const ctx = off.getContext("2d");
    draw(ctx);
    const data = ctx.getImageData(0, 0, w, h).data;
    const bits = new Uint8Array(h * w);
    for (let i = 0; i < bits.length; i++) bits[i] = data[4 * i] > 127 ? 1 : 0;
    return bits;
  }

  async function maskBits(mask) {
    const [h, w] = mask.size;
    if (mask.format === "rle") return rleBits(mask);
    if (mask.format === "polygon") {
      return canvasBits(h, w, (ctx) => {
        ctx.fillStyle = "#fff";
        ctx.beginPath();
        for (const poly of mask.polygons) {
          ctx.moveTo(poly[0], poly[1]);
          for (let i = 2; i < poly.length; i += 2) ctx.lineTo(poly[i], poly[i + 1]);
          ctx.closePath();
        }
        ctx.fill();
      });
    }
    const blob = await (await fetch(`data:image/png;base64,${mask.png_base64}`)).blob();
    const bitmap = await createImageBitmap(blob);
    return canvasBits(h, w, (ctx) => ctx.drawImage(bitmap, 0, 0));
  }

  async function renderSegment(body) {
    const view = await canvasFor(state.files.a, state.files.a.name, body.image);
    const { width, height } = body.image;
    const overlay = new ImageData(width, height);
    const areas = [];
    // one colour per instance, so touching masks of the same class stay apart
    for (const [i, inst] of body.instances.entries()) {
      const bits = await maskBits(inst.mask);
      const [r, g, b] = rgb(colour(i));
      let area = 0;
      for (let i = 0; i < bits.length; i++) {
        if (!bits[i]) continue;
        area += 1;
        overlay.data.set([r, g, b, 130], 4 * i); // translucent: the photo shows through
      }
      areas.push(area);
    }
    window.playground.decodedAreas = areas;
    const off = document.createElement("canvas");
    off.width = width;
    off.height = height;
    off.getContext("2d").putImageData(overlay, 0, 0);
    view.ctx.drawImage(off, 0, 0, view.canvas.width, view.canvas.height);
    if (!body.instances.length) addItem("nothing found above the score threshold", null);
    body.instances.forEach((inst, i) => {
      const c = colour(i);
      drawBox(view, inst.box, c, `${inst.label} ${inst.score.toFixed(2)}`);
      addItem(`${inst.label} ${inst.score.toFixed(3)} · ${inst.area} px (${inst.mask.format})`, c, {
        label: inst.label, score: String(inst.score), area: String(inst.area),
        decodedArea: String(areas[i]),
      });
    });
  }

  async function renderFaces(body) {
    const found = body.faces_found || {};
    for (const slot of ["a", "b"]) {
      const file = state.files[slot];
      const view = await canvasFor(file, `${slot.toUpperCase()}: ${file.name}`, body.images[slot]);
      const face = body.faces[slot];
      drawBox(view, face.box, "#2563eb", `face ${face.score.toFixed(2)}`);
      face.landmarks.forEach(([x, y], i) => {
        view.ctx.fillStyle = colour(i);
        view.ctx.beginPath();
        view.ctx.arc(x * view.k, y * view.k, view.line * 1.8, 0, 2 * Math.PI);
        view.ctx.fill();
      });
      addItem(`${slot.toUpperCase()}: ${found[slot] ?? "?"} face(s) found, compared the largest ` +
        `(score ${face.score.toFixed(3)})`, "#2563eb", { slot });
    }
    const v = $("verdict");
    v.hidden = false;
    v.dataset.verified = String(body.verified);
    v.replaceChildren(body.verified ? "Same person" : "Different people");
    const detail = document.createElement("small");
    const passes = body.metric === "cosine" ? "≥" : "≤";
    const value = body.metric === "cosine" ? body.similarity : body.distance;
    detail.textContent = `distance ${body.distance.toFixed(3)} · similarity ` +
      `${body.similarity.toFixed(3)} · same person if ${body.metric} ${passes} ${body.threshold}` +
      ` (here ${value.toFixed(3)})`;
    v.append(detail);
  }

  // A colour per subject name (the same person keeps it between photos); grey: unknown.
  function subjectColour(name) {
    if (!name) return UNKNOWN;
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return colour(h);
  }

  async function renderIdentify(body) {
    const view = await canvasFor(state.files.a, state.files.a.name, body.image);
    const v = $("verdict");
    v.hidden = false;
    delete v.dataset.verified;
    const names = body.faces.filter((f) => f.subject).map((f) => f.subject);
    const unknown = body.faces.length - names.length;
    if (unknown) names.push(`${unknown} unknown`);
    v.replaceChildren(body.faces.length
      ? `${body.faces.length} face(s): ${names.join(", ")}` : "No face found in the photo");
    const detail = document.createElement("small");
    detail.textContent = `gallery "${body.gallery}" · ${body.enrolled_faces} enrolled ` +
      `face(s) · a face is named when its best similarity reaches the threshold ` +
      `${body.threshold}: ${body.threshold_source}`;
    v.append(detail);
    if (!body.enrolled_faces) {
      addItem("the gallery has no enrolled faces yet: enrol some on the left", null);
    }
    // largest first, so the smaller faces drawn after it keep their labels on top
    const order = body.faces.map((f, i) => i)
      .sort((i, j) => area(body.faces[j].box) - area(body.faces[i].box));
    for (const i of order) {
      const f = body.faces[i];
      const sim = f.similarity === null ? "" : ` ${f.similarity.toFixed(2)}`;
      drawBox(view, f.box, subjectColour(f.subject), `${f.subject || "unknown"}${sim}`);
    }
    body.faces.forEach((f, i) => {
      const best = f.matches.map((m) => `${m.subject} ${m.similarity.toFixed(3)}`).join(", ");
      addItem(`face ${i + 1}: ${f.subject || "unknown"}` +
        (f.similarity === null ? " (the gallery is empty)"
          : ` · similarity ${f.similarity.toFixed(3)}`) +
        (best ? ` · closest: ${best}` : "") + ` · detector score ${f.score.toFixed(2)}`,
      subjectColour(f.subject), {
        subject: f.subject || "unknown", colour: subjectColour(f.subject),
        similarity: f.similarity === null ? "" : String(f.similarity),
      });
    });
  }

  const area = ([x1, y1, x2, y2]) => (x2 - x1) * (y2 - y1);

  // ---- start -------------------------------------------------------------------------

  function start() {
    const key = $("api-key");
    key.value = localStorage.getItem(KEY_STORAGE) || "";
    key.addEventListener("change", () => {
      localStorage.setItem(KEY_STORAGE, key.value.trim());
      loadModels();
    });
    for (const radio of document.querySelectorAll("input[name=task]")) {
      radio.addEventListener("change", () => radio.checked && selectTask(radio.value));
    }
    $("model").addEventListener("change", refreshRunButton);
    for (const id of ["gallery", "subject", "detector"]) {
      $(id).addEventListener("input", refreshRunButton);
      $(id).addEventListener("change", refreshRunButton);
    }
    $("enrol-file").addEventListener("change", (e) => {
      state.enrolFile = e.target.files[0] || null;
      refreshRunButton();
    });
    $("enrol").addEventListener("click", enrol);
    $("subject").addEventListener("keydown", (e) => { // Enter enrols rather than identifies
      if (e.key !== "Enter") return;
      e.preventDefault();
      if (!$("enrol").disabled) enrol();
    });
    wireDrop("a");
    wireDrop("b");
    $("controls").addEventListener("submit", run);
    const checked = document.querySelector("input[name=task]:checked");
    selectTask(checked ? checked.value : "classify");
    loadModels();
  }

  start();
})();
