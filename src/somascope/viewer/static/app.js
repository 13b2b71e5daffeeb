// somascope viewer — field view, component view, movie view, curation and compare, in plain JavaScript.
//
// The page talks to the local server's JSON API (see docs/viewer.md). Every request carries the token that
// the server wrote into the page. All drawing is on <canvas>: the field view builds one Path2D per contour
// colour (2,000 contours are a few strokes), the trace view draws min/max envelopes decimated by the server.
//
// `window.somascope` holds the state the browser tests read (ready, drawnContours, selected, timings …).
"use strict";

(() => {
  const TOKEN = document.querySelector('meta[name="somascope-token"]').content;
  // who curates: `&who=NAME` in the page's URL (else the server records the user running it)
  const WHO = new URLSearchParams(window.location.search).get("who");

  // ---------------------------------------------------------------------------------------------------------
  // small helpers

  const $ = (id) => document.getElementById(id);
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function fmt(v, digits = 3) {
    if (!isNum(v)) return "–";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1000 || a < 0.001) return v.toExponential(2);
    return Number(v.toPrecision(digits)).toString();
  }

  function apiUrl(path, params = {}) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) q.set(key, String(value));
    q.set("token", TOKEN);
    return `${path}?${q}`;
  }

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function readJSON(response) {
    let body;
    try {
      body = await response.json();
    } catch (err) {
      body = { error: `${response.status} ${response.statusText}` };
    }
    if (!response.ok) throw new ApiError(body.error || `${response.status} ${response.statusText}`, response.status);
    return body;
  }

  const getJSON = async (path, params) => readJSON(await fetch(apiUrl(path, params)));

  async function postJSON(path, data) {
    const response = await fetch(apiUrl(path), {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Somascope-Token": TOKEN },
      body: JSON.stringify(data || {}),
    });
    return readJSON(response);
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = async () => {
        // the <img> does not tell why; ask again to read the server's JSON error
        let message = `could not load ${url.split("?")[0]}`;
        try {
          const r = await fetch(url);
          if (!r.ok) message = (await r.json()).error || message;
        } catch (err) { /* keep the generic message */ }
        reject(new ApiError(message, 404));
      };
      img.src = url;
    });
  }

  /** Resize a canvas's backing store to its CSS size × devicePixelRatio; true when it changed. */
  function fitCanvas(canvas) {
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (canvas.width === w && canvas.height === h) return false;
    canvas.width = w;
    canvas.height = h;
    return true;
  }

  /** Reading one pixel back forces the canvas to rasterise what was drawn, so timings include it. */
  function flush(ctx) {
    ctx.getImageData(0, 0, 1, 1);
  }

  // a perceptual-ish dark-to-bright ramp for footprints (stops of an "inferno"-like map)
  const RAMP = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
    [250, 193, 39], [252, 255, 164]];

  function ramp(v) {
    const x = clamp(v, 0, 1) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x));
    const f = x - i;
    return RAMP[i].map((c, j) => Math.round(c + f * (RAMP[i + 1][j] - c)));
  }

  /** 1, 2 or 5 × 10^n closest above `raw`. */
  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  function pointInPolygon(x, y, poly) {
    let inside = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i];
      const [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }

  // ---------------------------------------------------------------------------------------------------------
  // the state the tests (and a curious person in the console) can read

  const S = (window.somascope = {
    ready: false,
    error: null,
    tab: "curate",
    sources: [],
    sid: 0,
    K: 0,
    drawnContours: 0,
    selected: -1,
    multi: [],
    previewed: [],
    filters: {},
    accepted: [],
    manual: {},
    notes: {},
    traceK: -1,
    tracePoints: 0,
    movieFrame: -1,
    frame: 0,
    saveCount: 0,
    saving: 0,
    lastSave: null,
    timings: {},
    compare: { ready: false, drawnA: 0, drawnB: 0, pairs: 0, highlighted: null },
  });

  function setStatus(text, kind = "") {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${kind}`;
  }

  function reportError(err, what) {
    console.error(err);
    S.error = `${what}: ${err.message}`;
    setStatus(S.error, "error");
  }

  // ---------------------------------------------------------------------------------------------------------
  // components of one result, as sent by GET /api/{sid}/components (and updated by /curate and /undo)

  class ComponentSet {
    constructor(json) {
      this.K = json.K;
      this.dims = json.dims; // [H, W]
      this.contours = json.contours;
      this.centers = json.centers;
      this.metrics = json.metrics || {};
      this.thresholds = json.thresholds || {};
      this.seeded = json.seeded || null; // structural channel: seeded from its masks (null without one)
      this.silent = json.silent || null; // seeded cells without activity
      this.update(json);
      this.bboxes = this.contours.map((polys, k) => {
        let x0 = Infinity;
        let y0 = Infinity;
        let x1 = -Infinity;
        let y1 = -Infinity;
        for (const poly of polys || []) {
          for (const [x, y] of poly) {
            if (x < x0) x0 = x;
            if (x > x1) x1 = x;
            if (y < y0) y0 = y;
            if (y > y1) y1 = y;
          }
        }
        if (x0 === Infinity) {
          const [cx, cy] = this.centers[k];
          return [cx - 2, cy - 2, cx + 2, cy + 2];
        }
        return [x0, y0, x1, y1];
      });
      this.paths = new Array(this.K); // per-component Path2D, built when first needed
    }

    update(json) {
      if (json.accepted) this.accepted = json.accepted;
      if (json.auto_accepted) this.autoAccepted = json.auto_accepted;
      if (json.manual) this.manual = json.manual;
      if (json.notes) this.notes = json.notes;
      if ("unmatched" in json) this.unmatched = json.unmatched; // stored decisions that match no component
    }

    /** Append component k's closed contour(s) to `path` (a small circle at its centre when it has none). */
    addTo(path, k) {
      const polys = this.contours[k];
      if (!polys || polys.length === 0) {
        const [x, y] = this.centers[k];
        path.moveTo(x + 1.5, y);
        path.arc(x, y, 1.5, 0, 2 * Math.PI);
        return;
      }
      for (const poly of polys) {
        if (poly.length === 0) continue;
        path.moveTo(poly[0][0], poly[0][1]);
        for (let i = 1; i < poly.length; i++) path.lineTo(poly[i][0], poly[i][1]);
        path.closePath();
      }
    }

    path(k) {
      if (!this.paths[k]) {
        const p = new Path2D();
        this.addTo(p, k);
        this.paths[k] = p;
      }
      return this.paths[k];
    }

    metric(name, k) {
      const values = this.metrics[name];
      return values ? values[k] : null;
    }

    counts() {
      let acc = 0;
      for (const a of this.accepted) if (a) acc++;
      return { accepted: acc, rejected: this.K - acc, manual: Object.keys(this.manual).length };
    }
  }

  const METRIC_LABELS = { snr: "SNR", r_value: "r-value", cnn: "CNN", activity: "activity z" };
  // shown only where the result has them (a structural run's seeded cells)
  const OPTIONAL_METRICS = ["activity"];
  const IMAGE_LABELS = { corr: "correlation", max_corr: "max correlation", pnr: "PNR", std: "std",
    footprints: "footprints (max)" };

  // ---------------------------------------------------------------------------------------------------------
  // CanvasView: a view that redraws at most once per animation frame, however often it is asked

  class CanvasView {
    constructor() {
      this.pending = false;
    }

    requestDraw() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    }
  }

  // FieldView: a summary image with every component's contour; zoom, pan, hover, click, box and lasso

  class FieldView extends CanvasView {
    /**
     * host: {
     *   category(k) → style name or null (hidden),  styles: [[name, {color, width, dash}], …] (drawing order),
     *   highlights() → [{k, color, width}],  tooltip(k) → text,
     *   onSelect(k, event), onHover(k), onMultiSelect(ks, event), onViewChange(view)
     * }
     */
    constructor(canvas, tooltip, host) {
      super();
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.tooltip = tooltip;
      this.host = host;
      this.set = null;
      this.image = null;
      this.s = 1;
      this.tx = 0;
      this.ty = 0;
      this.autoFit = true;
      this.paths = null;
      this.hover = -1;
      this.drag = null;
      this.drawnContours = 0;
      this.hitCtx = document.createElement("canvas").getContext("2d");
      this.listen();
      new ResizeObserver(() => {
        if (this.autoFit) this.fit();
        else this.requestDraw();
      }).observe(canvas.parentElement);
    }

    setData(set) {
      this.set = set;
      this.autoFit = true;
      this.fit();
      this.invalidate();
    }

    setImage(img) {
      this.image = img;
      this.requestDraw();
    }

    /** The categories changed (curation, filters, toggles): rebuild the per-colour paths. */
    invalidate() {
      this.paths = null;
      this.requestDraw();
    }

    fit() {
      if (!this.set) return;
      const rect = this.canvas.getBoundingClientRect();
      if (rect.width < 2 || rect.height < 2) return;
      const [H, W] = this.set.dims;
      this.s = Math.min(rect.width / W, rect.height / H) * 0.98;
      this.tx = (rect.width - W * this.s) / 2;
      this.ty = (rect.height - H * this.s) / 2;
      this.requestDraw();
    }

    setView(s, tx, ty) {
      this.s = s;
      this.tx = tx;
      this.ty = ty;
      this.autoFit = false;
      this.requestDraw();
    }

    toImage(sx, sy) {
      return [(sx - this.tx) / this.s, (sy - this.ty) / this.s];
    }

    /** Page (client) coordinates of image point (x, y): what a test clicks. */
    toClient(x, y) {
      const rect = this.canvas.getBoundingClientRect();
      return { x: rect.left + this.tx + x * this.s, y: rect.top + this.ty + y * this.s };
    }

    /** Pan so that component k is in view (no-op when it already is). */
    ensureVisible(k) {
      if (!this.set || k < 0) return;
      const rect = this.canvas.getBoundingClientRect();
      const [x, y] = this.set.centers[k];
      const sx = this.tx + x * this.s;
      const sy = this.ty + y * this.s;
      const m = 30;
      if (sx > m && sx < rect.width - m && sy > m && sy < rect.height - m) return;
      this.setView(this.s, rect.width / 2 - x * this.s, rect.height / 2 - y * this.s);
      this.host.onViewChange?.(this);
    }

    buildPaths() {
      const paths = {};
      let n = 0;
      for (let k = 0; k < this.set.K; k++) {
        const cat = this.host.category(k);
        if (!cat) continue;
        const p = paths[cat] || (paths[cat] = new Path2D());
        this.set.addTo(p, k);
        n++;
      }
      this.paths = paths;
      this.drawnContours = n;
    }

    /** Draw now; returns the milliseconds spent building the paths (when rebuilt) and drawing. */
    draw({ measure = false } = {}) {
      const t0 = performance.now();
      fitCanvas(this.canvas);
      const ctx = this.ctx;
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#0c0d0f";
      ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      if (!this.set) return 0;
      const [H, W] = this.set.dims;
      const s = this.s;
      ctx.setTransform(dpr * s, 0, 0, dpr * s, dpr * this.tx, dpr * this.ty);
      if (this.image) {
        ctx.imageSmoothingEnabled = s < 3;
        ctx.drawImage(this.image, 0, 0, W, H);
      } else {
        ctx.fillStyle = "#050607";
        ctx.fillRect(0, 0, W, H);
      }
      if (!this.paths) this.buildPaths();
      ctx.lineJoin = "round";
      for (const [name, style] of this.host.styles) {
        const p = this.paths[name];
        if (!p) continue;
        ctx.strokeStyle = style.color;
        ctx.globalAlpha = style.alpha ?? 1;
        ctx.lineWidth = style.width / s;
        ctx.setLineDash(style.dash ? style.dash.map((d) => d / s) : []);
        ctx.stroke(p);
      }
      ctx.globalAlpha = 1;
      ctx.setLineDash([]);
      for (const h of this.host.highlights()) {
        if (h.k < 0 || h.k >= this.set.K) continue;
        ctx.strokeStyle = h.color;
        ctx.lineWidth = h.width / s;
        ctx.stroke(this.set.path(h.k));
      }
      this.drawSelectionShape(ctx, dpr);
      if (measure) flush(ctx);
      return performance.now() - t0;
    }

    drawSelectionShape(ctx, dpr) {
      const d = this.drag;
      if (!d || (d.mode !== "box" && d.mode !== "lasso") || !d.moved) return;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.strokeStyle = cssVar("multi");
      ctx.fillStyle = "rgba(255, 216, 77, 0.08)";
      ctx.lineWidth = 1;
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      if (d.mode === "box") {
        ctx.rect(d.x0, d.y0, d.x - d.x0, d.y - d.y0);
      } else {
        d.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.closePath();
      }
      ctx.fill();
      ctx.stroke();
      ctx.setLineDash([]);
    }

    /** The component under image point (x, y): inside its contour (nearest centre wins), else a centre nearby. */
    hitTest(x, y) {
      const set = this.set;
      if (!set) return -1;
      let best = -1;
      let bestD = Infinity;
      for (let k = 0; k < set.K; k++) {
        const b = set.bboxes[k];
        if (x < b[0] || x > b[2] || y < b[1] || y > b[3]) continue;
        if (!this.host.category(k)) continue;
        if (!this.hitCtx.isPointInPath(set.path(k), x, y)) continue;
        const [cx, cy] = set.centers[k];
        const d = (cx - x) ** 2 + (cy - y) ** 2;
        if (d < bestD) {
          best = k;
          bestD = d;
        }
      }
      if (best >= 0) return best;
      const r2 = (8 / this.s) ** 2;
      for (let k = 0; k < set.K; k++) {
        if (!this.host.category(k)) continue;
        const [cx, cy] = set.centers[k];
        const d = (cx - x) ** 2 + (cy - y) ** 2;
        if (d < r2 && d < bestD) {
          best = k;
          bestD = d;
        }
      }
      return best;
    }

    /** Components (shown) whose centre lies in the dragged box or lasso. */
    enclosed(d) {
      const set = this.set;
      const out = [];
      const poly = d.mode === "lasso" ? d.points.map(([sx, sy]) => this.toImage(sx, sy)) : null;
      const [ax, ay] = this.toImage(Math.min(d.x0, d.x), Math.min(d.y0, d.y));
      const [bx, by] = this.toImage(Math.max(d.x0, d.x), Math.max(d.y0, d.y));
      for (let k = 0; k < set.K; k++) {
        if (!this.host.category(k)) continue;
        const [cx, cy] = set.centers[k];
        const inside = poly ? pointInPolygon(cx, cy, poly) : cx >= ax && cx <= bx && cy >= ay && cy <= by;
        if (inside) out.push(k);
      }
      return out;
    }

    showTooltip(k, sx, sy) {
      if (k < 0) {
        this.tooltip.hidden = true;
        return;
      }
      this.tooltip.textContent = this.host.tooltip(k);
      this.tooltip.hidden = false;
      const wrap = this.canvas.parentElement.getBoundingClientRect();
      const tw = this.tooltip.offsetWidth;
      const th = this.tooltip.offsetHeight;
      this.tooltip.style.left = `${sx + 14 + tw > wrap.width ? sx - tw - 10 : sx + 14}px`;
      this.tooltip.style.top = `${sy + 14 + th > wrap.height ? sy - th - 10 : sy + 14}px`;
    }

    local(ev) {
      const rect = this.canvas.getBoundingClientRect();
      return [ev.clientX - rect.left, ev.clientY - rect.top];
    }

    listen() {
      const c = this.canvas;
      c.addEventListener("wheel", (ev) => {
        ev.preventDefault();
        if (!this.set) return;
        const [sx, sy] = this.local(ev);
        const [x, y] = this.toImage(sx, sy);
        const [H, W] = this.set.dims;
        const rect = c.getBoundingClientRect();
        const minS = Math.min(rect.width / W, rect.height / H) * 0.5;
        const s = clamp(this.s * Math.exp(-ev.deltaY * 0.0015), minS, 80);
        this.setView(s, sx - x * s, sy - y * s);
        this.host.onViewChange?.(this);
      }, { passive: false });

      c.addEventListener("mousedown", (ev) => {
        if (ev.button !== 0) return;
        const [x, y] = this.local(ev);
        const mode = ev.shiftKey ? "box" : ev.ctrlKey || ev.metaKey ? "lasso" : "pan";
        this.drag = { mode, x0: x, y0: y, x, y, tx: this.tx, ty: this.ty, moved: false, points: [[x, y]] };
        ev.preventDefault();
      });

      window.addEventListener("mousemove", (ev) => {
        const d = this.drag;
        const [x, y] = this.local(ev);
        if (!d) {
          if (ev.target !== c || !this.set) return;
          const [ix, iy] = this.toImage(x, y);
          const k = this.hitTest(ix, iy);
          if (k !== this.hover) {
            this.hover = k;
            this.host.onHover?.(k);
          }
          this.showTooltip(k, x, y);
          return;
        }
        d.x = x;
        d.y = y;
        if (Math.abs(x - d.x0) + Math.abs(y - d.y0) > 3) d.moved = true;
        if (d.mode === "pan" && d.moved) {
          this.setView(this.s, d.tx + x - d.x0, d.ty + y - d.y0);
          this.host.onViewChange?.(this);
        } else if (d.mode === "lasso") {
          d.points.push([x, y]);
          this.requestDraw();
        } else {
          this.requestDraw();
        }
        this.tooltip.hidden = true;
      });

      window.addEventListener("mouseup", (ev) => {
        const d = this.drag;
        if (!d) return;
        this.drag = null;
        if (!this.set) return;
        if (!d.moved) {
          const [ix, iy] = this.toImage(d.x0, d.y0);
          this.host.onSelect(this.hitTest(ix, iy), ev);
        } else if (d.mode === "box" || d.mode === "lasso") {
          this.host.onMultiSelect?.(this.enclosed(d), ev);
        }
        this.requestDraw();
      });

      c.addEventListener("dblclick", () => {
        this.autoFit = true;
        this.fit();
        this.host.onViewChange?.(this);
      });

      c.addEventListener("mouseleave", () => {
        this.tooltip.hidden = true;
        if (this.hover !== -1) {
          this.hover = -1;
          this.host.onHover?.(-1);
        }
      });
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // TraceView: raw + denoised, ΔF/F and spikes of one component on one time axis

  const LANES = [
    { name: "fluorescence (raw, denoised)", series: ["raw", "denoised"], weight: 0.45 },
    { name: "ΔF/F", series: ["dff"], weight: 0.33 },
    { name: "spikes", series: ["spikes"], weight: 0.22, bars: true },
  ];

  class TraceView extends CanvasView {
    constructor(canvas, host) {
      super();
      this.canvas = canvas;
      this.ctx = canvas.getContext("2d");
      this.host = host; // {onFrameClick(t), frame() → current frame}
      this.sid = 0;
      this.T = 0;
      this.fr = 30;
      this.k = -1;
      this.t0 = 0;
      this.t1 = 1;
      this.data = null;
      this.request = 0;
      this.refetchTimer = null;
      this.listen();
      new ResizeObserver(() => this.requestDraw()).observe(canvas.parentElement);
    }

    setRecording(sid, T, fr) {
      this.sid = sid;
      this.T = Math.max(1, T);
      this.fr = fr || null; // null: the time axis is in frames
      this.t0 = 0;
      this.t1 = this.T;
      this.k = -1;
      this.data = null;
      this.requestDraw();
    }

    show(k) {
      this.k = k;
      this.data = null;
      if (k < 0) {
        this.requestDraw();
        return;
      }
      this.fetch();
    }

    async fetch() {
      if (this.k < 0) return;
      const id = ++this.request;
      const k = this.k;
      const t0 = clamp(Math.floor(this.t0), 0, this.T - 1);
      const t1 = clamp(Math.ceil(this.t1), t0 + 1, this.T);
      const n = Math.max(100, Math.round(this.canvas.getBoundingClientRect().width));
      const start = performance.now();
      try {
        const data = await getJSON(`/api/${this.sid}/trace/${k}`, { t0, t1, n });
        if (id !== this.request) return; // a newer request is on its way
        this.data = data;
        const ms = this.draw({ measure: true });
        S.timings.traceMs = ms;
        S.timings.traceTotalMs = performance.now() - start;
        S.traceK = k;
        S.traceStep = data.step;
        this.canvas.dataset.k = String(k);
      } catch (err) {
        if (id === this.request) reportError(err, `trace of component ${k}`);
      }
    }

    scheduleFetch() {
      clearTimeout(this.refetchTimer);
      this.refetchTimer = setTimeout(() => this.fetch(), 150);
    }

    layout() {
      const rect = this.canvas.getBoundingClientRect();
      return { w: rect.width, h: rect.height, left: 52, right: 10, top: 6, bottom: 22 };
    }

    xOf(t, L) {
      return L.left + ((t - this.t0) / (this.t1 - this.t0)) * (L.w - L.left - L.right);
    }

    tOf(x, L) {
      return this.t0 + ((x - L.left) / (L.w - L.left - L.right)) * (this.t1 - this.t0);
    }

    /** Draw now; returns the milliseconds it took (including rasterisation when `measure`). */
    draw({ measure = false } = {}) {
      const start = performance.now();
      fitCanvas(this.canvas);
      const ctx = this.ctx;
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const L = this.layout();
      ctx.fillStyle = "#0c0d0f";
      ctx.fillRect(0, 0, L.w, L.h);
      ctx.font = "11px system-ui, sans-serif";
      if (this.k < 0 || !this.data) {
        ctx.fillStyle = cssVar("muted");
        ctx.textAlign = "center";
        ctx.fillText(this.k < 0 ? "Select a component: click a contour, or press n" : "loading…", L.w / 2, L.h / 2);
        ctx.textAlign = "left";
        S.tracePoints = 0;
        return performance.now() - start;
      }
      const series = this.data.series || {};
      const lanes = LANES.filter((lane) => lane.series.some((name) => series[name]));
      const total = lanes.reduce((a, lane) => a + lane.weight, 0);
      const plotH = L.h - L.top - L.bottom;
      const gap = 8;
      let y = L.top;
      let points = 0;
      for (const lane of lanes) {
        const h = (lane.weight / total) * plotH - gap;
        points += this.drawLane(ctx, L, lane, series, y, h);
        y += h + gap;
      }
      this.drawTimeAxis(ctx, L);
      this.drawCursor(ctx, L);
      S.tracePoints = points;
      if (measure) flush(ctx);
      return performance.now() - start;
    }

    /** Indices [i0, i1) of the data's bins inside the visible window. */
    visibleBins(d) {
      const n = (d.series[Object.keys(d.series)[0]] || { min: [] }).min.length;
      const i0 = clamp(Math.floor((this.t0 - d.t0) / d.step), 0, n);
      const i1 = clamp(Math.ceil((this.t1 - d.t0) / d.step) + 1, i0, n);
      return [i0, i1];
    }

    drawLane(ctx, L, lane, series, top, h) {
      const d = this.data;
      const [i0, i1] = this.visibleBins(d);
      let lo = Infinity;
      let hi = -Infinity;
      for (const name of lane.series) {
        const s = series[name];
        if (!s) continue;
        for (let i = i0; i < i1; i++) {
          const a = s.min[i];
          const b = s.max[i];
          if (isNum(a) && a < lo) lo = a;
          if (isNum(b) && b > hi) hi = b;
        }
      }
      if (lane.bars) lo = Math.min(0, lo);
      if (!(hi > lo)) {
        hi = (isNum(hi) ? hi : 0) + 1;
        lo = hi - 2;
      }
      const pad = (hi - lo) * 0.06;
      lo -= lane.bars ? 0 : pad;
      hi += pad;
      const yOf = (v) => top + h - ((v - lo) / (hi - lo)) * h;

      // frame, label and range
      ctx.strokeStyle = "#2a2f35";
      ctx.lineWidth = 1;
      ctx.strokeRect(L.left + 0.5, top + 0.5, L.w - L.left - L.right - 1, h - 1);
      ctx.fillStyle = cssVar("muted");
      ctx.textAlign = "right";
      ctx.fillText(fmt(hi, 3), L.left - 5, top + 10);
      ctx.fillText(fmt(lo, 3), L.left - 5, top + h - 2);
      ctx.textAlign = "left";

      ctx.save();
      ctx.beginPath();
      ctx.rect(L.left, top, L.w - L.left - L.right, h);
      ctx.clip();
      let points = 0;
      for (const name of lane.series) {
        const s = series[name];
        if (!s) continue;
        ctx.strokeStyle = cssVar(name);
        ctx.lineWidth = name === "raw" ? 1 : 1.3;
        points += lane.bars ? this.strokeBars(ctx, L, s, i0, i1, yOf) : this.strokeEnvelope(ctx, L, s, i0, i1, yOf);
      }
      ctx.restore();
      // the lane's name, over the traces
      ctx.fillStyle = "rgba(12, 13, 15, 0.75)";
      ctx.fillRect(L.left + 2, top + 2, ctx.measureText(lane.name).width + 8, 14);
      ctx.fillStyle = cssVar("muted");
      ctx.fillText(lane.name, L.left + 6, top + 12);
      return points;
    }

    /** One polyline through min and max of every bin: the min/max envelope of the decimated trace. */
    strokeEnvelope(ctx, L, s, i0, i1, yOf) {
      const d = this.data;
      const half = (d.step - 1) / 2;
      ctx.beginPath();
      let pen = false;
      for (let i = i0; i < i1; i++) {
        const a = s.min[i];
        const b = s.max[i];
        if (!isNum(a) || !isNum(b)) {
          pen = false;
          continue;
        }
        const x = this.xOf(d.t0 + i * d.step + half, L);
        if (pen) ctx.lineTo(x, yOf(a));
        else ctx.moveTo(x, yOf(a));
        if (b !== a) ctx.lineTo(x, yOf(b));
        pen = true;
      }
      ctx.stroke();
      return i1 - i0;
    }

    strokeBars(ctx, L, s, i0, i1, yOf) {
      const d = this.data;
      const half = (d.step - 1) / 2;
      const base = yOf(0);
      ctx.beginPath();
      for (let i = i0; i < i1; i++) {
        const b = s.max[i];
        if (!isNum(b) || b <= 0) continue;
        const x = Math.round(this.xOf(d.t0 + i * d.step + half, L)) + 0.5;
        ctx.moveTo(x, base);
        ctx.lineTo(x, yOf(b));
      }
      ctx.stroke();
      return i1 - i0;
    }

    /** Ticks in seconds (in frames when the frame rate is unknown). */
    drawTimeAxis(ctx, L) {
      const fr = this.fr || 1;
      const unit = this.fr ? "s" : "frames";
      const span = (this.t1 - this.t0) / fr;
      const step = Math.max(this.fr ? 0 : 1, niceStep(span / Math.max(1, (L.w - L.left - L.right) / 90)));
      const first = Math.ceil(this.t0 / fr / step) * step;
      const digits = Math.max(0, -Math.floor(Math.log10(step)));
      const y = L.h - L.bottom;
      ctx.fillStyle = cssVar("muted");
      ctx.strokeStyle = "#2a2f35";
      for (let v = first; v <= this.t1 / fr + 1e-9; v += step) {
        const x = Math.round(this.xOf(v * fr, L)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(x, y);
        ctx.lineTo(x, y + 4);
        ctx.stroke();
        const text = `${v.toFixed(digits)} ${unit}`;
        const w = ctx.measureText(text).width;
        ctx.fillText(text, clamp(x - w / 2, 2, L.w - w - 2), y + 15);
      }
    }

    drawCursor(ctx, L) {
      const t = this.host.frame();
      if (t < this.t0 || t > this.t1) return;
      const x = Math.round(this.xOf(t, L)) + 0.5;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.45)";
      ctx.beginPath();
      ctx.moveTo(x, L.top);
      ctx.lineTo(x, L.h - L.bottom);
      ctx.stroke();
    }

    setWindow(t0, t1) {
      const span = clamp(t1 - t0, Math.min(10, this.T), this.T);
      t0 = clamp(t0, 0, this.T - span);
      this.t0 = t0;
      this.t1 = t0 + span;
      this.requestDraw();
      this.scheduleFetch();
    }

    listen() {
      const c = this.canvas;
      let drag = null;
      c.addEventListener("wheel", (ev) => {
        ev.preventDefault();
        if (this.k < 0) return;
        const L = this.layout();
        const x = ev.clientX - c.getBoundingClientRect().left;
        const t = this.tOf(clamp(x, L.left, L.w - L.right), L);
        const f = Math.exp(ev.deltaY * 0.002);
        this.setWindow(t - (t - this.t0) * f, t + (this.t1 - t) * f);
      }, { passive: false });
      c.addEventListener("mousedown", (ev) => {
        if (ev.button !== 0) return;
        drag = { x0: ev.clientX, t0: this.t0, t1: this.t1, moved: false };
        ev.preventDefault();
      });
      window.addEventListener("mousemove", (ev) => {
        if (!drag) return;
        const dx = ev.clientX - drag.x0;
        if (Math.abs(dx) > 3) drag.moved = true;
        if (!drag.moved) return;
        const L = this.layout();
        const dt = (-dx / (L.w - L.left - L.right)) * (drag.t1 - drag.t0);
        this.setWindow(drag.t0 + dt, drag.t1 + dt);
      });
      window.addEventListener("mouseup", (ev) => {
        if (!drag) return;
        const wasClick = !drag.moved;
        drag = null;
        if (wasClick) {
          const L = this.layout();
          const x = ev.clientX - c.getBoundingClientRect().left;
          if (x >= L.left && x <= L.w - L.right) this.host.onFrameClick(Math.round(this.tOf(x, L)));
        }
      });
      c.addEventListener("dblclick", () => this.setWindow(0, this.T));
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // MovieView: movie, reconstruction and residual of one frame, side by side

  const MOVIE_KINDS = [
    ["movie", "movie-canvas"],
    ["reconstruction", "recon-canvas"],
    ["residual", "resid-canvas"],
  ];

  class MovieView {
    constructor(host) {
      this.host = host; // {outline() → [{k, color}], set() → ComponentSet, window() → [t0, t1], fr()}
      this.canvases = MOVIE_KINDS.map(([, id]) => $(id));
      this.images = [null, null, null];
      this.source = null;
      this.want = 0;
      this.busy = false;
      this.playing = false;
      this.t = -1;
      for (const c of this.canvases) new ResizeObserver(() => this.redraw()).observe(c);
    }

    setSource(src) {
      this.source = src;
      this.images = [null, null, null];
      this.t = -1;
      this.stop();
      const ok = src.has_movie !== false;
      $("movie-row").hidden = !ok;
      $("movie-message").hidden = ok;
      $("btn-play").disabled = !ok;
      $("frame-slider").disabled = !ok;
      if (!ok) {
        $("movie-message").textContent = "No motion-corrected movie for this result (a bare results file): the " +
          "movie view needs the run folder. The field and component views work without it.";
      }
      const bg = src.is_1p ? "ring-model background" : "low-rank background b·f";
      $("recon-canvas").nextElementSibling.textContent = `reconstruction (neurons + ${bg})`;
    }

    show(t) {
      this.want = t;
      if (!this.busy && this.source && this.source.has_movie !== false) this.loadNext();
    }

    async loadNext() {
      const t = this.want;
      const sid = this.source.id;
      this.busy = true;
      const started = performance.now();
      try {
        const results = await Promise.allSettled(
          MOVIE_KINDS.map(([kind]) => loadImage(apiUrl(`/api/${sid}/frame/${t}.png`, { kind }))));
        if (this.source.id !== sid) return;
        this.images = results.map((r) => (r.status === "fulfilled" ? r.value : r.reason));
        this.t = t;
        this.redraw();
        S.movieFrame = t;
        S.timings.frameMs = performance.now() - started;
        $("movie-canvas").dataset.t = String(t);
        const failed = results.find((r) => r.status === "rejected");
        if (failed) {
          if (failed.reason.status === 404 && results[0].status === "rejected") {
            this.source.has_movie = false;
            this.setSource(this.source);
          }
          setStatus(`movie view: ${failed.reason.message}`, "error");
        }
      } finally {
        this.busy = false;
      }
      if (this.want !== t) {
        this.loadNext();
      } else if (this.playing) {
        const wait = 1000 / Math.min(this.host.fr(), 30) - (performance.now() - started);
        this.timer = setTimeout(() => this.step(), Math.max(0, wait));
      }
    }

    step() {
      if (!this.playing) return;
      const [a, b] = this.host.window();
      let t = this.t + 1;
      if (t < a || t >= b) t = a;
      this.host.goto(t);
    }

    play() {
      if (!this.source || this.source.has_movie === false) return;
      this.playing = true;
      $("btn-play").textContent = "❚❚";
      this.step();
    }

    stop() {
      this.playing = false;
      clearTimeout(this.timer);
      $("btn-play").textContent = "▶";
    }

    toggle() {
      if (this.playing) this.stop();
      else this.play();
    }

    redraw() {
      this.canvases.forEach((c, i) => this.drawOne(c, this.images[i]));
    }

    drawOne(canvas, img) {
      fitCanvas(canvas);
      const ctx = canvas.getContext("2d");
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#0c0d0f";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      if (!img) return;
      if (img instanceof Error) {
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        ctx.fillStyle = cssVar("rejected");
        ctx.font = "12px system-ui, sans-serif";
        ctx.fillText(img.message.slice(0, 80), 8, 18);
        return;
      }
      const W = img.naturalWidth;
      const H = img.naturalHeight;
      const s = Math.min(canvas.width / W, canvas.height / H);
      const ox = (canvas.width - W * s) / 2;
      const oy = (canvas.height - H * s) / 2;
      ctx.imageSmoothingEnabled = s < 2;
      ctx.setTransform(s, 0, 0, s, ox, oy);
      ctx.drawImage(img, 0, 0, W, H);
      const set = this.host.set();
      if (!set) return;
      for (const o of this.host.outline()) {
        ctx.strokeStyle = o.color;
        ctx.lineWidth = (o.width * dpr) / s;
        ctx.stroke(set.path(o.k));
      }
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // the curate tab: ties the field, component and movie views, the filters and curation together

  const sets = new Map(); // sid → Promise<ComponentSet>
  const images = new Map(); // `${sid}/${name}` → Promise<HTMLImageElement>

  function loadSet(sid) {
    if (!sets.has(sid)) {
      const p = (async () => {
        const start = performance.now();
        const json = await getJSON(`/api/${sid}/components`);
        S.timings.componentsFetchMs = performance.now() - start;
        return new ComponentSet(json);
      })();
      p.catch(() => sets.delete(sid));
      sets.set(sid, p);
    }
    return sets.get(sid);
  }

  function loadSummaryImage(sid, name) {
    const key = `${sid}/${name}`;
    if (!images.has(key)) {
      const p = loadImage(apiUrl(`/api/${sid}/image/${name}.png`));
      p.catch(() => images.delete(key));
      images.set(key, p);
    }
    return images.get(key);
  }

  const curate = {
    set: null,
    source: null,
    multi: new Set(),
    preview: new Set(),
    filters: {}, // metric → {input, min, max, value}
    queue: Promise.resolve(),
    showAccepted: true,
    showRejected: true,
  };

  const colours = {};

  function readColours() {
    for (const name of ["accepted", "rejected", "preview", "selected", "multi", "matched", "unmatched"]) {
      colours[name] = cssVar(name);
    }
  }

  /** Whether the accepted / rejected toggles show component k of `set`. */
  const shown = (set, k) => (set.accepted[k] ? curate.showAccepted : curate.showRejected);

  const fieldHost = {
    styles: [],
    category(k) {
      const set = curate.set;
      const acc = set.accepted[k];
      if (!shown(set, k)) return null;
      if (curate.preview.has(k)) return "preview";
      const manual = set.manual[String(k)] ? "Manual" : "";
      return (acc ? "accepted" : "rejected") + manual;
    },
    highlights() {
      const out = [];
      for (const k of curate.multi) out.push({ k, color: colours.multi, width: 2 });
      if (S.selected >= 0) out.push({ k: S.selected, color: colours.selected, width: 2.4 });
      return out;
    },
    tooltip(k) {
      return componentSummary(curate.set, k);
    },
    onSelect(k, ev) {
      if (ev.shiftKey || ev.ctrlKey || ev.metaKey) {
        if (k >= 0) toggleMulti(k);
        return;
      }
      if (k < 0) {
        if (curate.multi.size) clearMulti();
        return;
      }
      clearMulti();
      select(k);
    },
    onMultiSelect(ks) {
      for (const k of ks) curate.multi.add(k);
      updateMulti();
    },
  };

  function componentSummary(set, k) {
    const lines = [`#${k}  ${set.accepted[k] ? "accepted" : "rejected"}` +
      (set.manual[String(k)] ? " (manual)" : "")];
    for (const name of Object.keys(set.metrics)) {
      lines.push(`${`${METRIC_LABELS[name] || name} `.padEnd(8)}${fmt(set.metric(name, k))}`);
    }
    const note = set.notes[String(k)];
    if (note) lines.push(`note    ${note}`);
    return lines.join("\n");
  }

  let field;
  let trace;
  let movie;

  function frameWindow() {
    return [Math.max(0, Math.floor(trace.t0)), Math.min(trace.T, Math.ceil(trace.t1))];
  }

  function goto(t) {
    const src = curate.source;
    t = clamp(Math.round(t), 0, Math.max(0, (src?.n_frames || 1) - 1));
    S.frame = t;
    $("frame-slider").value = String(t);
    $("frame-label").textContent = src?.fr ? `frame ${t} · ${(t / src.fr).toFixed(2)} s` : `frame ${t}`;
    movie.show(t);
    trace.requestDraw();
  }

  async function activate(sid) {
    const src = S.sources[sid];
    S.sid = sid;
    S.ready = false;
    document.body.dataset.ready = "false";
    setStatus(`loading ${src.name}…`, "busy");
    curate.source = src;
    curate.multi.clear();
    curate.preview.clear();
    S.selected = -1;
    const start = performance.now();
    const set = await loadSet(sid);
    curate.set = set;
    S.K = set.K;
    buildFilters(set);
    fillImageSelect([src]);
    field.setData(set);
    const ms = renderField(true);
    S.timings.contoursMs = ms;
    S.timings.componentsTotalMs = performance.now() - start;
    trace.setRecording(sid, src.n_frames, src.fr);
    movie.setSource(src);
    showMeta(sid);
    const slider = $("frame-slider");
    slider.max = String(Math.max(0, (src.n_frames || 1) - 1));
    showComponent();
    goto(0);
    await showSummaryImage();
    updateCounts();
    S.ready = true;
    document.body.dataset.ready = "true";
    setStatus(`${src.name}: ${set.K} components drawn in ${ms.toFixed(0)} ms — click one, or press n`);
  }

  /** The background model of the reconstruction, from /meta (it needs the estimates: asked for after the rest). */
  async function showMeta(sid) {
    $("movie-meta").textContent = "";
    if (S.sources[sid].has_movie === false) return;
    try {
      const meta = await getJSON(`/api/${sid}/meta`);
      if (sid === S.sid && meta.background) $("movie-meta").textContent = `background model: ${meta.background}`;
    } catch (err) {
      /* the captions say enough */
    }
  }

  /** Rebuild the contour paths and draw now (timed); keeps the exposed state in step. */
  function renderField(measure = false) {
    field.paths = null;
    const ms = field.draw({ measure });
    S.drawnContours = field.drawnContours;
    S.accepted = curate.set.accepted.slice();
    S.manual = { ...curate.set.manual };
    S.notes = { ...curate.set.notes };
    return ms;
  }

  async function showSummaryImage() {
    const name = $("image-select").value;
    if (!name) {
      field.setImage(null);
      return;
    }
    try {
      field.setImage(await loadSummaryImage(S.sid, name));
    } catch (err) {
      field.setImage(null);
      reportError(err, `image ${name}`);
    }
  }

  function fillImageSelect(sources) {
    const sel = $("image-select");
    const previous = sel.value;
    const names = [];
    for (const src of sources) for (const n of src.images || []) if (!names.includes(n)) names.push(n);
    sel.innerHTML = "";
    for (const n of names) sel.add(new Option(IMAGE_LABELS[n] || n, n));
    if (names.length === 0) sel.add(new Option("(no summary image)", ""));
    sel.value = names.includes(previous) ? previous : names.includes("corr") ? "corr" : names[0] || "";
  }

  // --- selection ---------------------------------------------------------------------------------------------

  function select(k) {
    S.selected = k;
    field.ensureVisible(k);
    field.requestDraw();
    movie.redraw();
    showComponent();
  }

  function step(delta) {
    const set = curate.set;
    if (!set || set.K === 0) return;
    let k = S.selected;
    for (let i = 0; i < set.K; i++) {
      k = k < 0 ? (delta > 0 ? 0 : set.K - 1) : (k + delta + set.K) % set.K;
      if (fieldHost.category(k)) break;
    }
    clearMulti();
    select(k);
  }

  function toggleMulti(k) {
    if (curate.multi.has(k)) curate.multi.delete(k);
    else curate.multi.add(k);
    updateMulti();
  }

  function clearMulti() {
    if (curate.multi.size === 0) return;
    curate.multi.clear();
    updateMulti();
  }

  function updateMulti() {
    S.multi = [...curate.multi].sort((a, b) => a - b);
    $("multi-count").textContent = S.multi.length ? `${S.multi.length} selected (a / r act on all; Esc clears)` : "";
    field.requestDraw();
    movie.redraw();
  }

  function targets() {
    if (curate.multi.size) return [...curate.multi].sort((a, b) => a - b);
    return S.selected >= 0 ? [S.selected] : [];
  }

  // --- component view ------------------------------------------------------------------------------------------

  function showComponent() {
    const set = curate.set;
    const k = S.selected;
    const idx = $("comp-index");
    idx.textContent = k >= 0 ? `#${k}` : "–";
    idx.dataset.k = k >= 0 ? String(k) : "";
    const badge = $("comp-status");
    const note = $("comp-note");
    if (k < 0) {
      badge.textContent = "";
      badge.className = "badge";
      $("comp-metrics").innerHTML = "";
      note.value = "";
      note.disabled = true;
      drawFootprint(null);
      trace.show(-1);
      return;
    }
    updateComponentInfo();
    note.disabled = false;
    note.value = set.notes[String(k)] || "";
    note.dataset.k = String(k);
    loadFootprint(k);
    trace.show(k);
  }

  function updateComponentInfo() {
    const set = curate.set;
    const k = S.selected;
    if (k < 0) return;
    const acc = set.accepted[k];
    const manual = set.manual[String(k)];
    const badge = $("comp-status");
    const silent = acc && set.silent && set.silent[k] ? " · silent" : "";
    badge.textContent = `${acc ? "accepted" : "rejected"}${silent}${manual ? " · manual" : " · automatic"}`;
    badge.className = `badge ${acc ? "accepted" : "rejected"}`;
    const rows = [];
    const names = Object.keys(set.metrics);
    for (const name of Object.keys(METRIC_LABELS)) {
      if (!names.includes(name) && !OPTIONAL_METRICS.includes(name)) names.push(name);
    }
    for (const name of names) {
      if (!set.metrics[name]) {
        rows.push(`<tr><td>${METRIC_LABELS[name]}</td><td class="hint">not computed</td><td></td></tr>`);
        continue;
      }
      const v = set.metric(name, k);
      const thr = set.thresholds[name];
      const below = isNum(v) && isNum(thr) && v < thr;
      rows.push(`<tr><td>${METRIC_LABELS[name] || name}</td><td class="${below ? "below" : ""}">${fmt(v)}</td>` +
        `<td class="hint">${isNum(thr) ? `threshold ${fmt(thr)}` : ""}</td></tr>`);
    }
    if (set.seeded) {
      const origin = set.seeded[k] ? (set.silent && set.silent[k] ? "seeded · silent (no activity)" : "seeded · active")
        : "added (outside the masks)";
      rows.push(`<tr><td>structural channel</td><td>${origin}</td><td></td></tr>`);
    }
    const auto = set.autoAccepted ? (set.autoAccepted[k] ? "accepted" : "rejected") : "–";
    rows.push(`<tr><td>automatic</td><td>${auto}</td><td class="hint">${manual ? `manual: ${manual}` : ""}</td></tr>`);
    const [cx, cy] = set.centers[k];
    rows.push(`<tr><td>centre</td><td>x ${cx.toFixed(1)}, y ${cy.toFixed(1)}</td><td></td></tr>`);
    $("comp-metrics").innerHTML = rows.join("");
  }

  let footprintRequest = 0;

  async function loadFootprint(k) {
    const id = ++footprintRequest;
    try {
      const fp = await getJSON(`/api/${S.sid}/footprint/${k}`);
      if (id === footprintRequest) drawFootprint(fp);
    } catch (err) {
      if (id === footprintRequest) reportError(err, `footprint of component ${k}`);
    }
  }

  function drawFootprint(fp) {
    const canvas = $("footprint-canvas");
    fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#0c0d0f";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!fp || !fp.values.length) return;
    const h = fp.values.length;
    const w = fp.values[0].length;
    let hi = 0;
    for (const row of fp.values) for (const v of row) if (v > hi) hi = v;
    const img = new ImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const [r, g, b] = ramp(hi > 0 ? fp.values[y][x] / hi : 0);
        const o = 4 * (y * w + x);
        img.data[o] = r;
        img.data[o + 1] = g;
        img.data[o + 2] = b;
        img.data[o + 3] = 255;
      }
    }
    const tmp = document.createElement("canvas");
    tmp.width = w;
    tmp.height = h;
    tmp.getContext("2d").putImageData(img, 0, 0);
    const s = Math.min(canvas.width / w, canvas.height / h);
    const ox = (canvas.width - w * s) / 2;
    const oy = (canvas.height - h * s) / 2;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tmp, ox, oy, w * s, h * s);
    // the contour, shifted into the crop
    ctx.setTransform(s, 0, 0, s, ox - fp.x0 * s, oy - fp.y0 * s);
    ctx.strokeStyle = "rgba(255, 255, 255, 0.8)";
    ctx.lineWidth = 1.2 / s;
    ctx.stroke(curate.set.path(fp.k));
  }

  // --- curation ----------------------------------------------------------------------------------------------

  /** Send one curation request; requests are chained so fast key presses are saved in order. */
  function send(path, body, describe) {
    const sid = S.sid;
    S.saving++;
    setStatus(`saving: ${describe}…`, "busy");
    curate.queue = curate.queue.then(async () => {
      try {
        const json = await postJSON(path, WHO ? { ...body, who: WHO } : body);
        const set = await loadSet(sid);
        set.update(json);
        S.saveCount++;
        S.lastSave = { what: describe, at: new Date().toISOString(), response: json.saved || null };
        if (sid === S.sid) afterCurationChange();
        const src = S.sources[sid];
        const base = (path) => String(path || "").split(/[\\/]/).pop();
        const prev = base(src.path).replace(/(\.h5)?$/, ".prev.h5");
        setStatus(`saved ${new Date().toLocaleTimeString()}: ${describe} → ${base(src.path)} and ` +
          `${base(src.curation) || "the curation file"} (previous results kept as ${prev})`, "ok");
        $("status").title = [src.path, src.curation].filter(Boolean).join("\n");
      } catch (err) {
        reportError(err, `could not save (${describe})`);
      } finally {
        S.saving--;
      }
    });
    return curate.queue;
  }

  function decide(action) {
    const ks = targets();
    if (ks.length === 0) {
      setStatus("select a component first (click a contour, or press n)", "error");
      return;
    }
    const verb = { accept: "accepted", reject: "rejected", reset: "back to automatic" }[action];
    const list = ks.length > 6 ? `${ks.length} components` : ks.map((k) => `#${k}`).join(", ");
    send(`/api/${S.sid}/curate`, { [action]: ks }, `${list} ${verb}`);
  }

  function undo() {
    send(`/api/${S.sid}/undo`, {}, "undo of the last action");
  }

  function saveNote() {
    const note = $("comp-note");
    const k = Number(note.dataset.k);
    if (!(k >= 0) || note.disabled) return;
    const text = note.value.trim();
    if ((curate.set.notes[String(k)] || "") === text) return;
    send(`/api/${S.sid}/curate`, { notes: { [k]: text } }, `note on #${k}`);
  }

  function afterCurationChange() {
    recomputePreview();
    renderField();
    updateComponentInfo();
    updateCounts();
  }

  function updateCounts() {
    const set = curate.set;
    const c = set.counts();
    $("status-right").textContent = `${curate.source.name} · ${set.K} components · ${c.accepted} accepted · ` +
      `${c.rejected} rejected · ${c.manual} manual decision${c.manual === 1 ? "" : "s"}` +
      (set.unmatched ? ` · ${set.unmatched} stored decision(s) match no component (kept in the curation file)` : "");
  }

  // --- filters -----------------------------------------------------------------------------------------------

  function buildFilters(set) {
    const box = $("filter-sliders");
    box.innerHTML = "";
    curate.filters = {};
    for (const name of Object.keys(set.metrics)) {
      const values = set.metrics[name].filter(isNum);
      if (values.length === 0) continue;
      let lo = Math.min(...values);
      let hi = Math.max(...values);
      if (hi <= lo) hi = lo + 1;
      lo = Math.floor(lo * 1000) / 1000;
      const thr = set.thresholds[name];
      const row = document.createElement("label");
      row.className = "filter";
      row.innerHTML = `<span class="name">${METRIC_LABELS[name] || name} ≥</span>` +
        `<input type="range" data-metric="${name}" min="${lo}" max="${hi}" step="${(hi - lo) / 400}" value="${lo}">` +
        `<span class="value">off</span>` +
        (isNum(thr) ? `<a href="#" class="thr" title="Set to the pipeline's threshold">pipeline ${fmt(thr)}</a>` : "");
      const input = row.querySelector("input");
      const f = { input, min: lo, max: hi, value: lo, label: row.querySelector(".value") };
      curate.filters[name] = f;
      input.addEventListener("input", () => setFilter(name, Number(input.value)));
      row.querySelector(".thr")?.addEventListener("click", (ev) => {
        ev.preventDefault();
        setFilter(name, thr);
      });
      box.appendChild(row);
    }
    $("filters").hidden = Object.keys(curate.filters).length === 0;
    recomputePreview();
  }

  function setFilter(name, value) {
    const f = curate.filters[name];
    f.input.value = String(value);
    f.value = Number(f.input.value); // snapped to the slider's range and step
    f.label.textContent = f.value > f.min ? fmt(f.value) : "off";
    recomputePreview();
    renderField();
  }

  /** Accepted components (without a manual accept) that the active minimums would reject. */
  function recomputePreview() {
    const set = curate.set;
    curate.preview.clear();
    const active = Object.entries(curate.filters).filter(([, f]) => f.value > f.min);
    if (set && active.length) {
      for (let k = 0; k < set.K; k++) {
        if (!set.accepted[k] || set.manual[String(k)] === "accept") continue;
        if (active.some(([name, f]) => { const v = set.metric(name, k); return isNum(v) && v < f.value; })) {
          curate.preview.add(k);
        }
      }
    }
    S.previewed = [...curate.preview];
    S.filters = Object.fromEntries(
      Object.entries(curate.filters).map(([n, f]) => [n, f.value > f.min ? f.value : null]));
    const n = curate.preview.size;
    const label = $("preview-count");
    label.textContent = active.length ? `${n} accepted would be rejected` : "no preview";
    label.className = `preview-count${active.length ? "" : " none"}`;
    $("btn-apply-filters").disabled = n === 0;
  }

  function applyFilters() {
    const ks = [...curate.preview].sort((a, b) => a - b);
    if (ks.length === 0) return;
    const what = Object.entries(S.filters).filter(([, v]) => v !== null)
      .map(([n, v]) => `${METRIC_LABELS[n] || n} < ${fmt(v)}`).join(", ");
    send(`/api/${S.sid}/curate`, { reject: ks }, `${ks.length} components rejected by filter (${what})`)
      .then(clearFilters);
  }

  function clearFilters() {
    for (const [name, f] of Object.entries(curate.filters)) {
      f.input.value = String(f.min);
      setFilter(name, f.min);
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // compare: two field views side by side, matched components linked

  const cmp = {
    a: 0,
    b: 1,
    setA: null,
    setB: null,
    pairA: new Map(),
    pairB: new Map(),
    hover: null, // {side, k}
    pinned: null,
    views: {},
    loaded: "",
  };

  function compareHost(side) {
    const other = side === "a" ? "b" : "a";
    return {
      styles: [],
      category(k) {
        if (!shown(side === "a" ? cmp.setA : cmp.setB, k)) return null;
        return (side === "a" ? cmp.pairA : cmp.pairB).has(k) ? "matched" : "unmatched";
      },
      highlights() {
        const focus = cmp.hover || cmp.pinned;
        if (!focus) return [];
        if (focus.side === side) return [{ k: focus.k, color: colours.selected, width: 2.6 }];
        const j = (focus.side === "a" ? cmp.pairA : cmp.pairB).get(focus.k);
        return j === undefined ? [] : [{ k: j, color: colours.selected, width: 2.6 }];
      },
      tooltip(k) {
        const set = side === "a" ? cmp.setA : cmp.setB;
        const j = (side === "a" ? cmp.pairA : cmp.pairB).get(k);
        const link = j === undefined ? "no match" : `matches ${other.toUpperCase()} #${j}`;
        return `${componentSummary(set, k)}\n${link}`;
      },
      onSelect(k) {
        cmp.pinned = k >= 0 ? { side, k } : null;
        compareFocusChanged();
      },
      onHover(k) {
        cmp.hover = k >= 0 ? { side, k } : null;
        compareFocusChanged();
      },
      onViewChange(view) {
        const o = cmp.views[other];
        o.setView(view.s, view.tx, view.ty);
        o.autoFit = view.autoFit;
      },
    };
  }

  function compareFocusChanged() {
    const focus = cmp.hover || cmp.pinned;
    let text = { a: "", b: "" };
    if (focus) {
      const j = (focus.side === "a" ? cmp.pairA : cmp.pairB).get(focus.k);
      const other = focus.side === "a" ? "b" : "a";
      text[focus.side] = `#${focus.k}`;
      text[other] = j === undefined ? `no match for ${focus.side.toUpperCase()} #${focus.k}` : `#${j}`;
      S.compare.highlighted = { side: focus.side, k: focus.k, match: j === undefined ? null : j };
    } else {
      S.compare.highlighted = null;
    }
    $("compare-a-info").textContent = text.a;
    $("compare-b-info").textContent = text.b;
    cmp.views.a.requestDraw();
    cmp.views.b.requestDraw();
  }

  async function openCompare() {
    const a = Number($("compare-a").value);
    const b = Number($("compare-b").value);
    const key = `${a}/${b}`;
    if (cmp.loaded === key) {
      fillImageSelect([S.sources[a], S.sources[b]]);
      await showCompareImages();
      for (const view of [cmp.views.a, cmp.views.b]) {
        view.invalidate(); // the split may have changed in the curate tab
        view.fit();
      }
      return;
    }
    S.compare.ready = false;
    cmp.a = a;
    cmp.b = b;
    cmp.pinned = cmp.hover = null;
    $("compare-a-title").textContent = `A: ${S.sources[a].name}`;
    $("compare-b-title").textContent = `B: ${S.sources[b].name}`;
    $("compare-summary").textContent = "matching…";
    fillImageSelect([S.sources[a], S.sources[b]]);
    try {
      const [setA, setB] = await Promise.all([loadSet(a), loadSet(b)]);
      cmp.setA = setA;
      cmp.setB = setB;
      cmp.pairA = new Map();
      cmp.pairB = new Map();
      let summary;
      try {
        const m = await getJSON(`/api/compare/${a}/${b}`);
        for (const [i, j] of m.pairs) {
          cmp.pairA.set(i, j);
          cmp.pairB.set(j, i);
        }
        summary = `${m.pairs.length} matched · ${m.unmatched_a.length} only in A · ${m.unmatched_b.length} only in B`;
        S.compare.pairs = m.pairs.length;
      } catch (err) {
        summary = `not matched: ${err.message}`;
      }
      $("compare-summary").textContent = summary;
      setStatus(`compare ${S.sources[a].name} (A) with ${S.sources[b].name} (B): ${summary}`);
      cmp.views.a.setData(setA);
      cmp.views.b.setData(setB);
      cmp.views.a.draw();
      cmp.views.b.draw();
      S.compare.drawnA = cmp.views.a.drawnContours;
      S.compare.drawnB = cmp.views.b.drawnContours;
      await showCompareImages();
      cmp.loaded = key;
      compareFocusChanged();
      S.compare.ready = true;
    } catch (err) {
      reportError(err, "compare");
    }
  }

  /** The chosen summary image on both sides; a side without it shows its footprints (or its first image). */
  async function showCompareImages() {
    const name = $("image-select").value;
    for (const [side, sid] of [["a", cmp.a], ["b", cmp.b]]) {
      const names = S.sources[sid].images || [];
      const use = names.includes(name) ? name : names.includes("footprints") ? "footprints" : names[0];
      try {
        cmp.views[side].setImage(use ? await loadSummaryImage(sid, use) : null);
      } catch (err) {
        cmp.views[side].setImage(null);
      }
    }
  }

  function setTab(tab) {
    S.tab = tab;
    for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
    $("curate-view").hidden = tab !== "curate";
    $("compare-view").hidden = tab !== "compare";
    for (const el of document.querySelectorAll("[data-curate-only]")) el.hidden = tab !== "curate";
    $("source-field").hidden = tab !== "curate" || S.sources.length < 2;
    if (tab === "compare") {
      movie.stop();
      requestAnimationFrame(() => openCompare());
    } else {
      fillImageSelect([curate.source]);
      showSummaryImage();
      $("filters").hidden = Object.keys(curate.filters).length === 0;
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // keys and wiring

  function onKey(ev) {
    const t = ev.target;
    const typing = t instanceof HTMLTextAreaElement || (t instanceof HTMLInputElement && t.type !== "range" &&
      t.type !== "checkbox");
    if (typing || ev.altKey || ev.ctrlKey || ev.metaKey || $("help").open) return;
    const arrows = ev.key.startsWith("Arrow");
    if (arrows && (t instanceof HTMLInputElement || t instanceof HTMLSelectElement)) return; // the control's own
    if (ev.key === "?") {
      $("help").showModal();
      return;
    }
    if (S.tab === "compare") {
      if (ev.key === "f") {
        cmp.views.a.fit();
        cmp.views.b.fit();
      } else if (ev.key === "Escape") {
        cmp.pinned = null;
        compareFocusChanged();
      }
      return;
    }
    const actions = {
      a: () => decide("accept"),
      r: () => decide("reject"),
      c: () => decide("reset"),
      u: () => undo(),
      n: () => step(1),
      p: () => step(-1),
      ArrowRight: () => step(1),
      ArrowDown: () => step(1),
      ArrowLeft: () => step(-1),
      ArrowUp: () => step(-1),
      f: () => {
        field.autoFit = true;
        field.fit();
      },
      " ": () => movie.toggle(),
      Escape: () => clearMulti(),
    };
    const action = actions[ev.key];
    if (!action) return;
    ev.preventDefault();
    action();
  }

  function wire() {
    readColours();
    fieldHost.styles = [
      ["rejected", { color: colours.rejected, width: 1, alpha: 0.7 }],
      ["rejectedManual", { color: colours.rejected, width: 2 }],
      ["accepted", { color: colours.accepted, width: 1.2 }],
      ["acceptedManual", { color: colours.accepted, width: 2.2 }],
      ["preview", { color: colours.preview, width: 1.8, dash: [4, 3] }],
    ];
    field = new FieldView($("field-canvas"), $("field-tooltip"), fieldHost);
    trace = new TraceView($("trace-canvas"), {
      onFrameClick: (t) => goto(t),
      frame: () => S.frame,
    });
    movie = new MovieView({
      set: () => curate.set,
      outline: () => {
        const out = [...curate.multi].map((k) => ({ k, color: colours.multi, width: 1.5 }));
        if (S.selected >= 0) out.push({ k: S.selected, color: colours.selected, width: 1.8 });
        return out;
      },
      window: frameWindow,
      fr: () => curate.source?.fr || 30,
      goto,
    });
    for (const side of ["a", "b"]) {
      const host = compareHost(side);
      host.styles = [
        ["unmatched", { color: colours.unmatched, width: 1.2 }],
        ["matched", { color: colours.matched, width: 1.2 }],
      ];
      cmp.views[side] = new FieldView($(`compare-${side}-canvas`), $(`compare-${side}-tooltip`), host);
    }

    $("source-select").addEventListener("change", (ev) => {
      activate(Number(ev.target.value)).catch((err) => reportError(err, "loading"));
    });
    $("image-select").addEventListener("change", () => {
      if (S.tab === "compare") showCompareImages();
      else showSummaryImage();
    });
    const toggled = () => {
      if (curate.set) renderField();
      if (cmp.setA) {
        for (const side of ["a", "b"]) cmp.views[side].draw();
        S.compare.drawnA = cmp.views.a.drawnContours;
        S.compare.drawnB = cmp.views.b.drawnContours;
      }
    };
    $("show-accepted").addEventListener("change", (ev) => {
      curate.showAccepted = ev.target.checked;
      for (const side of ["a", "b"]) cmp.views[side].paths = null;
      toggled();
    });
    $("show-rejected").addEventListener("change", (ev) => {
      curate.showRejected = ev.target.checked;
      for (const side of ["a", "b"]) cmp.views[side].paths = null;
      toggled();
    });
    $("btn-accept").addEventListener("click", () => decide("accept"));
    $("btn-reject").addEventListener("click", () => decide("reject"));
    $("btn-reset").addEventListener("click", () => decide("reset"));
    $("btn-undo").addEventListener("click", () => undo());
    $("btn-help").addEventListener("click", () => $("help").showModal());
    $("btn-apply-filters").addEventListener("click", applyFilters);
    $("btn-clear-filters").addEventListener("click", clearFilters);
    $("btn-play").addEventListener("click", () => movie.toggle());
    $("frame-slider").addEventListener("input", (ev) => goto(Number(ev.target.value)));
    for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => setTab(b.dataset.tab));
    for (const id of ["compare-a", "compare-b"]) $(id).addEventListener("change", () => openCompare());
    const note = $("comp-note");
    note.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) {
        ev.preventDefault();
        saveNote();
      } else if (ev.key === "Escape") {
        note.blur();
      }
    });
    note.addEventListener("blur", saveNote);
    document.addEventListener("keydown", onKey);
    // keep the keys for the shortcuts: buttons take no focus on click, lists give it back after a choice
    for (const b of document.querySelectorAll("header button, .filters button, .movie-panel button, .tabs button")) {
      b.addEventListener("mousedown", (ev) => ev.preventDefault());
    }
    for (const sel of document.querySelectorAll("select")) sel.addEventListener("change", () => sel.blur());

    // what tests use to click a component: page coordinates of an image point in the field view
    S.fieldToClient = (x, y) => field.toClient(x, y);
    S.compareToClient = (side, x, y) => cmp.views[side].toClient(x, y);
    S.view = () => ({ scale: field.s, tx: field.tx, ty: field.ty });
    S.select = (k) => select(k);
    S.goto = (t) => goto(t);
    S.setFilter = (name, value) => setFilter(name, value);
    S.setTab = (tab) => setTab(tab);
  }

  async function main() {
    wire();
    try {
      S.sources = await getJSON("/api/sources");
    } catch (err) {
      reportError(err, "the server did not list its results");
      return;
    }
    if (S.sources.length === 0) {
      setStatus("no result to show", "error");
      return;
    }
    const opts = (sel) => {
      sel.innerHTML = "";
      for (const src of S.sources) sel.add(new Option(`${src.id}: ${src.name}`, String(src.id)));
    };
    opts($("source-select"));
    opts($("compare-a"));
    opts($("compare-b"));
    $("source-field").hidden = S.sources.length < 2;
    if (S.sources.length >= 2) {
      $("tab-compare").hidden = false;
      $("compare-b").value = "1";
    }
    try {
      await activate(0);
    } catch (err) {
      reportError(err, `loading ${S.sources[0].name}`);
    }
  }

  main();
})();
