"""A generated outdoor world with exact truth: street-level images with GPS, an orthophoto and a DSM.

Frames: the scene is built in **ENU** metres at the world's true origin (east, north, up;
ground plane at up = 0).  The map frame (what a posed map and localization use) differs
from ENU by the true similarity ``enu_from_map`` of :attr:`World.georef`
(``x_enu = s R x_map + t``, R a yaw about up: the map is gravity aligned).

Content: a textured ground square, four box buildings whose textured roofs show from
above, and a hall (the indoor room) with a door facing the plaza: its floor, ceiling and a
piece of furniture are seen from the street through the door and hidden under the roof
from above.  Surfaces are :class:`datasets.synthetic.Quad`; the ground cameras render
with :class:`datasets.synthetic.SyntheticScene`; the orthophoto is cast with vertical
rays over the same quads, on a grid of a projected CRS (UTM by default), every conversion
by pyproj (grid -> WGS84 -> ENU at the origin), so the geotransform and CRS are exact.
GPS of the ground images = true camera centres converted to WGS84 and perturbed by a few
metres (a common bias plus per-image noise, fixed seed).
"""
from __future__ import annotations

import csv
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from pyproj.enums import TransformDirection
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

from core.camera import Camera
from core.geo import Georeference
from core.geometry import Rigid3, Sim3
from core.types import GeoPosition, ImageRecord
from datasets.synthetic import Box, Quad, SyntheticScene, draw_random_shape

GROUND_CAMERA = Camera("PINHOLE", 640, 480, (500.0, 500.0, 320.0, 240.0))
#: true ENU origin of the world (Zurich: UTM zone 32N, ~0.34 deg grid convergence) and altitude (m, ellipsoid).
DEFAULT_ORIGIN = (47.3769, 8.5417, 455.0)
_LIGHT = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
_CHARS = np.array(list(string.ascii_uppercase + string.digits))
_GROUND_HALF = 30.0        # ground square half size (m)
_PATH_RADII = (8.0, 4.0)   # ellipse of the street walk around the plaza centre (m), ~39 m long


def rz(yaw: float) -> np.ndarray:
    """(3, 3) rotation by yaw (rad) about up (counter-clockwise seen from above)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def enu_transformer(latitude: float, longitude: float, altitude: float) -> Transformer:
    """pyproj pipeline WGS84 (lon, lat deg, h m) -> ENU (e, n, u m) at the given origin."""
    return Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad +step +proj=cart +ellps=WGS84 "
        f"+step +proj=topocentric +ellps=WGS84 +lat_0={latitude!r} +lon_0={longitude!r} +h_0={altitude!r}")


def utm_crs(latitude: float, longitude: float) -> CRS:
    """The WGS84 / UTM zone CRS containing the point (pyproj's database)."""
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(
        longitude, latitude, longitude, latitude))
    return CRS.from_epsg(int(info[0].code))


# ---- surfaces ---------------------------------------------------------------------------------

_SHAPES_PER_M2 = {"ground": 2.0, "facade": 1.5, "roof": 0.4, "floor": 2.0}
_PALETTE = {  # base colours (RGB) per surface kind
    "ground": ((95, 95, 100), (120, 112, 98), (80, 92, 78)),
    "facade": ((178, 150, 120), (150, 160, 172), (196, 182, 160), (140, 110, 96)),
    "roof": ((110, 70, 60), (90, 92, 98), (130, 128, 120)),
    "floor": ((170, 140, 110), (120, 130, 150)),
}


def _surface_texture(rng: np.random.Generator, size_m: tuple[float, float], texel: float, kind: str,
                     shade: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB texture of a size_m (metres) surface at texel metres per texel.

    Multi-scale smooth noise (4 m .. 6 cm cells), random shapes 4 cm .. 0.9 m and text, plus
    per-kind structure: road markings (ground), window grids (facade), vents (roof), tiles (floor).
    """
    W, H = max(8, int(round(size_m[0] / texel))), max(8, int(round(size_m[1] / texel)))
    pal = _PALETTE[kind]
    img = np.empty((H, W, 3), np.float32)
    img[:] = np.asarray(pal[int(rng.integers(len(pal)))], np.float32) + rng.uniform(-15, 15, 3)
    for cell_m, amp in ((4.0, 28.0), (1.0, 24.0), (0.25, 18.0), (0.06, 10.0)):
        cell = max(1.0, cell_m / texel)
        small = rng.normal(0, amp, (int(H / cell) + 2, int(W / cell) + 2, 3)).astype(np.float32)
        small[..., 1:] = 0.6 * small[..., :1] + 0.4 * small[..., 1:]  # mostly luminance
        img += cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
    canvas = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    px = 1.0 / texel
    if kind == "floor":  # tiles
        step = int(rng.uniform(0.4, 0.6) * px)
        for x in range(0, W, step):
            cv2.line(canvas, (x, 0), (x, H), (60, 60, 60), max(1, int(0.01 * px)))
        for y in range(0, H, step):
            cv2.line(canvas, (0, y), (W, y), (60, 60, 60), max(1, int(0.01 * px)))
    if kind == "facade":  # windows
        wx, wy = rng.uniform(0.8, 1.4), rng.uniform(1.0, 1.6)
        for y in np.arange(0.9, size_m[1] - 1.2, 2.6):
            for x in np.arange(0.6, size_m[0] - wx, wx + rng.uniform(0.8, 1.6)):
                p0 = (int(x * px), int(y * px))
                p1 = (int((x + wx) * px), int((y + wy) * px))
                glass = tuple(int(c) for c in rng.integers(20, 110, 3))
                cv2.rectangle(canvas, p0, p1, glass, -1)
                cv2.rectangle(canvas, p0, p1, (230, 230, 225), max(1, int(0.06 * px)))
    if kind == "roof":  # parapet and rooftop units
        cv2.rectangle(canvas, (0, 0), (W - 1, H - 1), (205, 200, 190), max(1, int(0.3 * px)))
        for _ in range(int(size_m[0] * size_m[1] / 12) + 2):
            p0 = rng.uniform(0.1, 0.8, 2) * (W, H)
            p1 = p0 + rng.uniform(0.5, 1.8, 2) * px
            grey = int(rng.integers(150, 240))
            cv2.rectangle(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), (grey, grey, grey - 10), -1)
            cv2.rectangle(canvas, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), (40, 40, 40),
                          max(1, int(0.05 * px)))
    area = size_m[0] * size_m[1]
    for _ in range(int(_SHAPES_PER_M2[kind] * area) + 10):
        k = rng.integers(0, 5)
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        r = max(2, int(np.exp(rng.uniform(np.log(0.04), np.log(0.9))) * px))
        draw_random_shape(canvas, rng, k, c, r, col, outline=lambda: max(1, r // 6),
                          line=lambda: max(1, int(rng.uniform(0.02, 0.12) * px)),
                          text=lambda: _street_text(canvas, rng, c, r, col))
    if kind == "ground":  # road markings: long straight bands
        for _ in range(int(area / 60) + 2):
            p = rng.uniform(0, 1, 2) * (W, H)
            ang = rng.uniform(0, np.pi)
            L = rng.uniform(3, 15) * px
            d = (np.cos(ang) * L, np.sin(ang) * L)
            col = (235, 235, 230) if rng.random() < 0.7 else (230, 200, 40)
            cv2.line(canvas, (int(p[0]), int(p[1])), (int(p[0] + d[0]), int(p[1] + d[1])), col,
                     max(1, int(0.12 * px)), cv2.LINE_AA)
    fine = cv2.resize(rng.normal(0, 8, (H // 2 + 2, W // 2 + 2, 1)).astype(np.float32), (W, H))
    return np.clip((canvas.astype(np.float32) + fine[..., None]) * shade, 0, 255).astype(np.uint8)


def _street_text(canvas: np.ndarray, rng: np.random.Generator, c: tuple[int, int], r: int,
                 col: tuple[int, int, int]) -> None:
    txt = "".join(rng.choice(_CHARS, int(rng.integers(2, 7))))
    scale = r / 22.0
    cv2.putText(canvas, txt, c, cv2.FONT_HERSHEY_DUPLEX, scale, col, max(1, int(scale * 2)), cv2.LINE_AA)


def _quad(origin, u_vec, v_vec, rng: np.random.Generator, kind: str, texel: float, name: str) -> Quad:
    """Quad from an origin and two perpendicular edge vectors (metres), Lambert-shaded texture."""
    su, sv = float(np.linalg.norm(u_vec)), float(np.linalg.norm(v_vec))
    u, v = np.asarray(u_vec, float) / su, np.asarray(v_vec, float) / sv
    shade = 0.55 + 0.45 * abs(float(np.cross(u, v) @ _LIGHT))
    return Quad(np.asarray(origin, float), u, v, (su, sv), _surface_texture(rng, (su, sv), texel, kind, shade), name)


def _box_quads(bx: Box, rng: np.random.Generator, name: str, side_kind: str, top_kind: str,
               z0: float = 0.0, skip_side: int | None = None) -> list[Quad]:
    """Side faces (facade texture) and top (roof) of a box; side j runs from corner j to j+1."""
    c, s = np.cos(bx.yaw), np.sin(bx.yaw)
    ex, ey = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    ctr = np.array([*bx.centre, z0])
    hx, hy, h = bx.half[0], bx.half[1], bx.height
    corners = [ctr + sx * hx * ex + sy * hy * ey for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    out = []
    for j in range(4):
        if j == skip_side:
            continue
        a, b = corners[j], corners[(j + 1) % 4]
        out.append(_quad(a + [0, 0, h], b - a, [0, 0, -h], rng, side_kind, 0.015, f"{name}_side{j}"))
    # v runs south, so the texture reads unmirrored from above (text, rows down = southward)
    out.append(_quad(corners[3] + [0, 0, h], 2 * hx * ex, -2 * hy * ey, rng, top_kind, 0.04, f"{name}_top"))
    return out


def _hall_quads(hall: Box, rng: np.random.Generator, door_w: float = 4.0, door_h: float = 3.0) -> list[Quad]:
    """The indoor room: a box whose +y side (side 2) has a door; floor, ceiling and furniture inside."""
    quads = _box_quads(hall, rng, "hall", "facade", "roof", skip_side=2)
    c, s = np.cos(hall.yaw), np.sin(hall.yaw)
    ex, ey = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    ctr = np.array([*hall.centre, 0.0])
    hx, hy, h = hall.half[0], hall.half[1], hall.height
    a = ctr + hx * ex + hy * ey           # side 2 runs from (+x, +y) to (-x, +y)
    along = -ex
    side = (2 * hx - door_w) / 2
    quads += [
        _quad(a + [0, 0, h], side * along, [0, 0, -h], rng, "facade", 0.015, "hall_front_right"),
        _quad(a + (side + door_w) * along + [0, 0, h], side * along, [0, 0, -h], rng, "facade", 0.015,
              "hall_front_left"),
        _quad(a + side * along + [0, 0, h], door_w * along, [0, 0, -(h - door_h)], rng, "facade", 0.015,
              "hall_lintel"),
        _quad(ctr - hx * ex + hy * ey + [0, 0, 0.005], 2 * hx * ex, -2 * hy * ey, rng, "floor", 0.015, "hall_floor"),
        _quad(ctr - hx * ex + hy * ey + [0, 0, h - 0.01], 2 * hx * ex, -2 * hy * ey, rng, "floor", 0.02,
              "hall_ceiling"),
    ]
    table = Box(tuple((ctr + 0.5 * hx * ex - 0.3 * hy * ey)[:2]), (0.8, 0.5), 1.0, hall.yaw + 0.3)
    quads += _box_quads(table, rng, "hall_table", "floor", "floor", z0=0.005)
    return quads


# ---- the world --------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class World:
    """A generated outdoor world.

    scene: the surfaces in ENU metres (bounds: (2, 3) min / max corners of the ground and roofs).
    georef: the true georeference (WGS84 origin of ENU, and ``enu_from_map``).
    buildings: footprints (Box) of the buildings, the hall last.
    seed: generator seed.
    """

    scene: SyntheticScene
    georef: Georeference
    buildings: tuple[Box, ...]
    seed: int

    @property
    def map_from_enu(self) -> Sim3:
        """Inverse of ``georef.enu_from_map``: x_map = (R^T (x_enu - t)) / s."""
        g = self.georef
        return Sim3(1.0 / g.scale, g.rotation.T, -(g.rotation.T @ g.translation) / g.scale)

    def trajectory(self, n_frames: int) -> list[Rigid3]:
        """n_frames ``cam_from_enu`` poses on a closed street walk around the plaza (ellipse ~39 m).

        Cameras at 1.6 m (+-5 cm) look outward and ahead (yaw = polar angle + 40 deg, +-10 deg
        wobble), pitched 12-16 deg down, no roll.
        """
        poses = []
        rx, ry = _PATH_RADII
        for i in range(n_frames):
            th = 2 * np.pi * i / n_frames
            c = np.array([rx * np.cos(th), ry * np.sin(th), 1.6 + 0.05 * np.sin(3 * th)])
            yaw = np.arctan2(ry * np.sin(th), rx * np.cos(th)) + np.radians(40) + 0.17 * np.sin(2 * th)
            pitch = -np.radians(14) + np.radians(2) * np.sin(3 * th + 1.0)
            fwd = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
            right = np.cross(fwd, [0.0, 0.0, 1.0])
            right /= np.linalg.norm(right)
            R = np.stack([right, np.cross(fwd, right), fwd], 1)  # enu_from_cam rotation
            poses.append(Rigid3(R.T, -R.T @ c))
        centres = np.array([p.centre for p in poses])
        if len(poses) and (self.scene.distance_to_surfaces(centres).min() < 1.0
                           or self.scene.inside_boxes(centres).any()):
            raise RuntimeError("street walk comes closer than 1 m to a surface")
        return poses

    def cam_from_map(self, cam_from_enu: Rigid3) -> Rigid3:
        """The same pose in the map frame."""
        return self.map_from_enu.transform_pose(cam_from_enu)

    def enu_to_geodetic(self, enu: np.ndarray) -> np.ndarray:
        """(N, 3) ENU -> (N, 3) latitude, longitude (deg), ellipsoidal height (m), by pyproj."""
        e = np.asarray(enu, np.float64).reshape(-1, 3)
        t = enu_transformer(self.georef.latitude, self.georef.longitude, self.georef.altitude)
        lon, lat, h = t.transform(e[:, 0], e[:, 1], e[:, 2], direction=TransformDirection.INVERSE)
        return np.stack([lat, lon, h], 1)

    def geodetic_to_enu(self, geodetic: np.ndarray) -> np.ndarray:
        """(N, 3) latitude, longitude (deg), ellipsoidal height (m) -> (N, 3) ENU at the true origin."""
        g = np.asarray(geodetic, np.float64).reshape(-1, 3)
        t = enu_transformer(self.georef.latitude, self.georef.longitude, self.georef.altitude)
        return np.stack(t.transform(g[:, 1], g[:, 0], g[:, 2]), 1)


def generate_world(seed: int = 0, origin: tuple[float, float, float] = DEFAULT_ORIGIN,
                   map_yaw_deg: float = 37.0, map_scale: float = 1.03,
                   map_translation: tuple[float, float, float] = (14.0, -9.0, 1.2)) -> World:
    """A deterministic outdoor world; the true map frame is ``enu_from_map`` = (map_scale,
    yaw map_yaw_deg about up, map_translation).  The layout is fixed, the textures follow seed."""
    rng = np.random.default_rng(seed)
    g = _GROUND_HALF
    buildings = (
        Box((-12.5, 8.0), (4.5, 3.5), 7.0, 0.15),
        Box((12.0, 8.5), (4.0, 4.0), 5.5, -0.25),
        Box((-13.0, -8.5), (2.5, 2.0), 3.0, 0.5),
        Box((13.5, -8.0), (3.0, 2.5), 4.5, -0.1),
        Box((0.5, -11.0), (6.0, 3.5), 4.0, 0.08),   # the hall (door on its +y side, facing the plaza)
    )
    quads = [_quad([-g, g, 0.0], [2 * g, 0, 0], [0, -2 * g, 0], rng, "ground", 0.025, "ground")]
    for k, bx in enumerate(buildings[:-1]):
        quads += _box_quads(bx, rng, f"building{k}", "facade", "roof")
    quads += _hall_quads(buildings[-1], rng)
    top = max(b.height for b in buildings)
    scene = SyntheticScene(quads, np.array([[-g, -g, 0.0], [g, g, top]]), list(buildings), seed)
    georef = Georeference(float(origin[0]), float(origin[1]), float(origin[2]), float(map_scale),
                          rz(np.radians(map_yaw_deg)), np.asarray(map_translation, np.float64))
    return World(scene, georef, buildings, seed)


# ---- ground images with GPS ---------------------------------------------------------------------

def write_ground_dataset(world: World, root: str | Path, n_frames: int = 20, camera: Camera = GROUND_CAMERA,
                         gps_bias_m: float = 1.5, gps_noise_m: float = 1.5, gps_vertical_m: float = 3.0,
                         gps_seed: int = 1) -> list[ImageRecord]:
    """Render the street walk under root; poses in the MAP frame, GPS perturbed.

    Writes ``street/frame-NNNNNN.png`` (RGB), ``poses_map.txt`` (``name qw qx qy qz tx ty tz f``,
    **cam_from_map**), ``gps.csv`` (name, latitude, longitude, altitude: the perturbed GPS) and
    ``camera.txt``.  GPS = true centre + a common horizontal bias (N(0, gps_bias_m) per axis)
    + per-image noise (N(0, gps_noise_m) per axis, N(0, gps_vertical_m) vertically), seeded.
    Returns one ImageRecord per frame (cam_from_world = cam_from_map, gps, timestamp = index).
    """
    root = Path(root)
    (root / "street").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(gps_seed)
    poses = world.trajectory(n_frames)
    centres = np.array([p.centre for p in poses])
    noise = np.concatenate([rng.normal(0, gps_bias_m, 2) + rng.normal(0, gps_noise_m, (n_frames, 2)),
                            rng.normal(0, gps_vertical_m, (n_frames, 1))], 1)
    gps = world.enu_to_geodetic(centres + noise)
    records, lines, rows = [], [], []
    for i, cam_from_enu in enumerate(poses):
        rgb, _ = world.scene.render(cam_from_enu, camera)
        name = f"street/frame-{i:06d}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cam_from_map = world.cam_from_map(cam_from_enu)
        vals = [*cam_from_map.quat_wxyz, *cam_from_map.translation]
        lines.append(" ".join([name] + [f"{v:.12f}" for v in vals] + [f"{camera.focals[0]:.10g}"]))
        lat, lon, alt = (float(v) for v in gps[i])
        rows.append((name, f"{lat:.10f}", f"{lon:.10f}", f"{alt:.4f}"))
        records.append(ImageRecord(name=name, camera=camera, cam_from_world=cam_from_map,
                                   gps=GeoPosition(lat, lon, alt, accuracy_m=gps_noise_m), timestamp=float(i)))
    (root / "poses_map.txt").write_text("\n".join(lines) + "\n")
    with open(root / "gps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "latitude", "longitude", "altitude"])
        w.writerows(rows)
    (root / "camera.txt").write_text(str(camera) + "\n")
    return records


# ---- orthophoto and DSM ---------------------------------------------------------------------------

def cast_vertical(scene: SyntheticScene, en: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cast (N, 2) ENU (east, north) vertical rays downward onto the scene's quads.

    Returns up (N,) of the topmost hit (NaN = no hit), quad index (N,) (-1) and the hit's
    (a, b) quad coordinates in metres, (N,) each.  Vertical quads are invisible from above.
    """
    e, n = np.asarray(en, np.float64).T
    top = float(scene.bounds[1, 2]) + 1.0
    best = np.full(len(e), np.inf)
    qid = np.full(len(e), -1, np.int64)
    A, B = np.zeros(len(e)), np.zeros(len(e))
    for i, q in enumerate(scene.quads):
        nz = q.normal[2]
        if abs(nz) < 1e-9:
            continue
        ox, oy, oz = e - q.origin[0], n - q.origin[1], top - q.origin[2]
        t = (ox * q.normal[0] + oy * q.normal[1] + oz * nz) / nz       # ray O + t (0, 0, -1)
        a = ox * q.u[0] + oy * q.u[1] + (oz - t) * q.u[2]
        b = ox * q.v[0] + oy * q.v[1] + (oz - t) * q.v[2]
        ok = (t > 0) & (t < best) & (a >= 0) & (a <= q.extent[0]) & (b >= 0) & (b <= q.extent[1])
        best[ok], qid[ok], A[ok], B[ok] = t[ok], i, a[ok], b[ok]
    up = np.where(qid >= 0, top - best, np.nan)
    return up, qid, A, B


def _sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples (M, 3) float32 of (h, w, 3) uint8 at (M,) array-index coordinates (cv2.remap)."""
    m, width = len(x), 4096
    pad = -m % width
    mx = np.pad(x.astype(np.float32), (0, pad)).reshape(-1, width)
    my = np.pad(y.astype(np.float32), (0, pad)).reshape(-1, width)
    out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out.reshape(-1, 3)[:m].astype(np.float32)


def _shade_vertical(scene: SyntheticScene, en: np.ndarray, footprint_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Colours (N, 3) float32 and up (N,) seen from above at (N, 2) ENU points (mip level of footprint_m)."""
    up, qid, A, B = cast_vertical(scene, en)
    rgb = np.zeros((len(en), 3), np.float32)
    for i in np.unique(qid[qid >= 0]):
        q, sel = scene.quads[i], np.flatnonzero(qid == i)
        pyr = q.pyramid
        lev = float(np.clip(np.log2(footprint_m / (q.extent[0] / q.texture.shape[1])), 0, len(pyr) - 1))
        l0 = min(int(lev), max(len(pyr) - 2, 0))
        cols = []
        for img in pyr[l0:l0 + 2]:
            h, w = img.shape[:2]
            cols.append(_sample(img, A[sel] * w / q.extent[0] - 0.5, B[sel] * h / q.extent[1] - 0.5))
        w1 = np.float32(np.clip(lev - l0, 0, 1))
        rgb[sel] = cols[0] * (1 - w1) + cols[-1] * w1
    return rgb, up


@dataclass(frozen=True, eq=False)
class Orthophoto:
    """A rendered orthophoto on a grid of a projected CRS.

    rgba: (H, W, 4) uint8 (alpha 0 where no surface), row 0 = north.
    dsm: (H, W) float32 ellipsoidal height (m, WGS84) of the top surface at pixel centres, NaN where none.
    transform: pixel (col, row) corner -> CRS (x, y) (GDAL convention).  crs: the grid's CRS.
    """

    rgba: np.ndarray
    dsm: np.ndarray
    transform: Affine
    crs: CRS


def render_orthophoto(world: World, gsd: float = 0.1, crs: CRS | str | None = None, margin_m: float = 2.0,
                      supersample: int = 2, photometric: bool = True) -> Orthophoto:
    """True orthophoto of the world (vertical rays) on a north-up grid of gsd metres in crs.

    crs: a projected CRS (default: the UTM zone of the origin).  The grid covers the ground
    square plus margin_m (the margin is transparent).  Colours average supersample^2 rays per
    pixel; photometric: apply a fixed gain / gamma / tint, as a different camera and day would.
    """
    g = world.georef
    crs = utm_crs(g.latitude, g.longitude) if crs is None else CRS.from_user_input(crs)
    to_crs = Transformer.from_crs(CRS.from_epsg(4326), crs, always_xy=True)
    from_crs = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    enu = enu_transformer(g.latitude, g.longitude, g.altitude)
    half = _GROUND_HALF + margin_m
    ring = np.array([[x, y, 0.0] for x in np.linspace(-half, half, 9) for y in np.linspace(-half, half, 9)])
    ll = world.enu_to_geodetic(ring)
    x, y = to_crs.transform(ll[:, 1], ll[:, 0])
    left, top = np.floor(np.min(x) / gsd) * gsd, np.ceil(np.max(y) / gsd) * gsd
    W = int(np.ceil((np.max(x) - left) / gsd))
    H = int(np.ceil((top - np.min(y)) / gsd))
    transform = Affine(gsd, 0.0, left, 0.0, -gsd, top)

    def enu_at(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        px = transform.a * cols + transform.b * rows + transform.c
        py = transform.d * cols + transform.e * rows + transform.f
        lon, lat = from_crs.transform(px, py)
        e, n, _ = enu.transform(lon, lat, np.full_like(lon, g.altitude))
        return np.stack([e, n], 1)

    jj, ii = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    acc = np.zeros((H * W, 3), np.float32)
    hit = np.zeros(H * W, np.float32)
    for dy in range(supersample):
        for dx in range(supersample):
            en = enu_at(jj.ravel() + (dx + 0.5) / supersample, ii.ravel() + (dy + 0.5) / supersample)
            rgb, up = _shade_vertical(world.scene, en, gsd / supersample)
            acc += rgb
            hit += np.isfinite(up)
    rgb = acc / np.maximum(hit, 1)[:, None]
    if photometric:
        rgb = 255.0 * (np.clip(rgb, 0, 255) / 255.0) ** 0.9 * np.array([0.93, 0.97, 1.06], np.float32) + 6.0
    rgba = np.zeros((H * W, 4), np.uint8)
    rgba[:, :3] = np.clip(np.round(rgb), 0, 255)
    rgba[:, 3] = np.where(hit == supersample ** 2, 255, 0)
    rgba[rgba[:, 3] == 0, :3] = 0
    # DSM: the top surface at pixel centres, as ellipsoidal heights (pyproj)
    en = enu_at(jj.ravel() + 0.5, ii.ravel() + 0.5)
    up = cast_vertical(world.scene, en)[0]
    dsm = np.full(H * W, np.nan, np.float32)
    ok = np.isfinite(up)
    dsm[ok] = enu.transform(en[ok, 0], en[ok, 1], up[ok], direction=TransformDirection.INVERSE)[2]
    return Orthophoto(rgba.reshape(H, W, 4), dsm.reshape(H, W), transform, crs)


DSM_NODATA = -9999.0


def write_orthophoto(ortho: Orthophoto, path: str | Path, dsm_path: str | Path | None = None) -> None:
    """Write the orthophoto as an RGBA GeoTIFF (alpha band) and optionally the DSM as float32
    GeoTIFF (nodata -9999), both with the orthophoto's CRS and geotransform."""
    H, W = ortho.rgba.shape[:2]
    profile = dict(driver="GTiff", width=W, height=H, crs=ortho.crs.to_wkt(), transform=ortho.transform,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", count=4, dtype="uint8", photometric="RGB", **profile) as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]  # before data
        dst.write(np.moveaxis(ortho.rgba, 2, 0))
    if dsm_path is not None:
        with rasterio.open(dsm_path, "w", count=1, dtype="float32", nodata=DSM_NODATA, **profile) as dst:
            dst.write(np.where(np.isfinite(ortho.dsm), ortho.dsm, DSM_NODATA).astype(np.float32), 1)
