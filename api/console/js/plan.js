// A floor plan in metres (level frame: x right, y up): a floor's occupancy grid, the map
// cameras, robot tracks and the live robots (position, heading, 1-sigma ellipse). 2D canvas,
// pan with the mouse, zoom with the wheel; drawn on the next animation frame after a change.
import { floorOf } from './geometry.js';
import { STALE_S } from './fleet.js';

const stats = (window.vlocStats = window.vlocStats || {});
const COLOURS = { ok: '#3ecf6e', bad: '#ff5d5d', stale: '#8a96a3', camera: '#4aa3ff', grid: '#1f2731',
                  text: '#d8dee6', track: 'rgba(240, 180, 0, 0.8)' };

function niceStep(minMetres) {
  for (const s of [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]) if (s >= minMetres) return s;
  return 1000;
}

export class PlanCanvas {
  constructor(canvas, fleet, { robots = true } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false });
    this.fleet = fleet;
    this.withRobots = robots;
    this.grid = null;        // {bitmap, origin: [x, y], resolution, width, height}
    this.cameras = [];       // [{x, y, z, heading}]
    this.floors = [];
    this.floor = 0;
    this.showCameras = true;
    this.showTracks = true;
    this.view = { cx: 0, cy: 0, ppm: 50 };
    this.dirty = false;
    this.drawnSeen = new Map();
    this.bindPointer();
    this.resize = new ResizeObserver(() => this.requestDraw());
    this.resize.observe(canvas);
  }

  bindPointer() {
    let drag = null;
    this.canvas.addEventListener('pointerdown', (e) => {
      drag = { x: e.clientX, y: e.clientY, cx: this.view.cx, cy: this.view.cy };
      this.canvas.setPointerCapture(e.pointerId);
    });
    this.canvas.addEventListener('pointermove', (e) => {
      if (!drag) return;
      this.view.cx = drag.cx - (e.clientX - drag.x) / this.view.ppm;
      this.view.cy = drag.cy + (e.clientY - drag.y) / this.view.ppm;
      this.requestDraw();
    });
    this.canvas.addEventListener('pointerup', () => { drag = null; });
    this.canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      const r = this.canvas.getBoundingClientRect();
      const [wx, wy] = this.toWorld(e.clientX - r.left, e.clientY - r.top);
      this.view.ppm = Math.min(2000, Math.max(2, this.view.ppm * Math.exp(-e.deltaY * 0.0015)));
      const [sx, sy] = this.toScreen(wx, wy);
      this.view.cx += (sx - (e.clientX - r.left)) / this.view.ppm;
      this.view.cy -= (sy - (e.clientY - r.top)) / this.view.ppm;
      this.requestDraw();
    }, { passive: false });
  }

  size() { return [this.canvas.clientWidth || 1, this.canvas.clientHeight || 1]; }

  toScreen(x, y) {
    const [w, h] = this.size();
    return [w / 2 + (x - this.view.cx) * this.view.ppm, h / 2 - (y - this.view.cy) * this.view.ppm];
  }

  toWorld(sx, sy) {
    const [w, h] = this.size();
    return [this.view.cx + (sx - w / 2) / this.view.ppm, this.view.cy - (sy - h / 2) / this.view.ppm];
  }

  /** Show [minx, miny, maxx, maxy] (metres) with a margin (on the first draw when hidden now). */
  fitTo([minx, miny, maxx, maxy]) {
    if (!this.canvas.clientWidth) {
      this.pendingFit = [minx, miny, maxx, maxy];
      return;
    }
    this.pendingFit = null;
    const [w, h] = this.size();
    const sx = Math.max(0.5, maxx - minx), sy = Math.max(0.5, maxy - miny);
    this.view = { cx: 0.5 * (minx + maxx), cy: 0.5 * (miny + maxy), ppm: 0.9 * Math.min(w / sx, h / sy) };
    this.requestDraw();
  }

  /** Fit the grid of the floor when there is one, else the cameras. */
  fit() {
    const g = this.grid;
    if (g) {
      this.fitTo([g.origin[0], g.origin[1], g.origin[0] + g.width * g.resolution, g.origin[1] + g.height * g.resolution]);
      return;
    }
    const cams = this.cameras.filter((c) => floorOf(c.z, this.floors) === this.floor);
    if (!cams.length) { this.fitTo([-5, -5, 5, 5]); return; }
    const xs = cams.map((c) => c.x), ys = cams.map((c) => c.y);
    this.fitTo([Math.min(...xs) - 1, Math.min(...ys) - 1, Math.max(...xs) + 1, Math.max(...ys) + 1]);
  }

  requestDraw() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => { this.dirty = false; this.draw(); });
  }

  draw() {
    if (!this.canvas.clientWidth) return; // a hidden tab: drawn when it shows (ResizeObserver)
    if (this.pendingFit) this.fitTo(this.pendingFit);
    const [w, h] = this.size();
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
    }
    // what moves only with the view (metric grid, occupancy, map cameras, scale bar) is drawn
    // once into a background canvas; each frame copies it and draws the tracks and robots on top
    const bg = { w, h, dpr, cx: this.view.cx, cy: this.view.cy, ppm: this.view.ppm, floor: this.floor,
                 showCameras: this.showCameras, grid: this.grid, cameras: this.cameras, floors: this.floors };
    if (!this.bgState || Object.keys(bg).some((k) => bg[k] !== this.bgState[k])) {
      this.bgState = bg;
      this.bg = this.bg || document.createElement('canvas');
      this.bg.width = this.canvas.width;
      this.bg.height = this.canvas.height;
      const main = this.ctx;
      this.ctx = this.bg.getContext('2d', { alpha: false });
      try {
        this.drawBackground(w, h, dpr);
      } finally {
        this.ctx = main;
      }
    }
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(this.bg, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (this.withRobots || this.showTracks) this.drawFleet();
    stats.planDraws = (stats.planDraws || 0) + 1;
  }

  drawBackground(w, h, dpr) {
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#0b0e12';
    ctx.fillRect(0, 0, w, h);
    this.drawMetricGrid(w, h);
    const g = this.grid;
    if (g && g.bitmap) {
      const [x0, y0] = this.toScreen(g.origin[0], g.origin[1] + g.height * g.resolution);
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = 0.9;
      ctx.drawImage(g.bitmap, x0, y0, g.width * g.resolution * this.view.ppm, g.height * g.resolution * this.view.ppm);
      ctx.globalAlpha = 1;
    }
    if (this.showCameras) this.drawCameras();
    this.drawScaleBar(h);
  }

  drawMetricGrid(w, h) {
    const ctx = this.ctx;
    const step = niceStep(60 / this.view.ppm);
    const [x0, y1] = this.toWorld(0, 0), [x1, y0] = this.toWorld(w, h);
    ctx.strokeStyle = COLOURS.grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = '#56626e';
    ctx.font = '11px system-ui, sans-serif';
    ctx.beginPath();
    for (let x = Math.ceil(x0 / step) * step; x <= x1; x += step) {
      const [sx] = this.toScreen(x, 0);
      ctx.moveTo(sx, 0); ctx.lineTo(sx, h);
      ctx.fillText(`${+x.toFixed(2)} m`, sx + 2, h - 4);
    }
    for (let y = Math.ceil(y0 / step) * step; y <= y1; y += step) {
      const [, sy] = this.toScreen(0, y);
      ctx.moveTo(0, sy); ctx.lineTo(w, sy);
      ctx.fillText(`${+y.toFixed(2)} m`, 2, sy - 2);
    }
    ctx.stroke();
  }

  drawScaleBar(h) {
    const ctx = this.ctx;
    const metres = niceStep(100 / this.view.ppm);
    const px = metres * this.view.ppm;
    ctx.strokeStyle = COLOURS.text;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(60, h - 24); ctx.lineTo(60 + px, h - 24);
    ctx.stroke();
    ctx.fillStyle = COLOURS.text;
    ctx.fillText(`${metres} m   (level frame: x right, y up)`, 60, h - 30);
  }

  drawCameras() {
    const ctx = this.ctx;
    ctx.fillStyle = COLOURS.camera;
    for (const c of this.cameras) {
      if (floorOf(c.z, this.floors) !== this.floor) continue;
      const [sx, sy] = this.toScreen(c.x, c.y);
      const a = -c.heading;
      ctx.beginPath();
      ctx.moveTo(sx + 9 * Math.cos(a), sy + 9 * Math.sin(a));
      ctx.lineTo(sx + 4 * Math.cos(a + 2.4), sy + 4 * Math.sin(a + 2.4));
      ctx.lineTo(sx + 4 * Math.cos(a - 2.4), sy + 4 * Math.sin(a - 2.4));
      ctx.closePath();
      ctx.fill();
    }
  }

  drawFleet() {
    const ctx = this.ctx;
    const fleet = this.fleet;
    if (this.showTracks) {
      ctx.strokeStyle = COLOURS.track;
      ctx.lineWidth = 1.5;
      for (const track of fleet.tracks.values()) {
        const pts = track.filter((p) => floorOf(p[2], this.floors) === this.floor);
        if (pts.length < 2) continue;
        ctx.beginPath();
        pts.forEach((p, i) => { const [sx, sy] = this.toScreen(p[0], p[1]); i ? ctx.lineTo(sx, sy) : ctx.moveTo(sx, sy); });
        ctx.stroke();
      }
    }
    if (!this.withRobots) return;
    const now = Date.now();
    const lags = (stats.drawLags = stats.drawLags || []);
    ctx.font = '12px system-ui, sans-serif';
    for (const r of fleet.robots.values()) {
      if (this.drawnSeen.get(r.robot_id) !== r.last_seen) {
        this.drawnSeen.set(r.robot_id, r.last_seen);
        lags.push({ robot: r.robot_id, lagMs: now - r.last_seen * 1000, at: now });
        if (lags.length > 2000) lags.splice(0, lags.length - 2000);
      }
      if (!r.xy || floorOf(r.z ?? 0, this.floors) !== this.floor) continue;
      const colour = fleet.age(r) > STALE_S ? COLOURS.stale : (r.accepted ? COLOURS.ok : COLOURS.bad);
      const [sx, sy] = this.toScreen(r.xy[0], r.xy[1]);
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      if (r.ellipse) {
        const rx = Math.max(1, r.ellipse.major * this.view.ppm), ry = Math.max(1, r.ellipse.minor * this.view.ppm);
        ctx.globalAlpha = 0.25;
        ctx.beginPath();
        ctx.ellipse(sx, sy, rx, ry, -r.ellipse.angle_deg * Math.PI / 180, 0, 2 * Math.PI);
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.lineWidth = 1;
        ctx.stroke();
      }
      ctx.beginPath();
      ctx.arc(sx, sy, 5, 0, 2 * Math.PI);
      ctx.fill();
      if (r.heading_deg !== null && r.heading_deg !== undefined) {
        const a = -r.heading_deg * Math.PI / 180;
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(sx, sy);
        ctx.lineTo(sx + 18 * Math.cos(a), sy + 18 * Math.sin(a));
        ctx.stroke();
      }
      ctx.fillStyle = COLOURS.text;
      ctx.fillText(r.robot_id, sx + 8, sy - 8);
    }
  }
}
