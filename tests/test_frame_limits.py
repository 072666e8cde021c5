"""api.frame_limits: which limit drops a frame, and when."""
from __future__ import annotations

import pytest

from api.frame_limits import FrameLimits


def test_fresh_frame_waits_up_to_the_server_wait_limit():
    lim = FrameLimits.of(1.0, 0.2, received_wall=100.0, timestamp=99.95)
    assert lim.lateness_s == pytest.approx(0.05) and lim.busy_binds
    assert lim.max_queue_s == pytest.approx(0.2)
    assert lim.verdict(0.19) is None
    v = lim.verdict(0.25)
    assert v["reason"] == "busy" and v["waited_ms"] == 250.0 and v["age_ms"] == pytest.approx(300.0)


def test_late_frame_goes_stale_before_the_wait_limit():
    lim = FrameLimits.of(1.0, 0.2, received_wall=100.0, timestamp=99.1)  # 0.9 s late on arrival
    assert not lim.busy_binds and lim.max_queue_s == pytest.approx(0.1)
    assert lim.verdict(0.05) is None
    assert lim.verdict(0.15)["reason"] == "stale"
    assert FrameLimits.of(1.0, 0.2, 100.0, 98.0).verdict(0.0)["reason"] == "stale"  # stale on arrival


def test_no_timestamp_or_a_clock_ahead_counts_only_the_wait():
    for ts in (None, 100.5):
        lim = FrameLimits.of(1.0, 0, received_wall=100.0, timestamp=ts)  # 0: no wait limit
        assert lim.lateness_s == 0 and lim.max_wait_s is None and lim.max_queue_s == 1.0
        assert lim.verdict(0.9) is None and lim.verdict(1.1)["reason"] == "stale"


def test_past_deadline_reports_the_binding_limit():
    assert FrameLimits.of(1.0, 0.2, 100.0, None).verdict(0.2, past_deadline=True)["reason"] == "busy"
    assert FrameLimits.of(1.0, 0.2, 100.0, 99.0).verdict(0.0, past_deadline=True)["reason"] == "stale"
