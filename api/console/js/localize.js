// "Localize a photo": a dropped JPEG / PNG, a camera (typed, or a map camera scaled to the
// photo), POST /v1/maps/{id}/localize with meta.inliers, then the verdict, the pose in 3D with
// its inlier points, the timings, and the photo with its inlier keypoints.
import { ApiError, mapPath, request } from './api.js';
import { fmt } from './geometry.js';

const $ = (id) => document.getElementById(id);
/** parameters that scale with the image (focal lengths, principal point), per COLMAP model */
const SCALED = { SIMPLE_PINHOLE: 3, PINHOLE: 4, SIMPLE_RADIAL: 3, RADIAL: 3, OPENCV: 4, FULL_OPENCV: 4 };

export class LocalizeView {
  constructor(viewer) {
    this.viewer = viewer;   // a Viewer with the map's points, for the pose
    this.mapId = null;
    this.cameras = [];
    this.file = null;
    this.bitmap = null;
    const drop = $('drop-zone');
    drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
    drop.addEventListener('dragleave', () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => {
      e.preventDefault();
      drop.classList.remove('over');
      if (e.dataTransfer.files.length) this.setFile(e.dataTransfer.files[0]);
    });
    $('localize-file').addEventListener('change', (e) => { if (e.target.files.length) this.setFile(e.target.files[0]); });
    $('camera-pick').addEventListener('change', () => this.pickCamera());
    $('localize-run').addEventListener('click', () => this.run());
  }

  setMap(mapId, cameras) {
    this.mapId = mapId;
    this.cameras = cameras;
    const pick = $('camera-pick');
    const options = [new Option('typed below', '')];
    for (const c of cameras) options.push(new Option(`map camera ${c.camera_id}: ${c.model} ${c.width}x${c.height}`,
                                                     String(c.camera_id)));
    pick.replaceChildren(...options);
    if (cameras.length) pick.value = String(cameras[0].camera_id);
    $('localize-result').hidden = true;
    $('localize-error').hidden = true;
    this.pickCamera();
  }

  async setFile(file) {
    this.file = file;
    $('localize-error').hidden = true;
    try {
      this.bitmap = await createImageBitmap(file, { imageOrientation: 'none' }); // the server ignores EXIF too
    } catch {
      this.bitmap = null;
      this.showError('this file is not an image the browser can read (JPEG or PNG)');
      return;
    }
    this.drawPhoto([]);
    this.pickCamera();
    $('localize-run').disabled = false;
  }

  /** Fill the camera fields from the picked map camera, scaled to the photo when its size differs. */
  pickCamera() {
    const id = $('camera-pick').value;
    const cam = this.cameras.find((c) => String(c.camera_id) === id);
    const note = $('camera-note');
    note.textContent = '';
    if (!cam) {
      if (this.bitmap && !$('camera-width').value) {
        $('camera-width').value = this.bitmap.width;
        $('camera-height').value = this.bitmap.height;
      }
      return;
    }
    let params = cam.params.slice(), w = cam.width, h = cam.height;
    if (this.bitmap && (this.bitmap.width !== w || this.bitmap.height !== h)) {
      const s = this.bitmap.width / w;
      if (Math.abs(this.bitmap.height - h * s) > 1) {
        note.textContent = `the photo is ${this.bitmap.width}x${this.bitmap.height}, the map camera ${w}x${h} ` +
                           '(another aspect ratio): type the photo\'s camera';
      } else {
        const k = SCALED[cam.model] ?? 0;
        params = params.map((p, i) => (i < k ? p * s : p));
        note.textContent = `map camera scaled x${fmt(s, 3)} to the photo's ${this.bitmap.width}x${this.bitmap.height}`;
        w = this.bitmap.width;
        h = this.bitmap.height;
      }
    }
    $('camera-model').value = cam.model;
    $('camera-width').value = w;
    $('camera-height').value = h;
    $('camera-params').value = params.map((p) => +p.toFixed(6)).join(', ');
  }

  camera() {
    const params = $('camera-params').value.split(/[\s,]+/).filter(Boolean).map(Number);
    return { model: $('camera-model').value, width: parseInt($('camera-width').value, 10),
             height: parseInt($('camera-height').value, 10), params };
  }

  showError(text) {
    const el = $('localize-error');
    el.textContent = text;
    el.hidden = false;
  }

  async run() {
    if (!this.file || !this.mapId) return;
    $('localize-error').hidden = true;
    $('localize-run').disabled = true;
    const form = new FormData();
    form.append('image', this.file, this.file.name || 'photo');
    form.append('meta', JSON.stringify({ camera: this.camera(), inliers: true }));
    const t0 = performance.now();
    try {
      const res = await (await request(mapPath(this.mapId, '/localize'), { method: 'POST', body: form })).json();
      this.show(res, performance.now() - t0);
    } catch (e) {
      this.showError(e instanceof ApiError ? e.message : String(e));
      $('localize-result').hidden = true;
    } finally {
      $('localize-run').disabled = false;
    }
  }

  show(res, roundTripMs) {
    const box = $('localize-result');
    box.hidden = false;
    box.dataset.accepted = String(res.accepted);
    const verdict = $('localize-verdict');
    verdict.textContent = res.accepted ? 'Pose accepted' : `Rejected: ${res.reason}`;
    verdict.className = `verdict ${res.accepted ? 'ok' : 'bad'}`;
    const p = res.world_from_cam;
    const kv = [
      ['camera centre (m)', p ? p.translation.map((v) => fmt(v, 3)).join(', ') : '-'],
      ['orientation (w, x, y, z)', p ? p.quaternion_wxyz.map((v) => fmt(v, 4)).join(', ') : '-'],
      ['1-sigma position', res.position_sigma_m === null ? '-' : `${fmt(100 * res.position_sigma_m, 2)} cm`],
      ['1-sigma rotation', res.rotation_sigma_deg === null ? '-' : `${fmt(res.rotation_sigma_deg, 3)} deg`],
      ['inliers / matches', `${res.num_inliers} / ${res.num_matches}`],
      ['inlier ratio', fmt(res.inlier_ratio, 2)],
      ['median reprojection', res.median_reproj_error_px === null ? '-' : `${fmt(res.median_reproj_error_px, 2)} px`],
      ['keypoints', String(res.num_keypoints)],
      ['map version', `${res.map_version} (${res.features}, ${res.attempt})`],
      ['round trip', `${fmt(roundTripMs, 0)} ms`],
    ];
    if (res.latitude !== undefined && res.latitude !== null) {
      kv.push(['lat, lon, alt', `${fmt(res.latitude, 7)}, ${fmt(res.longitude, 7)}, ${fmt(res.altitude, 2)} m`]);
      kv.push(['heading', `${fmt(res.heading, 1)} deg`]);
    }
    const dl = $('localize-kv');
    dl.replaceChildren(...kv.flatMap(([k, v]) => {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = v;
      return [dt, dd];
    }));
    const rows = Object.entries(res.timings_ms || {}).map(([k, v]) => {
      const tr = document.createElement('tr');
      for (const text of [k, fmt(v, 1)]) { const td = document.createElement('td'); td.textContent = text; tr.appendChild(td); }
      return tr;
    });
    $('localize-timings').tBodies[0].replaceChildren(...rows);
    const inl = res.inliers || { keypoints: [], points3D: [] };
    this.drawPhoto(inl.keypoints);
    const cam = this.camera();
    this.viewer.setQuery(p, inl.points3D, cam.width / cam.height);
  }

  /** The photo at its own resolution, with keypoints (COLMAP pixels: the canvas' own coordinates). */
  drawPhoto(keypoints) {
    if (!this.bitmap) return;
    const c = $('photo-canvas');
    c.hidden = false;
    c.width = this.bitmap.width;
    c.height = this.bitmap.height;
    const ctx = c.getContext('2d');
    ctx.drawImage(this.bitmap, 0, 0);
    const r = Math.max(2, c.width / 250);
    ctx.lineWidth = Math.max(1, r / 2);
    ctx.strokeStyle = '#3ecf6e';
    for (const [u, v] of keypoints) {
      ctx.beginPath();
      ctx.arc(u, v, r, 0, 2 * Math.PI);
      ctx.stroke();
    }
    c.dataset.keypoints = String(keypoints.length);
  }
}
