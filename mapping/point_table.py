"""A model's 3D points as plain arrays, and the bundle's compact model built from them.

A :class:`PointTable` is what a posed tile hands back from its worker (``points.npz`` in its
folder): no pycolmap objects, a few bytes per observation, so the client merging the tiles of a
20,000-image map never holds a tile's model nor anyone's full keypoint lists. Image indices are
global (rows of the build's record list); keypoint indices are rows of that image's full keypoint
list (what the COLMAP database of every part holds), so an observation means the same keypoint in
every tile.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pycolmap

from core.types import ImageRecord
from mapping.reconstruct import camera_ids


@dataclass
class PointTable:
    """3D points in the world frame and their observations.

    xyz (P, 3) float64 world points; rgb (P, 3) uint8; obs_point (M,) int64 row into xyz;
    obs_image (M,) int64 global image index; obs_kp (M,) int64 keypoint row of that image.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    obs_point: np.ndarray
    obs_image: np.ndarray
    obs_kp: np.ndarray

    @property
    def n_points(self) -> int:
        return len(self.xyz)

    @staticmethod
    def empty() -> PointTable:
        z = np.zeros(0, np.int64)
        return PointTable(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), z, z.copy(), z.copy())

    @staticmethod
    def of_model(model: pycolmap.Reconstruction, index_of_name: Mapping[str, int]) -> PointTable:
        """The points of ``model`` (in order of point id), images mapped to global indices by name."""
        gid = {iid: index_of_name[im.name] for iid, im in model.images.items()}
        ids = sorted(model.point3D_ids())
        xyz = np.zeros((len(ids), 3))
        rgb = np.zeros((len(ids), 3), np.uint8)
        pts, imgs, kps = [], [], []
        for row, pid in enumerate(ids):
            p = model.points3D[pid]
            xyz[row], rgb[row] = p.xyz, p.color
            els = p.track.elements
            pts.append(np.full(len(els), row, np.int64))
            imgs.append(np.fromiter((gid[e.image_id] for e in els), np.int64, len(els)))
            kps.append(np.fromiter((e.point2D_idx for e in els), np.int64, len(els)))
        cat = (lambda a: np.concatenate(a) if a else np.zeros(0, np.int64))
        return PointTable(xyz, rgb, cat(pts), cat(imgs), cat(kps))

    def select(self, keep: np.ndarray) -> PointTable:
        """The points where the (P,) bool ``keep`` holds, with their observations, renumbered."""
        new_row = np.cumsum(keep) - 1
        sel = keep[self.obs_point]
        return PointTable(self.xyz[keep], self.rgb[keep], new_row[self.obs_point[sel]], self.obs_image[sel],
                          self.obs_kp[sel])

    @staticmethod
    def concat(tables: Sequence[PointTable]) -> PointTable:
        if not tables:
            return PointTable.empty()
        offsets = np.cumsum([0] + [t.n_points for t in tables[:-1]])
        return PointTable(np.concatenate([t.xyz for t in tables]).reshape(-1, 3),
                          np.concatenate([t.rgb for t in tables]).reshape(-1, 3),
                          np.concatenate([t.obs_point + o for t, o in zip(tables, offsets)]),
                          np.concatenate([t.obs_image for t in tables]),
                          np.concatenate([t.obs_kp for t in tables]))

    def save(self, path: Path) -> None:
        """Write atomically (a temporary file renamed)."""
        path = Path(path)
        tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}.npz")
        np.savez(tmp, xyz=self.xyz, rgb=self.rgb, obs_point=self.obs_point, obs_image=self.obs_image,
                 obs_kp=self.obs_kp)
        os.replace(tmp, path)

    @staticmethod
    def load(path: Path) -> PointTable:
        with np.load(Path(path)) as z:
            return PointTable(z["xyz"], z["rgb"], z["obs_point"].astype(np.int64), z["obs_image"].astype(np.int64),
                              z["obs_kp"].astype(np.int64))


def compact_from_table(table: PointTable, records: Sequence[ImageRecord], keypoints_of
                       ) -> tuple[pycolmap.Reconstruction, list[str], list[np.ndarray], list[np.ndarray], list]:
    """The bundle's compact model from a table of posed points: per observing image only its
    observed keypoints as 2D points (in keypoint order), at the record's ``cam_from_world``.

    keypoints_of(i) -> (n, 2) float32 full keypoints of image i (read one image at a time).
    Returns (Reconstruction, names, keypoints, point3D_ids, rows) in image order, as
    :func:`mapping.build.compact_model` does for a whole model: image ids are global index + 1,
    camera ids shared among identical intrinsics, points numbered in order of first observation
    (images in order, keypoints in order), track elements in the same order.
    """
    out = pycolmap.Reconstruction()
    observing = np.unique(table.obs_image)  # only these need intrinsics (others may have none)
    cam_ids, cams = camera_ids([records[int(i)].camera for i in observing])
    cam_of_image = dict(zip(observing.tolist(), cam_ids))
    for cid, cam in cams.items():
        out.add_camera_with_trivial_rig(cam.to_pycolmap(cid))
    order = np.lexsort((table.obs_kp, table.obs_image))
    o_img, o_kp, o_pt = table.obs_image[order], table.obs_kp[order], table.obs_point[order]
    img_bounds = np.r_[0, np.flatnonzero(np.diff(o_img)) + 1, len(o_img)] if len(o_img) else np.zeros(1, np.int64)
    o_row = np.zeros(len(o_img), np.int64)
    names, kps, pids, rows = [], [], [], []
    for a, b in zip(img_bounds[:-1], img_bounds[1:]):
        i = int(o_img[a])
        o_row[a:b] = np.arange(b - a)
        kp = np.asarray(keypoints_of(i))[o_kp[a:b]].astype(np.float64)
        r = records[i]
        im = pycolmap.Image(name=r.name, keypoints=kp, camera_id=cam_of_image[i], image_id=i + 1)
        out.add_image_with_trivial_frame(im, r.cam_from_world.to_pycolmap())
        names.append(r.name)
        kps.append(kp.astype(np.float32))
        rows.append((i, o_kp[a:b].copy()))
    # points in order of first observation; each track's elements in observation order
    first = np.full(table.n_points, len(o_pt), np.int64)
    np.minimum.at(first, o_pt, np.arange(len(o_pt)))
    seen = np.flatnonzero(first < len(o_pt))
    new_id = np.zeros(table.n_points, np.int64)
    by_point = np.argsort(o_pt, kind="stable")
    starts = np.searchsorted(o_pt[by_point], np.arange(table.n_points + 1))
    for p in seen[np.argsort(first[seen], kind="stable")].tolist():
        sel = by_point[starts[p]:starts[p + 1]]
        track = pycolmap.Track()
        track.add_elements([pycolmap.TrackElement(int(i) + 1, int(k)) for i, k in zip(o_img[sel], o_row[sel])])
        new_id[p] = out.add_point3D(table.xyz[p], track, table.rgb[p])
    for a, b in zip(img_bounds[:-1], img_bounds[1:]):
        pids.append(new_id[o_pt[a:b]])
    out.update_point_3d_errors()
    return out, names, kps, pids, rows
