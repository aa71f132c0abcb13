// Real-browser check of the TransEdit frontend against a running (headless) ComfyUI, driven by
// tests/e2e/test_browser.py:  node browser_check.mjs '<json config>'
//
// config: { url, chromium, outDir, workflows: [{name, graph}], queue: name, extension: "/extensions/.../transedit.js",
//           variants: [{name, graph}],   (variants: workflows edited to look like another version of the pack)
//           screens: true|false }        (what the pack's widgets show on screen, Vue nodes off and on)
// Prints one JSON object (the report) on its last stdout line; screenshots go to outDir.
// Over 600 lines: one browser session runs every check in turn on the page and server state the last one left
// (a fresh browser per check would cost CI minutes), and the checks share the helpers above them.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const cfg = JSON.parse(process.argv[2]);
const report = { extension: null, workflows: [], queued: null, variants: [], reload: null, console_errors: [] };

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
// a fresh profile each run: launch() uses a new temporary user-data-dir
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
// Every wait below returns as soon as its event happens; the limits only catch hangs, so a busy machine is
// never a failure (TRANSEDIT_BROWSER_HANG_SECONDS, default 10 minutes).
const HANG_MS = 1000 * Number(process.env.TRANSEDIT_BROWSER_HANG_SECONDS || 600);
page.setDefaultTimeout(HANG_MS);
page.setDefaultNavigationTimeout(HANG_MS);
page.on("console", (msg) => {
  if (msg.type() === "error") report.console_errors.push(`${msg.text()} (${msg.location()?.url || "?"})`);
});
page.on("pageerror", (err) => report.console_errors.push(`pageerror: ${err.message}\n${err.stack || ""}`));

async function openApp() {
  await page.goto(cfg.url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app?.graph && window.app.extensions?.length > 0, null, { timeout: HANG_MS });
  await page.waitForFunction(() => window.__transedit?.loads >= 1, null, { timeout: HANG_MS }).catch(() => {});
  // record missing-node reports instead of relying on the dialog's markup only
  await page.evaluate(() => {
    window.__missing = [];
    const show = app.showMissingNodesError?.bind(app);
    if (show) app.showMissingNodesError = (types, ...rest) => { window.__missing.push(...types); return show(types, ...rest); };
  });
}

// close what the current frontend opens by itself (the new-user template gallery, release notes), so that
// screenshots show the graph
async function closeDialogs() {
  await page.evaluate(() => {
    for (const d of document.querySelectorAll(".p-dialog, [role=dialog]")) {
      d.querySelector("[aria-label=Close], .p-dialog-close-button, .p-dialog-header-close, button[aria-label*=lose]")?.click();
    }
  });
  await page.keyboard.press("Escape").catch(() => {});
  await page.waitForTimeout(200);
}

// frame the whole graph and hide the floating menu, so screenshots (and the workflow thumbnails made from
// them) show the graph itself
async function frameGraph() {
  await closeDialogs();
  await page.evaluate(() => {
    const menu = document.querySelector(".comfy-menu");
    if (menu) menu.style.display = "none";
    const nodes = app.graph._nodes;
    const ds = app.canvas?.ds;
    if (!nodes.length || !ds) return;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) {
      x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
      x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const W = app.canvas.canvas.width / (window.devicePixelRatio || 1), H = app.canvas.canvas.height / (window.devicePixelRatio || 1);
    const scale = Math.min(1, 0.95 * Math.min(W / (x1 - x0), H / (y1 - y0)));
    ds.scale = scale;
    ds.offset[0] = (W / scale - (x1 - x0)) / 2 - x0;
    ds.offset[1] = (H / scale - (y1 - y0)) / 2 - y0;
    app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(300);
}

// which widget values the pack's nodes carry, as the frontend would save them
function packValues(graph) {
  return Object.fromEntries((graph.nodes || []).filter((n) => String(n.type).startsWith("TransEdit"))
    // a node without widgets is saved with `[]` or no key, and frontends differ in which they write back
    // (0.33.0's leaves it out, 0.3.64's pinned one writes []): both mean "no values"
    .map((n) => [String(n.id), n.widgets_values == null ? [] : n.widgets_values]));
}

async function loadGraph(graph) {
  const result = await page.evaluate(async (g) => {
    window.__missing = [];
    let error = null;
    try { await app.loadGraphData(structuredClone(g)); } catch (e) { error = String(e?.stack || e); }
    await new Promise((r) => setTimeout(r, 200));
    // the legacy dialog (.comfy-missing-nodes) or the current frontend's dialog that names missing nodes
    const dialogs = [...document.querySelectorAll(".comfy-missing-nodes, .p-dialog, [role=dialog]")];
    const shown = dialogs.filter((d) => d.offsetParent !== null).map((d) => (d.textContent || "").slice(0, 300));
    // a missing-*node* report (a missing *model* — the diffusion checkpoint the tests never have — is another dialog)
    const missingDialog = shown.some((t) => /missing node|nodes? (are|is) missing|node types? .*(not found|missing)/i.test(t));
    for (const d of dialogs) d.querySelector("[aria-label=Close], .p-dialog-close-button, .p-dialog-header-close")?.click();
    const registered = window.LiteGraph?.registered_node_types || {};
    const virtual = new Set(["Note", "MarkdownNote", "Reroute", "PrimitiveNode"]);
    const types = app.graph._nodes.map((n) => n.type);
    let saved = null;
    try { saved = app.graph.serialize(); } catch (e) { error = error || String(e?.stack || e); }
    return {
      error,
      missing: [...window.__missing, ...types.filter((t) => !virtual.has(t) && !registered[t])],
      missing_dialog: missingDialog,
      dialogs: shown,
      nodes: app.graph._nodes.length,
      types,
      saved,
    };
  }, graph);
  const before = packValues(graph), after = packValues(result.saved || { nodes: [] });
  result.changed_values = Object.keys(before).filter((id) => JSON.stringify(before[id]) !== JSON.stringify(after[id]))
    .map((id) => ({ id, before: before[id], after: after[id] }));
  delete result.saved;
  return result;
}

// nodes whose boxes overlap (title bar included), e.g. a node grown by the picture it shows
async function overlaps() {
  return page.evaluate(() => {
    const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
    const nodes = app.graph._nodes, out = [];
    for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {
      const a = box(nodes[i]), b = box(nodes[j]);
      if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) out.push([nodes[i].type, nodes[j].type]);
    }
    return out;
  });
}

// run the loaded graph from the canvas (the Queue button's call) and wait for its history entry
async function queueAndWait() {
  const before = await page.evaluate(async () => Object.keys(await (await fetch("/history")).json()).length);
  await page.evaluate(() => app.queuePrompt(0, 1));
  let entry = null;
  for (let t = 0; t < HANG_MS / 500 && !entry; t++) {
    entry = await page.evaluate(async (n) => {
      const entries = Object.values(await (await fetch("/history")).json());
      if (entries.length <= n) return null;
      const e = entries[entries.length - 1];
      return e.status && (e.status.completed || e.status.status_str === "error") ? e : null;
    }, before);
    if (!entry) await page.waitForTimeout(500);
  }
  return entry;
}

// where a widget of a node (the studio node by default) is on screen (client pixels), with the node framed at
// scale 1: fx across the widget; the middle of its row. With Vue nodes the widget is an element of the node's DOM
// (a number input's drag area, or the canvas the frontend draws a custom widget into); otherwise it is drawn on
// the graph canvas
async function widgetPoint(name, fx = 0.5, nodeId = null) {
  return page.evaluate(([name, fx, nodeId]) => {
    const n = nodeId !== null ? app.graph.getNodeById(nodeId) : app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    const row = document.querySelector(`[data-node-id="${n.id}"] [data-widget-name="${name}"]`);
    if (row) {
      const target = row.querySelector(".cursor-ew-resize, canvas") || row;
      const r = target.getBoundingClientRect();
      return { x: r.left + r.width * fx, y: r.top + r.height / 2, wy: null, vue: true };
    }
    const w = n.widgets.find((x) => x.name === name);
    const wy = w.last_y ?? w.y ?? w.lastY;
    const h = w.computeSize?.(n.size[0])?.[1] ?? window.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20;
    const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
    const gx = n.pos[0] + n.size[0] * fx, gy = n.pos[1] + wy + Math.min(h, 24) / 2;
    return { x: rect.left + (gx + ds.offset[0]) * ds.scale, y: rect.top + (gy + ds.offset[1]) * ds.scale, wy, vue: false };
  }, [name, fx, nodeId]);
}

// the newest frontend's Vue node renderer ("Nodes 2.0"), switched on or off before a workflow is loaded; false
// where the frontend has no such setting
async function setVueNodes(on) {
  const known = await page.evaluate(async (on) => {
    const setting = app.extensionManager?.setting;
    if (setting?.get?.("Comfy.VueNodes.Enabled") === undefined) return false;
    await setting.set("Comfy.VueNodes.Enabled", on);
    return true;
  }, on);
  return known;
}

// progress, not a clock: the graph's nodes are rendered by the renderer asked for (Vue: one element per node)
async function waitForRenderer(vue) {
  await page.waitForFunction((vue) => {
    const dom = document.querySelectorAll("[data-node-id]").length;
    return vue ? dom >= app.graph._nodes.length : dom === 0;
  }, vue, { timeout: HANG_MS });
}

// a node at scale 1, its top-left corner at (160, 150) on screen (clear of the side bar and the floating menus),
// so that every widget of it is on screen
async function frameNode(nodeId) {
  await page.evaluate((id) => {
    const n = app.graph.getNodeById(id);
    const ds = app.canvas.ds;
    ds.scale = 1;
    ds.offset[0] = 160 - n.pos[0];
    ds.offset[1] = 150 - n.pos[1];
    app.canvas.setDirty(true, true);
  }, nodeId);
  await nextFrames();
}

const nextFrames = () => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

// the PNG behind an image URL the page can fetch (a /view URL or a data: URL), base64
async function pngOf(url) {
  return page.evaluate(async (url) => {
    const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }, url);
}

// What the pack's widgets of a node show on screen now, after an answer. Two views, both of pixels on screen:
//  - a page screenshot, and where on it the compare widget's picture is (test_browser.py compares that region
//    with the server's images: the new value's picture, at its full height, the divider where it should be);
//  - each pack widget's pixels on the canvas the page shows it in (the widget's own canvas with Vue nodes, the
//    graph canvas otherwise) against a fresh draw of the widget's current state (its status text, labels): a
//    widget the frontend was never asked to repaint still shows an older state.
async function screenState(label, nodeId, expected) {
  await page.mouse.move(5, 995); // no hover highlight or tooltip over the node
  await nextFrames();
  const seen = await page.evaluate((id) => {
    const n = app.graph.getNodeById(id);
    const nodeEl = document.querySelector(`[data-node-id="${n.id}"]`);
    const widgets = {};
    let picture = null;
    for (const w of n.widgets || []) {
      if (!/^transedit_(compare|studio_bar)$/.test(w.name)) continue;
      const contentH = w.computeSize(n.size[0])[1];
      let visible, k, screen, cssW, y, bgKnown;
      if (nodeEl) { // Vue nodes: the frontend draws the widget at y = 1 of a canvas of its own, k device pixels per px
        const c = nodeEl.querySelector(`[data-widget-name="${w.name}"] canvas`);
        if (!c) { widgets[w.name] = { missing: true }; continue; }
        k = c.width / c.offsetWidth;
        cssW = c.width / k;
        y = 1;
        const r = c.getBoundingClientRect();
        const sx = r.width / cssW, sy = c.height ? r.height / (c.height / k) : 1;
        screen = (x_, y_) => [r.left + x_ * sx, r.top + y_ * sy];
        visible = { data: c.height ? c.getContext("2d").getImageData(0, 0, c.width, c.height).data : new Uint8ClampedArray(0),
          width: c.width, height: c.height, x0: 0, y0: 0 };
        bgKnown = true; // a widget canvas is transparent where the widget draws nothing
      } else { // the graph canvas, drawn at the view's scale
        const canvas = app.canvas.canvas, ds = app.canvas.ds;
        k = (canvas.width / canvas.clientWidth) * ds.scale;
        cssW = w.width || n.size[0];
        y = w.last_y ?? w.y;
        const rect = canvas.getBoundingClientRect();
        screen = (x_, y_) => [rect.left + (n.pos[0] + x_ + ds.offset[0]) * ds.scale, rect.top + (n.pos[1] + y_ + ds.offset[1]) * ds.scale];
        const [cx, cy] = screen(0, y).map((v, i) => Math.round((v - (i ? rect.top : rect.left)) * canvas.width / canvas.clientWidth));
        const ctxMain = canvas.getContext("2d");
        visible = { data: ctxMain.getImageData(cx, cy, Math.round(cssW * k), Math.round((contentH + 1) * k)).data,
          width: Math.round(cssW * k), height: Math.round((contentH + 1) * k), x0: 0, y0: 0 };
        bgKnown = false;
      }
      // the reference: the widget's own draw of its current state, as the renderer would call it now
      const ref = document.createElement("canvas");
      ref.width = visible.width;
      ref.height = Math.round((contentH + y + 1) * k) - (nodeEl ? 0 : Math.round(y * k));
      const rctx = ref.getContext("2d");
      rctx.scale(k, k);
      if (!nodeEl) rctx.translate(0, -y);
      w.draw(rctx, n, cssW, y, contentH);
      const want = rctx.getImageData(0, 0, ref.width, ref.height).data;
      // the graph canvas has the node's body behind the widget: the colour most pixels show where the reference
      // draws nothing
      let bg = [0, 0, 0, 0];
      if (!bgKnown) {
        const counts = new Map();
        for (let i = 0; i < want.length && i < visible.data.length; i += 4) {
          if (want[i + 3] !== 0) continue;
          const key = visible.data.slice(i, i + 3).join(",");
          counts.set(key, (counts.get(key) || 0) + 1);
        }
        const top = [...counts.entries()].sort((a, b) => b[1] - a[1])[0];
        bg = top ? [...top[0].split(",").map(Number), 255] : [0, 0, 0, 255];
      }
      const rows = Math.min(ref.height, visible.height);
      let differ = 0, compared = 0;
      for (let row = 0; row < ref.height; row++) {
        for (let col = 0; col < ref.width; col++) {
          const i = 4 * (row * ref.width + col);
          if (row >= rows) { differ += 1; compared += 1; continue; } // the widget is shorter on screen than it draws
          const a = want[i + 3] / 255;
          let worst = 0;
          for (let ch = 0; ch < (bgKnown ? 4 : 3); ch++) {
            const expect = bgKnown ? want[i + ch] : want[i + ch] * a + bg[ch] * (1 - a);
            worst = Math.max(worst, Math.abs(expect - visible.data[i + ch]));
          }
          if (worst > 40) differ += 1;
          compared += 1;
        }
      }
      widgets[w.name] = { mismatch: compared ? differ / compared : 1, compared, shown_rows: visible.height / k,
        drawn_rows: ref.height / k, host: nodeEl ? "vue" : "graph canvas" };
      if (w.name === "transedit_compare" && w.pairs?.length && w.last) {
        const pair = w.pairs[w.pair % w.pairs.length];
        const img = pair.after || pair.before;
        const s = Math.min(w.last.w / img.naturalWidth, w.last.h / img.naturalHeight);
        const dw = img.naturalWidth * s, dh = img.naturalHeight * s;
        const x = w.last.x0 + (w.last.w - dw) / 2, y_ = w.last.y + (w.last.h - dh) / 2;
        const [sx0, sy0] = screen(x, y_), [sx1, sy1] = screen(x + dw, y_ + dh);
        picture = { rect: [sx0, sy0, sx1 - sx0, sy1 - sy0], split: w.split, labels: [...w.labels],
          before_src: pair.before?.src ?? null, after_src: pair.after?.src ?? null };
      }
    }
    const bar = n.widgets.find((w) => w.name === "transedit_studio_bar");
    return { widgets, picture, status: bar ? bar.status : null };
  }, nodeId);
  const shot = path.join(cfg.outDir, `${label}.screen.png`);
  await page.screenshot({ path: shot });
  const out = { label, shot, ...seen };
  // the server's pictures the screen should show: the ones given (a preview answer, a saved output), else the
  // ones the run's message named (/view), each kept next to the screenshot
  if (seen.picture) {
    for (const side of ["before", "after"]) {
      const png = expected?.[side] ?? (seen.picture[`${side}_src`] ? await pngOf(seen.picture[`${side}_src`]) : null);
      out[side] = png ? path.join(cfg.outDir, `${label}.${side}_expected.png`) : null;
      if (png) fs.writeFileSync(out[side], Buffer.from(png, "base64"));
      delete out.picture[`${side}_src`];
    }
  }
  return out;
}

// a server where the preview route is missing (aiohttp's plain-text 404, e.g. the route could not be registered):
// the node still runs and shows its picture; a drag asks once, then the node says to queue instead
async function studioWithoutRoute(graph) {
  const requests = [];
  await page.route("**/transedit/studio/preview", (route) => {
    requests.push(route.request().url());
    return route.fulfill({ status: 404, contentType: "text/plain", body: "404: Not Found" });
  });
  const errorsBefore = report.console_errors.length;
  try {
    await loadGraph(graph);
    const run = await queueAndWait();
    await page.waitForFunction(() => app.graph._nodes.find((x) => x.type === "TransEditEditStudio")?.__transeditStudio,
      null, { timeout: HANG_MS });
    const p = await widgetPoint("strength_1");
    await page.mouse.move(p.x, p.y);
    await page.mouse.down();
    for (let i = 1; i <= 6; i++) await page.mouse.move(p.x + 10 * i, p.y);
    await page.mouse.up();
    await page.waitForFunction(() => {
      const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
      return n.__transeditStudio === null;
    }, null, { timeout: HANG_MS });
    const node = await page.evaluate(() => {
      const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
      const cmp = n.widgets.find((w) => w.name === "transedit_compare");
      return { status: n.widgets.find((w) => w.name === "transedit_studio_bar")?.status ?? null,
        pictures: cmp?.value?.loaded ?? 0 };
    });
    // later drags ask nothing until the graph is queued again
    await page.mouse.move(p.x + 60, p.y);
    await page.mouse.down();
    for (let i = 1; i <= 4; i++) await page.mouse.move(p.x + 60 - 10 * i, p.y);
    await page.mouse.up();
    await page.waitForTimeout(300);
    // the pack's errors only (the frontend logs its own, e.g. the newest frontend's jobs API on 0.3.64), and
    // not the route's 404, which the page logs as a missing resource
    const errors = report.console_errors.slice(errorsBefore)
      .filter((e) => /transedit/i.test(e) && !/status of 404 .*\/transedit\/studio\/preview/.test(e));
    return { run_status: run?.status ?? null, ...node, requests: requests.length, errors };
  } finally {
    await page.unroute("**/transedit/studio/preview");
    report.console_errors = report.console_errors.filter((e) => !/transedit\/studio\/preview/.test(e));
  }
}

// The SaveImage output of a history entry, base64
async function savedPng(entry, graph) {
  const saveId = String(graph.nodes.find((x) => x.type === "SaveImage").id);
  const ref = entry?.outputs?.[saveId]?.images?.[0] ?? null;
  if (!ref) return { ref: null, png: null };
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "output" });
  return { ref, png: await pngOf(`/view?${q}`) };
}

// opts: vue (Vue nodes on before the workflow loads; null leaves the renderer as it is), screens (what the node
// shows on screen after each answer, see screenState), plant (at the end, the pack's widget repaint switched off
// by its test-only flag, one more drag: what the screen check sees then)
async function studioCheck(graph, opts = {}) {
  const { vue = null, screens = false, plant = false, prefix = "edit_studio" } = opts;
  if (vue !== null) await setVueNodes(vue);
  await loadGraph(graph);
  if (vue !== null) await waitForRenderer(vue);
  const run = await queueAndWait();
  await page.waitForFunction(() => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    return n?.__transeditStudio && n.widgets?.some((w) => w.name === "transedit_compare" && w.value?.loaded > 0) &&
      n.widgets?.some((w) => w.name === "transedit_studio_bar");
  }, null, { timeout: HANG_MS });
  const nodeId = await page.evaluate(() => app.graph._nodes.find((x) => x.type === "TransEditEditStudio").id);
  await closeDialogs();
  await frameNode(nodeId);
  const state = () => page.evaluate(() => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    const s = n.__transeditStudio;
    const cmp = n.widgets.find((w) => w.name === "transedit_compare");
    const bar = n.widgets.find((w) => w.name === "transedit_studio_bar");
    return { previews: s?.previews ?? 0, in_flight: !!s?.inFlight, status: bar?.status ?? null, split: cmp?.split,
      after_src: cmp?.pairs?.[0]?.after?.src?.slice(0, 64) ?? null, last: s?.last ?? null,
      strength_1: n.widgets.find((w) => w.name === "strength_1").value };
  });
  const queueEmpty = () => page.evaluate(async () => {
    const q = await (await fetch("/queue")).json();
    return { running: q.queue_running.length, pending: q.queue_pending.length,
      history: Object.keys(await (await fetch("/history")).json()).length };
  });
  // progress, not a clock: until the preview of what the sliders hold now has arrived
  const previewOf = (v) => page.waitForFunction((v) => {
    const s = app.graph._nodes.find((x) => x.type === "TransEditEditStudio").__transeditStudio;
    return s && !s.inFlight && s.last && s.last.strengths[0] === v;
  }, v, { timeout: HANG_MS });
  const drag = async (steps, dx) => {
    const p = await widgetPoint("strength_1");
    await page.mouse.move(p.x, p.y);
    await page.mouse.down();
    for (let i = 1; i <= steps; i++) await page.mouse.move(p.x + dx * i, p.y);
    await page.mouse.up();
    return p;
  };
  const lastImage = async () => (await state()).last?.image?.split(",", 2)[1] ?? null;
  const shots = [];
  const screen = async (label, expected) => { if (screens) shots.push(await screenState(`${prefix}.${label}`, nodeId, expected)); };
  const firstRun = screens ? await savedPng(run, graph) : null;
  await screen("first_run", { after: firstRun?.png });
  const initial = await state();
  const queueBefore = await queueEmpty();

  // drag strength_1 to the right with the mouse, as an artist would
  const p = await drag(12, 10);
  const dragged = (await state()).strength_1;
  await previewOf(dragged);
  const afterDrag = await state();
  const queueAfter = await queueEmpty();
  const saved = await page.evaluate(() => app.graph.serialize().nodes.find((x) => x.type === "TransEditEditStudio").widgets_values);
  await screen("live", { after: await lastImage() });
  await page.mouse.move(5, 995);
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(cfg.outDir, `${prefix}.live.png`) });

  // queue the dragged value: the saved image must be the full-size render the preview showed
  const queued = await queueAndWait();
  const { ref: queuedImage, png: queuedData } = await savedPng(queued, graph);
  await page.waitForFunction((pid) => app.graph._nodes.find((x) => x.type === "TransEditEditStudio")
    ?.__transeditStudio?.prompt_id === pid, queued?.prompt?.[1], { timeout: HANG_MS }).catch(() => {});
  // the run's own picture and label are on the node once its pictures have loaded
  await page.waitForFunction(() => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    const cmp = n.widgets.find((w) => w.name === "transedit_compare");
    return /queued/.test(cmp?.labels?.[1] || "") && !n.__transeditStudio?.inFlight;
  }, null, { timeout: HANG_MS }).catch(() => {});
  await screen("requeued", { after: queuedData });

  // reset and before/after: real clicks on the bar under the picture
  const bar = await widgetPoint("transedit_studio_bar", 0);
  const previewsBefore = (await state()).previews;
  await page.mouse.click(bar.x + 40, bar.y);
  await page.waitForFunction((k) => {
    const s = app.graph._nodes.find((x) => x.type === "TransEditEditStudio").__transeditStudio;
    return s && s.previews > k && !s.inFlight;
  }, previewsBefore, { timeout: HANG_MS });
  const afterReset = await state();
  await screen("reset", { after: await lastImage() });
  const savedAfterReset = await page.evaluate(() => app.graph.serialize().nodes.find((x) => x.type === "TransEditEditStudio").widgets_values);
  await page.mouse.click(bar.x + 130, bar.y);
  const toggledOnce = (await state()).split;
  await screen("edit_alone", { after: await lastImage() });
  await page.mouse.click(bar.x + 130, bar.y);
  const toggledTwice = (await state()).split;
  // the divider, dragged with the mouse to a quarter of the picture
  let divider = null;
  if (screens) {
    const pic = shots.at(-1).picture;
    const [x, y, w, h] = pic.rect;
    await page.mouse.move(x + w * 0.6, y + h / 2);
    await page.mouse.down();
    for (let i = 1; i <= 5; i++) await page.mouse.move(x + w * (0.6 - 0.07 * i), y + h / 2);
    await page.mouse.up();
    divider = (await state()).split;
    await screen("divider", { after: await lastImage() });
  }
  await page.mouse.move(5, 995); // no tooltip over the node in the screenshot
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(cfg.outDir, `${prefix}.executed.png`) });

  // the fault the screen check is for, planted: the pack's repaint of its own widgets off (a flag only this test
  // sets); one more drag, and what the screen shows once its answer has arrived
  let planted = null;
  if (plant) {
    await page.evaluate(() => { window.__transedit.plantNoWidgetRepaint = true; });
    try {
      const before = (await state()).strength_1;
      await drag(2, 80); // a long step: the answer for the new value arrives after the slider stopped
      const v = (await state()).strength_1;
      await previewOf(v);
      const st = await state();
      planted = { from: before, to: v, status: st.status, previews: st.previews,
        screen: await screenState(`${prefix}.planted_no_repaint`, nodeId, { after: await lastImage() }) };
    } finally {
      await page.evaluate(() => { window.__transedit.plantNoWidgetRepaint = false; });
    }
  }
  return { run_status: run?.status ?? null, initial, dragged, after_drag: afterDrag, queue_before: queueBefore,
    queue_after: queueAfter, saved_values: saved, queued_status: queued?.status ?? null, queued_image: queuedImage, queued_png: queuedData,
    after_reset: afterReset, saved_after_reset: savedAfterReset, toggled: [toggledOnce, toggledTwice], divider,
    widget_y: p.wy, vue_nodes: p.vue, screens: shots, planted };
}

// Edit Studio's slots as the node shows them: its direction input slots (connected or not), each strength
// slider's label and whether it is hidden, and with Vue nodes what the node's DOM shows (its slot names, its
// widget rows' text)
async function slotView() {
  await page.evaluate(() => new Promise((r) => setTimeout(r, 0))); // the extension updates after each change
  await nextFrames();
  return page.evaluate(() => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    const el = document.querySelector(`[data-node-id="${n.id}"]`);
    const sliders = {};
    for (const w of n.widgets.filter((x) => /^strength_\d$/.test(x.name))) {
      sliders[w.name] = { hidden: Boolean(w.hidden), label: w.label ?? w.name };
    }
    const dom = el ? {
      widgets: Object.fromEntries([...el.querySelectorAll("[data-widget-name]")]
        .map((e) => [e.getAttribute("data-widget-name"), (e.textContent || "").trim()])),
      slots: [...el.querySelectorAll(".lg-slot, [data-slot-key]")].map((e) => (e.textContent || "").trim()).filter(Boolean),
    } : null;
    return { slots: n.inputs.filter((i) => !i.widget && /^direction_\d$/.test(i.name)).map((i) => i.name),
      connected: n.inputs.filter((i) => /^direction_\d$/.test(i.name) && i.link != null).map((i) => Number(i.name.slice(10))),
      sliders, dom };
  });
}

// Edit Studio's slots (only connected directions and one spare, sliders named after their direction): loaded,
// a third direction (a new Load Direction: SeFa component 1) connected, its component changed (with the relabel
// switched off by a flag only this test sets: the fault the check must see, then on again), queued (the labels
// become the names the run reports), disconnected; then what the workflow saves and queues
async function studioSlots(graph, opts = {}) {
  const { vue = null, queue = false, prefix = "edit_studio.slots" } = opts;
  const started = Date.now(); // what the check adds to CI, in the report
  if (vue !== null) await setVueNodes(vue);
  const load = await loadGraph(graph);
  if (vue !== null) await waitForRenderer(vue);
  const studioId = await page.evaluate(() => app.graph._nodes.find((x) => x.type === "TransEditEditStudio").id);
  await closeDialogs();
  await frameNode(studioId);
  const steps = { loaded: await slotView() };
  await page.screenshot({ path: path.join(cfg.outDir, `${prefix}.loaded.png`) });
  const setComponent = (c) => page.evaluate((c) => {
    const d = app.graph._nodes.find((x) => x.__transeditSlotsTest);
    const w = d.widgets.find((x) => x.name === "component");
    w.value = c;
    w.callback?.(c); // as the canvas does after a change
  }, c);
  await page.evaluate(() => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    const gen = app.graph._nodes.find((x) => x.type === "TransEditLoadStyleGAN");
    const d = LiteGraph.createNode("TransEditLoadDirection");
    d.__transeditSlotsTest = true;
    d.pos = [n.pos[0] - 420, n.pos[1] + n.size[1] + 80];
    app.graph.add(d);
    const choice = d.widgets.find((x) => x.name === "direction");
    choice.value = choice.options.values.find((v) => String(v).startsWith("sefa"));
    d.widgets.find((x) => x.name === "component").value = 1;
    gen.connect(0, d, d.inputs.findIndex((i) => i.name === "generator"));
    d.connect(0, n, n.inputs.findIndex((i) => i.name === "direction_3"));
  });
  steps.connected = await slotView();
  await page.screenshot({ path: path.join(cfg.outDir, `${prefix}.connected.png`) });
  await page.evaluate(() => { window.__transedit.plantNoRelabel = true; });
  try {
    await setComponent(2);
    steps.planted = await slotView();
  } finally {
    await page.evaluate(() => { window.__transedit.plantNoRelabel = false; });
  }
  await setComponent(1);
  steps.relabelled = await slotView();
  let run = null;
  if (queue) {
    const entry = await queueAndWait();
    await page.waitForFunction(() => app.graph._nodes.find((x) => x.type === "TransEditEditStudio")?.__transeditRunNames,
      null, { timeout: HANG_MS });
    steps.ran = await slotView();
    run = { status: entry?.status ?? null, names: entry?.outputs?.[String(studioId)]?.transedit_studio?.[0]?.directions ?? null };
    await page.screenshot({ path: path.join(cfg.outDir, `${prefix}.ran.png`) });
  }
  await page.evaluate(() => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    n.disconnectInput(n.inputs.findIndex((i) => i.name === "direction_3"));
  });
  steps.disconnected = await slotView();
  const saved = await page.evaluate(async () => {
    const n = app.graph._nodes.find((x) => x.type === "TransEditEditStudio");
    const node = app.graph.serialize().nodes.find((x) => String(x.id) === String(n.id));
    const prompt = (await app.graphToPrompt()).output[String(n.id)];
    return { widgets_values: node.widgets_values, inputs: node.inputs.map((i) => i.name), prompt: prompt?.inputs ?? null };
  });
  return { load: { error: load.error, missing: load.missing, changed_values: load.changed_values }, steps, run, saved,
    vue_nodes: await page.evaluate(() => document.querySelectorAll("[data-node-id]").length > 0),
    ms: Date.now() - started };
}

// every compare widget of the executed graph on screen (each node framed in turn), then the first one's divider
// dragged with the mouse to a quarter of its picture
async function compareScreens(prefix) {
  const ids = await page.evaluate(() => app.graph._nodes.filter((n) => n.widgets?.some(
    (w) => w.name === "transedit_compare" && w.value?.loaded > 0)).map((n) => n.id));
  const shots = [];
  for (const id of ids) {
    await frameNode(id);
    const type = await page.evaluate((id) => app.graph.getNodeById(id).type, id);
    shots.push({ node: type, ...(await screenState(`${prefix}.${type}`, id)) });
  }
  if (ids.length && shots[0].picture) {
    await frameNode(ids[0]);
    const [x, y, w, h] = shots[0].picture.rect;
    await page.mouse.move(x + w * 0.6, y + h / 2);
    await page.mouse.down();
    for (let i = 1; i <= 5; i++) await page.mouse.move(x + w * (0.6 - 0.07 * i), y + h / 2);
    await page.mouse.up();
    shots.push({ node: shots[0].node, divider: true, ...(await screenState(`${prefix}.${shots[0].node}.divider`, ids[0])) });
  }
  return shots;
}

try {
  await openApp();
  report.extension = await page.evaluate(() => ({
    registered: app.extensions.filter((e) => e.name === "TransEdit.Canvas").length,
    loads: window.__transedit?.loads ?? 0,
    frontend: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
  }));

  for (const wf of cfg.workflows) {
    const result = await loadGraph(wf.graph);
    await frameGraph();
    const shot = path.join(cfg.outDir, `${wf.name}.png`);
    await page.screenshot({ path: shot });
    report.workflows.push({ name: wf.name, expected_nodes: wf.graph.nodes.length, screenshot: shot, ...result });
  }

  // queue one workflow from the canvas and wait for the compare widget to appear and draw
  const queued = cfg.workflows.find((w) => w.name === cfg.queue);
  if (queued) {
    if (cfg.screens) await setVueNodes(false); // the classic renderer first (the server keeps settings)
    await loadGraph(queued.graph);
    const status = (await queueAndWait())?.status ?? null;
    // both nodes that report pairs (Generate, Paste Back) must have their widget
    await page.waitForFunction(() => app.graph._nodes.filter((n) => n.widgets?.some(
      (w) => w.name === "transedit_compare" && w.value?.loaded > 0)).length >= 2, null, { timeout: HANG_MS }).catch(() => {});
    let widget = null;
    let dragged = null;
    try {
      await page.waitForFunction(() => app.graph._nodes.some((n) => n.widgets?.some(
        (w) => w.name === "transedit_compare" && w.value?.loaded > 0)), null, { timeout: HANG_MS });
      await page.evaluate(() => app.graph.setDirtyCanvas(true, true));
      await page.waitForTimeout(500);
      widget = await page.evaluate(() => {
        const nodes = app.graph._nodes.filter((n) => n.widgets?.some((w) => w.name === "transedit_compare"));
        return nodes.map((n) => {
          const w = n.widgets.find((x) => x.name === "transedit_compare");
          return { type: n.type, pairs: w.pairs.length, loaded: w.value?.loaded ?? 0, drawn: Boolean(w.last),
            size: [n.size[0], n.size[1]] };
        });
      });
      // where asked (the newest frontend): what each compare widget shows on screen, the classic renderer
      if (cfg.screens) report.compare_screens = { classic: await compareScreens(`${queued.name}.classic`) };
      // drag the divider through the widget's mouse handler, as the canvas would
      dragged = await page.evaluate(() => {
        const n = app.graph._nodes.find((x) => x.widgets?.some((w) => w.name === "transedit_compare" && w.last));
        const w = n?.widgets.find((x) => x.name === "transedit_compare");
        if (!w) return null;
        w.mouse({ type: "pointerdown" }, [w.last.x0 + w.last.w * 0.25, w.last.y + 10], n);
        return w.split;
      });
    } catch (e) {
      widget = { error: String(e) };
    }
    await frameGraph();
    const shot = path.join(cfg.outDir, `${queued.name}.executed.png`);
    await page.screenshot({ path: shot });
    report.queued = { name: queued.name, status, widget, dragged, screenshot: shot, overlaps: await overlaps() };

    // the newest frontend's Vue node rendering (setting Comfy.VueNodes.Enabled), where it exists: does the
    // compare widget still draw?
    report.vue_nodes = await page.evaluate(async () => {
      const setting = app.extensionManager?.setting;
      const known = setting?.get?.("Comfy.VueNodes.Enabled") !== undefined;
      if (!known) return { available: false };
      const widgets = () => app.graph._nodes.flatMap((n) => (n.widgets || []).filter((w) => w.name === "transedit_compare"));
      for (const w of widgets()) w.last = null;
      await setting.set("Comfy.VueNodes.Enabled", true);
      // progress, not a clock: wait until every node is rendered as a Vue node, then for a few painted frames
      const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
      for (let i = 0; i < 2000 && document.querySelectorAll("[data-node-id]").length < app.graph._nodes.length; i++) {
        await frame();
      }
      for (let i = 0; i < 30 && widgets().some((w) => !w.last); i++) {
        app.graph.setDirtyCanvas(true, true);
        await frame();
      }
      const out = { available: true, widgets: widgets().length, drawn: widgets().filter((w) => w.last).length,
        canvases: document.querySelectorAll(".lg-node canvas, [data-node-id] canvas").length,
        vue_nodes: document.querySelectorAll("[data-node-id]").length };
      return out;
    });
    if (report.vue_nodes.available) {
      await page.screenshot({ path: path.join(cfg.outDir, "vue_nodes.png") });
      await page.evaluate(() => app.extensionManager.setting.set("Comfy.VueNodes.Enabled", false));
    }
    // ...and with Vue nodes on before the workflow loads, as a user of the desktop app has them: run it again
    if (cfg.screens && report.vue_nodes.available) {
      try {
        await setVueNodes(true);
        await loadGraph(queued.graph);
        await waitForRenderer(true);
        const run = await queueAndWait();
        await page.waitForFunction(() => app.graph._nodes.filter((n) => n.widgets?.some(
          (w) => w.name === "transedit_compare" && w.value?.loaded > 0)).length >= 2, null, { timeout: HANG_MS });
        await closeDialogs();
        report.compare_screens.vue = await compareScreens(`${queued.name}.vue`);
        report.compare_screens.vue_run = run?.status ?? null;
      } catch (e) {
        report.compare_screens.vue_error = String(e?.stack || e);
      } finally {
        await setVueNodes(false);
      }
    }
  }

  // Edit Studio: run once, drag a strength slider with the mouse, the preview on the node changes without a
  // queue entry, the saved workflow has the new value, and queueing it gives the image the preview showed
  const studioGraph = cfg.workflows.find((w) => w.name === cfg.studio?.workflow)?.graph;
  // (where asked, with what the node shows on screen after each answer, with Vue nodes off and on)
  const onScreen = Boolean(cfg.screens) && (await setVueNodes(false));
  if (studioGraph) report.studio = await studioCheck(studioGraph, { screens: onScreen }).catch((e) => ({ error: String(e?.stack || e) }));
  if (studioGraph && onScreen) {
    report.studio_vue = await studioCheck(studioGraph, { vue: true, screens: true, plant: true, prefix: "edit_studio.vue" })
      .catch((e) => ({ error: String(e?.stack || e) }));
    await setVueNodes(false);
  }
  // Edit Studio's slots: on every server with the renderer it starts with (and a queued run), and where asked
  // with Vue nodes on too
  if (studioGraph) {
    report.studio_slots = { classic: await studioSlots(studioGraph, { vue: onScreen ? false : null, queue: true })
      .catch((e) => ({ error: String(e?.stack || e) })) };
    if (onScreen) {
      report.studio_slots.vue = await studioSlots(studioGraph, { vue: true, prefix: "edit_studio.slots.vue" })
        .catch((e) => ({ error: String(e?.stack || e) }));
      await setVueNodes(false);
    }
  }
  // ...and on a server without the preview route
  if (studioGraph) report.studio_degraded = await studioWithoutRoute(studioGraph).catch((e) => ({ error: String(e?.stack || e) }));

  // subgraphs (frontends with Comfy.Graph.ConvertToSubgraph): the pack's nodes folded into a subgraph still run
  const subgraphGraph = cfg.workflows.find((w) => w.name === cfg.subgraph?.workflow)?.graph;
  report.subgraph = { available: await page.evaluate(() => Boolean(app.extensionManager?.command?.commands?.some?.(
    (c) => c.id === "Comfy.Graph.ConvertToSubgraph"))) };
  if (report.subgraph.available && subgraphGraph) {
    await loadGraph(subgraphGraph);
    const folded = await page.evaluate(async (ids) => {
      const nodes = ids.map((id) => app.graph.getNodeById(id)).filter(Boolean);
      app.canvas.deselectAll?.();
      if (app.canvas.selectItems) app.canvas.selectItems(nodes); else for (const n of nodes) app.canvas.selectNode(n, true);
      await app.extensionManager.command.execute("Comfy.Graph.ConvertToSubgraph");
      await new Promise((r) => setTimeout(r, 300));
      const outer = app.graph._nodes.map((n) => n.type);
      const sub = app.graph._nodes.find((n) => n.subgraph || n.isSubgraphNode?.());
      return { outer, inner: sub?.subgraph?._nodes?.map((n) => n.type) ?? sub?.subgraph?.nodes?.map((n) => n.type) ?? [] };
    }, cfg.subgraph.nodes);
    const entry = await queueAndWait();
    report.subgraph = { ...report.subgraph, ...folded, status: entry?.status ?? null,
      executed_types: entry ? Object.values(entry.prompt[2]).map((n) => n.class_type) : [],
      output_images: entry ? Object.values(entry.outputs || {}).reduce((k, o) => k + (o.images?.length || 0), 0) : 0 };
  }

  // the pack's templates: the server's list, and the templates browser where the frontend has one
  report.templates = await page.evaluate(async () => {
    const api = await (await fetch("/workflow_templates")).json().catch(() => null);
    const command = app.extensionManager?.command;
    const known = command?.commands?.some?.((c) => c.id === "Comfy.BrowseTemplates");
    if (!known) return { api, browser: null };
    await command.execute("Comfy.BrowseTemplates");
    let text = "";
    for (let t = 0; t < 40; t++) {
      await new Promise((r) => setTimeout(r, 250));
      text = [...document.querySelectorAll(".p-dialog, [role=dialog]")].map((d) => d.textContent || "").join(" ");
      if (/TransEdit/i.test(text)) break;
    }
    // open the pack's section, if the browser groups templates by pack
    const entry = [...document.querySelectorAll(".p-dialog *, [role=dialog] *")]
      .find((el) => el.children.length === 0 && /ComfyUI-TransEdit/.test(el.textContent || ""));
    entry?.click();
    await new Promise((r) => setTimeout(r, 1000));
    text = [...document.querySelectorAll(".p-dialog, [role=dialog]")].map((d) => d.textContent || "").join(" ");
    document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
    return { api, browser: { pack_listed: /ComfyUI-TransEdit/.test(text),
      templates_shown: (api?.["ComfyUI-TransEdit"] || []).filter((n) => text.includes(n)) } };
  });
  await page.keyboard.press("Escape").catch(() => {});

  // the node help pages, where the frontend fetches them: /extensions/<pack folder>/docs/<node>.md
  report.help = await page.evaluate(async () => {
    const types = Object.keys(window.LiteGraph?.registered_node_types || {}).filter((t) => t.startsWith("TransEdit"));
    const out = {};
    for (const t of types) {
      const r = await fetch(`/extensions/ComfyUI-TransEdit/docs/${t}.md`);
      const text = r.ok ? await r.text() : "";
      out[t] = { status: r.status, markdown: text.startsWith("# ") };
    }
    return out;
  });

  // the help pages as the frontend shows them: the right side panel's Info tab for a selected node (newer
  // frontends), or the node library's help page (1.2x); feature-detected through the frontend's stores. Each
  // page must show the doc's own opening sentence, rendered (a paragraph, its headings and tables).
  report.help_rendered = await page.evaluate(async (phrases) => {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const pinia = document.querySelector("#vue-app")?.__vue_app__?.config?.globalProperties?.$pinia;
    const store = (id) => pinia?._s?.get(id);
    const route = store("rightSidePanel") ? "right side panel" : store("nodeHelp") ? "node library" : null;
    if (!route) return { route: null, pages: {} };
    const pages = {};
    if (route === "node library") await app.extensionManager.command.execute("Workspace.ToggleSidebarTab.node-library");
    for (const [type, phrase] of Object.entries(phrases)) {
      if (route === "right side panel") {
        app.graph.clear();
        const node = LiteGraph.createNode(type);
        app.graph.add(node);
        app.canvas.deselectAll?.();
        app.canvas.selectNode(node);
        await sleep(100);
        store("rightSidePanel").openPanel("info");
      } else {
        store("nodeHelp").openHelp(store("nodeDef").nodeDefsByName[type]);
      }
      let found = null;
      for (let i = 0; i < 200 && !found; i++) {  // the page renders within a second; 50 s only for a hang
        await sleep(250);
        found = [...document.querySelectorAll("p")].find((e) => e.textContent.includes(phrase));
      }
      const box = found?.parentElement;
      pages[type] = { shown: !!found, headings: box ? [...box.querySelectorAll("h1, h2, h3")].map((e) => e.textContent.trim()) : [],
        tables: box ? box.querySelectorAll("table").length : 0 };
    }
    return { route, pages };
  }, cfg.help_phrases || {});
  if (report.help_rendered.route) await page.screenshot({ path: path.join(cfg.outDir, "help_page.png") });
  if (report.help_rendered.route === "right side panel") {
    await page.evaluate(() => document.querySelector("#vue-app").__vue_app__.config.globalProperties.$pinia._s.get("rightSidePanel").closePanel());
  }

  // workflows saved by another version of the pack (surplus / missing widget values, unknown choices)
  for (const v of cfg.variants || []) {
    const result = await loadGraph(v.graph);
    const state = await page.evaluate(() => ({
      warnings: [...(window.__transedit?.warnings || [])],
      values: app.graph._nodes.map((n) => ({ type: n.type, values: (n.widgets || []).filter((w) => w.serialize !== false && w.options?.serialize !== false).map((w) => w.value) })),
    }));
    await page.evaluate(() => { if (window.__transedit) window.__transedit.warnings = []; });
    report.variants.push({ name: v.name, ...result, ...state });
  }

  // a pack reload: the extension module imported again must neither throw nor register twice
  report.reload = await page.evaluate(async (ext) => {
    let error = null;
    try { await import(`${ext}?reload=${Date.now()}`); } catch (e) { error = String(e); }
    return { error, loads: window.__transedit?.loads ?? 0,
      registered: app.extensions.filter((e) => e.name === "TransEdit.Canvas").length };
  }, cfg.extension);
  const again = await loadGraph(cfg.workflows[0].graph);
  report.reload.graph_after = again;
} catch (e) {
  report.fatal = String(e?.stack || e);
} finally {
  await browser.close();
}
fs.writeFileSync(path.join(cfg.outDir, "report.json"), JSON.stringify(report, null, 1));
console.log(JSON.stringify(report));
