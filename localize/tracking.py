"""Per-robot motion prior (the service's streams, the robot bridges): last accepted pose +
constant velocity -> PosePrior.

Positions are camera centres in the map frame (metres), times in seconds. After an accepted
frame the next frame's prior is the last centre moved by the velocity estimated from the two
last accepted centres, with sigma = base sigma + half the predicted displacement, growing by
one base sigma per rejection since. After ``lost_after`` consecutive rejections, or when the
last accepted pose is older than ``max_gap_s``, there is no prior (global retrieval) until the
next accepted frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from localize.result import PosePrior


@dataclass
class Tracker:
    sigma_m: float
    lost_after: int
    max_gap_s: float
    #: "global" (no accepted pose yet), "tracking" (prior in use) or "lost" (back to global search).
    state: str = "global"
    _last: tuple[float, np.ndarray] | None = None
    _velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))
    _rejections: int = 0

    def prior(self, t: float) -> PosePrior | None:
        """The prior for a frame captured (or received) at time t, or None for a global search."""
        if self.state != "tracking" or self._last is None:
            return None
        t_last, c_last = self._last
        dt = t - t_last
        if dt > self.max_gap_s:
            return None
        dt = max(dt, 0.0)
        shift = self._velocity * dt
        sigma = self.sigma_m * (1 + self._rejections) + 0.5 * float(np.linalg.norm(shift))
        return PosePrior(position=c_last + shift, sigma_m=sigma)

    def reset(self) -> None:
        """Forget the motion (e.g. the map's active version changed): global search until accepted."""
        self.state, self._last, self._velocity, self._rejections = "global", None, np.zeros(3), 0

    def update(self, t: float, accepted: bool, centre: np.ndarray | None) -> None:
        """Feed the outcome of the frame at time t (centre: camera centre when accepted)."""
        if accepted and centre is not None:
            c = np.asarray(centre, np.float64)
            if self._last is not None and self.state == "tracking":
                dt = t - self._last[0]
                self._velocity = (c - self._last[1]) / dt if 1e-3 < dt <= self.max_gap_s else np.zeros(3)
            else:
                self._velocity = np.zeros(3)
            self._last = (t, c)
            self._rejections = 0
            self.state = "tracking"
            return
        self._rejections += 1
        if self._rejections >= self.lost_after and self.state == "tracking":
            self.state = "lost"
            self._last = None
            self._velocity = np.zeros(3)
