"""Georeferencing on generated data with exact truth: estimation, refusals, conversions, file readers, CLI.

Truth geodetic positions are made through ECEF (pyproj EPSG:4979 <-> EPSG:4978 and the textbook ENU
rotation), a path independent of the ``topocentric`` pipeline that hdmap.georef and core.geo use.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pycolmap
import pytest
from pyproj import Transformer
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from core.geometry import Rigid3, Sim3
from core.types import VlocError
from hdmap import geodesy as gd
from hdmap import georef as gr
from hdmap.gnss import GcpObservation, read_gcp_file, read_gnss_csv, resolve_gcps

LUND = (55.6985, 13.1950, 40.0)
runner = CliRunner()
_TO_ECEF = Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True)


def _ecef_from_enu_rotation(lat: float, lon: float) -> np.ndarray:
    """Columns: east, north, up unit vectors in ECEF (textbook, for the independent truth path)."""
    la, lo = math.radians(lat), math.radians(lon)
    return np.array([[-math.sin(lo), -math.sin(la) * math.cos(lo), math.cos(la) * math.cos(lo)],
                     [math.cos(lo), -math.sin(la) * math.sin(lo), math.cos(la) * math.sin(lo)],
                     [0.0, math.cos(la), math.sin(la)]])


def truth_geodetic(enu: np.ndarray, origin) -> np.ndarray:
    """(N, 3) ENU at origin -> (N, 3) lat, lon, h via ECEF."""
    o = np.array(_TO_ECEF.transform(origin[1], origin[0], origin[2]))
    ecef = o + np.asarray(enu) @ _ecef_from_enu_rotation(origin[0], origin[1]).T
    lon, lat, h = _TO_ECEF.transform(ecef[:, 0], ecef[:, 1], ecef[:, 2], direction="INVERSE")
    return np.column_stack([lat, lon, h])


def truth_enu(geodetic: np.ndarray, origin) -> np.ndarray:
    o = np.array(_TO_ECEF.transform(origin[1], origin[0], origin[2]))
    x, y, z = _TO_ECEF.transform(geodetic[:, 1], geodetic[:, 0], geodetic[:, 2])
    return (np.column_stack([x, y, z]) - o) @ _ecef_from_enu_rotation(origin[0], origin[1])


def make_problem(n=40, seed=0, scale=0.37, extent=(200.0, 200.0, 6.0)):
    """Map points and true ENU points related by a known random enu_from_map."""
    rng = np.random.default_rng(seed)
    enu = (rng.uniform(-0.5, 0.5, (n, 3)) * extent)
    R = Rotation.random(random_state=seed + 1).as_matrix()
    sim = Sim3(scale, R, rng.uniform(-20, 20, 3))
    map_xyz = (enu - sim.translation) @ R / scale
    return map_xyz, enu, sim, rng


def rot_err_deg(R1, R2) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R1.T @ R2) - 1) / 2, -1, 1))))


# ---- conversions ----------------------------------------------------------------------------

def test_enu_matches_ecef_truth_and_round_trips():
    rng = np.random.default_rng(0)
    enu = np.c_[rng.uniform(-3000, 3000, (50, 2)), rng.uniform(-50, 50, 50)]
    geo = truth_geodetic(enu, LUND)
    assert np.abs(gd.geodetic_to_enu(geo, LUND) - enu).max() < 1e-6
    back = gd.enu_to_geodetic(enu, LUND)
    assert np.abs(back[:, :2] - geo[:, :2]).max() < 1e-10 and np.abs(back[:, 2] - geo[:, 2]).max() < 1e-6
    assert np.abs(gd.geodetic_to_enu(back, LUND) - enu).max() < 1e-6
    # the centroid of a symmetric cloud is its centre; across the antimeridian too
    c = gd.geodetic_centroid(np.array([[10.0, 179.9, 0.0], [10.0, -179.9, 10.0]]))
    assert abs(abs(c[1]) - 180.0) < 1e-6 and abs(c[0] - 10.0) < 1e-3 and c[2] == 5.0


@pytest.mark.parametrize("lat,lon,epsg", [(55.7, 13.2, 32633), (-33.92, 18.42, 32734), (40.7, -74.0, 32618),
                                          (60.39, 5.32, 32632), (78.22, 15.65, 32633), (-0.5, 179.99, 32760)])
def test_utm_zone_is_picked_automatically(lat, lon, epsg):
    assert gd.utm_crs_for(lat, lon).to_epsg() == epsg
    assert gd.resolve_crs(None, lat, lon).to_epsg() == epsg


def test_resolve_crs_user_choice_and_errors():
    assert gd.resolve_crs("EPSG:3006", *LUND[:2]).to_epsg() == 3006  # SWEREF 99 TM
    assert gd.crs_id(gd.resolve_crs("EPSG:3006", *LUND[:2])) == "EPSG:3006"
    with pytest.raises(VlocError, match="unknown CRS"):
        gd.resolve_crs("EPSG:999999", *LUND[:2])
    with pytest.raises(VlocError, match="geocentric"):
        gd.resolve_crs("EPSG:4978", *LUND[:2])
    assert gd.parse_origin("55.7, 13.2, 40") == (55.7, 13.2, 40.0)
    for bad in ("55.7", "north,east,up", "95,13,0"):
        with pytest.raises(VlocError):
            gd.parse_origin(bad)


def test_map_to_crs_matches_truth_in_utm():
    map_xyz, enu, sim, _ = make_problem(20)
    ref = gr.Georeference.from_sim3(*LUND, sim)
    utm = gd.map_to_crs(map_xyz, ref, "EPSG:32633")
    geo = truth_geodetic(enu, LUND)
    e, n, h = Transformer.from_crs("EPSG:4979", "EPSG:32633", always_xy=True).transform(geo[:, 1], geo[:, 0], geo[:, 2])
    assert np.abs(utm - np.c_[e, n, h]).max() < 1e-5
    assert 3.8e5 < utm[:, 0].min() and utm[:, 0].max() < 3.95e5 and 6.17e6 < utm[:, 1].min()  # Lund, zone 33
    back = gd.crs_to_geodetic(utm, "EPSG:32633")
    assert np.abs(back - geo).max() < 1e-6


# ---- estimation -----------------------------------------------------------------------------

def test_exact_positions_give_the_exact_similarity():
    map_xyz, enu, sim, _ = make_problem(12)
    est = gr.estimate_georeference(map_xyz, truth_geodetic(enu, LUND), origin=LUND)
    g = est.georef
    assert (g.latitude, g.longitude, g.altitude) == LUND
    assert abs(g.scale / sim.scale - 1) < 1e-9 and rot_err_deg(g.rotation, sim.rotation) < 1e-6
    assert np.abs(g.translation - sim.translation).max() < 1e-6
    assert est.inliers.all() and est.residuals_m.max() < 1e-6
    assert np.linalg.det(g.rotation) == pytest.approx(1.0)


def test_noisy_gps_with_outliers_recovers_truth_and_flags_outliers():
    map_xyz, enu, sim, rng = make_problem(40, seed=3)
    noisy = enu + np.c_[rng.normal(0, 2.0, (40, 2)), rng.normal(0, 4.0, 40)]
    outliers = np.array([1, 7, 20, 33, 38])
    noisy[outliers, :2] += rng.uniform(40, 120, (len(outliers), 2)) * rng.choice([-1, 1], (len(outliers), 2))
    est = gr.estimate_georeference(map_xyz, truth_geodetic(noisy, LUND), max_error_m=10.0)
    flagged = np.flatnonzero(~est.inliers)
    assert set(flagged) == set(outliers)
    g = est.georef
    assert abs(g.scale / sim.scale - 1) < 0.02
    assert rot_err_deg(g.rotation, sim.rotation) < 1.5
    # the fitted map -> geodetic lands well inside the per-point GPS noise (2 m horizontal, 4 m vertical)
    fitted = gd.geodetic_to_enu(gd.map_to_geodetic(map_xyz, g), LUND)
    assert np.median(np.linalg.norm(fitted - enu, axis=1)) < 1.5
    s = est.summary()
    assert s["n"] == 40 and s["n_inliers"] == 35
    assert 1.0 < s["horizontal_m"]["median"] < 4.0 and s["vertical_m"]["max"] < 20.0
    assert est.residuals_m[outliers].min() > 30
    assert s["scale_rel_sigma"] < 0.02 and max(s["rotation_sigma_deg"].values()) < 2.0


def test_fix_scale_keeps_metric_scale():
    map_xyz, enu, sim, rng = make_problem(15, seed=4, scale=1.0)
    est = gr.estimate_georeference(map_xyz, truth_geodetic(enu + rng.normal(0, 0.5, enu.shape), LUND),
                                   fix_scale=True)
    assert est.georef.scale == 1.0 and est.summary()["scale_rel_sigma"] == 0.0
    assert rot_err_deg(est.georef.rotation, sim.rotation) < 1.0


def test_too_few_positions_are_refused():
    map_xyz, enu, _, _ = make_problem(2)
    with pytest.raises(VlocError, match="at least 3"):
        gr.estimate_georeference(map_xyz, truth_geodetic(enu, LUND))
    map_xyz, enu, _, _ = make_problem(3)
    geo = truth_geodetic(enu, LUND)
    with pytest.raises(VlocError, match="distinct"):  # three images at two places
        gr.estimate_georeference(map_xyz, np.vstack([geo[:2], geo[:1]]))


def test_collinear_positions_refused_unless_gravity_is_known():
    rng = np.random.default_rng(5)
    n = 25
    along = np.linspace(-80, 80, n)
    enu = np.c_[0.3 * along, along, np.zeros(n)] + rng.normal(0, [0.3, 0.3, 0.3], (n, 3))
    R = Rotation.from_euler("zyx", [40, 70, -20], degrees=True).as_matrix()
    sim = Sim3(2.5, R, np.array([3.0, -2.0, 1.0]))
    map_xyz = (enu - sim.translation) @ R / sim.scale
    noisy = enu + np.c_[rng.normal(0, 2.0, (n, 2)), rng.normal(0, 3.0, n)]
    geo = truth_geodetic(noisy, LUND)
    with pytest.raises(VlocError, match="collinear"):
        gr.estimate_georeference(map_xyz, geo)
    map_up = R.T @ np.array([0.0, 0.0, 1.0])  # the map's up (what upright cameras tell)
    est = gr.estimate_georeference(map_xyz, geo, map_up=map_up)
    R_est, s = est.georef.rotation, est.summary()
    track_map = R.T @ np.array([0.3, 1.0, 0.0]) / np.hypot(0.3, 1.0)
    assert rot_err_deg(R_est, R) < 3 * s["rotation_sigma_deg"]["north"] + 1.0
    assert np.degrees(np.arccos(R_est @ track_map @ R @ track_map)) < 1.0  # the track's direction
    assert np.degrees(np.arccos((R_est @ map_up)[2])) < 5.0 and abs(est.georef.scale / 2.5 - 1) < 0.03


def test_positions_within_their_noise_are_refused():
    map_xyz, enu, _, rng = make_problem(30, seed=6, extent=(3.0, 3.0, 1.0))
    noisy = enu + rng.normal(0, 5.0, enu.shape)
    with pytest.raises(VlocError, match="scale is unobservable"):
        gr.estimate_georeference(map_xyz, truth_geodetic(noisy, LUND), max_error_m=30.0)


def test_mirrored_map_is_not_fitted_as_a_rotation():
    map_xyz, enu, _, rng = make_problem(30, seed=7, extent=(200.0, 200.0, 80.0))
    mirrored = map_xyz * np.array([-1.0, 1.0, 1.0])
    geo = truth_geodetic(enu + rng.normal(0, 1.0, enu.shape), LUND)
    assert gr.estimate_georeference(map_xyz, geo).inliers.all()
    with pytest.raises(VlocError, match="inliers"):
        gr.estimate_georeference(mirrored, geo)


def test_bad_inputs_are_refused_with_a_message():
    map_xyz, enu, _, _ = make_problem(5)
    geo = truth_geodetic(enu, LUND)
    with pytest.raises(VlocError, match="5 map points but 4"):
        gr.estimate_georeference(map_xyz, geo[:4])
    bad = geo.copy()
    bad[2, 0] = 123.0
    with pytest.raises(VlocError, match="row 2"):
        gr.estimate_georeference(map_xyz, bad)
    with pytest.raises(VlocError, match="non-finite"):
        gr.estimate_georeference(np.where(np.arange(15).reshape(5, 3) == 4, np.nan, map_xyz), geo)


def test_up_from_cameras():
    R_up = Rotation.from_euler("x", 30, degrees=True).as_matrix()  # map frame tilted by 30 deg
    rng = np.random.default_rng(0)
    rots = []
    for yaw in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        # upright camera looking horizontally at yaw, with 2 deg of roll noise; world z up
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.cross(fwd, [0, 0, 1.0])
        wfc = np.stack([right, np.cross(fwd, right), fwd], 1)
        wfc = wfc @ Rotation.from_euler("z", rng.normal(0, 2), degrees=True).as_matrix()
        rots.append(R_up @ wfc)
    up, spread = gr.up_from_cameras(np.array(rots))
    assert np.degrees(np.arccos(up @ (R_up @ [0, 0, 1.0]))) < 1.0 and spread < 4.0


# ---- files ----------------------------------------------------------------------------------

def test_gnss_csv(tmp_path):
    p = tmp_path / "gnss.csv"
    p.write_text("# phone log\nname,latitude,longitude,altitude,sigma_h,sigma_v\n"
                 "a.jpg,55.7,13.2,40.5,3.0,6\n\nsub/b.jpg,-33.9,18.4,12,,\n")
    fixes = read_gnss_csv(p)
    assert [f.name for f in fixes] == ["a.jpg", "sub/b.jpg"]
    assert fixes[0].sigma_h == 3.0 and fixes[0].sigma_v == 6.0 and fixes[1].sigma_h is None
    assert (fixes[1].latitude, fixes[1].longitude, fixes[1].altitude) == (-33.9, 18.4, 12.0)
    cases = {
        "name,latitude,longitude\na,1,2\n": "lacks column",
        "name,latitude,longitude,altitude\na,north,2,3\n": "line 2: latitude 'north' is not a number",
        "name,latitude,longitude,altitude\na,1,2,3\nb,91,2,3\n": "line 3: latitude 91",
        "name,latitude,longitude,altitude\na,1,2,3\na,1,2,3\n": "already has a fix on line 2",
        "name,latitude,longitude,altitude,sigma_h\na,1,2,3,-1\n": "sigma_h must be positive",
        "name,latitude,longitude,altitude\na,1,2\n": "3 fields",
        "name,latitude,longitude,altitude\n": "no GNSS fixes",
        "": "empty GNSS file",
    }
    for text, msg in cases.items():
        p.write_text(text)
        with pytest.raises(VlocError, match=msg):
            read_gnss_csv(p)
    with pytest.raises(VlocError, match="does not exist"):
        read_gnss_csv(tmp_path / "nope.csv")


def test_gcp_file(tmp_path):
    p = tmp_path / "gcp.csv"
    p.write_text("image_or_x,u_or_y,v_or_z,latitude,longitude,altitude,label\n"
                 "1.5,-2,0.25,55.7,13.2,40,corner\n"
                 "# a pixel GCP seen twice\n"
                 "img/01.jpg,100.5,200.5,55.71,13.21,41,post\n"
                 "img/02.jpg,110.5,190.5,55.71,13.21,41,post\n"
                 "img/03.jpg,50,60,55.72,13.22,42\n")
    g = read_gcp_file(p)
    assert len(g) == 4 and g[0].xyz == (1.5, -2.0, 0.25) and g[0].label == "corner" and g[0].image is None
    assert g[1].image == "img/01.jpg" and g[1].uv == (100.5, 200.5) and g[1].label == "post" and g[1].line == 4
    assert g[3].label is None and g[3].line == 6
    for text, msg in {"1,2,3,55,13\n": "5 fields", "1,2,3,55,13,40,a,b\n": "8 fields",
                      "1,2,3,55,13,40\n1,2,x,55,13,40\n": "line 2: z 'x'",
                      "a.jpg,1,2,55,213,40\n": "longitude 213", "# nothing\n": "no ground control points"}.items():
        p.write_text(text)
        with pytest.raises(VlocError, match=msg):
            read_gcp_file(p)


def _toy_reconstruction():
    """Three PINHOLE cameras looking at a plane z = 10 (in front of them), with 1500 map points on it."""
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create(1, pycolmap.CameraModelId.PINHOLE, 500.0, 640, 480)
    rec.add_camera_with_trivial_rig(cam)
    rng = np.random.default_rng(0)
    plane = np.c_[rng.uniform(-6, 6, (1500, 2)), np.full(1500, 10.0)]
    poses = []
    for i, cx in enumerate([-1.0, 0.0, 1.2]):
        T = Rigid3(Rotation.from_euler("y", -4 * cx, degrees=True).as_matrix(), np.zeros(3))
        T = Rigid3(T.rotation, -T.rotation @ np.array([cx, 0.1 * i, 0.0]))
        xy = []
        for X in plane:
            xy.append(np.asarray(cam.img_from_cam(T.transform(X[None])[0])).reshape(-1)[:2])
        im = pycolmap.Image(name=f"img/{i + 1:02d}.jpg", keypoints=np.array(xy), camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, T.to_pycolmap())
        poses.append(T)
    for k, X in enumerate(plane):
        track = pycolmap.Track()
        for i in range(3):
            track.add_element(i + 1, k)
        rec.add_point3D(X, track, np.zeros(3, np.uint8))
    return rec, cam, poses


def test_pixel_gcps_are_triangulated_or_placed_at_map_depth():
    rec, cam, poses = _toy_reconstruction()
    X = np.array([0.7, -0.4, 10.0])   # on the plane
    uv = [np.asarray(cam.img_from_cam(T.transform(X[None])[0])).reshape(-1)[:2] for T in poses]
    obs = [GcpObservation(2 + i, "post", 55.7, 13.2, 40.0, image=f"{i + 1:02d}.jpg", uv=tuple(uv[i]))
           for i in range(2)]  # bare file names match the map's img/NN.jpg
    obs.append(GcpObservation(5, None, 55.8, 13.3, 41.0, image="img/03.jpg", uv=tuple(uv[2])))
    obs.append(GcpObservation(6, "m", 55.9, 13.4, 42.0, xyz=(1.0, 2.0, 3.0)))
    got = {g.label: g for g in resolve_gcps(obs, rec)}
    assert np.abs(got["post"].xyz - X).max() < 1e-6 and got["post"].how == "triangulated from 2 images"
    single = next(g for g in got.values() if g.how.startswith("plane"))
    assert np.abs(single.xyz - X).max() < 1e-6  # the ray meets the plane of its neighbours
    assert np.array_equal(got["m"].xyz, [1.0, 2.0, 3.0]) and got["m"].geodetic == (55.9, 13.4, 42.0)
    bad = [GcpObservation(2, "p", 55.7, 13.2, 40.0, image="img/01.jpg", uv=tuple(uv[0])),
           GcpObservation(3, "p", 55.7, 13.2, 40.0, image="img/02.jpg", uv=tuple(uv[1] + [0.0, 25.0]))]  # off the epipolar line
    with pytest.raises(VlocError, match="pixels disagree"):
        resolve_gcps(bad, rec)
    with pytest.raises(VlocError, match="not registered in the map"):
        resolve_gcps([GcpObservation(2, "p", 55.7, 13.2, 40.0, image="img/99.jpg", uv=(5.0, 5.0))], rec)
    with pytest.raises(VlocError, match="outside image"):
        resolve_gcps([GcpObservation(2, "p", 55.7, 13.2, 40.0, image="img/01.jpg", uv=(900.0, 5.0))], rec)


# ---- CLI on a generated posed map -----------------------------------------------------------

N_FRAMES = 12
TRUE_ENU_FROM_MAP = Sim3(1.0, Rotation.from_euler("z", 35.0, degrees=True).as_matrix(), np.array([12.0, -7.0, 1.5]))


@pytest.fixture(scope="module")
def scene():
    from datasets.synthetic import generate_scene
    return generate_scene(seed=11)


@pytest.fixture(scope="module")
def posed_bundle(scene, tmp_path_factory):
    """A 12-frame posed (metric) map of a generated room, and its records (world z up, metres)."""
    from datasets.synthetic import write_dataset
    from mapping.build import BuildConfig, build_map
    root = tmp_path_factory.mktemp("georef-room")
    records = write_dataset(scene, root, N_FRAMES)
    build_map(root, records, root / "map", BuildConfig())
    return root / "map", records


@pytest.fixture()
def bundle(posed_bundle, tmp_path):
    """A private copy of the posed bundle (tests change it)."""
    import shutil
    shutil.copytree(posed_bundle[0], tmp_path / "map")
    return tmp_path / "map"


def _true_geodetic_of_map(points_map: np.ndarray) -> np.ndarray:
    return truth_geodetic(TRUE_ENU_FROM_MAP.transform(points_map), LUND)


def _write_gnss(path, records, outlier: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.array([r.cam_from_world.centre for r in records])
    enu = TRUE_ENU_FROM_MAP.transform(centres) + np.c_[rng.normal(0, 0.01, (len(records), 2)),
                                                       rng.normal(0, 0.02, len(records))]
    if outlier is not None:
        enu[outlier, 0] += 5.0
    geo = truth_geodetic(enu, LUND)
    lines = ["name,latitude,longitude,altitude,sigma_h,sigma_v"]
    lines += [f"{r.name},{g[0]:.10f},{g[1]:.10f},{g[2]:.4f},0.01,0.02" for r, g in zip(records, geo)]
    path.write_text("\n".join(lines) + "\n")


def test_cli_georef_from_gnss_info_and_localize(bundle, posed_bundle, scene, tmp_path):
    import cv2

    from bundleio import read_manifest, verify_files
    from datasets.synthetic import DEFAULT_CAMERA
    from vloc.cli import app
    _, records = posed_bundle
    registered = set(pycolmap.Reconstruction(str(bundle / "model")).images[i].name
                     for i in pycolmap.Reconstruction(str(bundle / "model")).reg_image_ids())
    assert len(registered) >= N_FRAMES - 2
    outlier = next(k for k, r in enumerate(records) if r.name in registered and k >= 4)
    gnss = tmp_path / "gnss.csv"
    _write_gnss(gnss, records, outlier=outlier)
    before = read_manifest(bundle)
    res = runner.invoke(app, ["map", "georef", str(bundle), "--gnss", str(gnss), "--max-error", "0.5",
                              "--crs", "EPSG:32633", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    g = out["georeference"]
    assert out["written"] and g["source"]["kind"] == "gnss" and g["crs"] == "EPSG:32633"
    assert g["n_inliers"] == len(registered) - 1 and len(g["points"]) == len(registered)
    assert [p["name"] for p in g["points"] if not p["inlier"]] == [records[outlier].name]
    assert g["residuals"]["horizontal_m"]["median"] < 0.03 and abs(g["enu_from_map"]["scale"] - 1) < 2e-3
    assert g["options"]["gravity_used"]   # upright cameras: the map's up is used as a prior

    m = read_manifest(bundle)
    assert verify_files(bundle, m) == []
    assert m["revision"] == before.get("revision", 0) + 1 and m["history"][-1]["stage"] == "georef"
    ref = gr.Georeference.from_manifest(m)
    assert rot_err_deg(ref.rotation, TRUE_ENU_FROM_MAP.rotation) < 0.5
    res = runner.invoke(app, ["map", "info", str(bundle), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["georeference"]["residuals"]["n_inliers"] == len(registered) - 1
    res = runner.invoke(app, ["map", "info", str(bundle)])
    assert res.exit_code == 0 and "georef residuals" in res.stdout and "EPSG:32633" in res.stdout

    # a new frame halfway between two map frames, localized in the georeferenced map
    cam_from_world = scene.trajectory(2 * N_FRAMES)[9]
    rgb, _ = scene.render(cam_from_world, DEFAULT_CAMERA)
    img = tmp_path / "query.png"
    cv2.imwrite(str(img), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    res = runner.invoke(app, ["localize", str(img), "--map", str(bundle), "--json"])
    assert res.exit_code == 0, res.output
    loc = json.loads(res.stdout.strip().splitlines()[-1])
    assert loc["accepted"], loc["reason"]
    truth = truth_enu(_true_geodetic_of_map(cam_from_world.centre[None]), LUND)[0]
    got = truth_enu(np.array([[loc["latitude"], loc["longitude"], loc["altitude"]]]), LUND)[0]
    assert np.linalg.norm(got[:2] - truth[:2]) < 0.05 and abs(got[2] - truth[2]) < 0.08
    axis = TRUE_ENU_FROM_MAP.rotation @ cam_from_world.inverse().rotation[:, 2]
    true_heading = math.degrees(math.atan2(axis[0], axis[1])) % 360
    assert abs((loc["heading"] - true_heading + 180) % 360 - 180) < 0.5


def test_cli_georef_from_map_point_gcps_with_fixed_scale(bundle, scene, tmp_path):
    from bundleio import read_manifest
    from vloc.cli import app
    pts = np.array([[-2.5, -2.0, 0.0], [2.5, -2.0, 0.0], [2.5, 2.0, 2.4], [-2.5, 2.0, 2.4], [0.0, 0.0, 1.0]])
    geo = _true_geodetic_of_map(pts)
    gcp = tmp_path / "gcp.csv"
    gcp.write_text("x,y,z,latitude,longitude,altitude,label\n" + "".join(
        f"{p[0]},{p[1]},{p[2]},{g[0]:.10f},{g[1]:.10f},{g[2]:.4f},c{k}\n" for k, (p, g) in enumerate(zip(pts, geo))))
    res = runner.invoke(app, ["map", "georef", str(bundle), "--gcp", str(gcp), "--fix-scale",
                              "--origin", "55.6985,13.1950,40", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run" in res.stdout and "georeference" not in read_manifest(bundle)
    res = runner.invoke(app, ["map", "georef", str(bundle), "--gcp", str(gcp), "--fix-scale",
                              "--origin", "55.6985,13.1950,40", "--json"])
    assert res.exit_code == 0, res.output
    ref = gr.Georeference.from_manifest(read_manifest(bundle))
    assert ref.scale == 1.0 and (ref.latitude, ref.longitude, ref.altitude) == LUND
    # exact up to the file's rounding (1e-10 deg, 0.1 mm of altitude)
    assert rot_err_deg(ref.rotation, TRUE_ENU_FROM_MAP.rotation) < 1e-3
    assert np.abs(ref.translation - TRUE_ENU_FROM_MAP.translation).max() < 1e-3
    assert gd.crs_id(gd.resolve_crs(None, *LUND[:2])) == json.loads(res.stdout)["georeference"]["crs"]


def test_cli_georef_user_errors(bundle, tmp_path):
    from vloc.cli import app
    gnss = tmp_path / "g.csv"
    gnss.write_text("name,latitude,longitude,altitude\nnot-a-map-image.png,55.7,13.2,40\n")
    for args, msg in [([], "exactly one of"), (["--from-exif", "--gnss", str(gnss)], "exactly one of"),
                      (["--gnss", str(gnss)], "is a registered map image"),
                      (["--gnss", str(tmp_path / "missing.csv")], "does not exist"),
                      (["--from-exif"], "has EXIF GPS"),          # PNG renders carry no EXIF
                      (["--gnss", str(gnss), "--origin", "north"], "expected LAT,LON,ALT"),
                      (["--gcp", str(gnss)], "line 1: 4 fields"),
                      ]:
        res = runner.invoke(app, ["map", "georef", str(bundle), *args])
        assert res.exit_code == 2 and re.search(msg, res.output), (args, res.output)
        assert "Traceback" not in res.output
