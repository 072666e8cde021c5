// A map in 3D with three.js: coloured points, map camera frusta, the layers' mesh, and a query
// pose with its inlier points. Renders on demand (orbit / zoom / new data), not in a loop.
import * as THREE from '../vendor/three.module.min.js';
import { OrbitControls } from '../vendor/OrbitControls.js';
import { PLYLoader } from '../vendor/PLYLoader.js';
import { quatToMatrix, robustBox } from './geometry.js';

const stats = (window.vlocStats = window.vlocStats || {});

/** Line segments of camera frusta: apex at the centre, image rectangle at depth d (camera frame
 *  x right, y down, z forward; aspect w / h). */
function frustumSegments(poses, d, aspect = 4 / 3) {
  const hw = 0.5 * d, hh = hw / aspect;
  const corners = [[-hw, -hh, d], [hw, -hh, d], [hw, hh, d], [-hw, hh, d]];
  const out = new Float32Array(poses.length * 8 * 2 * 3);
  let o = 0;
  const put = (p) => { out[o++] = p[0]; out[o++] = p[1]; out[o++] = p[2]; };
  for (const pose of poses) {
    const R = quatToMatrix(pose.quaternion_wxyz);
    const c = pose.translation;
    const w = corners.map((q) => [0, 1, 2].map((i) => R[i][0] * q[0] + R[i][1] * q[1] + R[i][2] * q[2] + c[i]));
    for (let k = 0; k < 4; k++) { put(c); put(w[k]); }
    for (let k = 0; k < 4; k++) { put(w[k]); put(w[(k + 1) % 4]); }
  }
  return out;
}

export class Viewer {
  constructor(container, name = 'view') {
    this.container = container;
    this.name = name;
    this.renderer = new THREE.WebGLRenderer({ antialias: false, powerPreference: 'high-performance' });
    this.renderer.outputColorSpace = THREE.LinearSRGBColorSpace; // vertex colours are shown as stored
    this.renderer.setPixelRatio(window.devicePixelRatio || 1);
    container.appendChild(this.renderer.domElement);
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color().setRGB(0x0b / 255, 0x0e / 255, 0x12 / 255, THREE.LinearSRGBColorSpace);
    this.scene.add(new THREE.AmbientLight(0xffffff, 0.6));
    const sun = new THREE.DirectionalLight(0xffffff, 0.8);
    sun.position.set(1, 2, 3);
    this.scene.add(sun);
    this.camera = new THREE.PerspectiveCamera(60, 1, 0.01, 1000);
    this.groups = {};
    for (const g of ['points', 'cameras', 'mesh', 'query']) {
      this.groups[g] = new THREE.Group();
      this.scene.add(this.groups[g]);
    }
    this.up = new THREE.Vector3(0, 0, 1);
    this.makeControls();
    this.pending = false;
    this.firstPoints = false;
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(container);
    this.fit();
  }

  makeControls() {
    if (this.controls) this.controls.dispose();
    this.camera.up.copy(this.up);
    this.controls = new OrbitControls(this.camera, this.renderer.domElement);
    this.controls.addEventListener('change', () => this.requestRender());
  }

  /** The map's up direction (map frame): row 3 of level_from_map. */
  setUp(levelFromMap) {
    const u = levelFromMap ? levelFromMap[2] : [0, 0, 1];
    this.up.set(u[0], u[1], u[2]).normalize();
    this.makeControls();
  }

  fit() {
    const w = Math.max(1, this.container.clientWidth), h = Math.max(1, this.container.clientHeight);
    this.renderer.setSize(w, h, true);
    this.camera.aspect = w / h;
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  requestRender() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.renderer.render(this.scene, this.camera);
      if (this.firstPoints) {
        this.firstPoints = false;
        const drawn = performance.now();
        requestAnimationFrame(() => {
          stats[`${this.name}FirstPoints`] = { drawnMs: drawn, presentedMs: performance.now(),
                                                points: this.pointCount };
        });
      }
    });
  }

  clear(group) {
    for (const obj of [...this.groups[group].children]) {
      this.groups[group].remove(obj);
      obj.geometry?.dispose();
      obj.material?.dispose();
    }
  }

  show(group, visible) {
    this.groups[group].visible = visible;
    this.requestRender();
  }

  setPoints(positions, colours) {
    this.clear('points');
    const g = new THREE.BufferGeometry();
    g.setAttribute('position', new THREE.BufferAttribute(positions, 3));
    g.setAttribute('color', new THREE.BufferAttribute(colours, 3, true));
    const m = new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true });
    this.groups.points.add(new THREE.Points(g, m));
    this.pointCount = positions.length / 3;
    this.box = robustBox(positions);
    this.firstPoints = true;
    this.requestRender();
  }

  scale() {
    if (!this.box) return 1;
    const s = this.box.max.map((v, k) => v - this.box.min[k]);
    return Math.hypot(...s) || 1;
  }

  setCameras(poses, aspect) {
    this.clear('cameras');
    if (!poses.length) return;
    const d = Math.min(0.5, Math.max(0.05, 0.02 * this.scale()));
    const g = new THREE.BufferGeometry();
    g.setAttribute('position', new THREE.BufferAttribute(frustumSegments(poses, d, aspect), 3));
    this.groups.cameras.add(new THREE.LineSegments(g, new THREE.LineBasicMaterial({ color: 0x4aa3ff })));
    this.requestRender();
  }

  setMesh(buffer) {
    this.clear('mesh');
    const g = new PLYLoader().parse(buffer);
    for (const [name, attr] of Object.entries(g.attributes)) { // Open3D writes doubles; WebGL takes float32
      if (attr.array instanceof Float64Array) {
        g.setAttribute(name, new THREE.BufferAttribute(new Float32Array(attr.array), attr.itemSize, attr.normalized));
      }
    }
    if (!g.getAttribute('normal')) g.computeVertexNormals();
    const colour = g.getAttribute('color');
    let m;
    if (colour) {
      // PLYLoader turns the file's sRGB colours linear; this renderer shows colours as stored (like the
      // points'), so back to the file's values, unlit: the texture the mesh was fused from
      const c = new THREE.Color();
      for (let i = 0; i < colour.count; i++) {
        c.setRGB(colour.getX(i), colour.getY(i), colour.getZ(i), THREE.LinearSRGBColorSpace);
        c.convertLinearToSRGB();
        colour.setXYZ(i, c.r, c.g, c.b);
      }
      m = new THREE.MeshBasicMaterial({ vertexColors: true, side: THREE.DoubleSide });
    } else {
      m = new THREE.MeshLambertMaterial({ color: 0x9aa7b4, side: THREE.DoubleSide });
    }
    this.groups.mesh.add(new THREE.Mesh(g, m));
    this.requestRender();
    return g.getAttribute('position').count;
  }

  /** A query pose (world_from_cam) as an orange frustum, and its inlier map points in green. */
  setQuery(pose, inlierPoints, aspect) {
    this.clear('query');
    if (pose) {
      const d = Math.min(1.0, Math.max(0.1, 0.05 * this.scale()));
      const g = new THREE.BufferGeometry();
      g.setAttribute('position', new THREE.BufferAttribute(frustumSegments([pose], d, aspect), 3));
      this.groups.query.add(new THREE.LineSegments(g, new THREE.LineBasicMaterial({ color: 0xff9a3c })));
    }
    if (inlierPoints && inlierPoints.length) {
      const g = new THREE.BufferGeometry();
      g.setAttribute('position', new THREE.BufferAttribute(new Float32Array(inlierPoints.flat()), 3));
      this.groups.query.add(new THREE.Points(g, new THREE.PointsMaterial({ size: 5, sizeAttenuation: false,
                                                                           color: 0x3ecf6e })));
    }
    this.requestRender();
  }

  /** Look at the points' box from above and to the side (along the map's up). */
  frame() {
    if (!this.box) return;
    const c = new THREE.Vector3(...this.box.min.map((v, k) => 0.5 * (v + this.box.max[k])));
    const r = 0.5 * this.scale();
    const side = new THREE.Vector3(1, 0, 0);
    if (Math.abs(side.dot(this.up)) > 0.9) side.set(0, 1, 0);
    side.sub(this.up.clone().multiplyScalar(side.dot(this.up))).normalize();
    const eye = c.clone().add(side.multiplyScalar(1.2 * r)).add(this.up.clone().multiplyScalar(1.1 * r));
    this.camera.position.copy(eye);
    this.camera.near = Math.max(0.001, r / 1000);
    this.camera.far = 100 * r + 10;
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(c);
    this.controls.update();
    this.requestRender();
  }

  dispose() {
    this.resize.disconnect();
    this.controls.dispose();
    for (const g of Object.keys(this.groups)) this.clear(g);
    this.renderer.dispose();
    this.renderer.domElement.remove();
  }
}
