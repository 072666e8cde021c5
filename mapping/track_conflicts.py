"""Conflicting tracks (two keypoints of one image in one 3D point) split into consistent tracks.

COLMAP's triangulator and its track merging join keypoints through chains of pair matches, so a
track can hold two keypoints of the same image (redkitchen, 60 posed images: 664 of 11,131
points, the two keypoints a median 2.3 px apart): at least one of them belongs to another scene
point, and the point's position is a compromise of both. Each such track is split: its
observations, smallest reprojection error first, go to the first sub-track without a keypoint of
their image; every sub-track with two or more images is triangulated again
(``pycolmap.estimate_triangulation``: RANSAC on reprojection errors, then refinement), keeping
its inliers; the rest of the observations are dropped.
"""
from __future__ import annotations

import numpy as np
import pycolmap


def _sub_tracks(image_ids: list[int], errors: np.ndarray) -> list[list[int]]:
    """Indices into the track, grouped so that no group holds two observations of one image;
    observations in increasing order of ``errors``, each into the first group that can take it."""
    groups: list[list[int]] = []
    images: list[set[int]] = []
    for k in np.argsort(errors, kind="stable"):
        for g, seen in zip(groups, images):
            if image_ids[k] not in seen:
                g.append(int(k))
                seen.add(image_ids[k])
                break
        else:
            groups.append([int(k)])
            images.append({image_ids[k]})
    return groups


def is_conflicting(point: pycolmap.Point3D) -> bool:
    """Whether the point's track observes some image more than once."""
    return len({e.image_id for e in point.track.elements}) < point.track.length()


def split_conflicting_tracks(rec: pycolmap.Reconstruction, max_error_px: float,
                             min_tri_angle_deg: float) -> dict[str, int]:
    """Split every track of ``rec`` (in place) that observes one image twice; returns counts:
    ``conflicting`` tracks, sub-tracks ``kept`` (re-triangulated, >= 2 images) and observations
    ``dropped``."""
    opts = pycolmap.EstimateTriangulationOptions()
    opts.residual_type = pycolmap.TriangulationResidualType.REPROJECTION_ERROR
    opts.ransac.max_error = float(max_error_px)
    opts.ransac.random_seed = 0
    opts.min_tri_angle = float(np.radians(min_tri_angle_deg))
    conflicting = [pid for pid, p in rec.points3D.items() if is_conflicting(p)]
    kept = dropped = 0
    for pid in conflicting:
        point = rec.points3D[pid]
        elements = [(e.image_id, e.point2D_idx) for e in point.track.elements]
        xy, cams_from_world, cameras, errors = [], [], [], []
        for image_id, idx in elements:
            image = rec.image(image_id)
            camera = rec.camera(image.camera_id)
            xy.append(image.points2D[idx].xy)
            cams_from_world.append(image.cam_from_world())
            cameras.append(camera)
            proj = camera.img_from_cam(cams_from_world[-1] * point.xyz)
            errors.append(np.inf if proj is None else float(np.linalg.norm(proj - xy[-1])))
        color = np.asarray(point.color, np.uint8)
        rec.delete_point3D(pid)
        xy_arr = np.asarray(xy, np.float64)
        for group in _sub_tracks([i for i, _ in elements], np.asarray(errors)):
            if len(group) < 2:
                dropped += len(group)
                continue
            est = pycolmap.estimate_triangulation(xy_arr[group], [cams_from_world[k] for k in group],
                                                  [cameras[k] for k in group], opts)
            inliers = [k for k, ok in zip(group, est["inliers"]) if ok] if est is not None else []
            if len(inliers) < 2:
                dropped += len(group)
                continue
            track = pycolmap.Track()
            for k in inliers:
                track.add_element(*elements[k])
            rec.add_point3D(est["xyz"], track, color)
            kept += 1
            dropped += len(group) - len(inliers)
    return {"conflicting": len(conflicting), "kept": kept, "dropped": dropped}
