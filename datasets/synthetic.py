"""Deterministic synthetic indoor scenes with exact ground truth (poses, depth, surfaces).

World frame: metres, z up, floor at z = 0, room centred on x = y = 0.  A scene is a
list of planar textured rectangles (:class:`Quad`): floor, ceiling, 4 walls and the
5 visible faces of each furniture box.  Every surface gets its own procedural,
non-repetitive texture (smoothed multi-scale noise, random shapes, text) at about
3 mm per texel.  :meth:`SyntheticScene.render` ray-casts a view (numpy, trilinear
mip-mapped texture lookup); :func:`write_dataset` writes a 7-Scenes-style folder.
Poses follow :mod:`core.geometry`: ``cam_from_world`` maps world points into the
camera (x right, y down, z forward); pixel convention is COLMAP's (:mod:`core.camera`).
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.camera import Camera
from core.geometry import Rigid3
from core.types import ImageRecord

DEFAULT_CAMERA = Camera("PINHOLE", 640, 480, (525.0, 525.0, 320.0, 240.0))
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_PLAIN)
_CHARS = np.array(list(string.ascii_letters + string.digits + "#@%&+=?"))
_LIGHT = np.array([0.45, 0.3, 0.84])  # fixed direction for per-surface Lambert shading


@dataclass(eq=False)
class Quad:
    """A textured rectangle ``{origin + a*u + b*v : 0<=a<=extent[0], 0<=b<=extent[1]}`` (world).

    u, v: (3,) orthonormal; texture: (H, W, 3) uint8 RGB, columns along u, rows along v.
    normal = u x v points away from a viewer who sees the texture unmirrored.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    extent: tuple[float, float]
    texture: np.ndarray
    name: str = ""
    _pyramid: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    @property
    def normal(self) -> np.ndarray:
        """(3,) unit normal u x v."""
        return np.cross(self.u, self.v)

    @property
    def pyramid(self) -> list[np.ndarray]:
        """Mip levels of the texture, level 0 = full resolution (built on first use)."""
        if not self._pyramid:
            lv = [self.texture]
            while min(lv[-1].shape[:2]) >= 16:
                lv.append(cv2.pyrDown(lv[-1]))
            self._pyramid.extend(lv)
        return self._pyramid


@dataclass(frozen=True)
class Box:
    """A furniture box standing on the floor: footprint centre (x, y), half sizes, height, yaw (rad)."""

    centre: tuple[float, float]
    half: tuple[float, float]
    height: float
    yaw: float

    def _local(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, np.float64).reshape(-1, 3)
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        dx, dy = p[:, 0] - self.centre[0], p[:, 1] - self.centre[1]
        return np.stack([c * dx + s * dy, -s * dx + c * dy, p[:, 2] - self.height / 2], 1)

    def excess(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) per-axis distance outside the box (negative inside)."""
        return np.abs(self._local(points)) - np.array([*self.half, self.height / 2])

    def solid_distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) distance of (N, 3) world points to the solid box (0 inside)."""
        return np.linalg.norm(np.maximum(self.excess(points), 0.0), axis=1)


def draw_random_shape(canvas: np.ndarray, rng: np.random.Generator, kind: int, c: tuple[int, int], r: int,
                      col: tuple[int, int, int], outline, line, text) -> None:
    """Draw one random shape of ``kind`` (0 circle, 1 rectangle, 2 line, 3 polygon, else text)
    centred at pixel c with size r into an (H, W, 3) uint8 canvas. The callables give what a
    texture style decides: ``outline()`` the width of an unfilled circle / rectangle, ``line()``
    a line's width, ``text()`` draws the text (each draws from ``rng`` only when called)."""
    if kind == 0:
        cv2.circle(canvas, c, max(r, 2), col, -1 if rng.random() < 0.7 else outline(), cv2.LINE_AA)
    elif kind == 1:
        d = (int(c[0] + rng.uniform(-2, 2) * r), int(c[1] + rng.uniform(-2, 2) * r))
        cv2.rectangle(canvas, c, d, col, -1 if rng.random() < 0.6 else outline(), cv2.LINE_AA)
    elif kind == 2:
        d = (int(c[0] + rng.uniform(-4, 4) * r), int(c[1] + rng.uniform(-4, 4) * r))
        cv2.line(canvas, c, d, col, line(), cv2.LINE_AA)
    elif kind == 3:
        k = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.4, 1.6, k)
        pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(canvas, [pts], col, cv2.LINE_AA)
    else:
        text()


def _random_text(canvas: np.ndarray, rng: np.random.Generator, c: tuple[int, int], r: int,
                 col: tuple[int, int, int]) -> None:
    txt = "".join(rng.choice(_CHARS, int(rng.integers(2, 9))))
    font = _FONTS[int(rng.integers(0, len(_FONTS)))]
    scale = max(r, 6) / 22.0
    cv2.putText(canvas, txt, c, font, scale, col, max(1, int(scale * rng.uniform(1, 3))), cv2.LINE_AA)


def _texture(rng: np.random.Generator, size_m: tuple[float, float], shade: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB texture for a surface of size_m metres, ~3 mm/texel (<= 2048 px/side)."""
    texel = max(0.003, max(size_m) / 2048)
    W, H = max(8, int(round(size_m[0] / texel))), max(8, int(round(size_m[1] / texel)))
    img = np.empty((H, W, 3), np.float32)
    img[:] = rng.uniform(60, 200, 3)
    for cell, amp in ((300, 45), (80, 35), (20, 25), (5, 14)):   # multi-scale smoothed noise
        small = rng.normal(0, amp, (max(2, H // cell + 2), max(2, W // cell + 2), 3)).astype(np.float32)
        img += cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
    canvas = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    area = size_m[0] * size_m[1]
    n_shapes = int(140 * area) + 10
    for _ in range(n_shapes):
        kind = rng.integers(0, 5)
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        r = int(np.exp(rng.uniform(np.log(0.008), np.log(0.15))) / texel)
        draw_random_shape(canvas, rng, kind, c, r, col,
                          outline=lambda: int(rng.integers(1, 6)), line=lambda: int(rng.integers(1, 8)),
                          text=lambda: _random_text(canvas, rng, c, r, col))
    fine = cv2.resize(rng.normal(0, 12, (H // 3 + 2, W // 3 + 2, 3)).astype(np.float32), (W, H))
    out = (canvas.astype(np.float32) + fine) * shade
    return np.clip(out, 0, 255).astype(np.uint8)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (h, w, 3) uint8 at (M,) array-index coordinates -> (M, 3) float32."""
    h, w = img.shape[:2]
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = (x - x0)[:, None].astype(np.float32), (y - y0)[:, None].astype(np.float32)
    a, b = img[y0, x0].astype(np.float32), img[y0, x0 + 1].astype(np.float32)
    c, d = img[y0 + 1, x0].astype(np.float32), img[y0 + 1, x0 + 1].astype(np.float32)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _mul3(X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """(N, 3) @ (3, 3) by broadcasting (numpy's matmul is ~100x slower for this shape)."""
    return X[:, :1] * M[0] + X[:, 1:2] * M[1] + X[:, 2:] * M[2]


_RAY_CACHE: dict[tuple[Camera, float, float], np.ndarray] = {}


def _camera_rays(camera: Camera, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """(H*W, 3) camera-frame rays (x/z, y/z, 1) through pixel centres (u+0.5+dx, v+0.5+dy), row-major."""
    key = (camera, dx, dy)
    if key not in _RAY_CACHE:
        if len(_RAY_CACHE) > 16:
            _RAY_CACHE.clear()
        uu, vv = np.meshgrid(np.arange(camera.width) + 0.5 + dx, np.arange(camera.height) + 0.5 + dy)
        xy = camera.unproject(np.stack([uu.ravel(), vv.ravel()], 1))
        _RAY_CACHE[key] = np.hstack([xy, np.ones((len(xy), 1))])
    return _RAY_CACHE[key]


@dataclass(eq=False)
class SyntheticScene:
    """A room (x, y centred on 0, floor z = 0) with boxes, as textured quads.

    bounds: (2, 3) room min / max corners (metres, world).  seed: generator seed.
    """

    quads: list[Quad]
    bounds: np.ndarray
    boxes: list[Box]
    seed: int

    # geometry ---------------------------------------------------------------------------
    def cast(self, cam_from_world: Rigid3, rays_cam: np.ndarray) -> tuple[np.ndarray, ...]:
        """Intersect (N, 3) camera-frame rays (x, y, 1) with all quads.

        Returns depth (N,) = camera z of the nearest hit (0 = no hit), quad index (N,) (-1),
        and the hit's (a, b) quad coordinates in metres, (N,) each.
        """
        C = cam_from_world.centre
        Dx, Dy, Dz = _mul3(rays_cam, cam_from_world.rotation).T  # world directions, R^T d
        n = len(Dx)
        best = np.full(n, np.inf)
        qid = np.full(n, -1, np.int64)
        A, B = np.zeros(n), np.zeros(n)
        for i, q in enumerate(self.quads):
            (n0, n1, n2), (u0, u1, u2), (v0, v1, v2) = q.normal, q.u, q.v
            dn, du, dv = Dx * n0 + Dy * n1 + Dz * n2, Dx * u0 + Dy * u1 + Dz * u2, Dx * v0 + Dy * v1 + Dz * v2
            oc = C - q.origin
            with np.errstate(divide="ignore", invalid="ignore"):
                t = -(oc @ q.normal) / dn
            a = oc @ q.u + t * du
            b = oc @ q.v + t * dv
            ok = (t > 1e-9) & (t < best) & (a >= 0) & (a <= q.extent[0]) & (b >= 0) & (b <= q.extent[1])
            best[ok], qid[ok], A[ok], B[ok] = t[ok], i, a[ok], b[ok]
        best[qid < 0] = 0.0
        return best, qid, A, B

    def _shade(self, cam_from_world: Rigid3, camera: Camera, rays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Colours (N, 3) float32 and depth (N,) of (N, 3) camera-frame rays (trilinear mip lookup)."""
        depth, qid, A, B = self.cast(cam_from_world, rays)
        rgb = np.zeros((len(rays), 3), np.float32)
        f = float(np.mean(camera.focals))
        D = _mul3(rays, cam_from_world.rotation)  # world-frame ray directions (rows: R^T d)
        for i in np.unique(qid[qid >= 0]):
            q, sel = self.quads[i], np.flatnonzero(qid == i)
            d = D[sel]
            dist = depth[sel] * np.linalg.norm(d, axis=1)
            cos = np.abs(d @ q.normal) / np.linalg.norm(d, axis=1)
            pyr = q.pyramid
            texel = q.extent[0] / q.texture.shape[1]
            lev = np.clip(np.log2(dist / (f * np.sqrt(np.maximum(cos, 1e-3)) * texel)), 0, len(pyr) - 1)
            l0 = np.minimum(lev.astype(np.int64), len(pyr) - 2) if len(pyr) > 1 else np.zeros(len(sel), int)
            w1 = np.clip(lev - l0, 0, 1)[:, None].astype(np.float32)
            for L in np.unique(l0):
                m = l0 == L
                cols = []
                for img in pyr[L:L + 2]:
                    h, w = img.shape[:2]
                    cols.append(_bilinear(img, A[sel[m]] * w / q.extent[0] - 0.5, B[sel[m]] * h / q.extent[1] - 0.5))
                rgb[sel[m]] = cols[0] * (1 - w1[m]) + cols[-1] * w1[m]
        return rgb, depth

    def render(self, cam_from_world: Rigid3, camera: Camera, supersample: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Render a view.  cam_from_world: world -> camera pose.

        Returns rgb (H, W, 3) uint8 and depth (H, W) float32: metres along the camera z
        axis at the pixel centre, 0 where nothing was hit.  supersample: average 2x2
        sub-pixel samples for the colour (depth stays at the pixel centre).
        """
        H, W = camera.height, camera.width
        rgb, depth = self._shade(cam_from_world, camera, _camera_rays(camera))
        if supersample:
            acc = np.zeros_like(rgb)
            for dx in (-0.25, 0.25):
                for dy in (-0.25, 0.25):
                    acc += self._shade(cam_from_world, camera, _camera_rays(camera, dx, dy))[0] / 4
            rgb = acc
        rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(H, W, 3)
        return rgb8, depth.astype(np.float32).reshape(H, W)

    def distance_to_surfaces(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N,) exact distance (m) to the nearest quad."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        best = np.full(len(p), np.inf)
        for q in self.quads:
            r = p - q.origin
            a, b, h = r @ q.u, r @ q.v, r @ q.normal
            da = a - np.clip(a, 0, q.extent[0])
            db = b - np.clip(b, 0, q.extent[1])
            best = np.minimum(best, np.sqrt(da * da + db * db + h * h))
        return best

    def inside_boxes(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N,) bool, True where a point lies inside a furniture box."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        inside = np.zeros(len(p), bool)
        for bx in self.boxes:
            inside |= np.all(bx.excess(p) < 0, axis=1)
        return inside

    def sample_surface_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) world points uniform over the total quad area."""
        areas = np.array([q.extent[0] * q.extent[1] for q in self.quads])
        idx = rng.choice(len(self.quads), n, p=areas / areas.sum())
        out = np.empty((n, 3))
        for i, q in enumerate(self.quads):
            m = idx == i
            a, b = rng.uniform(0, q.extent[0], m.sum()), rng.uniform(0, q.extent[1], m.sum())
            out[m] = q.origin + a[:, None] * q.u + b[:, None] * q.v
        return out

    # cameras ---------------------------------------------------------------------------
    def _pass_params(self, pass_id: int) -> dict[str, float]:
        if pass_id == 0:
            return dict(scale=1.0, z=1.4, phase=0.0, yaw=0.8, ph=0.0, py=0.0, pp=0.0, pr=0.0)
        r = np.random.default_rng([self.seed, 7, pass_id])
        return dict(scale=r.uniform(0.72, 0.9), z=r.uniform(1.25, 1.55), phase=r.uniform(0, 2 * np.pi),
                    yaw=r.uniform(0.4, 1.1),
                    ph=r.uniform(0, 6.3), py=r.uniform(0, 6.3), pp=r.uniform(0, 6.3), pr=r.uniform(0, 6.3))

    def trajectory(self, n_frames: int, pass_id: int = 0) -> list[Rigid3]:
        """n_frames ``cam_from_world`` poses on a closed loop around the room centre.

        The path is an ellipse (radii 45 % of the room half-sizes, scaled per pass) at
        1.2-1.6 m height with a small wobble; cameras look outward and ahead (yaw = polar
        angle + 25..65 deg, +- 17 deg wobble), pitched 3-13 deg down, roll within 2 deg.  pass_id > 0 gives a
        different, deterministic pass (smaller radius, other height / phase / wobble).
        """
        p = self._pass_params(pass_id)
        half = (self.bounds[1, :2] - self.bounds[0, :2]) / 2
        rx, ry = 0.45 * half * p["scale"]
        poses = []
        for i in range(n_frames):
            th = p["phase"] + 2 * np.pi * i / n_frames
            c = np.array([rx * np.cos(th), ry * np.sin(th), p["z"] + 0.08 * np.sin(2 * th + p["ph"])])
            yaw = np.arctan2(c[1], c[0]) + p["yaw"] + 0.3 * np.sin(2 * th + p["py"])
            pitch = -0.14 + 0.09 * np.sin(3 * th + p["pp"])
            roll = 0.035 * np.sin(2 * th + p["pr"])
            fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
            right = np.cross(fwd, [0.0, 0.0, 1.0])
            right /= np.linalg.norm(right)
            R0 = np.stack([right, np.cross(fwd, right), fwd], 1)  # world_from_cam rotation
            cr, sr = np.cos(roll), np.sin(roll)
            R = R0 @ np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1.0]])
            poses.append(Rigid3(R.T, -R.T @ c))
        centres = np.array([q.centre for q in poses])
        if len(poses) and (self.distance_to_surfaces(centres).min() < 0.5 or self.inside_boxes(centres).any()):
            raise RuntimeError("trajectory comes closer than 0.5 m to a surface; use a larger room")
        return poses


def _rect(origin, u_vec, v_vec, rng: np.random.Generator, name: str) -> Quad:
    """Quad from an origin and two perpendicular edge vectors (metres); shading from its normal."""
    su, sv = float(np.linalg.norm(u_vec)), float(np.linalg.norm(v_vec))
    u, v = np.asarray(u_vec, float) / su, np.asarray(v_vec, float) / sv
    shade = 0.5 + 0.5 * abs(float(np.cross(u, v) @ _LIGHT / np.linalg.norm(_LIGHT)))
    return Quad(np.asarray(origin, float), u, v, (su, sv), _texture(rng, (su, sv), shade), name)


def generate_scene(seed: int = 0, room_size: tuple[float, float, float] = (6.0, 5.0, 2.6),
                   n_boxes: int = 6) -> SyntheticScene:
    """A deterministic room of room_size (x, y, height) metres with up to n_boxes boxes.

    Boxes keep >= 0.6 m from every possible trajectory camera (all passes), so fewer
    than n_boxes are placed when the room is too crowded.
    """
    Lx, Ly, Hz = map(float, room_size)
    if Lx < 3.0 or Ly < 3.0 or Hz < 2.3:
        raise ValueError(f"room_size {room_size} too small (need >= 3 x 3 x 2.3 m)")
    rng = np.random.default_rng(seed)
    x0, x1, y0, y1 = -Lx / 2, Lx / 2, -Ly / 2, Ly / 2
    # trajectory envelope (all passes) for box clearance
    th = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    env = np.array([[0.45 * s * Lx / 2 * np.cos(t), 0.45 * s * Ly / 2 * np.sin(t), z]
                    for s in (0.7, 0.8, 0.9, 1.0) for z in (1.15, 1.4, 1.65) for t in th])
    boxes: list[Box] = []
    for _ in range(400 * max(n_boxes, 1)):
        if len(boxes) >= n_boxes:
            break
        half = (rng.uniform(0.2, 0.6), rng.uniform(0.2, 0.6))
        yaw = 0.0 if rng.random() < 0.5 else rng.uniform(-np.pi / 4, np.pi / 4)
        bx = Box((rng.uniform(x0, x1), rng.uniform(y0, y1)), half, rng.uniform(0.4, 2.0), yaw)
        c, s = np.cos(yaw), np.sin(yaw)
        corners = np.array([[sx * half[0], sy * half[1]] for sx in (-1, 1) for sy in (-1, 1)]) @ \
            np.array([[c, s], [-s, c]]) + bx.centre
        if corners[:, 0].min() < x0 + 0.05 or corners[:, 0].max() > x1 - 0.05 \
                or corners[:, 1].min() < y0 + 0.05 or corners[:, 1].max() > y1 - 0.05:
            continue
        if any(np.hypot(*np.subtract(bx.centre, o.centre)) < np.hypot(*half) + np.hypot(*o.half) + 0.05
               for o in boxes):
            continue
        if bx.solid_distance(env).min() < 0.6:
            continue
        boxes.append(bx)
    quads = [
        _rect([x0, y0, 0], [Lx, 0, 0], [0, Ly, 0], rng, "floor"),
        _rect([x0, y1, Hz], [Lx, 0, 0], [0, -Ly, 0], rng, "ceiling"),
        _rect([x1, y0, Hz], [-Lx, 0, 0], [0, 0, -Hz], rng, "wall_south"),
        _rect([x0, y1, Hz], [Lx, 0, 0], [0, 0, -Hz], rng, "wall_north"),
        _rect([x0, y0, Hz], [0, Ly, 0], [0, 0, -Hz], rng, "wall_west"),
        _rect([x1, y1, Hz], [0, -Ly, 0], [0, 0, -Hz], rng, "wall_east"),
    ]
    for k, bx in enumerate(boxes):
        c, s = np.cos(bx.yaw), np.sin(bx.yaw)
        ex, ey = np.array([c, s, 0]), np.array([-s, c, 0])
        ctr = np.array([*bx.centre, 0.0])
        hx, hy, h = bx.half[0], bx.half[1], bx.height
        corners = [ctr + sx * hx * ex + sy * hy * ey for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        for j in range(4):  # side faces; u x v points into the box, so text reads upright from outside
            a, b = corners[j], corners[(j + 1) % 4]
            quads.append(_rect(a + [0, 0, h], b - a, [0, 0, -h], rng, f"box{k}_side{j}"))
        quads.append(_rect(corners[0] + [0, 0, h], 2 * hx * ex, 2 * hy * ey, rng, f"box{k}_top"))
    bounds = np.array([[x0, y0, 0.0], [x1, y1, Hz]])
    return SyntheticScene(quads, bounds, boxes, seed)


def write_dataset(scene: SyntheticScene, root: str | Path, n_frames: int, camera: Camera | None = None,
                  pass_id: int = 0, seq: int = 1, supersample: bool = False) -> list[ImageRecord]:
    """Render scene.trajectory(n_frames, pass_id) into a 7-Scenes-style folder under root.

    Writes ``seq-XX/frame-NNNNNN.color.png`` (RGB), ``.depth.png`` (uint16 mm, 0 invalid),
    ``.pose.txt`` (4x4 **world_from_cam**), ``pgt_sfm_seqXX.txt`` (``name qw qx qy qz tx ty tz f``,
    **cam_from_world**) and ``camera.txt`` (``str(camera)``).  Returns one ImageRecord per
    frame (name ``seq-XX/frame-NNNNNN.color.png``, cam_from_world, timestamp = index).
    """
    camera = camera or DEFAULT_CAMERA
    root = Path(root)
    seq_name = f"seq-{seq:02d}"
    (root / seq_name).mkdir(parents=True, exist_ok=True)
    records, lines = [], []
    for i, cam_from_world in enumerate(scene.trajectory(n_frames, pass_id)):
        rgb, depth = scene.render(cam_from_world, camera, supersample=supersample)
        stem = root / seq_name / f"frame-{i:06d}"
        cv2.imwrite(f"{stem}.color.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}.depth.png", np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16))
        np.savetxt(f"{stem}.pose.txt", cam_from_world.inverse().matrix4(), fmt="%.18e")
        name = f"{seq_name}/frame-{i:06d}.color.png"
        vals = [*cam_from_world.quat_wxyz, *cam_from_world.translation]
        lines.append(" ".join([name] + [f"{v:.9f}" for v in vals] + [f"{camera.focals[0]:.10g}"]))
        records.append(ImageRecord(name=name, camera=camera, cam_from_world=cam_from_world, timestamp=float(i)))
    (root / f"pgt_sfm_seq{seq:02d}.txt").write_text("\n".join(lines) + "\n")
    (root / "camera.txt").write_text(str(camera) + "\n")
    return records
