"""Motion priors for REST robots that ask for them: ``meta.track`` with a ``robot_id`` makes the
server remember that robot's last accepted pose (per map), like a stream session does, so the
next frame's retrieval is narrowed and the localizer's cheaper tracking attempt runs. Without
``track`` a REST query stays stateless. Bounded: the least recently seen robots are forgotten.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from localize import PosePrior
from localize.tracking import Tracker

Key = tuple[str, str]  # (map_id, robot_id)


class RobotTracks:
    """``prior(key, t)`` before a frame, ``update(key, t, version, accepted, centre)`` after it."""

    def __init__(self, sigma_m: float, lost_after: int, max_gap_s: float, capacity: int = 10_000) -> None:
        self.sigma_m, self.lost_after, self.max_gap_s, self.capacity = sigma_m, lost_after, max_gap_s, capacity
        self._tracks: OrderedDict[Key, tuple[str | None, Tracker]] = OrderedDict()
        self._lock = threading.Lock()

    def prior(self, key: Key, t: float) -> PosePrior | None:
        with self._lock:
            entry = self._tracks.get(key)
            if entry is None:
                return None
            self._tracks.move_to_end(key)
            return entry[1].prior(t)

    def state(self, key: Key) -> str:
        with self._lock:
            entry = self._tracks.get(key)
            return "global" if entry is None else entry[1].state

    def update(self, key: Key, t: float, version: str, accepted: bool, centre: np.ndarray | None) -> None:
        with self._lock:
            version_seen, tracker = self._tracks.pop(key, (None, None))
            if tracker is None or version_seen != version:  # a new map version may have another frame
                tracker = Tracker(self.sigma_m, self.lost_after, self.max_gap_s)
            tracker.update(t, accepted, centre)
            self._tracks[key] = (version, tracker)
            while len(self._tracks) > self.capacity:
                self._tracks.popitem(last=False)
