"""Is an unposed model consistent with the pair geometry it was built from? Loops that did not close
(a model drifted or folded around a loop), and global-mapping models placed badly, disagree with
the verified two-view geometry of the pairs that span them: those pairs' inlier matches no longer
satisfy the epipolar geometry of the model's poses (the rotation the pair's own RANSAC found is
reported, not judged). Pure functions over a model and the verified pairs; the refusal names the
numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pycolmap

from core.camera import Camera
from core.geometry import Rigid3, rotation_angle_deg
from core.types import ImageRecord, VlocError
from vision.matching import VerifiedPair


@dataclass(frozen=True)
class LoopCheckConfig:
    """When a model's loops count as inconsistent.

    Measured (median epipolar error of each verified pair's inliers under the model's poses,
    pairs with >= 40 inliers): right models stay at or under 0.4 px on every pair (the true poses
    of the generated 384x256 loop 0.41 px, its right incremental model 0.19 px; Strecha
    fountain-P11 0.19 px, Herz-Jesus-P8 0.34 px; the 32-image 1536x1024 loop 0.10-0.27 px); wrong
    ones have pairs at 8-710 px (folded incremental models of the generated loops: 83 px at
    106 / 172 cm centre error, 571 px at 90 / 275 cm; global models 15-23 px at 44-61 cm median).
    4 px sits 10x above the right models and 2x below the smallest wrong one seen. The folds
    touched 3-9 of 83-103 pairs carrying 2.3-5.7 % of the inliers, hence the 2 % share and the
    strong-pair rule.
    """

    #: a pair is inconsistent when the median epipolar (Sampson) error of its inliers under the
    #: model's relative pose exceeds this (pixels). The pair's own two-view rotation is reported
    #: but not judged: pairs that see one wall are plane-degenerate and their RANSAC rotation can
    #: be far off (measured: 49 deg on a generated loop whose model was right to 2 mm).
    max_pair_epipolar_px: float = 4.0
    #: only pairs with at least this many inliers are judged (weak pairs may be wrong matches the
    #: mapper rightly ignored).
    min_pair_inliers: int = 40
    #: the model is refused when inconsistent pairs carry more than this share of the judged
    #: pairs' inliers (a single wrong pair on a repeated texture stays below it).
    max_inconsistent_inlier_share: float = 0.02
    #: ... or when any judged pair with this many inliers is inconsistent (a strong pair is a real
    #: view overlap: its disagreement is a loop the model did not close).
    strong_pair_inliers: int = 150


@dataclass
class LoopReport:
    """Per judged pair: image names, inliers, median epipolar error (px), rotation disagreement (deg)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    epipolar_px: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rotation_deg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    inconsistent: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    consistent: bool = True
    reason: str = ""

    def summary(self) -> dict:
        """JSON-able numbers for the build statistics."""
        n = len(self.pairs)
        bad = np.nonzero(self.inconsistent)[0]
        worst = int(np.argmax(self.epipolar_px)) if n else -1
        return {"n_pairs_checked": n, "n_pairs_inconsistent": int(len(bad)),
                "inconsistent_inlier_share": float(self.inliers[bad].sum() / max(1, self.inliers.sum())),
                "epipolar_px_median": float(np.median(self.epipolar_px)) if n else None,
                "epipolar_px_max": float(self.epipolar_px[worst]) if n else None,
                "rotation_deg_max": float(self.rotation_deg.max()) if n else None,
                "consistent": self.consistent}


def sampson_px(x1: np.ndarray, x2: np.ndarray, cam2_from_cam1: Rigid3, focal: float) -> np.ndarray:
    """(N,) Sampson epipolar errors in pixels of (N, 2) normalised coordinates x1 (camera 1), x2
    (camera 2) under the relative pose ``cam2_from_cam1`` (its translation's scale is irrelevant).
    Without a baseline (a model that put both cameras at one place) the error is the transfer
    error of the rotation alone, x2 against R x1: small only if the views truly share a centre."""
    t = cam2_from_cam1.translation
    norm = np.linalg.norm(t)
    if norm < 1e-12:
        p = np.c_[x1, np.ones(len(x1))] @ cam2_from_cam1.rotation.T
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.linalg.norm(p[:, :2] / p[:, 2:] - x2, axis=1) * focal
        return np.where(np.isfinite(err) & (p[:, 2] > 0), err, np.inf)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) / norm
    E = tx @ cam2_from_cam1.rotation
    h1, h2 = np.c_[x1, np.ones(len(x1))], np.c_[x2, np.ones(len(x2))]
    Ex1, Etx2 = h1 @ E.T, h2 @ E
    num = np.einsum("ij,ij->i", h2, Ex1) ** 2
    den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30)) * focal


def loop_report(rec: pycolmap.Reconstruction, records: list[ImageRecord], features: Sequence,
                verified: dict[tuple[int, int], VerifiedPair], cfg: LoopCheckConfig = LoopCheckConfig()
                ) -> LoopReport:
    """Judge every verified pair (record indices i < j) whose images the model registered.

    features[k].keypoints: (N_k, 2) pixels of record k (what the pairs' match indices refer to).
    """
    poses: dict[str, Rigid3] = {im.name: Rigid3.from_pycolmap(im.cam_from_world())
                                for im in rec.images.values() if im.has_pose}
    out = LoopReport()
    names, n_in, epi, rot = [], [], [], []
    for (i, j), vp in sorted(verified.items()):
        a, b = records[i], records[j]
        if len(vp.matches) < cfg.min_pair_inliers or a.name not in poses or b.name not in poses:
            continue
        model_rel = poses[b.name] * poses[a.name].inverse()              # cam_b_from_cam_a
        cam_a, cam_b = a.camera, b.camera
        x1 = cam_a.unproject(np.asarray(features[i].keypoints)[vp.matches[:, 0]])
        x2 = cam_b.unproject(np.asarray(features[j].keypoints)[vp.matches[:, 1]])
        names.append((a.name, b.name))
        n_in.append(len(vp.matches))
        epi.append(float(np.median(sampson_px(x1, x2, model_rel, _focal(cam_a, cam_b)))))
        rot.append(rotation_angle_deg(model_rel.rotation, vp.cam2_from_cam1.rotation))
    out.pairs = names
    out.inliers = np.asarray(n_in, np.int64)
    out.epipolar_px = np.asarray(epi, np.float64)
    out.rotation_deg = np.asarray(rot, np.float64)
    out.inconsistent = out.epipolar_px > cfg.max_pair_epipolar_px
    bad = np.nonzero(out.inconsistent)[0]
    share = out.inliers[bad].sum() / max(1, out.inliers.sum())
    strong = [k for k in bad if out.inliers[k] >= cfg.strong_pair_inliers]
    if share > cfg.max_inconsistent_inlier_share or strong:
        out.consistent = False
        k = max(bad, key=lambda k: (out.inliers[k] >= cfg.strong_pair_inliers, out.epipolar_px[k]))
        out.reason = (f"{len(bad)} of {len(names)} verified pairs disagree with the model "
                      f"({share:.1%} of their inliers; limit {cfg.max_inconsistent_inlier_share:.0%}, "
                      f"{len(strong)} with >= {cfg.strong_pair_inliers} inliers), worst "
                      f"{names[k][0]} - {names[k][1]}: {out.inliers[k]} inliers at median "
                      f"{out.epipolar_px[k]:.1f} px epipolar error (limit {cfg.max_pair_epipolar_px:g})")
    return out


def _focal(a: Camera, b: Camera) -> float:
    return 0.5 * (float(np.mean(a.focals)) + float(np.mean(b.focals)))


def require_consistent(report: LoopReport, method: str) -> None:
    """Refuse a model whose loops are inconsistent: one VlocError naming the numbers."""
    if not report.consistent:
        raise VlocError(f"the {method} SfM model is inconsistent with its image pairs, refused: {report.reason}")
