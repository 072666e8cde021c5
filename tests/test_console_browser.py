"""The operator console in a real browser: Debian's headless Chromium driven by selenium, against a
live uvicorn server on 127.0.0.1 with a generated map (with HD layers). Skips with the reason when
Chromium, chromedriver or selenium is missing (``make install`` installs them).

Screenshots go to the test's temporary directory (``pytest --basetemp=DIR`` to keep them in view).
"""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from api.app import create_app
from api.settings import Settings
from api.testing import LiveServer, encode_image, http_client, layered_test_map, stream_frame
from bench.console_browser import chromium_missing, pixel_stats, save, sign_in, start_chromium, wait_for
from datasets.synthetic import DEFAULT_CAMERA

pytestmark = [pytest.mark.timeout(400),
              pytest.mark.skipif(chromium_missing() is not None, reason=str(chromium_missing()))]
CAMERA = {"model": "PINHOLE", "width": 640, "height": 480, "params": [525.0, 525.0, 320.0, 240.0]}


@pytest.fixture(scope="module")
def lmap():
    return layered_test_map()


@pytest.fixture(scope="module")
def server(lmap, tmp_path_factory):
    """Map 'lroom' (points, cameras, mesh, occupancy) and 'other-map'; keys admin, robot (lroom)."""
    data = tmp_path_factory.mktemp("console-browser-data")
    app = create_app(Settings(data_dir=data, workers=2, max_frame_age_s=30, max_queue_wait_s=0,
                              live_min_interval_s=0.05))
    reg = app.state.vloc.registry
    keys = {"admin": reg.create_key("admin", name="ops")[1], "robot": reg.create_key("robot", ["lroom"], name="r1")[1]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(lmap.bundle, arcname="map")
    with LiveServer(app) as srv, http_client(srv.url) as c:
        for map_id in ("lroom", "other-map"):
            r = c.post(f"/v1/maps/{map_id}/versions", files={"bundle": ("m.tar", buf.getvalue())},
                       headers={"Authorization": f"Bearer {keys['admin']}"})
            assert r.status_code == 201, r.text
        srv.keys = keys
        yield srv


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("console-screenshots")


def _map_list(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#map-list li')].map((li) => li.dataset.mapId)")


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]


def test_sign_in_lists_the_maps_the_key_may_see_and_keeps_the_key_out_of_urls(server, browser, shots):
    sign_in(browser, server.url, server.keys["robot"])
    wait_for(browser, "document.querySelectorAll('#map-list li').length > 0")
    assert _map_list(browser) == ["lroom"]  # a robot key sees its own map only
    assert "r1 (robot: lroom)" in browser.find_element("id", "whoami-text").text
    assert browser.execute_script("return sessionStorage.getItem('vloc.apiKey')") == server.keys["robot"]
    browser.find_element("css selector", "#map-list li[data-map-id='lroom']").click()
    wait_for(browser, "document.querySelector('#versions-table tbody tr')")
    wait_for(browser, "document.querySelector('#version-details dd')")
    save(browser.get_screenshot_as_png(), shots / "robot-overview.png")
    # a robot key gets no "Activate" button; the key never went into a URL
    assert browser.find_elements("css selector", "button[data-activate]") == []
    urls = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert urls and not any(server.keys["robot"] in u for u in urls + [browser.current_url])
    sign_in(browser, server.url, server.keys["admin"])
    wait_for(browser, "document.querySelectorAll('#map-list li').length > 1")
    assert _map_list(browser) == ["lroom", "other-map"]
    assert _console_errors(browser) == []


def test_an_admin_activates_a_version_and_sees_the_history(server, browser, shots, lmap):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(lmap.bundle, arcname="map")
    with http_client(server.url) as c:
        r = c.post("/v1/maps/other-map/versions", files={"bundle": ("m.tar", buf.getvalue())},
                   data={"activate": "false"}, headers={"Authorization": f"Bearer {server.keys['admin']}"})
        assert r.status_code == 201, r.text
    sign_in(browser, server.url, server.keys["admin"], "#/map/other-map/overview")
    wait_for(browser, "document.querySelector(\"button[data-activate='2']\")")
    assert len(browser.find_elements("css selector", "#versions-table tbody tr")) == 2
    browser.find_element("css selector", "button[data-activate='2']").click()
    wait_for(browser, "document.querySelector('#activation-history li') && "
                      "document.querySelector('#activation-history li').textContent.includes('version 2')")
    items = [li.text for li in browser.find_elements("css selector", "#activation-history li")]
    assert len(items) == 2 and "version 1" in items[1]
    assert browser.find_elements("css selector", "button[data-activate='2']") == []
    wait_for(browser, "document.querySelector(\"#map-list li[data-map-id='other-map'] .badge\").textContent === 'v2'")
    save(browser.get_screenshot_as_png(), shots / "activated.png")
    assert _console_errors(browser) == []


def test_3d_view_draws_points_cameras_and_mesh(server, browser, shots):
    sign_in(browser, server.url, server.keys["admin"], "#/map/lroom/3d")
    stats = wait_for(browser, "window.vlocStats && window.vlocStats.view3dFirstPoints")
    total = int(browser.find_element("id", "info-3d").get_attribute("data-points"))
    assert stats["points"] == total > 1000
    view = browser.find_element("id", "view-3d")
    time.sleep(0.3)
    drawn = pixel_stats(save(view.screenshot_as_png, shots / "3d-points.png").read_bytes(), 3)
    for box in ("show-points", "show-cameras"):
        browser.find_element("id", box).click()
    time.sleep(0.3)
    empty = pixel_stats(save(view.screenshot_as_png, shots / "3d-empty.png").read_bytes(), 3)
    assert empty["non_background_pct"] < 0.1 and empty["std"] < 1 and empty["colours"] <= 2, empty
    assert drawn["non_background_pct"] > 5 and drawn["colours"] > 50 * empty["colours"], (drawn, empty)
    browser.find_element("id", "show-mesh").click()
    wait_for(browser, "window.vloc.viewer.meshLoaded")
    time.sleep(0.3)
    mesh = pixel_stats(save(view.screenshot_as_png, shots / "3d-mesh.png").read_bytes(), 3)
    # the mesh alone (points and cameras still hidden) fills the walls
    assert mesh["non_background_pct"] > 5 and mesh["colours"] > 1000, mesh
    for box in ("show-points", "show-cameras", "show-mesh"):
        browser.find_element("id", box).click()
    assert _console_errors(browser) == []


def test_floor_plan_draws_the_occupancy_grid_in_metres(server, browser, shots):
    sign_in(browser, server.url, server.keys["admin"], "#/map/lroom/plan")
    info = wait_for(browser, "document.getElementById('info-plan').textContent.includes('occupancy') && "
                             "document.getElementById('info-plan').textContent")
    assert "cm" in info
    time.sleep(0.3)
    plan = pixel_stats(save(browser.find_element("id", "plan-canvas").screenshot_as_png,
                            shots / "plan.png").read_bytes())
    assert plan["non_background_pct"] > 10, plan


def test_a_streaming_robot_appears_in_the_live_view(server, browser, shots, lmap):
    sign_in(browser, server.url, server.keys["admin"], "#/map/lroom/fleet")
    wait_for(browser, "document.getElementById('live-status').textContent === 'live'")
    poses = lmap.scene.trajectory(10, pass_id=1)
    frames = [encode_image(lmap.scene.render(T, DEFAULT_CAMERA)[0]) for T in poses]
    replies = []

    def robot():
        with connect(f"{server.ws_url}/v1/maps/lroom/stream", proxy=None, open_timeout=30,
                     additional_headers={"Authorization": f"Bearer {server.keys['robot']}"}) as ws:
            for i, image in enumerate(frames):
                meta = {"frame_id": i, "robot_id": "test-robot-1", "timestamp": time.time(),
                        **({"camera": CAMERA} if i == 0 else {})}
                ws.send(stream_frame(meta, image))
                replies.append(json.loads(ws.recv(timeout=120)))

    t = threading.Thread(target=robot)
    t.start()
    t.join(300)
    assert len(replies) == 10 and sum(r["accepted"] for r in replies) >= 8, replies
    row = wait_for(browser, "document.querySelector(\"#fleet-table tr[data-robot-id='test-robot-1']\") && "
                            "document.querySelector(\"#fleet-table tr[data-robot-id='test-robot-1']\").textContent")
    wait_for(browser, "document.querySelector(\"#fleet-table tr[data-robot-id='test-robot-1']\")"
                      ".textContent.includes('/10')", timeout=10)
    row = browser.find_element("css selector", "#fleet-table tr[data-robot-id='test-robot-1']")
    cells = [td.text for td in row.find_elements("tag name", "td")]
    assert cells[0] == "test-robot-1" and cells[7].endswith("/10"), cells
    last = next(r for r in reversed(replies) if r["accepted"])
    robot_live = browser.execute_script("return window.vloc.fleet.robots.get('test-robot-1')")
    centre = np.array(last["world_from_cam"]["translation"])
    assert np.allclose(robot_live["position"], centre, atol=1e-3)
    assert robot_live["ellipse"]["major"] > 0 and robot_live["heading_deg"] is not None
    assert len(browser.execute_script("return window.vloc.fleet.tracks.get('test-robot-1')")) >= 8
    time.sleep(0.3)
    save(browser.get_screenshot_as_png(), shots / "fleet.png")
    # the floor plan tab shows the same robot with its track
    browser.find_element("css selector", ".tabs button[data-tab='plan']").click()
    wait_for(browser, "document.getElementById('info-plan').textContent.includes('occupancy')")
    time.sleep(0.3)
    save(browser.get_screenshot_as_png(), shots / "plan-with-robot.png")
    assert _console_errors(browser) == []


def test_an_uploaded_photo_gets_an_accepted_pose_with_its_inliers(server, browser, shots, lmap, tmp_path):
    T = lmap.scene.trajectory(12, pass_id=1)[4]
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_image(lmap.scene.render(T, DEFAULT_CAMERA)[0]))
    sign_in(browser, server.url, server.keys["robot"], "#/map/lroom/localize")
    wait_for(browser, "document.querySelectorAll('#camera-pick option').length > 1")
    browser.find_element("id", "localize-file").send_keys(str(photo))
    wait_for(browser, "!document.getElementById('localize-run').disabled")
    browser.find_element("id", "localize-run").click()
    accepted = wait_for(browser, "!document.getElementById('localize-result').hidden && "
                                 "document.getElementById('localize-result').dataset.accepted", timeout=120)
    assert accepted == "true", browser.find_element("id", "localize-verdict").text
    n = int(browser.find_element("id", "photo-canvas").get_attribute("data-keypoints"))
    assert n >= 20
    time.sleep(0.3)
    save(browser.get_screenshot_as_png(), shots / "localize.png")
    photo_shot = pixel_stats(browser.find_element("id", "photo-canvas").screenshot_as_png)
    assert photo_shot["colours"] > 100
    assert _console_errors(browser) == []


def test_a_wrong_key_shows_an_error_and_no_map_data(server, browser, shots):
    sign_in(browser, server.url, "vloc_wrong-key-000000", "#/map/lroom/3d")
    text = wait_for(browser, "!document.getElementById('signin-error').hidden && "
                             "document.getElementById('signin-error').textContent")
    assert "not valid" in text
    save(browser.get_screenshot_as_png(), shots / "wrong-key.png")
    assert browser.execute_script("return document.getElementById('app').hidden") is True
    assert _map_list(browser) == []
    assert browser.execute_script("return sessionStorage.getItem('vloc.apiKey')") is None
    urls = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert not any("/points" in u or "/cameras" in u or "/v1/maps" in u for u in urls), urls
