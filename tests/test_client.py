"""api.client against a real uvicorn server on 127.0.0.1: every method of the sync and async
clients, error mapping (401/403/404/413/422 -> VlocClientError with the status), REST and stream."""
from __future__ import annotations

import asyncio
import socket
import struct
import tarfile
import time
import zlib

import numpy as np
import pytest

from api.app import create_app
from api.client import AsyncVlocClient, VlocClient, VlocClientError, VlocConnectionError, camera_json, stream_message
from api.client_base import prior_json
from api.settings import Settings
from api.testing import LiveServer, encode_image, shared_test_map
from datasets.synthetic import DEFAULT_CAMERA
from localize import PosePrior

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tmap():
    return shared_test_map()


@pytest.fixture(scope="module")
def walk(tmap):
    """Four consecutive frames of another pass (15 degrees apart): (RGB array, cam_from_world)."""
    poses = tmap.scene.trajectory(24, pass_id=1)[:4]
    return [(tmap.scene.render(T, DEFAULT_CAMERA)[0], T) for T in poses]


@pytest.fixture(scope="module")
def svc(tmap, tmp_path_factory):
    """A server with keys admin, robot (maps room, room2), other (elsewhere); map 'room' registered
    by the client's tar upload (the test of register_map)."""
    data = tmp_path_factory.mktemp("client-data")
    app = create_app(Settings(data_dir=data, workers=2, max_frame_age_s=30,
                              max_queue_wait_s=0,  # staleness and load shedding are tested elsewhere
                              import_roots=[tmap.bundle.parent, tmp_path_factory.getbasetemp()]))
    reg = app.state.vloc.registry
    keys = {"admin": reg.create_key("admin")[1], "robot": reg.create_key("robot", ["room", "room2"])[1],
            "other": reg.create_key("robot", ["elsewhere"])[1]}
    with LiveServer(app) as srv:
        srv.keys, srv.data = keys, data
        with VlocClient(srv.url, keys["admin"], timeout=120) as admin:
            info = admin.register_map("room", tmap.bundle)
        assert info["version"] == "1" and info["active"] and info["summary"]["n_images"] == 24
        yield srv


def client(svc, who="robot", **kw) -> VlocClient:
    return VlocClient(svc.url, svc.keys.get(who, who), timeout=120, **kw)


def centre(pose: dict) -> np.ndarray:
    return np.array(pose["translation"])


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (refused from its header: 413)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# wire helpers ------------------------------------------------------------------------------------
def test_wire_helpers():
    cam = camera_json(DEFAULT_CAMERA)
    assert cam == {"model": "PINHOLE", "width": 640, "height": 480, "params": [525.0, 525.0, 320.0, 240.0]}
    assert camera_json("pinhole 640 480 525 525 320 240") == cam == camera_json(cam)
    p = {"position": [1.0, 2.0, 3.0], "sigma": 0.5}
    assert prior_json(PosePrior(np.array([1, 2, 3.0]), 0.5)) == p == prior_json(([1, 2, 3], 0.5)) == prior_json(p)
    assert prior_json(None) is None
    with pytest.raises(ValueError):
        prior_json(([1, 2], 0.5))
    with pytest.raises(TypeError):
        camera_json(42)
    msg = stream_message({"frame_id": 1}, b"IMG")
    (n,) = struct.unpack(">I", msg[:4])
    assert msg[4:4 + n] == b'{"frame_id":1}' and msg[4 + n:] == b"IMG"


# probes, maps, keys -------------------------------------------------------------------------------
def test_health_ready_metrics(svc):
    with client(svc) as c:
        assert c.health() == {"status": "ok"}
        r = c.ready()
        assert r["ready"] and r["active"] >= 1
        assert "vloc_http_request_duration_seconds" in c.metrics()


def test_map_management(svc, tmap, tmp_path):
    tar = tmp_path / "room.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(tmap.bundle, arcname="map")
    with client(svc, "admin") as a:
        v = a.register_map("room2", tar, version="a", activate=None)  # a tar file as it is; first: active
        assert v["version"] == "a" and v["active"]
        v = a.register_map_path("room2", tmap.bundle, version="b", activate=False)
        assert v["version"] == "b" and not v["active"]
        m = a.get_map("room2")
        assert m["active_version"] == "a" and [x["version"] for x in m["versions"]] == ["a", "b"]
        assert a.activate("room2", "b")["active_version"] == "b"
        assert a.delete_version("room2", "a") == {"deleted": True, "map_id": "room2", "version": "a"}
        assert {"room", "room2"} <= {m["map_id"] for m in a.list_maps()}
        with client(svc) as robot:  # a robot lists what it is granted
            assert {m["map_id"] for m in robot.list_maps()} == {"room", "room2"}
        with client(svc, "other") as other:
            assert other.list_maps() == []
        assert a.delete_map("room2")["deleted"]
        assert "room2" not in {m["map_id"] for m in a.list_maps()}


def test_keys(svc):
    with client(svc, "admin") as a:
        made = a.create_key("robot", ["room"], "bot-9")
        assert made["key"].startswith("vloc_") and made["maps"] == ["room"]
        assert made["key_id"] in {k["key_id"] for k in a.list_keys()}
        with VlocClient(svc.url, made["key"]) as bot:
            assert [m["map_id"] for m in bot.list_maps()] == ["room"]
        assert a.revoke_key(made["key_id"])["revoked_utc"]
        with VlocClient(svc.url, made["key"]) as bot, pytest.raises(VlocClientError) as e:
            bot.list_maps()
        assert e.value.status == 401


# errors ------------------------------------------------------------------------------------------
def test_error_statuses(svc, walk, tmp_path):
    rgb = walk[0][0]
    small = DEFAULT_CAMERA.scaled(0.5)
    cases = [
        ("bad", lambda c: c.localize("room", rgb, DEFAULT_CAMERA), 401),
        (None, lambda c: c.list_maps(), 401),
        ("other", lambda c: c.localize("room", rgb, DEFAULT_CAMERA), 403),
        ("robot", lambda c: c.register_map_path("room", "/nowhere"), 403),
        ("admin", lambda c: c.localize("no-such-map", rgb, DEFAULT_CAMERA), 404),
        ("admin", lambda c: c.activate("room", "99"), 404),
        ("robot", lambda c: c.localize("room", png_with_size(5000, 5000), DEFAULT_CAMERA), 413),
        ("robot", lambda c: c.localize("room", rgb, small), 422),  # camera 320x240, image 640x480
        ("robot", lambda c: c.localize("room", encode_image(rgb, "JPEG")[:300], DEFAULT_CAMERA), 422),  # truncated
        ("robot", lambda c: c.localize("room", b"GIF89a" + bytes(64), DEFAULT_CAMERA), 415),
        ("admin", lambda c: c.register_map_path("bad", tmp_path), 422),  # not a bundle
    ]
    for who, call, status in cases:
        with VlocClient(svc.url, svc.keys.get(who, "vloc_not-a-key") if who else None, timeout=120) as c:
            with pytest.raises(VlocClientError) as e:
                call(c)
        assert e.value.status == status, (who, status, e.value)
        assert e.value.detail and str(status) in str(e.value)
        assert e.value.request_id  # to find the request in the server's logs
    with client(svc, "other") as c, pytest.raises(VlocClientError) as e:
        with c.stream("room"):
            pass
    assert e.value.status == 403 and "not granted" in e.value.detail
    with pytest.raises(ValueError):
        client(svc).register_map("x", tmp_path)  # no manifest: refused before any request


def test_unreachable_server_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with VlocClient(f"http://127.0.0.1:{port}", "k", timeout=5) as c, pytest.raises(VlocConnectionError) as e:
        c.health()
    assert e.value.status is None and "cannot reach" in str(e.value)


# localization ------------------------------------------------------------------------------------
def test_localize_array_bytes_and_priors(svc, walk, tmap):
    rgb, truth = walk[0]
    with client(svc) as c:
        res = c.localize("room", rgb, DEFAULT_CAMERA, robot_id="r2d2", timestamp=1700000000.5)  # JPEG 95
        assert res["accepted"], res["reason"]
        assert np.linalg.norm(centre(res["world_from_cam"]) - truth.centre) < 0.02
        assert res["robot_id"] == "r2d2" and res["timestamp"] == 1700000000.5 and not res["prior_used"]
        assert res["map_id"] == "room" and res["map_version"] == "1"
        png = encode_image(rgb)
        for prior in (PosePrior(truth.centre + 0.1, 0.2), (truth.centre.tolist(), 0.3)):
            res = c.localize("room", png, str(DEFAULT_CAMERA), prior=prior)
            assert res["accepted"] and res["prior_used"]
            assert np.linalg.norm(centre(res["world_from_cam"]) - truth.centre) < 0.02
    with client(svc, image_format="png") as c:
        assert c.localize("room", rgb, DEFAULT_CAMERA)["accepted"]


def test_rest_robot_asking_for_tracking_gets_a_motion_prior(svc, walk):
    with client(svc) as c:
        # stateless by default: the same robot id alone keeps no state
        plain = [c.localize("room", rgb, DEFAULT_CAMERA, robot_id="r-plain") for rgb, _ in walk[:2]]
        assert not plain[1]["prior_used"]
        tracked = [c.localize("room", rgb, DEFAULT_CAMERA, robot_id="r-track", track=True, timestamp=1000.0 + i)
                   for i, (rgb, _) in enumerate(walk[:3])]
        other = c.localize("room", walk[0][0], DEFAULT_CAMERA, robot_id="r-other", track=True, timestamp=1002.0)
    assert [r["prior_used"] for r in tracked] == [False, True, True] and not other["prior_used"]
    for r, (_, truth) in zip(tracked, walk):
        assert r["accepted"] and np.linalg.norm(centre(r["world_from_cam"]) - truth.centre) < 0.02
        assert r["robot_id"] == "r-track"


def test_stream_sync(svc, walk):
    with client(svc) as c, c.stream("room") as s:
        for i, (rgb, _) in enumerate(walk[:2]):  # send both, then read: replies come in order
            s.send(rgb, DEFAULT_CAMERA, frame_id=i, timestamp=time.time())
        replies = [s.recv(), s.recv()]
        replies.append(s.localize(walk[2][0], None, frame_id="third"))  # camera of the session
    assert [r["frame_id"] for r in replies] == [0, 1, "third"]
    for r, (_, truth) in zip(replies, walk):
        assert not r["dropped"] and r["accepted"], r
        assert np.linalg.norm(centre(r["world_from_cam"]) - truth.centre) < 0.02
    assert replies[0]["tracking"] == "global" and replies[1]["tracking"] == "tracking"
    assert replies[1]["prior_used"] and replies[1]["prior"]["sigma"] > 0


# async ------------------------------------------------------------------------------------------
def test_async_client(svc, walk, tmap):
    async def main():
        async with AsyncVlocClient(svc.url, svc.keys["robot"], timeout=120) as c:
            assert (await c.health())["status"] == "ok"
            assert (await c.ready())["ready"]
            assert "vloc_" in await c.metrics()
            assert "room" in {m["map_id"] for m in await c.list_maps()}
            assert (await c.get_map("room"))["active_version"] == "1"
            rest = await asyncio.gather(*(c.localize("room", rgb, DEFAULT_CAMERA) for rgb, _ in walk[:2]))
            async with c.stream("room") as s:
                replies = []
                for i, (rgb, _) in enumerate(walk[:3]):
                    replies.append(await s.localize(rgb, DEFAULT_CAMERA, i, timestamp=time.time()))
            with pytest.raises(VlocClientError) as e:
                await c.localize("room", walk[0][0], DEFAULT_CAMERA.scaled(0.5))
            assert e.value.status == 422
            with pytest.raises(VlocClientError) as e:
                await c.delete_map("room")
            assert e.value.status == 403
        async with AsyncVlocClient(svc.url, "vloc_not-a-key", timeout=60) as bad:
            with pytest.raises(VlocClientError) as e1:
                async with bad.stream("room"):
                    pass
            assert e1.value.status == 401
        return rest, replies

    rest, replies = asyncio.run(main())
    for r, (_, truth) in zip(rest, walk):
        assert r["accepted"] and np.linalg.norm(centre(r["world_from_cam"]) - truth.centre) < 0.02
    assert [r["frame_id"] for r in replies] == [0, 1, 2]
    assert all(r["accepted"] for r in replies) and replies[2]["tracking"] == "tracking"


def test_async_admin_methods(svc, tmap):
    async def main():
        async with AsyncVlocClient(svc.url, svc.keys["admin"], timeout=120) as a:
            v = await a.register_map("aroom", tmap.bundle)  # directory -> tar.gz in a thread
            assert v["active"]
            await a.register_map_path("aroom", tmap.bundle, version="x", activate=False)
            assert (await a.activate("aroom", "x"))["active_version"] == "x"
            assert (await a.delete_version("aroom", "1"))["deleted"]
            key = await a.create_key("robot", ["aroom"])
            assert key["key_id"] in {k["key_id"] for k in await a.list_keys()}
            assert (await a.revoke_key(key["key_id"]))["revoked_utc"]
            assert (await a.delete_map("aroom"))["deleted"]
            with pytest.raises(VlocClientError) as e:
                await a.get_map("aroom")
            assert e.value.status == 404

    asyncio.run(main())


# the demo's service part -------------------------------------------------------------------------
def test_service_demo_localizes_a_robot_pass(tmap, tmp_path):
    from rich.console import Console

    from vloc.demo import print_service_demo, run_service_demo
    out = run_service_demo(tmap.scene, tmap.bundle, tmp_path, n_frames=3)
    assert [len(out["rest"]), len(out["stream"])] == [3, 3]
    for mode in ("rest", "stream"):
        m = out["summary"][mode]
        assert m["accepted_pct"] == 100 and m["median_t_cm"] < 2 and m["p50_ms"] > 0
    assert out["summary"]["rest"]["prior_used"] == 0 and out["summary"]["stream"]["prior_used"] >= 1
    console = Console(record=True, width=100)
    print_service_demo(out, console)
    text = console.export_text()
    assert "REST" in text and "STREAM" in text and "p50 ms" in text
