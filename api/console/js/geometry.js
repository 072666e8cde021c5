// Small geometry helpers. vloc conventions: world_from_cam = {translation: camera centre (map
// frame, m), quaternion_wxyz}; camera frame x right, y down, z forward.

/** 3x3 rotation (row-major nested arrays) of a unit quaternion (w, x, y, z). */
export function quatToMatrix([w, x, y, z]) {
  return [
    [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ];
}

export const matVec = (M, v) => [0, 1, 2].map((i) => M[i][0] * v[0] + M[i][1] * v[1] + M[i][2] * v[2]);

/** A map camera in the level frame of the floor plans: {x, y, z, heading (rad from +x)}. */
export function levelPose(worldFromCam, levelFromMap) {
  const R = quatToMatrix(worldFromCam.quaternion_wxyz);
  const c = matVec(levelFromMap, worldFromCam.translation);
  const axis = matVec(levelFromMap, [R[0][2], R[1][2], R[2][2]]);
  return { x: c[0], y: c[1], z: c[2], heading: Math.atan2(axis[1], axis[0]) };
}

/** The floor a level-frame height belongs to: floors [{index, elevation, top}] (top null: open). */
export function floorOf(z, floors) {
  let best = null;
  for (const f of floors) {
    if (z >= f.elevation - 0.5 && (f.top === null || f.top === undefined || z < f.top)) {
      if (best === null || f.elevation > best.elevation) best = f;
    }
  }
  return best ? best.index : (floors.length ? floors[0].index : 0);
}

/** Robust box of (n, 3) float32 positions: per-axis 1st / 99th percentiles of a sample. */
export function robustBox(positions) {
  const n = positions.length / 3;
  const step = Math.max(1, Math.floor(n / 20000));
  const axes = [[], [], []];
  for (let i = 0; i < n; i += step) for (let k = 0; k < 3; k++) axes[k].push(positions[3 * i + k]);
  const q = (arr, p) => arr[Math.min(arr.length - 1, Math.max(0, Math.round(p * (arr.length - 1))))];
  const min = [], max = [];
  for (let k = 0; k < 3; k++) {
    axes[k].sort((a, b) => a - b);
    min.push(q(axes[k], 0.01));
    max.push(q(axes[k], 0.99));
  }
  return { min, max };
}

export function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? '-' : Number(x).toFixed(digits);
}

export function bytes(n) {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
