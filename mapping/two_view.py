"""The two-view geometry an unposed mapper is given for each verified pair: COLMAP's own
classification of the pair's inliers (calibrated E, planar H, panoramic / pure rotation) and the
relative pose decomposed from the right model, instead of an essential matrix for every pair.

Why: a pair that sees mostly one wall is plane-degenerate; its essential matrix decomposes into a
wrong relative pose (measured on the generated 30-image loop: up to 36 deg off the truth, with
inliers consistent with the true geometry to 0.4 px). Written as CALIBRATED, both pycolmap mappers
trust it: the incremental model folded (106 / 172 cm median / max centre error), the global one
too (44 / 97 cm). Every geometry is written *with* a configuration type (pycolmap's triangulator
ignores geometries without one).
"""
from __future__ import annotations

import numpy as np
import pycolmap

from core.camera import Camera
from vision.matching import VerifiedPair

_USABLE = {pycolmap.TwoViewGeometryConfiguration.CALIBRATED, pycolmap.TwoViewGeometryConfiguration.PLANAR,
           pycolmap.TwoViewGeometryConfiguration.PANORAMIC,
           pycolmap.TwoViewGeometryConfiguration.PLANAR_OR_PANORAMIC}


def essential_geometry(vp: VerifiedPair) -> pycolmap.TwoViewGeometry:
    """The pair as verified (OpenCV essential matrix), configuration CALIBRATED."""
    tvg = pycolmap.TwoViewGeometry()
    tvg.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
    tvg.inlier_matches = vp.matches.astype(np.uint32)
    tvg.E = vp.E
    tvg.cam2_from_cam1 = vp.cam2_from_cam1.to_pycolmap()
    return tvg


def classified_geometry(kp1: np.ndarray, kp2: np.ndarray, vp: VerifiedPair, cam1: Camera, cam2: Camera,
                        max_error_px: float, min_inliers: int, seed: int = 0) -> pycolmap.TwoViewGeometry:
    """COLMAP's two-view estimate (E / F / H, configuration, relative pose) over the pair's verified
    matches ``vp.matches`` (M, 2) into kp1 (N1, 2) / kp2 (N2, 2) pixels; :func:`essential_geometry`
    (the pair as verified) when COLMAP finds no usable configuration or too few inliers.
    Measured: keeping the verified (OpenCV) geometry for the pairs COLMAP calls CALIBRATED and
    replacing only the planar / panoramic ones still let the incremental model of the generated
    384x256 loop fold (83 cm epipolar error on a 232-inlier pair); replacing every pair did not.
    On Strecha it moves results both ways by up to 1 mm (fountain-P11 0.16 / 0.32 -> 0.20 / 0.32
    cm median / max, Herz-Jesus-P8 0.37 / 0.47 -> 0.33 / 0.57)."""
    m = vp.matches
    opts = pycolmap.TwoViewGeometryOptions()
    opts.compute_relative_pose = True
    opts.min_num_inliers = min_inliers
    opts.detect_watermark = False
    opts.ransac.max_error = max_error_px
    opts.ransac.random_seed = seed
    idx = np.c_[np.arange(len(m)), np.arange(len(m))].astype(np.uint32)
    tvg = pycolmap.estimate_calibrated_two_view_geometry(
        cam1.to_pycolmap(1), np.asarray(kp1, np.float64)[m[:, 0]], cam2.to_pycolmap(2),
        np.asarray(kp2, np.float64)[m[:, 1]], idx, opts)
    inl = np.asarray(tvg.inlier_matches, np.int64).reshape(-1, 2)
    if tvg.config not in _USABLE or len(inl) < min_inliers:
        return essential_geometry(vp)
    tvg.inlier_matches = m[inl[:, 0]].astype(np.uint32)
    return tvg
