// TransEdit frontend extension. Small, framework-free and feature-detected: every hook checks that the API it
// uses exists, so an older or newer ComfyUI frontend loses a feature at worst, never the canvas.
//
//  - before/after compare widget on nodes whose "executed" message carries `transedit_compare` (Generate with
//    inverted latents, Paste Back, Splice, PUT Inpaint, Compare): drag the divider; click the strip below the
//    picture for the next pair;
//  - Load Direction shows the chosen direction's description, layer range and default strength (from the
//    file's metadata, served by /transedit/directions);
//  - Edit Studio: after one run, dragging a strength slider (or changing the layer range) re-renders a preview
//    on the node through POST /transedit/studio/preview, without queueing; one request in flight per node, the
//    newest slider state wins; "reset" and "before/after" sit under the picture; only the connected direction
//    slots and one spare show, each slider labelled with its direction's name (see "edit studio slots");
//  - the pack's widgets repaint under the classic renderer and under the Vue node renderer ("Nodes 2.0"), which
//    draws each of them into a canvas of its own (see repaint);
//  - node tint and a "TransEdit help" menu entry linking to the node reference and official weights;
//  - workflows saved by another version of the pack (a different number of widget values) still load:
//    missing values keep their defaults, invalid choices fall back to the default, and the node says so.
// Over 600 lines: one extension, whose features share the node hooks registered at the end (onNodeCreated,
// onExecuted, onConfigure, onSerialize) and the repaint helper.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION = "TransEdit.Canvas";
const HELP_URL = "https://github.com/transedit/ComfyUI-TransEdit/blob/main/docs/node-reference.md";
const COMPARE_KEY = "transedit_compare";
const COMPARE_HEIGHT = 260;
const STRIP = 18;

// the pack's own widgets (compare view, studio bar, direction info): drawn by the pack, never saved
const ownWidget = (w) => typeof w?.name === "string" && w.name.startsWith("transedit_");

const state = (window.__transedit = window.__transedit || { loads: 0, compareWidgets: 0, warnings: [] });
state.loads += 1;

function viewUrl(ref) {
  const q = `/view?filename=${encodeURIComponent(ref.filename)}&type=${encodeURIComponent(ref.type || "temp")}` +
    `&subfolder=${encodeURIComponent(ref.subfolder || "")}`;
  return typeof api?.apiURL === "function" ? api.apiURL(q) : q;
}

function loadImage(ref) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null);
    img.src = viewUrl(ref);
  });
}

function fitRect(img, x, y, w, h) {
  const s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * s, dh = img.naturalHeight * s;
  return [x + (w - dw) / 2, y + (h - dh) / 2, dw, dh];
}

// Show a change of the pack's own (canvas-drawn) widgets. The classic renderer draws them with the graph, so a
// dirty canvas is enough. The Vue node renderer ("Nodes 2.0", Comfy.VueNodes.Enabled) gives each such widget a
// canvas of its own and redraws it only through the widget's triggerDraw() (which it sets while the widget is
// mounted), sizing it from widget.computedHeight, which node.arrange() sets: re-arrange first, so a widget that
// grew (the compare view's first pictures) is drawn at its new height. Older frontends have no triggerDraw.
function repaint(node) {
  node.setDirtyCanvas?.(true, true);
  if (state.plantNoWidgetRepaint) return; // set only by the browser test, to show its pixel check sees the fault
  const own = (node.widgets || []).filter((w) => ownWidget(w) && typeof w.triggerDraw === "function");
  if (!own.length) return;
  node.arrange?.();
  for (const w of own) w.triggerDraw();
}

// ------------------------------------------------------------------------------------------ compare widget
function makeCompareWidget(node) {
  const widget = {
    name: "transedit_compare",
    type: "transedit_compare",
    value: null,
    split: 0.5,
    pair: 0,
    pairs: [], // [{before: Image, after: Image}]
    labels: ["before", "after"],
    total: 0,
    serialize: false,
    options: { serialize: false },
    computeSize(width) {
      return [width, this.pairs.length ? COMPARE_HEIGHT : 0];
    },
    draw(ctx, node_, width, y) {
      if (!this.pairs.length) return;
      const margin = 6;
      const x0 = margin, w = width - 2 * margin, h = COMPARE_HEIGHT - STRIP - margin;
      const pair = this.pairs[this.pair % this.pairs.length];
      this.last = { x0, y, w, h };
      ctx.save();
      ctx.fillStyle = "#111";
      ctx.fillRect(x0, y, w, h);
      const ref = pair.after || pair.before;
      if (ref) {
        const [rx, ry, rw, rh] = fitRect(ref, x0, y, w, h);
        if (pair.after) ctx.drawImage(pair.after, rx, ry, rw, rh);
        if (pair.before) {
          ctx.save();
          ctx.beginPath();
          ctx.rect(rx, ry, rw * this.split, rh);
          ctx.clip();
          ctx.drawImage(pair.before, rx, ry, rw, rh);
          ctx.restore();
        }
        const dx = rx + rw * this.split;
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(dx, ry);
        ctx.lineTo(dx, ry + rh);
        ctx.stroke();
        ctx.font = "11px sans-serif";
        ctx.fillStyle = "rgba(0,0,0,0.6)";
        ctx.fillRect(rx, ry, ctx.measureText(this.labels[0]).width + 8, 16);
        ctx.fillRect(rx + rw - ctx.measureText(this.labels[1]).width - 8, ry, ctx.measureText(this.labels[1]).width + 8, 16);
        ctx.fillStyle = "#fff";
        ctx.textAlign = "left";
        ctx.fillText(this.labels[0], rx + 4, ry + 12);
        ctx.textAlign = "right";
        ctx.fillText(this.labels[1], rx + rw - 4, ry + 12);
      }
      ctx.textAlign = "center";
      ctx.fillStyle = "#aaa";
      ctx.font = "11px sans-serif";
      const first = this.first || 0; // Edit Studio's preview_face: the pairs start there
      const more = this.total > this.pairs.length ? (first ? ` (${first + 1}–${first + this.pairs.length} of ${this.total})`
        : ` (first ${this.pairs.length} of ${this.total})`) : "";
      const text = this.pairs.length > 1 ? `pair ${this.pair + 1}/${this.pairs.length}${more} — click here for the next`
        : "drag to compare";
      ctx.fillText(text, x0 + w / 2, y + h + 13);
      ctx.restore();
    },
    mouse(event, pos) {
      if (!this.last || !this.pairs.length) return false;
      const { x0, y, w, h } = this.last;
      const type = event.type || "";
      if (pos[1] > y + h && /down/.test(type)) {
        this.pair = (this.pair + 1) % this.pairs.length;
        this.onPairChange?.(this.pair);
        repaint(node);
        return true;
      }
      if (/down|move/.test(type) && pos[1] <= y + h) {
        this.split = Math.min(1, Math.max(0, (pos[0] - x0) / w));
        repaint(node);
        return true;
      }
      return false;
    },
  };
  return widget;
}

async function showCompare(node, payload) {
  if (!payload?.pairs?.length || typeof node.addCustomWidget !== "function") return;
  let widget = node.widgets?.find((w) => w.name === "transedit_compare");
  if (!widget) {
    widget = node.addCustomWidget(makeCompareWidget(node)) || node.widgets?.find((w) => w.name === "transedit_compare");
    state.compareWidgets += 1;
  }
  const pairs = await Promise.all(payload.pairs.map(async (p) => ({
    before: await loadImage(p.before), after: await loadImage(p.after),
  })));
  widget.pairs = pairs.filter((p) => p.before || p.after);
  widget.labels = payload.labels || widget.labels;
  widget.total = payload.total || widget.pairs.length;
  widget.pair = 0;
  widget.value = { pairs: widget.pairs.length, loaded: widget.pairs.filter((p) => p.before && p.after).length };
  if (typeof node.computeSize === "function" && typeof node.setSize === "function") {
    const want = node.computeSize();
    node.setSize([Math.max(node.size[0], want[0], 280), Math.max(node.size[1], want[1])]);
  }
  repaint(node);
}

// -------------------------------------------------------------------------------------------- edit studio
const STUDIO_KEY = "transedit_studio";
const STUDIO_INPUTS = ["strength_1", "strength_2", "strength_3", "strength_4", "start_layer", "end_layer"];
const BAR_HEIGHT = 26;
let studioSeq = 0;

// what the preview route needs; absent (an old or unusual frontend) the node works as a plain node
const studioSupported = () => typeof api?.fetchApi === "function" && typeof Image === "function";

function studioValues(node) {
  const get = (name) => node.widgets?.find((w) => w.name === name)?.value;
  return {
    strengths: [1, 2, 3, 4].map((i) => Number(get(`strength_${i}`) ?? 0)),
    start_layer: Number(get("start_layer") ?? -1),
    end_layer: Number(get("end_layer") ?? -1),
  };
}

function setStudioStatus(node, text) {
  const bar = node.widgets?.find((w) => w.name === "transedit_studio_bar");
  if (bar) bar.status = text;
  repaint(node);
}

// one request in flight per node; while it renders, later slider moves only update what the next request asks
function requestPreview(node) {
  const studio = node.__transeditStudio;
  if (!studio || !studioSupported()) return;
  const compare = node.widgets?.find((w) => w.name === "transedit_compare");
  const pair = compare?.pairs?.length ? compare.pair % compare.pairs.length : 0;
  const item = studio.items?.[pair] ?? pair; // the batch item (face) that pair shows: preview_face onwards
  const values = studioValues(node);
  const key = JSON.stringify([values, item]);
  if (key === studio.shownKey && !studio.inFlight) return;
  studio.wanted = key;
  if (studio.inFlight) return;
  studio.inFlight = true;
  studio.sentKey = key;
  const seq = ++studioSeq;
  const body = { node_id: studio.node_id, prompt_id: studio.prompt_id, item, seq, ...values };
  setStudioStatus(node, "rendering…");
  const started = performance.now();
  api.fetchApi(studio.route, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
    .then(async (res) => {
      const answer = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
      if (res.ok) {
        const img = await new Promise((resolve) => {
          const im = new Image();
          im.onload = () => resolve(im);
          im.onerror = () => resolve(null);
          im.src = answer.image;
        });
        if (img && compare?.pairs?.[pair]) {
          compare.pairs[pair] = { ...compare.pairs[pair], after: img };
          compare.labels = ["before", `after · live ${answer.width}²`];
          studio.shownKey = key;
          studio.previews += 1;
          studio.last = { ...answer, client_ms: Math.round(performance.now() - started) };
        }
        setStudioStatus(node, `preview ${answer.width}² in ${Math.round(answer.ms)} ms · Queue for ${studio.full_size}²`);
      } else if (res.status === 404 || res.status === 410) {
        node.__transeditStudio = null; // that run is gone: the next Queue brings new ids
        setStudioStatus(node, "Queue the graph to preview again");
      } else if (res.status === 503) {
        studio.retry = true; // the queue is running: try again when it is idle (status event) or in a second
        setStudioStatus(node, "waiting for the queue…");
        setTimeout(() => { if (studio.retry) { studio.retry = false; studio.shownKey = null; requestPreview(node); } }, 1000);
      } else if (answer.reason !== "superseded") {
        setStudioStatus(node, answer.error || `preview failed (HTTP ${res.status})`);
      }
    })
    .catch((e) => setStudioStatus(node, `preview failed: ${e}`))
    .finally(() => {
      studio.inFlight = false;
      // the sliders moved while this one rendered: ask for where they are now (an error is not retried)
      if (node.__transeditStudio === studio && studio.wanted !== studio.sentKey && !studio.retry) requestPreview(node);
    });
}

function resetStudio(node) {
  for (const w of node.widgets || []) {
    if (/^strength_\d$/.test(w.name)) w.value = 0;
    if (w.name === "start_layer" || w.name === "end_layer") w.value = -1;
  }
  node.graph?.change?.(); // the workflow is modified (saved values, undo)
  requestPreview(node);
  repaint(node);
}

function makeStudioBar(node) {
  return {
    name: "transedit_studio_bar", type: "transedit_studio_bar", value: null, status: "",
    serialize: false, options: { serialize: false },
    computeSize(width) { return [width, BAR_HEIGHT]; },
    buttons(width) {
      return [{ label: "↺ reset", x: 6, w: 70, act: () => resetStudio(node) },
        { label: "◧ before/after", x: 82, w: 104, act: () => this.toggle() }];
    },
    toggle() {
      const compare = node.widgets?.find((w) => w.name === "transedit_compare");
      if (!compare) return;
      compare.split = compare.split > 0 ? 0 : 0.5; // 0: the edit alone; 0.5: before | after
      repaint(node);
    },
    draw(ctx, node_, width, y) {
      this.lastY = y;
      ctx.save();
      ctx.font = "11px sans-serif";
      ctx.textAlign = "center";
      for (const b of this.buttons(width)) {
        ctx.fillStyle = "#2f4256";
        ctx.fillRect(b.x, y + 3, b.w, BAR_HEIGHT - 6);
        ctx.fillStyle = "#dde";
        ctx.fillText(b.label, b.x + b.w / 2, y + BAR_HEIGHT / 2 + 4);
      }
      ctx.textAlign = "left";
      ctx.fillStyle = "#9ab";
      ctx.fillText(this.status || "drag a strength to preview", 194, y + BAR_HEIGHT / 2 + 4, Math.max(20, width - 200));
      ctx.restore();
    },
    mouse(event, pos) {
      if (!/down/.test(event.type || "")) return false;
      const hit = this.buttons(node.size[0]).find((b) => pos[0] >= b.x && pos[0] <= b.x + b.w);
      if (!hit) return false;
      hit.act();
      return true;
    },
  };
}

async function showStudio(node, payload) {
  if (!payload?.node_id || !payload?.prompt_id) return;
  await showCompare(node, payload);
  const compare = node.widgets?.find((w) => w.name === "transedit_compare");
  if (!compare) return;
  compare.labels = ["before", `after · queued (preview ${payload.preview_size}²)`];
  const previous = node.__transeditStudio;
  node.__transeditStudio = { node_id: String(payload.node_id), prompt_id: String(payload.prompt_id),
    route: payload.route || "/transedit/studio/preview", full_size: payload.full_size, preview_size: payload.preview_size,
    previews: previous?.previews || 0, inFlight: false, shownKey: null, wanted: null,
    items: Array.isArray(payload.items) ? payload.items.map(Number) : null };
  compare.first = node.__transeditStudio.items?.[0] || 0;
  // what the run rendered is on screen: remember it, so an unchanged slider asks for nothing
  const values = payload.values || {};
  const shown = { strengths: [1, 2, 3, 4].map((i) => Number(values.strengths?.[i - 1] ?? 0)),
    start_layer: Number(values.start_layer ?? -1), end_layer: Number(values.end_layer ?? -1) };
  node.__transeditStudio.shownKey = JSON.stringify([shown, compare.first]);
  compare.onPairChange = () => requestPreview(node);
  rememberRunNames(node, payload.directions);
  updateStudioSlots(node);
  if (studioSupported() && !node.widgets?.some((w) => w.name === "transedit_studio_bar") &&
      typeof node.addCustomWidget === "function") {
    node.addCustomWidget(makeStudioBar(node));
    const want = node.computeSize?.();
    if (want && typeof node.setSize === "function") node.setSize([node.size[0], Math.max(node.size[1], want[1])]);
  }
  setStudioStatus(node, studioSupported() ? `queued ${payload.full_size}² · drag a strength to preview` : "");
  // values changed between queueing and now (dragged while it ran): show them
  requestPreview(node);
}

function attachStudio(node) {
  if (!studioSupported()) return; // degrade: the node runs and shows its result as any node
  for (const w of node.widgets || []) {
    if (!STUDIO_INPUTS.includes(w.name) || w.__transeditStudio) continue;
    w.__transeditStudio = true;
    const original = w.callback;
    w.callback = function () {
      const r = original?.apply(this, arguments);
      requestPreview(node);
      return r;
    };
  }
  const changed = node.onWidgetChanged;
  node.onWidgetChanged = function (name) {
    const r = changed?.apply(this, arguments);
    if (STUDIO_INPUTS.includes(name)) requestPreview(node);
    return r;
  };
}

// -------------------------------------------------------------------------------------- edit studio slots
// Only the connected direction slots and one spare show, and each connected direction's strength slider is
// labelled with the direction's name. Not the V3 schema's Autogrow (ComfyUI 0.33, frontend 1.58): it names its
// inputs "<group>.<name>" and its template input cannot carry a widget, so saved workflows' direction_1..4 links
// and positional strength_1..4 values would not load as they were, and 0.3.64 has no Autogrow at all. So the
// schema stays direction_1..4 + strength_1..4, and here: direction slots past the spare are taken off the node
// (re-added on connect; an empty optional input is never in the prompt), sliders of unconnected slots are hidden,
// never removed (widgets_values is positional), and a label is display only (the saved name stays strength_N).
const DIRECTION_SLOTS = 4;
const FILE_SUFFIX = /\.(pt|pth|npy|npz|safetensors|pkl)$/i;

// the node a direction input comes from, through legacy Reroute nodes
function directionSource(node, index) {
  let origin = typeof node.getInputNode === "function" ? node.getInputNode(index) : null;
  for (let hops = 0; origin?.type === "Reroute" && hops < 16; hops++) origin = origin.getInputNode?.(0) ?? null;
  return origin;
}

// a direction's name as the frontend can tell before a run: Load Direction's choice (the file's name, the SeFa
// component, the preset), else the source node's title
function sourceDirectionName(origin) {
  if (!origin) return null;
  if (origin.type === "TransEditLoadDirection") {
    const choice = String(origin.widgets?.find((w) => w.name === "direction")?.value ?? "");
    const component = origin.widgets?.find((w) => w.name === "component")?.value ?? 0;
    if (/^sefa\b/i.test(choice)) return `sefa #${component}`;
    if (choice.startsWith("preset: ")) return choice.slice("preset: ".length);
    const base = choice.split(/[\\/]/).pop().replace(FILE_SUFFIX, "");
    if (base) return base;
  }
  return String(origin.title || origin.type || "");
}

// slot i's (1-based) direction name: what the last run reported for it while its source is unchanged (the
// server knows a PCA file's component, SeFa's layers), else what the source node says; null when unconnected
function directionName(node, i) {
  const index = node.inputs?.findIndex((slot) => slot.name === `direction_${i}`) ?? -1;
  if (index < 0 || node.inputs[index].link == null) return null;
  const origin = directionSource(node, index);
  const own = sourceDirectionName(origin);
  const ran = node.__transeditRunNames;
  if (ran && ran.keys[i - 1] === `${origin?.id}:${own}` && ran.names[i - 1]) return ran.names[i - 1];
  return own || `direction_${i}`;
}

// after a run: the names it reported, keyed by each slot's source then (a later change of source drops them)
function rememberRunNames(node, names) {
  if (!Array.isArray(names)) return;
  const keys = [];
  for (let i = 1; i <= DIRECTION_SLOTS; i++) {
    const index = node.inputs?.findIndex((slot) => slot.name === `direction_${i}`) ?? -1;
    const origin = index >= 0 && node.inputs[index].link != null ? directionSource(node, index) : null;
    keys.push(origin ? `${origin.id}:${sourceDirectionName(origin)}` : null);
  }
  node.__transeditRunNames = { keys, names: names.slice(0, DIRECTION_SLOTS).map((n) => (n == null ? null : String(n))) };
}

function updateStudioSlots(node) {
  if (!Array.isArray(node.inputs) || typeof node.addInput !== "function" || typeof node.removeInput !== "function") return;
  const slotOf = (i) => node.inputs.findIndex((slot) => slot.name === `direction_${i}`);
  const connected = [];
  for (let i = 1; i <= DIRECTION_SLOTS; i++) connected.push(slotOf(i) >= 0 && node.inputs[slotOf(i)].link != null);
  const spare = connected.indexOf(false);
  const lastConnected = connected.lastIndexOf(true);
  // an empty slot below a connected one stays (a middle direction disconnected): the others keep their sliders
  const shown = connected.map((c, k) => c || k === spare || k < lastConnected);
  let changed = false;
  for (let k = DIRECTION_SLOTS - 1; k >= 0; k--) { // highest first: a removal moves no other direction slot
    const index = slotOf(k + 1);
    if (!shown[k] && index >= 0 && node.inputs[index].link == null) { node.removeInput(index); changed = true; }
  }
  for (let k = 0; k < DIRECTION_SLOTS; k++) {
    if (shown[k] && slotOf(k + 1) < 0) { node.addInput(`direction_${k + 1}`, "TE_DIRECTION"); changed = true; }
  }
  for (let k = 0; k < DIRECTION_SLOTS; k++) {
    const w = node.widgets?.find((x) => x.name === `strength_${k + 1}`);
    if (!w) continue;
    const fed = node.inputs.some((slot) => slot.widget?.name === w.name && slot.link != null); // a converted widget
    const hide = !connected[k] && !fed;
    if (Boolean(w.hidden) !== hide) { w.hidden = hide; changed = true; }
    const label = connected[k] && !state.plantNoRelabel ? directionName(node, k + 1) : w.name; // the plant: tests only
    if (w.label !== label) { w.label = label; changed = true; }
  }
  if (!changed) return;
  const want = node.computeSize?.();
  if (want && typeof node.setSize === "function") node.setSize([node.size[0], want[1]]);
  node.setDirtyCanvas?.(true, true);
}

// after the graph has settled (a load configures the node before its sources, a disconnect ends after its event)
function scheduleStudioSlots(node) {
  setTimeout(() => {
    try { updateStudioSlots(node); } catch (e) { console.warn("[TransEdit] studio slots", e); }
  }, 0);
}

function attachStudioSlots(node) {
  scheduleStudioSlots(node);
  const changed = node.onConnectionsChange;
  node.onConnectionsChange = function (type, index, connected, link, slot) {
    const r = changed?.apply(this, arguments);
    if (/^direction_\d$/.test(slot?.name ?? this.inputs?.[index]?.name ?? "")) scheduleStudioSlots(this);
    return r;
  };
  const configure = node.onConfigure;
  node.onConfigure = function () {
    const r = configure?.apply(this, arguments);
    scheduleStudioSlots(this);
    return r;
  };
}

// Load Direction's choice names the direction: a change relabels the sliders it feeds
function watchDirectionSource(node) {
  for (const w of node.widgets || []) {
    if (w.name !== "direction" && w.name !== "component") continue;
    const original = w.callback;
    w.callback = function () {
      const r = original?.apply(this, arguments);
      for (const link of (node.outputs || []).flatMap((o) => o.links || [])) {
        const info = node.graph?.links?.get?.(link) ?? node.graph?.links?.[link];
        const target = info ? node.graph.getNodeById(info.target_id) : null;
        if (target?.type === "TransEditEditStudio") scheduleStudioSlots(target);
      }
      return r;
    };
  }
}

// ------------------------------------------------------------------------------------ direction metadata
let directionInfo = null;
async function fetchDirections() {
  if (directionInfo) return directionInfo;
  try {
    const res = typeof api?.fetchApi === "function" ? await api.fetchApi("/transedit/directions") : await fetch("/transedit/directions");
    directionInfo = res.ok ? await res.json() : {};
  } catch (e) {
    directionInfo = {};
  }
  return directionInfo;
}

function describeDirection(info) {
  if (!info) return "";
  const parts = [];
  if (info.description) parts.push(info.description);
  if (info.layers) parts.push(`layers ${info.layers}`);
  if (info.default_strength !== undefined && info.default_strength !== null) parts.push(`default strength ${info.default_strength}`);
  if (info.kind) parts.push(info.kind);
  return parts.join(" · ");
}

function attachDirectionInfo(node) {
  const combo = node.widgets?.find((w) => w.name === "direction");
  if (!combo) return;
  const label = {
    name: "transedit_direction_info", type: "transedit_info", value: "", serialize: false, options: { serialize: false },
    computeSize(width) { return [width, this.value ? 34 : 0]; },
    draw(ctx, node_, width, y) {
      if (!this.value) return;
      ctx.save();
      ctx.fillStyle = "#9ab";
      ctx.font = "11px sans-serif";
      const words = this.value.split(" ");
      let line = "", row = 0;
      for (const word of words) {
        const test = line ? `${line} ${word}` : word;
        if (ctx.measureText(test).width > width - 20 && line) {
          ctx.fillText(line, 10, y + 12 + 14 * row++);
          line = word;
          if (row > 1) break;
        } else line = test;
      }
      if (row <= 1) ctx.fillText(line, 10, y + 12 + 14 * row);
      ctx.restore();
    },
  };
  if (typeof node.addCustomWidget !== "function") return;
  node.addCustomWidget(label);
  const update = async () => {
    const all = await fetchDirections();
    label.value = describeDirection(all?.[combo.value]);
    repaint(node);
  };
  const original = combo.callback;
  combo.callback = function () {
    const r = original?.apply(this, arguments);
    update();
    return r;
  };
  update();
}

// ------------------------------------------------------------------------------ widget values from others

function repairWidgetValues(node, info, nodeData) {
  const values = info?.widgets_values;
  if (!Array.isArray(values) || !Array.isArray(node.widgets)) return;
  const widgets = node.widgets.filter((w) => !ownWidget(w)); // what litegraph stores in widgets_values
  const specs = { ...(nodeData?.input?.required || {}), ...(nodeData?.input?.optional || {}) };
  let repaired = 0;
  for (const w of widgets) {
    const declared = specs[w.name]?.[1]?.default; // static choices declare a default; file lists do not
    const choices = w.options?.values;
    const unknownChoice = Array.isArray(choices) && choices.length && declared !== undefined && !choices.includes(w.value);
    if (w.value === undefined || w.value === null || unknownChoice) {
      const fallback = declared ?? w.options?.default;
      if (fallback !== undefined) {
        w.value = fallback;
        repaired += 1;
      }
    }
  }
  if (values.length !== widgets.length || repaired) {
    const msg = `${node.type}: the workflow has ${values.length} widget values, this version has ${widgets.length}` +
      (repaired ? `; ${repaired} reset to defaults` : "") + ". Check the node's settings.";
    state.warnings.push(msg);
    node.__transeditWarning = msg;
    console.warn(`[TransEdit] ${msg}`);
    app.extensionManager?.toast?.add?.({ severity: "warn", summary: "TransEdit", detail: msg, life: 8000 });
  }
}

// ----------------------------------------------------------------------------------------------- register
const extension = {
  name: EXTENSION,
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.category?.startsWith?.("TransEdit")) return;
    const proto = nodeType.prototype;
    if (proto.__transeditPatched) return; // a pack reload must not wrap the hooks twice
    proto.__transeditPatched = true;

    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      if (!this.color) this.color = "#2a3b4d";
      if (!this.bgcolor) this.bgcolor = "#1e2a36";
      if (nodeData.name === "TransEditLoadDirection") {
        try { attachDirectionInfo(this); } catch (e) { console.warn("[TransEdit] direction info", e); }
        try { watchDirectionSource(this); } catch (e) { console.warn("[TransEdit] direction source", e); }
      }
      if (nodeData.name === "TransEditEditStudio") {
        try { attachStudio(this); } catch (e) { console.warn("[TransEdit] studio", e); }
        try { attachStudioSlots(this); } catch (e) { console.warn("[TransEdit] studio slots", e); }
      }
      return r;
    };

    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const payload = message?.[COMPARE_KEY]?.[0];
      if (payload) showCompare(this, payload).catch((e) => console.warn("[TransEdit] compare", e));
      const studio = message?.[STUDIO_KEY]?.[0];
      if (studio) showStudio(this, studio).catch((e) => console.warn("[TransEdit] studio", e));
      return r;
    };

    const onConfigure = proto.onConfigure;
    proto.onConfigure = function (info) {
      const r = onConfigure?.apply(this, arguments);
      try { repairWidgetValues(this, info, nodeData); } catch (e) { console.warn("[TransEdit] configure", e); }
      return r;
    };

    // the extension's own widgets (compare view, direction info) are not settings: keep them out of saved
    // workflows, so a workflow saved after a run has exactly the node's widget values
    const onSerialize = proto.onSerialize;
    proto.onSerialize = function (o) {
      const r = onSerialize?.apply(this, arguments);
      if (Array.isArray(o?.widgets_values) && Array.isArray(this.widgets)) {
        o.widgets_values = o.widgets_values.filter((_, i) => !ownWidget(this.widgets[i]));
      }
      return r;
    };

    const onDrawForeground = proto.onDrawForeground;
    proto.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      if (this.__transeditWarning && ctx) {
        ctx.save();
        ctx.fillStyle = "#e8a33d";
        ctx.font = "bold 14px sans-serif";
        ctx.fillText("⚠", this.size[0] - 18, -8);
        ctx.restore();
      }
      return r;
    };

    const getExtraMenuOptions = proto.getExtraMenuOptions;
    proto.getExtraMenuOptions = function (_, options) {
      const r = getExtraMenuOptions?.apply(this, arguments);
      if (Array.isArray(options)) {
        options.push({
          content: "TransEdit help",
          callback: () => window.open(`${HELP_URL}`, "_blank", "noopener"),
        });
        if (this.__transeditWarning) {
          options.push({ content: "TransEdit: why the warning?", callback: () => alert(this.__transeditWarning) });
        }
      }
      return r;
    };
  },
};

if (!app?.extensions?.some?.((e) => e?.name === EXTENSION)) {
  try {
    app.registerExtension(extension);
  } catch (e) {
    console.warn("[TransEdit] extension not registered", e);
  }
}
