"""The live fleet: the last answer and last accepted pose of every robot localizing on a map (REST
requests with a ``robot_id``, stream sessions), for ``GET /v1/maps/{map_id}/live``.

Writers are the worker threads that produce answers (:meth:`FleetBoard.record`); readers are the
live connections, each woken through its own event loop when something changed
(:meth:`FleetBoard.subscribe`). Bounded: ``max_robots`` per map (the least recently seen go),
robots not heard from for ``forget_s`` leave, ``track_points`` accepted positions per robot.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

#: fields of a robot's state that only an accepted answer replaces (the others: every answer)
POSE_FIELDS = ("position", "xy", "z", "heading_deg", "ellipse", "position_sigma_m", "rotation_sigma_deg",
               "last_accepted")


@dataclass
class _Robot:
    state: dict
    track: deque
    seq: int
    seen_mono: float


@dataclass(eq=False)
class Subscriber:
    """One live connection: woken (from any thread) when a robot of its map changes."""

    map_id: str
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0
    known: set = field(default_factory=set)

    def wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:  # its loop is closed: the connection is gone
            pass


class FleetBoard:
    """Robots per map: ``record`` after each answer, ``changes`` for a subscriber."""

    def __init__(self, track_points: int = 300, forget_s: float = 600.0, max_robots: int = 1000) -> None:
        self.track_points, self.forget_s, self.max_robots = track_points, forget_s, max_robots
        self._maps: dict[str, OrderedDict[str, _Robot]] = {}
        self._subs: dict[str, set[Subscriber]] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def record(self, map_id: str, robot_id: str, answer: dict, pose: dict | None) -> None:
        """One answer for a robot: ``answer`` (accepted, reason, latency_ms, map_version, source,
        num_inliers...) and, when accepted, ``pose`` (the :data:`POSE_FIELDS`; ``xy`` and ``z`` extend
        its track). A new map version starts the track afresh (its frame may differ)."""
        now = time.monotonic()
        with self._lock:
            robots = self._maps.setdefault(map_id, OrderedDict())
            r = robots.pop(robot_id, None)
            if r is None or r.state.get("map_version") != answer.get("map_version"):
                prev = r.state if r is not None else {}
                r = _Robot({"robot_id": robot_id, "frames": prev.get("frames", 0),
                            "accepted_frames": prev.get("accepted_frames", 0)}, deque(maxlen=self.track_points), 0, now)
            r.state.update(answer)
            r.state["frames"] = r.state.get("frames", 0) + 1
            if pose is not None:
                r.state.update(pose)
                r.state["accepted_frames"] = r.state.get("accepted_frames", 0) + 1
                if pose.get("xy") is not None and self.track_points:
                    r.track.append([*pose["xy"], pose.get("z") or 0.0])
            self._seq += 1
            r.seq, r.seen_mono = self._seq, now
            robots[robot_id] = r
            while len(robots) > self.max_robots:
                robots.popitem(last=False)
            subs = list(self._subs.get(map_id, ()))
        for s in subs:
            s.wake()

    def subscribe(self, map_id: str) -> Subscriber:
        sub = Subscriber(map_id, asyncio.get_running_loop())
        with self._lock:
            self._subs.setdefault(map_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.get(sub.map_id, set()).discard(sub)

    def changes(self, sub: Subscriber, with_track: bool = False) -> tuple[list[dict], list[str]]:
        """(robots changed since the subscriber's last call, ids that left since then); advances it.
        ``with_track``: each robot's recent track too (the first message of a connection)."""
        now = time.monotonic()
        with self._lock:
            robots = self._maps.get(sub.map_id, OrderedDict())
            for rid in [rid for rid, r in robots.items() if now - r.seen_mono > self.forget_s]:
                del robots[rid]
            changed = []
            for r in robots.values():
                if r.seq > sub.seq:
                    state = dict(r.state)
                    if with_track:
                        state["track"] = [list(p) for p in r.track]
                    changed.append(state)
            current = set(robots)
            sub.seq = self._seq
        gone = sorted(sub.known - current)
        sub.known = current
        return changed, gone

    def wake_all(self) -> None:
        """Wake every subscriber (the server is stopping: they look and end)."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for s in subs:
            s.wake()

    def robots(self, map_id: str) -> list[str]:
        with self._lock:
            return list(self._maps.get(map_id, ()))

    def forget_map(self, map_id: str) -> None:
        with self._lock:
            self._maps.pop(map_id, None)
