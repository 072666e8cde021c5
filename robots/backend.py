"""Localize this frame" for robot bridges: in this process (a map bundle) or through the service.

Both return a :class:`localize.result.LocalizationResult` (``cam_from_world`` = ``camera_from_map``,
covariance: rotation vector of the left perturbation, then translation), so bridges do not care where the work happens.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3
from core.types import VlocError
from localize.result import LocalizationResult, PosePrior
from robots.config import BackendConfig


class Backend(Protocol):
    """Localizes one frame: (H, W, 3) uint8 RGB + its camera (+ optional prior) -> result."""

    name: str

    def localize(self, rgb: np.ndarray, camera: Camera, prior: PosePrior | None = None,
                 timestamp: float | None = None) -> LocalizationResult: ...

    def close(self) -> None: ...


class InProcessBackend:
    """A :class:`localize.Localizer` on a bundle, loaded once in this process."""

    def __init__(self, bundle) -> None:
        from localize.localizer import Localizer
        self.name = f"bundle {bundle}"
        self.localizer = Localizer(bundle)

    def localize(self, rgb: np.ndarray, camera: Camera, prior: PosePrior | None = None,
                 timestamp: float | None = None) -> LocalizationResult:
        return self.localizer.localize(rgb, camera, prior)

    def close(self) -> None:
        pass


def result_from_json(d: dict) -> LocalizationResult:
    """The service's localize answer (``LocalizationResult.to_dict()`` + context) -> LocalizationResult.

    A covariance with nulls (non-finite on the server) becomes None.
    """
    pose = d.get("cam_from_world")
    cam_from_world = None if pose is None else Rigid3.from_quat_wxyz(pose["quaternion_wxyz"], pose["translation"])
    cov = d.get("covariance")
    covariance = None
    if cov is not None and all(v is not None for row in cov for v in row):
        covariance = np.asarray(cov, dtype=np.float64).reshape(6, 6)
    return LocalizationResult(
        accepted=bool(d["accepted"]), reason=str(d.get("reason", "")), cam_from_world=cam_from_world,
        covariance=covariance, num_inliers=int(d.get("num_inliers") or 0), num_matches=int(d.get("num_matches") or 0),
        inlier_ratio=float(d.get("inlier_ratio") or 0.0), median_reproj_error_px=d.get("median_reproj_error_px"),
        position_sigma_m=d.get("position_sigma_m"), rotation_sigma_deg=d.get("rotation_sigma_deg"),
        retrieved=list(d.get("retrieved") or []), num_keypoints=int(d.get("num_keypoints") or 0),
        timings_ms={k: float(v) for k, v in (d.get("timings_ms") or {}).items() if v is not None},
        attempt=str(d.get("attempt") or "full"))


class ServiceBackend:
    """The vloc service's ``POST /v1/maps/{map_id}/localize`` through :class:`api.client.VlocClient`.

    Frames are sent as PNG (lossless). Service errors (4xx / 5xx, unreachable) raise VlocError.
    """

    def __init__(self, url: str, map_id: str, api_key: str | None, timeout_s: float = 30.0,
                 robot_id: str | None = None) -> None:
        from api.client import VlocClient
        self.name = f"service {url} map {map_id}"
        self.map_id, self.robot_id = map_id, robot_id
        self.client = VlocClient(url, api_key, timeout=timeout_s, image_format="png")

    def localize(self, rgb: np.ndarray, camera: Camera, prior: PosePrior | None = None,
                 timestamp: float | None = None) -> LocalizationResult:
        from api.client import VlocClientError
        try:
            return result_from_json(self.client.localize(self.map_id, rgb, camera, prior=prior,
                                                         robot_id=self.robot_id, timestamp=timestamp))
        except VlocClientError as e:
            raise VlocError(f"vloc service: {e}") from None

    def close(self) -> None:
        self.client.close()


def make_backend(cfg: BackendConfig) -> Backend:
    """The backend a :class:`BackendConfig` describes (VlocError when the bundle is missing)."""
    if cfg.bundle is not None:
        if not (cfg.bundle / "manifest.json").is_file():
            raise VlocError(f"backend.bundle {cfg.bundle} is not a map bundle (no manifest.json)")
        return InProcessBackend(cfg.bundle)
    return ServiceBackend(cfg.service_url, cfg.map_id, cfg.resolved_api_key(), cfg.timeout_s, cfg.robot_id)
