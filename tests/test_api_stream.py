"""WS /v1/maps/{map_id}/stream against a real server: order, motion prior, lost -> global search,
stale and overflow drops, malformed frames, and a flooding client that does not block others."""
from __future__ import annotations

import json
import struct
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from api.app import create_app
from api.settings import Settings
from api.testing import LiveServer, encode_image, shared_test_map, stream_frame
from datasets.synthetic import DEFAULT_CAMERA
from localize import LocalizerConfig
from localize.tracking import Tracker

pytestmark = pytest.mark.timeout(300)
CAMERA = {"model": "PINHOLE", "width": 640, "height": 480, "params": [525.0, 525.0, 320.0, 240.0]}
LOST_AFTER = 2


@pytest.fixture(scope="module")
def tmap():
    return shared_test_map()


@pytest.fixture(scope="module")
def walk(tmap):
    """Six consecutive frames of another pass (15 degrees apart): (PNG bytes, cam_from_world)."""
    poses = tmap.scene.trajectory(24, pass_id=1)[:6]
    return [(encode_image(tmap.scene.render(T, DEFAULT_CAMERA)[0]), T) for T in poses]


@pytest.fixture(scope="module")
def blank():
    return encode_image(np.full((480, 640, 3), 128, np.uint8))


@pytest.fixture(scope="module")
def svc(tmap, tmp_path_factory):
    # no server-wait limit here (frames may queue on 2 shared cores); it has its own test below
    settings = Settings(data_dir=tmp_path_factory.mktemp("stream-data"), workers=2, max_frame_age_s=1.5,
                        max_queue_wait_s=0, stream_max_pending=2, stream_lost_after=LOST_AFTER,
                        stream_key_recheck_s=0.2)
    yield from _server(settings, tmap)


def _server(settings, tmap):
    app = create_app(settings.model_copy(update={"import_roots": [tmap.bundle.parent]}))
    reg = app.state.vloc.registry
    keys = {"admin": reg.create_key("admin")[1], "robot": reg.create_key("robot", ["room"])[1],
            "other": reg.create_key("robot", ["elsewhere"])[1]}
    with LiveServer(app) as srv:
        r = httpx.post(f"{srv.url}/v1/maps/room/versions", json={"path": str(tmap.bundle)}, trust_env=False,
                       headers={"X-API-Key": keys["admin"]}, timeout=60)
        assert r.status_code == 201, r.text
        srv.keys = keys
        yield srv


def session(svc, key="robot", map_id="room", **kw):
    return connect(f"{svc.ws_url}/v1/maps/{map_id}/stream", additional_headers={"X-API-Key": svc.keys[key]},
                   proxy=None, max_size=None, open_timeout=30, **kw)


def ask(ws, frame_id, image, camera=True, **meta) -> dict:
    ws.send(stream_frame({"frame_id": frame_id, **({"camera": CAMERA} if camera else {}), **meta}, image))
    return json.loads(ws.recv(timeout=60))


def test_stream_poses_in_order_with_motion_prior(svc, walk, tmap):
    radius_floor = LocalizerConfig().prior_radius_m
    with session(svc) as ws:
        replies = [ask(ws, i, image, camera=(i == 0), timestamp=time.time()) for i, (image, _) in enumerate(walk)]
    assert [r["frame_id"] for r in replies] == list(range(len(walk)))
    for i, (r, (_, truth)) in enumerate(zip(replies, walk)):
        assert not r["dropped"] and r["accepted"], r
        assert np.linalg.norm(np.array(r["world_from_cam"]["translation"]) - truth.centre) < 0.02
        if i == 0:
            assert r["tracking"] == "global" and not r["prior_used"] and r["prior"] is None
            continue
        assert r["tracking"] == "tracking" and r["prior_used"], r
        prior = np.array(r["prior"]["position"])
        # the prior is the last pose (+ constant velocity from the second frame on)
        assert np.linalg.norm(prior - truth.centre) < (0.6 if i == 1 else 0.3)
        radius = max(radius_floor, 3 * r["prior"]["sigma"])
        assert all(np.linalg.norm(tmap.poses[n].centre - prior) <= radius for n in r["retrieved"])


def test_stream_lost_after_rejections_falls_back_to_global(svc, walk, blank):
    (img0, _), (img1, _) = walk[0], walk[1]
    with session(svc) as ws:
        assert ask(ws, "a", img0)["accepted"]
        rejected = [ask(ws, f"blank{i}", blank) for i in range(LOST_AFTER)]
        assert all(not r["accepted"] and r["tracking"] == "tracking" for r in rejected)
        assert rejected[1]["prior"]["sigma"] > rejected[0]["prior"]["sigma"]  # uncertainty grows
        back = ask(ws, "b", img1)
        assert back["tracking"] == "lost" and not back["prior_used"] and back["accepted"]
        assert ask(ws, "c", img0)["tracking"] == "tracking"


def test_revoking_a_key_closes_its_open_streams(svc, walk):
    from websockets.exceptions import ConnectionClosed
    admin = {"X-API-Key": svc.keys["admin"]}
    r = httpx.post(f"{svc.url}/v1/keys", json={"role": "robot", "maps": ["room"]}, headers=admin, trust_env=False)
    assert r.status_code == 201, r.text
    key_id, token = r.json()["key_id"], r.json()["key"]
    with connect(f"{svc.ws_url}/v1/maps/room/stream", additional_headers={"X-API-Key": token},
                 proxy=None, max_size=None, open_timeout=30) as ws:
        assert ask(ws, 1, walk[0][0])["accepted"]
        assert httpx.delete(f"{svc.url}/v1/keys/{key_id}", headers=admin, trust_env=False).status_code == 200
        time.sleep(0.3)  # past the session's re-check interval
        with pytest.raises(ConnectionClosed) as e:
            ask(ws, 2, walk[1][0])
    assert e.value.rcvd.code == 4401 and "revoked" in e.value.rcvd.reason


def test_stale_frame_is_dropped_and_reported(svc, walk):
    image = walk[0][0]
    with session(svc) as ws:
        r = ask(ws, 7, image, timestamp=time.time() - 30)
        assert r["frame_id"] == 7 and r["dropped"] and r["reason"] == "stale" and r["age_ms"] > 29_000
        r = ask(ws, 8, image, timestamp=time.time())
        assert not r["dropped"] and r["accepted"]


@pytest.fixture(scope="module")
def shedding_svc(tmap, tmp_path_factory):
    """One worker and a 30 ms server-wait limit: frames behind another frame are shed as busy."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("shed-data"), workers=1, max_queue_wait_s=0.03,
                        stream_max_pending=8)
    yield from _server(settings, tmap)


def test_frames_that_wait_past_max_queue_wait_are_dropped_as_busy(shedding_svc, walk):
    frames = [walk[i % len(walk)][0] for i in range(6)]
    with session(shedding_svc) as ws:
        assert ask(ws, "warm", frames[0])["accepted"]  # map loaded, session camera set
        for i, image in enumerate(frames):
            ws.send(stream_frame({"frame_id": i, "timestamp": time.time()}, image))
        replies = [json.loads(ws.recv(timeout=60)) for _ in frames]
        # the session goes on: a frame sent alone is localized
        assert ask(ws, "after", frames[1], camera=False)["accepted"]
    assert [r["frame_id"] for r in replies] == list(range(len(frames)))
    assert not replies[0]["dropped"] and replies[0]["accepted"]
    busy = [r for r in replies if r["dropped"]]
    assert busy and all(r["reason"] == "busy" and r["waited_ms"] > 30 for r in busy), replies
    m = httpx.get(f"{shedding_svc.url}/metrics", trust_env=False).text
    assert 'vloc_stream_frames_total{fate="busy"}' in m


def test_rest_frame_past_its_max_wait_gets_429_busy(shedding_svc, walk):
    from api.client import VlocClient, VlocClientError, is_busy
    image = walk[0][0]
    with VlocClient(shedding_svc.url, shedding_svc.keys["robot"]) as c:
        assert c.localize("room", image, CAMERA, max_wait_ms=60_000)["accepted"]
        with pytest.raises(VlocClientError) as e:  # 1 us: the request cannot reach a worker in time
            c.localize("room", image, CAMERA, max_wait_ms=0.001)
    assert e.value.status == 429 and is_busy(e.value) and "max_wait_ms" in e.value.detail
    with VlocClient(shedding_svc.url, shedding_svc.keys["robot"]) as c:  # bad input: 4xx before any drop
        with pytest.raises(VlocClientError) as e:
            c.localize("room", b"\x89PNG\r\n\x1a\n broken", CAMERA, max_wait_ms=0.001)
    assert 400 <= e.value.status < 500, e.value
    m = httpx.get(f"{shedding_svc.url}/metrics", trust_env=False).text
    assert 'vloc_localizations_total{outcome="busy",source="rest"}' in m


def test_pipelined_frames_answered_in_order_with_overflow_drops(svc, walk):
    frames = [walk[i % len(walk)][0] for i in range(8)]
    with session(svc) as ws:
        for i, image in enumerate(frames):
            ws.send(stream_frame({"frame_id": i, "camera": CAMERA}, image))
        replies = [json.loads(ws.recv(timeout=60)) for _ in frames]
    assert [r["frame_id"] for r in replies] == list(range(len(frames)))
    reasons = [r.get("reason") if r["dropped"] else "ok" for r in replies]
    assert reasons[0] == "ok" and reasons[-1] in ("ok", "stale", "busy")
    assert "overflow" in reasons and set(reasons) <= {"ok", "overflow", "stale", "busy"}, reasons
    m = httpx.get(f"{svc.url}/metrics", trust_env=False).text
    assert 'vloc_stream_frames_total{fate="overflow"}' in m


def test_malformed_frames_get_4xx_replies_and_the_session_goes_on(svc, walk):
    image = walk[0][0]
    header = json.dumps({"frame_id": 1, "camera": CAMERA}).encode()
    bad = [
        b"",                                                     # shorter than the length prefix
        b"\x00\x01",
        struct.pack(">I", 10_000) + b"{}",                     # length past the end
        struct.pack(">I", 1 << 30) + b"{}",                    # header over the limit
        struct.pack(">I", 5) + b"{oops" + image,                 # not JSON
        stream_frame({"camera": CAMERA}, image),                 # no frame_id
        stream_frame({"frame_id": 2, "camera": {**CAMERA, "params": [float("nan")] * 4}}, image),
        stream_frame({"frame_id": 3, "camera": {**CAMERA, "width": -640}}, image),
        stream_frame({"frame_id": 4, "camera": {**CAMERA, "width": 320}}, image),   # size mismatch
        stream_frame({"frame_id": 5, "camera": CAMERA}, image[: len(image) // 3]),  # truncated PNG
        stream_frame({"frame_id": 6, "camera": CAMERA}, b"GIF89a" + b"\x00" * 100),  # unsupported
        stream_frame({"frame_id": 7}, image),                   # no camera on the first frame
        struct.pack(">I", len(header)) + header,                 # no image
    ]
    with session(svc) as ws:
        for msg in bad:
            ws.send(msg)
            r = json.loads(ws.recv(timeout=30))
            assert r["dropped"] and r["reason"] == "error" and 400 <= r["status"] < 500 and r["detail"], r
        ws.send("a text message")
        assert json.loads(ws.recv(timeout=30))["status"] == 400
        assert ask(ws, "ok", image)["accepted"]
    assert httpx.get(f"{svc.url}/healthz", trust_env=False).status_code == 200


@pytest.mark.parametrize("key,map_id,status", [(None, "room", 401), ("other", "room", 403),
                                               ("admin", "no-such-map", 404), ("admin", "bad..id%20", 422)])
def test_stream_handshake_refusals(svc, key, map_id, status):
    headers = {"Authorization": f"Bearer {svc.keys[key]}"} if key else {}
    with pytest.raises(InvalidStatus) as e:
        connect(f"{svc.ws_url}/v1/maps/{map_id}/stream", additional_headers=headers, proxy=None)
    assert e.value.response.status_code == status
    assert json.loads(e.value.response.body)["detail"]


def test_flooding_client_does_not_block_others(svc, walk):
    image = walk[2][0]
    with session(svc) as flood, session(svc) as calm:
        for i in range(6):
            flood.send(stream_frame({"frame_id": i, "camera": CAMERA}, image))
        time.sleep(0.05)
        gauge = httpx.get(f"{svc.url}/metrics", trust_env=False).text
        assert "vloc_stream_sessions_active 2.0" in gauge
        t0 = time.monotonic()
        r = ask(calm, "calm", image)
        waited = time.monotonic() - t0
        assert r["accepted"] and waited < 3.0, waited  # one frame's time, not the flood's
        flood_replies = [json.loads(flood.recv(timeout=60)) for _ in range(6)]
        assert [x["frame_id"] for x in flood_replies] == list(range(6))
    deadline = time.monotonic() + 10
    while "vloc_stream_sessions_active 0.0" not in httpx.get(f"{svc.url}/metrics", trust_env=False).text:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_client_that_never_reads_its_replies_only_hurts_itself(svc, walk, tmap):
    """200 frames sent at once, no reply read: overflow drops (or the hard cap's close) bound the
    session's memory; the server stays healthy and the session is cleaned up."""
    jpeg = encode_image(tmap.scene.render(walk[0][1], DEFAULT_CAMERA)[0], "JPEG", 60)
    with session(svc, close_timeout=1) as ws:  # its unread replies hide the server's close frame
        try:
            for i in range(200):
                ws.send(stream_frame({"frame_id": i, "camera": CAMERA}, jpeg))
        except Exception:  # closed by the server's hard cap (1008): acceptable
            pass
        assert httpx.get(f"{svc.url}/readyz", trust_env=False, timeout=30).status_code == 200
    deadline = time.monotonic() + 20
    while "vloc_stream_sessions_active 0.0" not in httpx.get(f"{svc.url}/metrics", trust_env=False).text:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_tracker_constant_velocity_lost_and_gap():
    tr = Tracker(sigma_m=0.3, lost_after=2, max_gap_s=5.0)
    assert tr.prior(0.0) is None and tr.state == "global"
    tr.update(0.0, True, np.array([0.0, 0.0, 1.0]))
    p = tr.prior(0.5)
    assert np.allclose(p.position, [0, 0, 1]) and p.sigma_m == pytest.approx(0.3)  # no velocity yet
    tr.update(1.0, True, np.array([1.0, 0.0, 1.0]))                                # 1 m/s along x
    p = tr.prior(1.5)
    assert np.allclose(p.position, [1.5, 0, 1]) and p.sigma_m == pytest.approx(0.3 + 0.25)
    assert tr.prior(7.0) is None                                                     # too old: global
    tr.update(2.0, False, None)
    assert tr.state == "tracking" and tr.prior(2.0).sigma_m > 0.6                    # one rejection: wider
    tr.update(2.5, False, None)
    assert tr.state == "lost" and tr.prior(2.6) is None                              # lost: global search
    tr.update(3.0, True, np.array([5.0, 5.0, 1.0]))
    assert tr.state == "tracking" and np.allclose(tr.prior(3.5).position, [5, 5, 1])  # velocity restarts
    tr.reset()
    assert tr.state == "global" and tr.prior(3.6) is None


def test_rest_robot_tracks_are_bounded_and_reset_on_a_new_version():
    from api.robot_tracks import RobotTracks
    tracks = RobotTracks(0.3, lost_after=2, max_gap_s=5.0, capacity=2)
    tracks.update(("m", "a"), 0.0, "1", True, np.zeros(3))
    assert tracks.prior(("m", "a"), 0.5) is not None and tracks.state(("m", "a")) == "tracking"
    tracks.update(("m", "a"), 1.0, "2", False, None)     # another map version: the old motion is forgotten
    assert tracks.prior(("m", "a"), 1.5) is None
    tracks.update(("m", "b"), 0.0, "1", True, np.ones(3))
    tracks.update(("m", "c"), 0.0, "1", True, np.ones(3))  # capacity 2: the least recent robot goes
    assert tracks.state(("m", "a")) == "global" and tracks.prior(("m", "c"), 0.1) is not None
