"""When a frame is too old to localize: the age and server-wait limits of a frame.

Two limits, both measured on the server's clocks:

* ``max_frame_age_s``: the frame's whole age, its lateness on arrival (receive wall time minus
  the robot's ``timestamp``; robot and server clocks are assumed in sync, as ROS assumes) plus
  its wait on the server. Past it the frame is dropped as ``stale``.
* ``max_queue_wait_s``: its wait on the server alone (receipt to a worker taking it), immune to
  robot clocks. Past it the frame is dropped as ``busy``: under overload the server answers the
  newest frames promptly rather than every frame late.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameLimits:
    """The limits of one received frame.

    lateness_s: age on arrival, seconds (0 without a timestamp, or from a robot clock ahead).
    max_age_s: drop as "stale" once lateness + wait exceeds this.
    max_wait_s: drop as "busy" once the wait on the server exceeds this (None: no such limit).
    """

    lateness_s: float
    max_age_s: float
    max_wait_s: float | None = None

    @staticmethod
    def of(max_age_s: float, max_wait_s: float | None, received_wall: float,
           timestamp: float | None) -> "FrameLimits":
        late = 0.0 if timestamp is None else max(0.0, received_wall - timestamp)
        return FrameLimits(late, max_age_s, max_wait_s if max_wait_s else None)

    @property
    def busy_binds(self) -> bool:
        """The server-wait limit comes before the age limit."""
        return self.max_wait_s is not None and self.max_wait_s < self.max_age_s - self.lateness_s

    @property
    def max_queue_s(self) -> float:
        """Longest wait on the server (seconds from receipt) before the frame is dropped."""
        return self.max_wait_s if self.busy_binds else self.max_age_s - self.lateness_s

    def verdict(self, waited_s: float, past_deadline: bool = False) -> dict | None:
        """None while the frame may still be localized after waiting ``waited_s``; else the drop's
        fields ``{"reason": "stale" | "busy", "age_ms", "waited_ms"}``. ``past_deadline``: a
        worker found it past ``max_queue_s`` (the reason is then the binding limit's)."""
        if not past_deadline and waited_s <= self.max_queue_s:
            return None
        return {"reason": "busy" if self.busy_binds else "stale",
                "age_ms": round((self.lateness_s + waited_s) * 1000, 1), "waited_ms": round(waited_s * 1000, 1)}
