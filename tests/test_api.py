"""The localization service against a real uvicorn server on 127.0.0.1: endpoints, authz matrix,
registry, hot swap under load, georeferenced maps, the map cache, and the CLI."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from pyproj import Geod
from typer.testing import CliRunner
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from api.app import create_app
from api.cache import MapCache, load_map, prune_sidecars
from api.settings import Settings
from api.testing import LiveServer, encode_image, http_client, shared_test_map
from datasets.synthetic import DEFAULT_CAMERA
from localize import LocalizerConfig
from vloc.cli import app as cli_app

pytestmark = pytest.mark.timeout(300)
CAMERA = {"model": "PINHOLE", "width": 640, "height": 480, "params": [525.0, 525.0, 320.0, 240.0]}


@pytest.fixture(scope="module")
def tmap():
    return shared_test_map()


@pytest.fixture(scope="module")
def queries(tmap):
    """Three frames of another pass through the room: (PNG bytes, cam_from_world truth)."""
    poses = tmap.scene.trajectory(12, pass_id=1)[:3]
    return [(encode_image(tmap.scene.render(T, DEFAULT_CAMERA)[0]), T) for T in poses]


@pytest.fixture(scope="module")
def svc(tmap, tmp_path_factory):
    """A server with map 'room' (version 1, active) and keys: admin, robot (room), other robot.
    Bundles may be registered by path from the test map's folder and the tests' temp dirs."""
    data = tmp_path_factory.mktemp("api-data")
    app = create_app(Settings(data_dir=data, workers=2,
                              import_roots=[tmap.bundle.parent, tmp_path_factory.getbasetemp()]))
    reg = app.state.vloc.registry
    keys = {"admin": reg.create_key("admin", name="ops")[1], "robot": reg.create_key("robot", ["room"])[1],
            "other": reg.create_key("robot", ["elsewhere"])[1], "bad": "vloc_not-a-real-key"}
    with LiveServer(app) as srv:
        client = http_client(srv.url)
        r = client.post("/v1/maps/room/versions", json={"path": str(tmap.bundle)}, headers=auth(keys["admin"]))
        assert r.status_code == 201, r.text
        srv.client, srv.keys, srv.app, srv.data = client, keys, app, data
        yield srv
        client.close()


def auth(key: str | None, header: str = "bearer") -> dict:
    if key is None:
        return {}
    return {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}


def localize(client, map_id, key, image, meta=None, **kw):
    meta = meta or {"camera": CAMERA}
    return client.post(f"/v1/maps/{map_id}/localize", headers=auth(key, kw.pop("header", "bearer")),
                       files={"image": ("frame.png", image, "image/png")}, data={"meta": json.dumps(meta)}, **kw)


def centre(pose: dict) -> np.ndarray:
    return np.array(pose["translation"])


def tar_bundle(bundle: Path, arcname: str = "map") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(bundle, arcname=arcname)
    return buf.getvalue()


# probes ------------------------------------------------------------------------------------------
def test_probes_and_metrics_need_no_key(svc):
    c = svc.client
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] and r.json()["active"] == 1
    r = c.get("/metrics")
    assert r.status_code == 200 and "vloc_http_request_duration_seconds" in r.text
    assert r.headers["x-request-id"]
    assert c.get("/healthz", headers={"X-Request-ID": "trace-123"}).headers["x-request-id"] == "trace-123"
    spec = c.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/maps/{map_id}/localize" in spec["paths"]
    assert "StreamFrameMeta" in spec["components"]["schemas"] and "4 bytes" in spec["info"]["description"]


# localization ------------------------------------------------------------------------------------
def test_localize_rendered_frame_within_2cm(svc, queries):
    for image, truth in queries[:2]:
        r = localize(svc.client, "room", svc.keys["robot"], image,
                     {"camera": CAMERA, "robot_id": "r2d2", "timestamp": 1700000000.5})
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["accepted"], res["reason"]
        assert np.linalg.norm(centre(res["world_from_cam"]) - truth.centre) < 0.02
        assert np.allclose(res["cam_from_world"]["translation"], truth.translation, atol=0.05)
        assert len(res["covariance"]) == 6 and res["num_inliers"] >= 30
        assert {"features", "retrieval", "matching", "pose", "total", "decode"} <= set(res["timings_ms"])
        assert res["map_id"] == "room" and res["map_version"] == "1" and res["robot_id"] == "r2d2"
        assert res["prior_used"] is False and "latitude" not in res and "heading" not in res
        assert r.headers["x-request-id"]
    m = svc.client.get("/metrics").text
    assert 'vloc_localizations_total{outcome="accepted",source="rest"}' in m
    assert 'vloc_localize_stage_seconds_count{stage="matching"}' in m
    assert "vloc_maps_resident 1.0" in m


def test_localize_jpeg_with_prior_narrows_retrieval(svc, queries, tmap):
    _, truth = queries[0]
    jpeg = encode_image(tmap.scene.render(truth, DEFAULT_CAMERA)[0], "JPEG", 95)
    prior = {"position": (truth.centre + [0.1, -0.1, 0.0]).tolist(), "sigma": 0.2}
    r = localize(svc.client, "room", svc.keys["robot"], jpeg, {"camera": CAMERA, "prior": prior}, header="x-api-key")
    res = r.json()
    assert r.status_code == 200 and res["accepted"] and res["prior_used"]
    assert np.linalg.norm(centre(res["world_from_cam"]) - truth.centre) < 0.02
    radius = max(LocalizerConfig().prior_radius_m, 3 * 0.2)
    for name in res["retrieved"]:
        assert np.linalg.norm(tmap.poses[name].centre - prior["position"]) <= radius


# authz matrix ------------------------------------------------------------------------------------
WHO = ["none", "bad", "robot", "other", "admin"]
EXPECTED = {  # operation -> status per WHO
    "localize": [401, 401, 200, 403, 200],
    "localize_unknown_map": [401, 401, 403, 403, 404],
    "stream": [401, 401, 101, 403, 101],
    "list": [401, 401, 200, 200, 200],
    "get": [401, 401, 200, 403, 200],
    "register": [401, 401, 403, 403, 201],
    "activate": [401, 401, 403, 403, 200],
    "delete_version": [401, 401, 403, 403, 200],
    "delete": [401, 401, 403, 403, 200],
    "keys": [401, 401, 403, 403, 200],
}


def _ws_status(svc, key, map_id="room") -> int:
    try:
        with connect(f"{svc.ws_url}/v1/maps/{map_id}/stream", additional_headers=auth(key), proxy=None,
                     open_timeout=30):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


@pytest.mark.parametrize("who", WHO)
def test_authz_matrix(svc, queries, tmap, who):
    c, key = svc.client, svc.keys.get(who)
    image = queries[0][0]
    scratch = f"scratch-{who}"
    if who == "admin":  # a map of its own for the destructive operations
        r = c.post(f"/v1/maps/{scratch}/versions", json={"path": str(tmap.bundle)}, headers=auth(key))
        assert r.status_code == 201, r.text
    got = {
        "localize": localize(c, "room", key, image).status_code,
        "localize_unknown_map": localize(c, "no-such-map", key, image).status_code,
        "stream": _ws_status(svc, key),
        "list": c.get("/v1/maps", headers=auth(key)).status_code,
        "get": c.get("/v1/maps/room", headers=auth(key)).status_code,
        "register": c.post(f"/v1/maps/{scratch}/versions", json={"path": str(tmap.bundle), "activate": False},
                           headers=auth(key)).status_code,
        "activate": c.post(f"/v1/maps/{scratch}/versions/2/activate", headers=auth(key)).status_code,
        "delete_version": c.delete(f"/v1/maps/{scratch}/versions/1", headers=auth(key)).status_code,
        "delete": c.delete(f"/v1/maps/{scratch}", headers=auth(key)).status_code,
        "keys": c.get("/v1/keys", headers=auth(key)).status_code,
    }
    assert got == {op: codes[WHO.index(who)] for op, codes in EXPECTED.items()}
    if who in ("none", "bad"):
        r = c.get("/v1/maps", headers=auth(key))
        assert r.headers.get("www-authenticate", "").startswith("Bearer") and "detail" in r.json()
    if who == "other":  # a robot lists only the maps it is granted
        assert c.get("/v1/maps", headers=auth(key)).json() == {"maps": []}


def test_unauthenticated_caller_learns_nothing_about_maps(svc):
    c = svc.client
    answers = {c.post(f"/v1/maps/{m}/localize", files={"image": ("a", b"x")}, data={"meta": "{}"}).text
               for m in ("room", "no-such-map", "%2e%2e", "bad%20id")}
    assert len(answers) == 1 and "missing API key" in answers.pop()


# registry ----------------------------------------------------------------------------------------
def test_register_by_upload_activate_and_delete(svc, tmap):
    c, A = svc.client, auth(svc.keys["admin"])
    blob = tar_bundle(tmap.bundle)
    r = c.post("/v1/maps/uploaded/versions", files={"bundle": ("map.tar.gz", blob, "application/gzip")}, headers=A)
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == "1" and v1["active"] and v1["summary"]["n_images"] == 24
    assert (svc.data / "maps" / "uploaded" / "1" / "manifest.json").is_file()
    r = c.post("/v1/maps/uploaded/versions", files={"bundle": ("m.tar.gz", blob)},
               data={"version": "v2", "activate": "false"}, headers=A)
    assert r.status_code == 201 and r.json()["version"] == "v2" and not r.json()["active"]
    r = c.post("/v1/maps/uploaded/versions", files={"bundle": ("m.tar.gz", blob)}, data={"version": "v2"}, headers=A)
    assert r.status_code == 409
    maps = {m["map_id"]: m for m in c.get("/v1/maps", headers=A).json()["maps"]}
    assert maps["uploaded"]["active_version"] == "1"
    assert [v["version"] for v in maps["uploaded"]["versions"]] == ["1", "v2"]
    r = c.post("/v1/maps/uploaded/versions/v2/activate", headers=A)
    assert r.status_code == 200 and r.json()["active_version"] == "v2"
    assert c.post("/v1/maps/uploaded/versions/v3/activate", headers=A).status_code == 404
    assert c.delete("/v1/maps/uploaded/versions/v2", headers=A).status_code == 409  # active
    assert c.delete("/v1/maps/uploaded/versions/1", headers=A).status_code == 200
    assert not (svc.data / "maps" / "uploaded" / "1").exists()
    assert c.delete("/v1/maps/uploaded/versions/1", headers=A).status_code == 404
    assert c.delete("/v1/maps/uploaded", headers=A).status_code == 200
    assert c.get("/v1/maps/uploaded", headers=A).status_code == 404
    assert not (svc.data / "maps" / "uploaded").exists()
    assert c.delete("/v1/maps/uploaded", headers=A).status_code == 404
    assert list((svc.data / "tmp").iterdir()) == []


def test_register_rejects_non_bundles(svc, tmap, tmp_path):
    c, A = svc.client, auth(svc.keys["admin"])
    (tmp_path / "empty").mkdir()
    for body in ({"path": str(tmp_path / "empty")}, {"path": str(tmp_path / "missing")},
                 {"path": str(tmap.bundle / "manifest.json")}, {"path": ""}, {"paths": "x"}):
        r = c.post("/v1/maps/bad/versions", json=body, headers=A)
        assert r.status_code == 422, (body, r.text)
    newer = tmp_path / "newer"
    shutil.copytree(tmap.bundle, newer)
    m = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    r = c.post("/v1/maps/bad/versions", json={"path": str(newer)}, headers=A)
    assert r.status_code == 422 and "newer" in r.json()["detail"]
    (newer / "manifest.json").write_text(json.dumps(m))
    with open(newer / "features.h5", "r+b") as f:  # corrupt one byte
        f.seek(100)
        byte = f.read(1)[0]
        f.seek(100)
        f.write(bytes([byte ^ 0xFF]))
    r = c.post("/v1/maps/bad/versions", json={"path": str(newer)}, headers=A)
    assert r.status_code == 422 and "features.h5" in r.json()["detail"]
    assert c.get("/v1/maps/bad", headers=A).status_code == 404


def test_hot_swap_under_continuous_load_fails_nothing(svc, queries, tmap):
    c, A = svc.client, auth(svc.keys["admin"])
    r = c.post("/v1/maps/room/versions", json={"path": str(tmap.bundle), "version": "2", "activate": False},
               headers=A)
    assert r.status_code == 201, r.text
    image, truth = queries[1]
    stop = threading.Event()
    results: list[tuple[int, dict]] = []

    def load() -> None:
        with http_client(svc.url) as client:
            while not stop.is_set():
                r = localize(client, "room", svc.keys["robot"], image)
                results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            time.sleep(0.4)
            r = c.post(f"/v1/maps/room/versions/{'2' if i % 2 == 0 else '1'}/activate", headers=A)
            assert r.status_code == 200, r.text
        time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert len(results) >= 4
    failed = [(s, b.get("detail")) for s, b in results if s != 200 or not b["accepted"]]
    assert failed == []
    assert {b["map_version"] for _, b in results} == {"1", "2"}
    assert all(np.linalg.norm(centre(b["world_from_cam"]) - truth.centre) < 0.02 for _, b in results)
    assert c.get("/v1/maps/room", headers=A).json()["active_version"] == "1"


# keys --------------------------------------------------------------------------------------------
def test_keys_api_create_use_revoke(svc, queries):
    c, A = svc.client, auth(svc.keys["admin"])
    r = c.post("/v1/keys", json={"role": "robot", "maps": ["room"], "name": "bot-7"}, headers=A)
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith("vloc_") and created["maps"] == ["room"]
    listed = c.get("/v1/keys", headers=A).json()["keys"]
    assert created["key_id"] in {k["key_id"] for k in listed}
    assert all("key" not in k for k in listed)
    assert c.get("/v1/maps/room", headers=auth(created["key"])).status_code == 200
    assert c.delete(f"/v1/keys/{created['key_id']}", headers=A).json()["revoked_utc"]
    assert c.get("/v1/maps/room", headers=auth(created["key"])).status_code == 401
    assert c.delete(f"/v1/keys/{created['key_id']}", headers=A).status_code == 404
    assert c.post("/v1/keys", json={"role": "root"}, headers=A).status_code == 422
    assert c.post("/v1/keys", json={"role": "robot", "maps": ["../x"]}, headers=A).status_code == 422


def test_cli_keys_create_list_revoke(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli_app, ["keys", "create", "--data", str(tmp_path), "--role", "robot", "--maps", "a,b",
                                "--name", "r1", "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert made["maps"] == ["a", "b"] and made["key"].startswith("vloc_")
    raw = (tmp_path / "registry.sqlite").read_bytes()
    assert made["key"].encode() not in raw  # stored hashed
    r = runner.invoke(cli_app, ["keys", "list", "--data", str(tmp_path)])
    assert made["key_id"] in r.output and "live" in r.output and made["key"] not in r.output
    assert runner.invoke(cli_app, ["keys", "revoke", "--data", str(tmp_path), made["key_id"]]).exit_code == 0
    assert "revoked" in runner.invoke(cli_app, ["keys", "list", "--data", str(tmp_path)]).output
    assert runner.invoke(cli_app, ["keys", "revoke", "--data", str(tmp_path), made["key_id"]]).exit_code == 2
    r = runner.invoke(cli_app, ["keys", "create", "--data", str(tmp_path), "--role", "boss"])
    assert r.exit_code == 2 and "role" in r.output


def test_vloc_serve_command(tmp_path):
    runner = CliRunner()
    key = json.loads(runner.invoke(cli_app, ["keys", "create", "--data", str(tmp_path), "--role", "admin",
                                             "--json"]).output)["key"]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vloc = Path(sys.executable).with_name("vloc")
    proc = subprocess.Popen([str(vloc), "serve", "--data", str(tmp_path), "--port", str(port), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_PROXY": "*"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/maps", headers=auth(key), trust_env=False,
                              timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.2)
        assert r.status_code == 200 and r.json() == {"maps": []}
        rid = r.headers["x-request-id"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("logger") == "vloc.api.access" and x.get("request_id") == rid]
    assert access and access[0]["status"] == 200 and access[0]["endpoint"] == "/v1/maps", err[-2000:]


# georeference ------------------------------------------------------------------------------------
def test_georeferenced_map_returns_geodetic_pose(svc, tmap, queries, tmp_path):
    geo = tmp_path / "geo"
    shutil.copytree(tmap.bundle, geo)
    m = json.loads((geo / "manifest.json").read_text())
    lat0, lon0, alt0, yaw = 55.7047, 13.1910, 80.0, np.radians(30.0)
    R = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1.0]])
    t = np.array([100.0, -50.0, 2.0])
    m["georeference"] = {"origin": {"latitude": lat0, "longitude": lon0, "altitude": alt0},
                         "enu_from_map": {"scale": 1.0, "rotation": R.tolist(), "translation": t.tolist()}}
    (geo / "manifest.json").write_text(json.dumps(m))
    A = auth(svc.keys["admin"])
    r = svc.client.post("/v1/maps/geo/versions", json={"path": str(geo)}, headers=A)
    assert r.status_code == 201 and r.json()["summary"]["georeferenced"]
    image, truth = queries[0]
    res = localize(svc.client, "geo", svc.keys["admin"], image).json()
    assert res["accepted"]
    enu = R @ truth.centre + t
    az, _, dist = Geod(ellps="WGS84").inv(lon0, lat0, res["longitude"], res["latitude"])
    assert abs(dist - np.hypot(enu[0], enu[1])) < 0.03
    assert abs((az - np.degrees(np.arctan2(enu[0], enu[1])) + 180) % 360 - 180) < 0.05
    assert abs(res["altitude"] - (alt0 + enu[2])) < 0.05  # curvature over ~110 m: < 1 mm
    axis = R @ truth.inverse().rotation[:, 2]
    assert abs((res["heading"] - np.degrees(np.arctan2(axis[0], axis[1])) + 180) % 360 - 180) < 0.2
    assert svc.client.delete("/v1/maps/geo", headers=A).status_code == 200


def test_malformed_georeference_is_refused_not_guessed():
    from core.geo import Georeference
    assert Georeference.from_manifest({}) is None
    for bad in ({"origin": {"latitude": 95, "longitude": 0}, "enu_from_map": {"translation": [0, 0, 0],
                                                                            "rotation": np.eye(3).tolist()}},
                {"origin": {"latitude": 10, "longitude": 0}, "enu_from_map": {"translation": [0, 0],
                                                                            "rotation": np.eye(3).tolist()}},
                {"origin": {"latitude": 10, "longitude": 0}, "enu_from_map": {"translation": [0, 0, 0],
                                                                            "rotation": (2 * np.eye(3)).tolist()}},
                {"origin": "here"}, []):
        with pytest.raises(ValueError):
            Georeference.from_manifest({"georeference": bad})


# cache -------------------------------------------------------------------------------------------
def test_memory_mapped_maps_count_less_and_sidecars_are_pruned(tmap, tmp_path):
    mmap_dir, maps_dir = tmp_path / "mmap", tmp_path / "maps"
    plain = load_map("a", "1", tmap.bundle, LocalizerConfig())
    mapped = load_map("a", "1", tmap.bundle, LocalizerConfig(), mmap_dir)
    desc = plain.localizer.map.obs_descriptors.nbytes
    assert mapped.nbytes == plain.nbytes - desc and desc > 0  # shared file pages are not charged to the budget
    (side,) = mmap_dir.glob("*.npy")
    (mmap_dir / ("0" * 64 + ".npy")).write_bytes(b"orphan")
    assert prune_sidecars(mmap_dir, maps_dir) == 2  # no stored bundle refers to either
    (maps_dir / "a" / "1").mkdir(parents=True)
    shutil.copy(tmap.bundle / "manifest.json", maps_dir / "a" / "1" / "manifest.json")
    load_map("a", "1", tmap.bundle, LocalizerConfig(), mmap_dir)
    assert prune_sidecars(mmap_dir, maps_dir) == 0 and side.is_file()


def test_cache_single_flight_lru_and_budget(tmap):
    calls = []

    def loader(map_id, version, path, features):
        calls.append((map_id, version))
        return load_map(map_id, version, path, LocalizerConfig(features=features))

    one = load_map("x", "1", tmap.bundle, LocalizerConfig()).nbytes
    assert one > 1_000_000
    events = []
    cache = MapCache(int(1.5 * one), loader, on_change=lambda n, b, d: events.append((n, b, d)))
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a", "1", tmap.bundle))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [("a", "1")] and len({id(g) for g in got}) == 1  # loaded once, shared
    held = got[0]
    cache.get("b", "1", tmap.bundle)  # over budget: 'a' (least recently used) goes
    assert [k for k, _ in cache.resident()] == [("b", "1", "sift")] and events[-1] == (1, one, 0)
    assert held.localizer.map.n_images == 24  # a holder keeps using an evicted map
    cache.get("a", "1", tmap.bundle)
    assert calls == [("a", "1"), ("b", "1"), ("a", "1")]
    cache.evict("a")
    assert cache.resident() == []
    with pytest.raises(Exception):
        cache.get("c", "1", tmap.bundle.parent / "no-such-bundle")
    assert cache.resident() == []
