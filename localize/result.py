"""The localization result: the wire contract shared by the CLI, the API and the robot bridge."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.geometry import Rigid3


@dataclass
class PosePrior:
    """A rough position of the camera centre in the map frame (metres) with a 1-sigma radius."""

    position: np.ndarray
    sigma_m: float


@dataclass
class LocalizationResult:
    """Outcome of one query.

    cam_from_world: pose in the map frame, or None when no pose was estimated.
    covariance: (6, 6) covariance of the refined ``cam_from_world``: rotation vector [rad] of
        the left perturbation ``R' = exp([d]x) R`` (3), then translation [m] (3); or None.
    accepted: False when the pose is not trustworthy; ``reason`` says why. A rejected
        result may still carry the best pose found, for diagnostics only.
    timings_ms: per-stage wall time in milliseconds (a fallback adds ``<first attempt>_attempt``).
    attempt: the setting that produced this result: "full", or the cheaper first attempt
        "coarse" (no prior) / "tracking" (with a prior) when that one was kept.
    inlier_keypoints: (K, 2) float64 query pixels (COLMAP convention) of the PnP inliers and
        inlier_points3D: (K, 3) float64 their map points (map frame, metres); None without a pose.
        Not part of :meth:`to_dict` (the API adds them when a request asks).
    """

    accepted: bool
    reason: str
    cam_from_world: Rigid3 | None = None
    covariance: np.ndarray | None = None
    num_inliers: int = 0
    num_matches: int = 0
    inlier_ratio: float = 0.0
    median_reproj_error_px: float | None = None
    position_sigma_m: float | None = None
    rotation_sigma_deg: float | None = None
    retrieved: list[str] = field(default_factory=list)
    num_keypoints: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    attempt: str = "full"
    inlier_keypoints: np.ndarray | None = field(default=None, compare=False, repr=False)
    inlier_points3D: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def world_from_cam(self) -> Rigid3 | None:
        return None if self.cam_from_world is None else self.cam_from_world.inverse()

    def to_dict(self) -> dict:
        """JSON-ready dict (poses as translation + quaternion wxyz, both directions)."""
        def pose(T: Rigid3 | None):
            return None if T is None else {"translation": T.translation.tolist(), "quaternion_wxyz": T.quat_wxyz.tolist()}
        return {
            "accepted": self.accepted, "reason": self.reason,
            "cam_from_world": pose(self.cam_from_world), "world_from_cam": pose(self.world_from_cam),
            "covariance": None if self.covariance is None else np.asarray(self.covariance).tolist(),
            "covariance_order": ("rotation(3, rad; left perturbation R' = exp([d]x) R), "
                                 "translation(3, m) of cam_from_world"),
            "num_inliers": self.num_inliers, "num_matches": self.num_matches,
            "inlier_ratio": self.inlier_ratio, "median_reproj_error_px": self.median_reproj_error_px,
            "position_sigma_m": self.position_sigma_m, "rotation_sigma_deg": self.rotation_sigma_deg,
            "retrieved": self.retrieved, "num_keypoints": self.num_keypoints, "timings_ms": self.timings_ms,
            "attempt": self.attempt,
        }
