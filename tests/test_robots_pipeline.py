"""The bridges' shared frame pipeline: motion prior from the last accepted pose, lost -> global."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from core.camera import Camera
from core.geometry import Rigid3
from localize.result import LocalizationResult
from robots.config import BackendConfig, BridgeConfig
from robots.pipeline import Counters, FramePipeline, PendingFrame, Throttled
from robots.transforms import OdomBuffer

CAMERA = Camera("PINHOLE", 8, 6, (5.0, 5.0, 4.0, 3.0))


class RecordingBackend:
    """Answers with scripted outcomes and records the prior each call received."""

    def __init__(self, outcomes: list[tuple[bool, np.ndarray]]) -> None:
        self.outcomes, self.priors = list(outcomes), []

    def localize(self, rgb, camera, prior=None, timestamp=None) -> LocalizationResult:
        self.priors.append(prior)
        accepted, centre = self.outcomes.pop(0)
        cam_from_world = Rigid3(np.eye(3), -np.asarray(centre, float))
        return LocalizationResult(accepted, "ok" if accepted else "few inliers", cam_from_world,
                                  np.eye(6) * 1e-4)


def frame(t: float) -> PendingFrame:
    msg = SimpleNamespace(encoding="rgb8", height=6, width=8, step=24, is_bigendian=0, data=bytes(6 * 24))
    return PendingFrame(msg, t, (int(t), 0), CAMERA)


def pipeline(backend, **cfg) -> FramePipeline:
    c = BridgeConfig(backend=BackendConfig(bundle="x"), max_age_s=0, publish_tf=False, **cfg)
    return FramePipeline(c, backend, Rigid3.identity(), OdomBuffer(max_age_s=0.2), Counters(), Throttled())


def test_last_accepted_pose_and_velocity_become_the_prior_until_lost():
    b = RecordingBackend([(True, [0, 0, 0]), (True, [0.5, 0, 0]), (False, [0, 0, 0]), (False, [0, 0, 0]),
                          (False, [0, 0, 0]), (True, [2.0, 0, 0])])
    p = pipeline(b, prior_lost_after=3)
    outs = [p(frame(t), now_s=t) for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    assert b.priors[0] is None and b.priors[1] is not None
    np.testing.assert_allclose(b.priors[1].position, [0, 0, 0])
    np.testing.assert_allclose(b.priors[2].position, [1.0, 0, 0])  # constant velocity 0.5 m/s
    assert b.priors[3].sigma_m > b.priors[2].sigma_m               # rejections widen it
    assert b.priors[5] is None                                       # lost after 3 rejections: global
    assert [o is not None for o in outs] == [True, True, False, False, False, True]
    assert p.counters.snapshot()["rejected"] == 3 and p.counters.snapshot()["localized"] == 3


def test_prior_can_be_turned_off():
    b = RecordingBackend([(True, [0, 0, 0]), (True, [0.1, 0, 0])])
    p = pipeline(b, prior_sigma_m=0)
    p(frame(1.0), 1.0), p(frame(2.0), 2.0)
    assert b.priors == [None, None]
