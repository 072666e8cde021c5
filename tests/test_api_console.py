"""The console's static files (CSP, no inline script, vendored three.js) and the API behind it
(``/v1/me``, points, cameras, layers, live fleet, inlier keypoints, activation history), and
least privilege for registration by server path, against a real uvicorn server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from html.parser import HTMLParser

import cv2
import numpy as np
import pycolmap
import pytest

from api.app import create_app
from api.mapdata import decode_points
from api.routes_console import CONSOLE_DIR
from api.settings import Settings
from api.testing import LiveServer, encode_image, http_client, layered_test_map, shared_test_map
from datasets.synthetic import DEFAULT_CAMERA

pytestmark = pytest.mark.timeout(300)
CAMERA = {"model": "PINHOLE", "width": 640, "height": 480, "params": [525.0, 525.0, 320.0, 240.0]}


def auth(key: str | None) -> dict:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def tmap():
    return shared_test_map()


@pytest.fixture(scope="module")
def lmap():
    return layered_test_map()


@pytest.fixture(scope="module")
def query(tmap):
    T = tmap.scene.trajectory(12, pass_id=1)[2]
    return encode_image(tmap.scene.render(T, DEFAULT_CAMERA)[0]), T


@pytest.fixture(scope="module")
def svc(tmap, lmap, tmp_path_factory):
    """Maps 'room' (no layers) and 'lroom' (layers); keys admin, robot (room), other (elsewhere).
    Bundles are registered by tar upload: no import_roots (the default)."""
    import io
    import tarfile
    data = tmp_path_factory.mktemp("console-data")
    app = create_app(Settings(data_dir=data, workers=2, max_frame_age_s=30, max_queue_wait_s=0))
    reg = app.state.vloc.registry
    keys = {"admin": reg.create_key("admin", name="ops")[1], "robot": reg.create_key("robot", ["room"], name="r1")[1],
            "other": reg.create_key("robot", ["elsewhere"])[1], "bad": "vloc_not-a-real-key"}
    with LiveServer(app) as srv:
        client = http_client(srv.url)
        for map_id, bundle in (("room", tmap.bundle), ("lroom", lmap.bundle)):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tf:
                tf.add(bundle, arcname="map")
            r = client.post(f"/v1/maps/{map_id}/versions", files={"bundle": ("map.tar", buf.getvalue())},
                            headers=auth(keys["admin"]))
            assert r.status_code == 201, r.text
        srv.client, srv.keys, srv.app = client, keys, app
        yield srv
        client.close()


# console files -------------------------------------------------------------------------------------
class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.inline: list[str] = []
        self.handlers: list[str] = []
        self.links: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.handlers += [f"{tag}.{k}" for k in a if k.startswith("on")]
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        if tag in ("link", "img", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))
        if tag == "style":
            self.inline.append("<style>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(data.strip()[:80])


def test_console_is_served_from_the_package_with_a_csp_and_no_inline_script(svc):
    c = svc.client
    r = c.get("/console/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    tags = _Tags()
    tags.feed(r.text)
    assert tags.scripts and all(s.get("src") for s in tags.scripts), tags.scripts
    assert tags.inline == [] and tags.handlers == [] and ' style="' not in r.text
    # every referenced file is local and served with the same header
    assert tags.links and all(not re.match(r"^(https?:)?//", u) for u in tags.links), tags.links
    for u in tags.links:
        f = c.get(f"/console/{u}")
        assert f.status_code == 200 and f.headers["content-security-policy"] == csp, u
    # JS modules import only local files (no CDN), and the whole tree holds no URL to another host
    for path in CONSOLE_DIR.rglob("*"):
        if path.suffix in (".js", ".html", ".css"):
            text = path.read_text()
            for spec in re.findall(r"""(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]""", text):
                assert spec.startswith("./") or spec.startswith("../"), (path.name, spec)
            assert not re.search(r"""(src|href|import\s*\(|fetch\s*\()\s*=?\s*['"]https?://""", text), path.name
    assert c.get("/console").status_code == 308 and c.get("/console").headers["location"] == "/console/"
    for bad in ("/console/../api/settings.py", "/console/%2e%2e/settings.py", "/console/nope.js",
                "/console/js", "/console/vendor/../../service.py"):
        r = c.get(bad)
        assert r.status_code == 404, bad
    r = c.get("/console/js/main.js")
    assert r.headers["content-type"].startswith("text/javascript") and r.headers["x-content-type-options"] == "nosniff"


def test_vendored_three_matches_its_recorded_npm_release():
    vendor = CONSOLE_DIR / "vendor"
    readme = (vendor / "README.md").read_text()
    version = re.search(r"`three` \*\*(\d+\.\d+\.\d+)\*\*", readme).group(1)
    recorded = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert set(recorded) == {"three.module.min.js", "three.core.min.js", "OrbitControls.js", "PLYLoader.js", "LICENSE"}
    for name, digest in recorded.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (vendor / "LICENSE").read_text()
    # the build says which release it is (three's REVISION constant is the minor number)
    assert re.search(r'const t="(\d+)"', (vendor / "three.core.min.js").read_text()[:2000]).group(1) == \
        version.split(".")[1]
    assert "from './three.module.min.js'" in (vendor / "OrbitControls.js").read_text()


def test_console_can_be_turned_off(tmp_path):
    app = create_app(Settings(data_dir=tmp_path, console=False))
    with LiveServer(app) as srv, http_client(srv.url) as c:
        assert c.get("/console/").status_code == 404


# /v1/me, map data ---------------------------------------------------------------------------------
def test_me_tells_a_key_what_it_may_see(svc):
    c = svc.client
    assert c.get("/v1/me", headers=auth(svc.keys["robot"])).json() | {"key_id": "x"} == \
        {"key_id": "x", "name": "r1", "role": "robot", "maps": ["room"]}
    assert c.get("/v1/me", headers=auth(svc.keys["admin"])).json()["role"] == "admin"
    for who in (None, "bad"):
        assert c.get("/v1/me", headers=auth(svc.keys.get(who))).status_code == 401


@pytest.mark.parametrize("path", ["/points", "/cameras", "/layers", "/layers/mesh.ply", "/versions/1", "/live"])
def test_map_data_follows_the_map_rules(svc, path):
    c = svc.client
    codes = {who: c.get(f"/v1/maps/room{path}", headers=auth(svc.keys.get(who))).status_code
             for who in (None, "bad", "other")}
    assert codes == {None: 401, "bad": 401, "other": 403}
    ok = 404 if path == "/layers/mesh.ply" else 200  # 'room' has no layers
    if path != "/live":  # the live stream's 200 is tested below
        assert c.get(f"/v1/maps/room{path}", headers=auth(svc.keys["robot"])).status_code == ok
    assert c.get(f"/v1/maps/nomap{path}", headers=auth(svc.keys["admin"])).status_code == 404
    if path not in ("/versions/1", "/live"):
        assert c.get(f"/v1/maps/room{path}?version=9", headers=auth(svc.keys["admin"])).status_code == 404


def test_points_are_the_models_decimated_on_request(svc, tmap):
    c, A = svc.client, auth(svc.keys["robot"])
    rec = pycolmap.Reconstruction(str(tmap.bundle / "model"))
    ids = sorted(rec.points3D.keys())
    t_xyz = np.array([rec.points3D[i].xyz for i in ids], np.float32)
    t_rgb = np.array([rec.points3D[i].color for i in ids], np.uint8)

    def rows(xyz, rgb):  # points as sortable rows (order-free comparison)
        a = np.hstack([xyz.astype(np.float64), rgb.astype(np.float64)])
        return a[np.lexsort(a.T[::-1])]
    r = c.get("/v1/maps/room/points", headers=A)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    xyz, rgb, total = decode_points(r.content)
    assert total == len(ids) == len(xyz) == int(r.headers["x-points-total"]) and len(r.content) % 4 == 0
    assert np.allclose(rows(xyz, rgb), rows(t_xyz, t_rgb), atol=1e-5)
    r = c.get("/v1/maps/room/points?max_points=100", headers=A)
    small, small_rgb, total2 = decode_points(r.content)
    assert len(small) == 100 == int(r.headers["x-points-returned"]) and total2 == total
    # a subset of the map's points, with their colours
    full = {tuple(row) for row in np.round(rows(xyz, rgb), 5)}
    assert {tuple(row) for row in np.round(rows(small, small_rgb), 5)} <= full
    assert np.array_equal(decode_points(c.get("/v1/maps/room/points?max_points=100", headers=A).content)[0], small)
    for bad in (0, -1, 10**9):
        r = c.get(f"/v1/maps/room/points?max_points={bad}", headers=A)
        assert r.status_code == 422, bad
    assert "limit" in c.get("/v1/maps/room/points?max_points=100000000", headers=A).json()["detail"]


def test_cameras_are_the_map_images_poses(svc, tmap):
    body = svc.client.get("/v1/maps/room/cameras", headers=auth(svc.keys["robot"])).json()
    assert body["version"] == "1" and len(body["images"]) == len(tmap.poses)
    cam = body["cameras"][0]
    assert cam["model"] in ("PINHOLE", "SIMPLE_RADIAL", "SIMPLE_PINHOLE", "OPENCV") and cam["width"] == 640
    for im in body["images"]:
        truth = tmap.poses[im["name"]].inverse()
        assert np.linalg.norm(np.array(im["world_from_cam"]["translation"]) - truth.translation) < 0.05, im["name"]


def test_layers_occupancy_png_and_mesh(svc, lmap):
    c, A = svc.client, auth(svc.keys["admin"])
    none = c.get("/v1/maps/room/layers", headers=A).json()
    assert none["has_layers"] is False and none["occupancy"] == [] and len(none["level_from_map"]) == 3
    info = c.get("/v1/maps/lroom/layers", headers=A).json()
    assert info["has_layers"] and info["mesh"]["file"] == "mesh.ply" and info["occupancy"]
    R = np.array(info["level_from_map"])
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
    occ = info["occupancy"][0]
    r = c.get(f"/v1/maps/lroom/layers/{occ['png']}", headers=A)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    png = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    pgm = cv2.imread(str(lmap.bundle / "layers" / occ["png"].replace(".png", ".pgm")), cv2.IMREAD_UNCHANGED)
    assert png.shape == (occ["height"], occ["width"]) and np.array_equal(png, pgm)
    assert set(np.unique(png)) <= {0, 205, 254} and (png == 0).any() and (png == 254).any()
    assert float(r.headers["x-occupancy-resolution"]) == occ["resolution"]
    mesh = c.get("/v1/maps/lroom/layers/mesh.ply", headers=A)
    assert mesh.status_code == 200 and mesh.content.startswith(b"ply") and len(mesh.content) == info["mesh"]["bytes"]
    for name in ("nope.ply", "..%2Fmanifest.json", "occupancy_floor9.png", "manifest.json"):
        r = c.get(f"/v1/maps/lroom/layers/{name}", headers=A)
        assert r.status_code == 404 and "manifest.json\"" not in r.text, name


def test_version_details_and_activation_history(svc, tmap):
    import io
    import tarfile
    c, A = svc.client, auth(svc.keys["admin"])
    d = c.get("/v1/maps/room/versions/1", headers=A).json()
    assert d["active"] and d["statistics"]["n_images"] == len(tmap.poses) and d["feature_sets"]
    assert d["extent"] and all(s > 0.5 for s in d["extent"]["size"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(tmap.bundle, arcname="map")
    assert c.post("/v1/maps/hist/versions", files={"bundle": ("m.tar", buf.getvalue())}, headers=A).status_code == 201
    assert c.post("/v1/maps/hist/versions", files={"bundle": ("m.tar", buf.getvalue())}, data={"activate": "false"},
                  headers=A).status_code == 201
    r = c.post("/v1/maps/hist/versions/2/activate", headers=A)
    assert r.status_code == 200, r.text
    me = c.get("/v1/me", headers=A).json()["key_id"]
    hist = c.get("/v1/maps/hist", headers=A).json()["activations"]
    assert [h["version"] for h in hist] == ["2", "1"] and hist[0]["key_id"] == me == hist[1]["key_id"]
    assert c.post("/v1/maps/hist/versions/1/activate", headers=auth(svc.keys["robot"])).status_code == 403
    assert c.delete("/v1/maps/hist", headers=A).status_code == 200


# localization extras ------------------------------------------------------------------------------
def test_inlier_keypoints_reproject_with_the_true_pose(svc, query):
    image, truth = query
    c = svc.client
    meta = {"camera": CAMERA, "inliers": True}
    r = c.post("/v1/maps/room/localize", headers=auth(svc.keys["robot"]),
               files={"image": ("q.png", image, "image/png")}, data={"meta": json.dumps(meta)})
    body = r.json()
    assert r.status_code == 200 and body["accepted"], body
    kp, xyz = np.array(body["inliers"]["keypoints"]), np.array(body["inliers"]["points3D"])
    assert kp.shape == (body["num_inliers"], 2) and xyz.shape == (body["num_inliers"], 3)
    cam = truth.rotation @ xyz.T + truth.translation[:, None]
    fx, fy, cx, cy = CAMERA["params"]
    uv = np.stack([fx * cam[0] / cam[2] + cx, fy * cam[1] / cam[2] + cy], 1)
    assert np.median(np.linalg.norm(uv - kp, axis=1)) < 1.5
    plain = c.post("/v1/maps/room/localize", headers=auth(svc.keys["robot"]),
                   files={"image": ("q.png", image, "image/png")}, data={"meta": json.dumps({"camera": CAMERA})})
    assert plain.json().get("inliers") is None


def _read_events(c, url, key, want, timeout=60.0):
    """Events of a live stream until ``want(events)`` is true (bounded by ``timeout``)."""
    events, t0 = [], time.monotonic()
    with c.stream("GET", url, headers=auth(key), timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line[5:]), time.monotonic()))
                if want(events) or time.monotonic() - t0 > timeout:
                    break
    return events


def test_live_fleet_shows_a_robot_with_pose_ellipse_and_heartbeat(svc, query):
    image, truth = query
    c, key = svc.client, svc.keys["robot"]
    done = threading.Event()

    def robot():
        meta = {"camera": CAMERA, "robot_id": "bot-7"}
        with http_client(svc.url) as rc:
            r = rc.post("/v1/maps/room/localize", headers=auth(key), files={"image": ("q.png", image, "image/png")},
                        data={"meta": json.dumps(meta)})
            assert r.status_code == 200 and r.json()["accepted"], r.text
        done.set()

    def seen(events):
        return any(r["robot_id"] == "bot-7" for _, e, _ in events for r in e["robots"]) and len(events) >= 3

    t = threading.Timer(0.5, robot)
    t.start()
    events = _read_events(c, "/v1/maps/room/live", key, seen)
    t.join()
    assert done.is_set() and events[0][0] == "snapshot" and all(n == "update" for n, _, _ in events[1:])
    bot = next(r for _, e, _ in events for r in e["robots"] if r["robot_id"] == "bot-7")
    assert bot["accepted"] and bot["source"] == "rest" and bot["latency_ms"] > 0 and bot["map_version"] == "1"
    centre = truth.inverse().translation
    assert np.linalg.norm(np.array(bot["position"]) - centre) < 0.05
    R = np.array(c.get("/v1/maps/room/layers", headers=auth(key)).json()["level_from_map"])
    assert np.allclose(bot["xy"], (R @ centre)[:2], atol=0.05)
    axis = R @ truth.inverse().rotation[:, 2]
    d = (bot["heading_deg"] - np.degrees(np.arctan2(axis[1], axis[0])) + 180) % 360 - 180
    assert abs(d) < 2
    e = bot["ellipse"]
    assert 0 < e["minor"] <= e["major"] < 1.0
    # the heartbeat: an event at least once a second with nothing happening
    quiet = _read_events(c, "/v1/maps/room/live", key, lambda ev: len(ev) >= 3)
    gaps = np.diff([t for _, _, t in quiet])
    assert len(quiet) == 3 and gaps.max() < 1.5
    # the snapshot of a new connection carries the robot's track
    snap = quiet[0][1]["robots"]
    assert [r["robot_id"] for r in snap] == ["bot-7"] and len(snap[0]["track"]) >= 1


# least privilege -----------------------------------------------------------------------------------
def test_registering_by_server_path_is_off_by_default_and_says_how_to_enable(svc, tmap):
    c, A = svc.client, auth(svc.keys["admin"])
    r = c.post("/v1/maps/bypath/versions", json={"path": str(tmap.bundle)}, headers=A)
    assert r.status_code == 403 and "import_roots" in r.json()["detail"] and "--import-root" in r.json()["detail"]
    # the same answer whether the path exists or not: the server's files are not probed
    r2 = c.post("/v1/maps/bypath/versions", json={"path": "/etc/passwd"}, headers=A)
    r3 = c.post("/v1/maps/bypath/versions", json={"path": "/no/such/dir"}, headers=A)
    assert r2.status_code == r3.status_code == 403 and r2.json()["detail"] == r3.json()["detail"]


def test_import_roots_allow_only_their_directories_and_name_no_other_file(tmap, tmp_path):
    root = tmp_path / "bundles"
    root.mkdir()
    (root / "notabundle").mkdir()
    (root / "notabundle" / "secret-name.txt").write_text("x")
    app = create_app(Settings(data_dir=tmp_path / "data", import_roots=[root]))
    admin = app.state.vloc.registry.create_key("admin")[1]
    with LiveServer(app) as srv, http_client(srv.url) as c:
        A = auth(admin)
        outside = [c.post("/v1/maps/m/versions", json={"path": p}, headers=A)
                   for p in (str(tmap.bundle), "/etc", "/no/such", str(root / ".." / ".."))]
        assert {r.status_code for r in outside} == {403}
        assert all("outside the directories" in r.json()["detail"] for r in outside)
        r = c.post("/v1/maps/m/versions", json={"path": str(root / "notabundle")}, headers=A)
        assert r.status_code == 422 and "secret-name" not in r.text
        assert c.post("/v1/maps/m/versions", json={"path": str(root / "missing")}, headers=A).status_code == 422
        import shutil
        shutil.copytree(tmap.bundle, root / "good")
        r = c.post("/v1/maps/m/versions", json={"path": str(root / "good")}, headers=A)
        assert r.status_code == 201, r.text


def test_openapi_documents_the_console_api(svc):
    spec = svc.client.get("/openapi.json").json()
    for path in ("/v1/me", "/v1/maps/{map_id}/points", "/v1/maps/{map_id}/cameras", "/v1/maps/{map_id}/layers",
                 "/v1/maps/{map_id}/layers/{name}", "/v1/maps/{map_id}/live", "/v1/maps/{map_id}/versions/{version}"):
        op = spec["paths"][path]["get"]
        assert "401" in op["responses"], path
        if path != "/v1/me":
            assert {"403", "404"} <= set(op["responses"]), path
    points = spec["paths"]["/v1/maps/{map_id}/points"]["get"]
    assert any(p["name"] == "max_points" for p in points["parameters"])
    assert "LiveEvent" in spec["components"]["schemas"] and "RobotLive" in spec["components"]["schemas"]
    assert "inliers" in spec["components"]["schemas"]["LocalizeMeta"]["properties"]
    assert not any(p.startswith("/console") for p in spec["paths"])


def test_a_browser_streams_with_its_key_in_a_subprotocol_not_the_url(svc, query):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from api.testing import stream_frame
    image, _ = query
    url = f"{svc.ws_url}/v1/maps/room/stream"
    with connect(url, subprotocols=["vloc", f"vloc.key.{svc.keys['robot']}"], proxy=None, open_timeout=30) as ws:
        assert ws.subprotocol == "vloc"
        ws.send(stream_frame({"frame_id": 1, "camera": CAMERA, "robot_id": "browser-bot"}, image))
        reply = json.loads(ws.recv(timeout=120))
        assert reply["frame_id"] == 1 and reply["accepted"], reply
    for protocols, status in ((["vloc", "vloc.key.vloc_wrong"], 401), (["vloc", f"vloc.key.{svc.keys['other']}"], 403),
                              ([f"vloc.key.{svc.keys['robot']}"], 401), (["vloc"], 401)):
        with pytest.raises(InvalidStatus) as e:
            connect(url, subprotocols=protocols, proxy=None, open_timeout=30)
        assert e.value.response.status_code == status, protocols
