"""A large map for the console benchmark: the generated room's SfM map with its point cloud
densified from the same room's rendered RGB-D frames.

The SfM map of a small room has ~25,000 points; a building's map has hundreds of thousands. What
the console's first render costs depends on how many points it draws, so the benchmark's map is
the room's real bundle (cameras, features, layers untouched) whose ``model/points3D.bin`` also
holds points back-projected from the rendered depth, with the rendered colours (true geometry and
colour of the room; no track: no localization uses them). The manifest's file checksums and
point count are rewritten, so the server validates it like any bundle.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import cv2
import numpy as np

from bundleio.manifest import read_manifest, write_manifest

_HEAD = struct.Struct("<Q")


def depth_points(images: Path, n: int, seed: int = 0, fx: float = 525.0, fy: float = 525.0,
                 cx: float = 320.0, cy: float = 240.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (map frame, m) and colours (uint8) back-projected from the 7-Scenes-style frames
    under ``images`` (``seq-XX/frame-N.depth.png`` in mm, ``.color.png``, ``.pose.txt`` world_from_cam;
    pinhole intrinsics of the renderer), drawn uniformly over every valid depth pixel."""
    frames = sorted(Path(images).glob("seq-*/frame-*.depth.png"))
    if not frames:
        raise FileNotFoundError(f"no depth frames under {images}")
    rng = np.random.default_rng(seed)
    per = int(np.ceil(n / len(frames)))
    xyz, rgb = [], []
    for f in frames:
        stem = str(f)[: -len(".depth.png")]
        depth = cv2.imread(str(f), cv2.IMREAD_UNCHANGED).astype(np.float64) / 1000.0
        colour = cv2.cvtColor(cv2.imread(stem + ".color.png"), cv2.COLOR_BGR2RGB)
        world_from_cam = np.loadtxt(stem + ".pose.txt")
        v, u = np.nonzero(depth > 0)
        pick = rng.choice(len(u), min(per, len(u)), replace=False)
        u, v = u[pick], v[pick]
        z = depth[v, u]
        cam = np.stack([(u + 0.5 - cx) / fx * z, (v + 0.5 - cy) / fy * z, z], 1)
        xyz.append(cam @ world_from_cam[:3, :3].T + world_from_cam[:3, 3])
        rgb.append(colour[v, u])
    xyz, rgb = np.concatenate(xyz)[:n], np.concatenate(rgb)[:n]
    return xyz, rgb


def densify_bundle(bundle: Path, images: Path, out: Path, total_points: int, seed: int = 0) -> dict:
    """Copy ``bundle`` to ``out`` with ``total_points`` 3D points (its own + depth points; module
    docstring). Returns ``{"sfm_points", "depth_points", "total"}``."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(bundle, out)
    path = out / "model" / "points3D.bin"
    buf = path.read_bytes()
    (n_sfm,) = _HEAD.unpack_from(buf, 0)
    add = max(0, total_points - n_sfm)
    # the highest point id in use: walk the records (id u64, xyz 3 f64, rgb 3 u8, error f64, track length u64, track)
    off, max_id = 8, 0
    for _ in range(n_sfm):
        (pid,) = _HEAD.unpack_from(buf, off)
        max_id = max(max_id, pid)
        (tl,) = _HEAD.unpack_from(buf, off + 43)
        off += 51 + 8 * tl
    xyz, rgb = depth_points(images, add, seed)
    rec = np.zeros(len(xyz), np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"),
                                       ("tl", "<u8")]))
    rec["id"] = np.arange(max_id + 1, max_id + 1 + len(xyz))
    rec["xyz"], rec["rgb"], rec["err"] = xyz, rgb, -1.0
    path.write_bytes(_HEAD.pack(n_sfm + len(xyz)) + buf[8:] + rec.tobytes())
    manifest = read_manifest(out)
    manifest.pop("files", None)
    manifest.setdefault("statistics", {})["n_points3D"] = int(n_sfm + len(xyz))
    write_manifest(out, manifest)
    return {"sfm_points": int(n_sfm), "depth_points": int(len(xyz)), "total": int(n_sfm + len(xyz))}
