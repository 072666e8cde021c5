"""Aerial fusion on a generated world with exact truth, and its building blocks on exact inputs."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import rasterio
from pyproj import CRS, Transformer
from rasterio.enums import ColorInterp
from rasterio.transform import Affine
from typer.testing import CliRunner

from bundleio import read_manifest, update_bundle, verify_files
from core.geo import Georeference
from core.geometry import Rigid3
from core.types import VlocError
from datasets.world import (
    GROUND_CAMERA,
    cast_vertical,
    generate_world,
    render_orthophoto,
    utm_crs,
    write_ground_dataset,
    write_orthophoto,
)
from hdmap.aerial import (
    AerialConfig,
    Similarity2D,
    apply_vertical,
    fuse_bundle,
    load_map_points,
    refine_georeference,
    register_to_ortho,
)
from hdmap.aerial_render import ground_mask, match_patches, render_topdown
from hdmap.geodesy import geodetic_to_enu, map_to_crs, map_to_geodetic
from hdmap.georef import estimate_georeference, map_x_azimuth_deg, up_from_cameras
from hdmap.raster import Raster, apply_affine, read_raster, reproject_raster, sample_raster, tile_raster
from mapping.build import BuildConfig, build_map
from mapping.pairs import PosePairConfig
from vision.features import SiftConfig
from vloc.cli import app

runner = CliRunner()
UTM32 = CRS.from_epsg(32632)


def _rot(yaw_deg: float, tilt_deg: float = 0.0) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return (Rotation.from_euler("z", yaw_deg, degrees=True) *
            Rotation.from_euler("x", tilt_deg, degrees=True)).as_matrix()


# ---- 2D similarity -> georeference (exact inputs) --------------------------------------------------

def test_similarity2d_fit_is_exact():
    rng = np.random.default_rng(0)
    src = rng.uniform(-50, 50, (30, 2)) + [465000.0, 5247000.0]
    true = Similarity2D(1.013, math.radians(2.5), np.array([3.2, -1.7]), np.array([465010.0, 5247020.0]))
    dst = true.apply(src)
    fit = Similarity2D.fit(src, dst)
    assert np.abs(fit.apply(src) - dst).max() < 1e-6
    assert fit.scale == pytest.approx(1.013, abs=1e-9) and math.degrees(fit.angle) == pytest.approx(2.5, abs=1e-7)
    fixed = Similarity2D.fit(src, dst, fix_scale=1.013)
    assert np.abs(fixed.apply(src) - dst).max() < 1e-6


@pytest.mark.parametrize("refine_scale", [True, False])
def test_refine_georeference_applies_the_crs_similarity_and_keeps_gravity(refine_scale):
    rng = np.random.default_rng(1)
    g = Georeference(47.3769, 8.5417, 455.0, 0.97, _rot(-63.0, tilt_deg=1.5), np.array([4.0, -2.0, 0.7]))
    pts = rng.uniform(-30, 30, (200, 3)) * [1, 1, 0.1]
    xy = map_to_crs(pts, g, UTM32)
    centre = xy[:, :2].mean(0)
    corr = Similarity2D(1.02 if refine_scale else 1.0, math.radians(-1.2), np.array([2.5, -3.0]), centre)
    new = refine_georeference(g, pts, UTM32, corr, refine_scale=refine_scale)
    moved = map_to_crs(pts, new, UTM32)
    assert np.abs(moved[:, :2] - corr.apply(xy[:, :2])).max() < 2e-3     # mm over a 60 m map
    assert np.allclose(new.rotation.T @ [0, 0, 1], g.rotation.T @ [0, 0, 1], atol=1e-12)  # same gravity
    assert abs(np.mean(moved[:, 2]) - np.mean(xy[:, 2])) < 2e-3          # mean height kept
    assert new.scale == pytest.approx(g.scale * (1.02 if refine_scale else 1.0), rel=2e-4)
    assert (new.latitude, new.longitude, new.altitude) == (g.latitude, g.longitude, g.altitude)
    # a clockwise turn of the CRS positions (negative angle) turns the map's azimuth clockwise too
    d_az = (map_x_azimuth_deg(new.rotation) - map_x_azimuth_deg(g.rotation) + 180) % 360 - 180
    assert d_az == pytest.approx(1.2, abs=0.01)


def test_apply_vertical_offsets_and_tilts_about_the_pivot():
    g = Georeference(47.0, 8.0, 400.0, 1.0, _rot(20.0), np.zeros(3))
    rng = np.random.default_rng(2)
    pts = np.c_[rng.uniform(-20, 20, (100, 2)), np.zeros(100)]
    pivot = np.array([1.0, 2.0, 0.0])
    new = apply_vertical(g, pivot, 0.8, (0.02, -0.01))
    enu = new.enu_from_map.transform(pts)
    expected = 0.8 + 0.02 * (pts @ _rot(20.0).T - pivot)[:, 0] - 0.01 * (pts @ _rot(20.0).T - pivot)[:, 1]
    assert np.abs(enu[:, 2] - expected).max() < 2e-3
    assert np.abs(enu[:, :2] - (pts @ _rot(20.0).T)[:, :2]).max() < 0.02   # horizontal nearly untouched


# ---- rendering, matching, ground selection ------------------------------------------------------------

def _texture(shape, seed=0) -> np.ndarray:
    import cv2
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    for cell, amp in ((40, 60), (10, 40), (3, 25)):
        small = rng.normal(0, amp, (shape[0] // cell + 2, shape[1] // cell + 2)).astype(np.float32)
        img += cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)
    return img + 128


def test_sparse_rendering_matches_a_shifted_image_to_subpixel():
    H, W = 300, 320
    ortho = _texture((H, W))
    true_shift = np.array([7.3, -4.6])                      # ortho position = render position + shift
    rng = np.random.default_rng(3)
    px = rng.uniform(20, [W - 20, H - 20], (3000, 2))
    # value of each point = the orthophoto at its true position (pixel-centre sampling)
    vals = sample_raster(Raster(ortho[..., None], np.ones((H, W), bool), Affine.identity(),
                                rasterio.crs.CRS.from_epsg(32632)), px + true_shift)[0]
    ok = np.isfinite(vals)
    render, mask = render_topdown(px[ok], vals[ok], (H, W), splat_px=0)
    assert mask.sum() == len(np.unique(np.floor(px[ok]).astype(int), axis=0))
    pm = match_patches(render, mask, ortho, np.ones((H, W), bool), 48, 12, 0.02, 0.5, 0.02)
    assert len(pm.src) >= 10
    err = (pm.dst - pm.src) - true_shift
    assert np.median(np.linalg.norm(err, axis=1)) < 0.6     # points snap to pixel cells: <= 0.5 px
    assert np.abs(np.median(err, axis=0)).max() < 0.25


def test_ground_mask_keeps_the_ground_and_drops_walls():
    rng = np.random.default_rng(4)
    ground = np.c_[rng.uniform(0, 40, (3000, 2)), rng.normal(0, 0.03, 3000)]
    ground[:, 2] += 0.05 * ground[:, 0]                     # a 3 deg slope: 2 m rise over the map
    wall = np.c_[np.full(800, 20.0), rng.uniform(5, 35, 800), rng.uniform(0.5, 6, 800)]
    wall[:, 2] += 0.05 * wall[:, 0]
    m = ground_mask(np.vstack([ground, wall]), cell_m=2.0, tolerance_m=0.3)
    assert m[:3000].mean() > 0.97 and m[3000:].mean() < 0.05


# ---- rasters ------------------------------------------------------------------------------------------

@pytest.fixture()
def rgba_tif(tmp_path) -> Path:
    H, W = 90, 130
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, (3, H, W), dtype=np.uint8)
    rgb[0] = np.add.outer(np.arange(H), np.arange(W))      # band 1: a smooth ramp, 1 level per pixel
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, :20] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=4, dtype="uint8", crs="EPSG:32632",
                       transform=Affine(0.2, 0, 465000.0, 0, -0.2, 5247000.0), photometric="RGB") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        dst.write(np.concatenate([rgb, alpha[None]]))
    return path


def test_read_window_tile_and_reproject(rgba_tif):
    r = read_raster(rgba_tif)
    assert r.array.shape == (90, 130, 3) and r.gsd == pytest.approx(0.2) and r.crs.to_epsg() == 32632
    assert not r.valid[:, :20].any() and r.valid[:, 20:].all()
    assert tuple(r.bounds) == pytest.approx((465000.0, 5247000.0 - 18.0, 465026.0, 5247000.0))
    w = read_raster(rgba_tif, (465005.0, 5246990.0, 465010.0, 5246995.0))
    assert w.shape == (25, 25) and np.array_equal(w.array, r.array[25:50, 25:50])
    assert tuple(w.bounds) == pytest.approx((465005.0, 5246990.0, 465010.0, 5246995.0))
    with pytest.raises(VlocError, match="does not cover"):
        read_raster(rgba_tif, (0.0, 0.0, 10.0, 10.0))
    for src in (r, rgba_tif):
        tiles = list(tile_raster(src, 32))
        assert len(tiles) == 3 * 5
        seen = np.zeros(r.shape, int)
        for t in tiles:
            rs, cs = t.window.toslices()
            seen[rs, cs] += 1
            assert np.array_equal(t.raster.array, r.array[rs, cs]) and np.array_equal(t.raster.valid, r.valid[rs, cs])
            left, top = r.transform.c + 0.2 * t.window.col_off, r.transform.f - 0.2 * t.window.row_off
            assert tuple(t.bounds) == pytest.approx((left, top - 0.2 * t.window.height,
                                                     left + 0.2 * t.window.width, top))
        assert (seen == 1).all()
    ll = reproject_raster(r, "EPSG:4326")
    to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform([r.bounds.left, r.bounds.right, r.bounds.left, r.bounds.right],
                               [r.bounds.bottom, r.bounds.bottom, r.bounds.top, r.bounds.top])
    b, px = ll.bounds, ll.gsd                               # the warp's grid snaps to whole pixels
    assert b.left == pytest.approx(min(lon), abs=px) and b.right == pytest.approx(max(lon), abs=px)
    assert b.bottom == pytest.approx(min(lat), abs=px) and b.top == pytest.approx(max(lat), abs=px)
    assert 0.6 < ll.valid.mean() < 0.9                      # the alpha-masked strip stays masked
    # same place: a valid pixel of the warped raster shows the source colour there
    rows, cols = np.nonzero(ll.valid)
    k = len(rows) // 2
    x, y = (v[0] for v in apply_affine(ll.transform, np.array([[cols[k] + 0.5, rows[k] + 0.5]])))
    e, n = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(x, y)
    v, ok = sample_raster(r, np.array([[e, n]]))
    assert ok[0] and abs(v[0] - ll.array[rows[k], cols[k], 0]) < 1.0  # the ramp's value at that place


def test_sample_raster_is_bilinear_and_respects_the_mask():
    H, W = 20, 30
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    ramp = (2.0 * jj + 3.0 * ii).astype(np.float32)[..., None]
    valid = np.ones((H, W), bool)
    valid[10, 10] = False
    r = Raster(ramp, valid, Affine(0.5, 0, 100.0, 0, -0.5, 200.0), rasterio.crs.CRS.from_epsg(32632))
    xy = np.array([[100.0 + 0.5 * 4.75, 200.0 - 0.5 * 6.25], [100.0 + 0.5 * 10.5, 200.0 - 0.5 * 10.5],
                   [50.0, 50.0]])
    v, ok = sample_raster(r, xy)
    assert ok.tolist() == [True, False, False]
    assert v[0] == pytest.approx(2.0 * 4.25 + 3.0 * 5.75)   # pixel centres at index + 0.5


# ---- the generated world --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0)


def test_world_orthophoto_has_the_true_geotransform(world, tmp_path):
    ortho = render_orthophoto(world, gsd=0.5, supersample=1)
    write_orthophoto(ortho, tmp_path / "o.tif", tmp_path / "dsm.tif")
    o, dsm = read_raster(tmp_path / "o.tif"), read_raster(tmp_path / "dsm.tif")
    assert o.crs.to_epsg() == utm_crs(world.georef.latitude, world.georef.longitude).to_epsg() == 32632
    assert o.gsd == pytest.approx(0.5) and o.array.shape[2] == 3
    assert 0.0 < 1 - o.valid.mean() < 0.3 and (o.valid == dsm.valid).all()   # transparent margin = nodata
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    for bx in world.buildings:              # roof centres: the DSM holds the roof's ellipsoidal height
        ll = world.enu_to_geodetic(np.array([[*bx.centre, bx.height]]))[0]
        e, n = to_utm.transform(ll[1], ll[0])
        h, ok = sample_raster(dsm, np.array([[e, n]]))
        assert ok[0] and h[0] == pytest.approx(ll[2], abs=0.01)
    ground = world.enu_to_geodetic(np.array([[0.0, 0.0, 0.0]]))[0]     # the plaza is bare ground
    h, ok = sample_raster(dsm, np.array([to_utm.transform(ground[1], ground[0])]))
    assert ok[0] and h[0] == pytest.approx(world.georef.altitude, abs=0.01)
    up = cast_vertical(world.scene, np.array([[0.5, -11.0]]))[0]      # the hall: its roof, not the room
    assert up[0] == pytest.approx(world.buildings[-1].height)


def test_world_gps_is_perturbed_by_a_few_metres(world, tmp_path):
    recs = write_ground_dataset(world, tmp_path, n_frames=6, camera=replace(GROUND_CAMERA, width=64, height=48,
                                                                         params=(50.0, 50.0, 32.0, 24.0)))
    gps = np.array([[r.gps.latitude, r.gps.longitude, r.gps.altitude] for r in recs])
    g = world.georef
    true = np.array([g.enu_from_map.transform(r.cam_from_world.centre[None])[0] for r in recs])
    err = geodetic_to_enu(gps, (g.latitude, g.longitude, g.altitude)) - true
    assert 0.5 < np.median(np.linalg.norm(err[:, :2], axis=1)) < 8.0
    again = write_ground_dataset(world, tmp_path / "again", n_frames=6, camera=recs[0].camera)
    assert [r.gps for r in again] == [r.gps for r in recs]          # fixed seed


# ---- end to end: GPS georeference, then aerial fusion --------------------------------------------------

def _errors(g: Georeference, truth: Georeference, xyz: np.ndarray) -> dict:
    """Horizontal / vertical error (m) of g at the map points, in the true ENU frame, and yaw error (deg)."""
    got = geodetic_to_enu(map_to_geodetic(xyz, g), (truth.latitude, truth.longitude, truth.altitude))
    want = truth.enu_from_map.transform(xyz)
    dh = np.linalg.norm(got[:, :2] - want[:, :2], axis=1)
    yaw = (map_x_azimuth_deg(g.rotation) - map_x_azimuth_deg(truth.rotation) + 180) % 360 - 180
    return {"h_max": float(dh.max()), "h_median": float(np.median(dh)), "h_p95": float(np.percentile(dh, 95)),
            "v_median": float(np.median(np.abs(got[:, 2] - want[:, 2]))), "yaw_deg": abs(float(yaw))}


@pytest.fixture(scope="module")
def fused_setup(world, tmp_path_factory):
    """A posed map of the street walk (map frame != ENU), georeferenced from perturbed GPS, and the
    orthophoto + DSM of the world at 10 cm."""
    root = tmp_path_factory.mktemp("world")
    records = write_ground_dataset(world, root / "images", n_frames=24)
    cfg = replace(BuildConfig(), features=SiftConfig(contrast_threshold=0.01),
                  pairs=PosePairConfig(max_distance_m=15.0, sample_depths=(3.0, 6.0, 12.0), min_overlap=0.2))
    bundle = root / "bundle_raw"
    build_map(root / "images", records, bundle, cfg)
    rec = pycolmap.Reconstruction(str(bundle / "model"))
    cams = {im.name: Rigid3.from_pycolmap(im.cam_from_world()) for im in rec.images.values()}
    used = [r for r in records if r.name in cams]
    up, _ = up_from_cameras(np.array([cams[r.name].inverse().rotation for r in used]))
    est = estimate_georeference(np.array([cams[r.name].centre for r in used]),
                                np.array([[r.gps.latitude, r.gps.longitude, r.gps.altitude] for r in used]),
                                max_error_m=10.0, map_up=up)
    geo = root / "bundle_gps"
    shutil.copytree(bundle, geo)
    with update_bundle(geo, "georef") as (_, m):
        m["georeference"] = est.georef.to_manifest(source="gnss", crs="EPSG:32632")
    ortho = render_orthophoto(world, gsd=0.1)
    write_orthophoto(ortho, root / "ortho.tif", root / "dsm.tif")
    return {"root": root, "raw": bundle, "geo": geo, "gps": est.georef, "ortho": root / "ortho.tif",
            "dsm": root / "dsm.tif", "ortho_data": ortho}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_fuse_aerial_recovers_the_true_georeference(fused_setup, world, tmp_path):
    s = fused_setup
    bundle = _copy(s["geo"], tmp_path / "b")
    xyz, _ = load_map_points(bundle)
    gps = _errors(s["gps"], world.georef, xyz)
    res = runner.invoke(app, ["map", "fuse-aerial", str(bundle), "--ortho", str(s["ortho"]), "--dsm", str(s["dsm"]),
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    m = read_manifest(bundle)
    assert m["georeference"]["source"] == "aerial" and m["georeference"]["prior"]["source"] == "gnss"
    assert m["georeference"]["crs"] == "EPSG:32632" and m["history"][-1]["stage"] == "fuse-aerial"
    assert verify_files(bundle, m) == []
    a = m["georeference"]["aerial"]
    assert a["n_inliers"] >= 20 and a["residual_px"] < 0.8 and len(a["ortho"]["sha256"]) == 64
    fused = _errors(Georeference.from_manifest(m), world.georef, xyz)
    print("GPS only:", gps, "\naerial:", fused, "\nreport:", json.dumps(out["report"]["correction"]))
    # measured: GPS only ~1.2 m median / 1.3 deg / 2.4 m max; fused ~2 cm median, 0.1 m max, 0.02 deg
    assert fused["h_max"] < 0.3 and fused["yaw_deg"] < 0.5
    assert fused["v_median"] < 0.1                          # heights from the DSM
    assert gps["h_median"] > 0.5 and gps["yaw_deg"] > 0.5   # so the fusion did the work


@pytest.mark.slow
def test_registration_without_dsm_and_from_a_larger_gps_error(fused_setup, world):
    s = fused_setup
    xyz, rgb = load_map_points(s["geo"])
    ortho = read_raster(s["ortho"])
    g = s["gps"]
    ground = np.abs(world.georef.enu_from_map.transform(xyz)[:, 2]) < 0.1
    res = register_to_ortho(xyz, rgb, g, ortho)
    assert res.applied, res.reason
    e = _errors(res.georef, world.georef, xyz[ground])
    assert e["h_max"] < 0.3 and e["yaw_deg"] < 0.5           # no DSM: the GPS tilt stays, heights too
    # 8 m further off (a bad GPS fix) is found with a search radius that allows it, refused without
    far = Georeference(g.latitude, g.longitude, g.altitude, g.scale, g.rotation, g.translation + [6.0, -5.5, 0.0])
    res = register_to_ortho(xyz, rgb, far, ortho, cfg=AerialConfig(max_shift_m=12.0))
    assert res.applied, res.reason
    e = _errors(res.georef, world.georef, xyz[ground])
    assert e["h_max"] < 0.3 and e["yaw_deg"] < 0.5
    res = register_to_ortho(xyz, rgb, far, ortho, cfg=AerialConfig(max_shift_m=3.0))
    assert not res.applied and res.georef is far


def _refused_unchanged(bundle: Path, *args: str) -> str:
    before = (bundle / "manifest.json").read_bytes()
    res = runner.invoke(app, ["map", "fuse-aerial", str(bundle), *args])
    assert res.exit_code == 2, res.output
    assert (bundle / "manifest.json").read_bytes() == before
    assert verify_files(bundle, read_manifest(bundle)) == []
    assert not any(p.name.startswith(f".{bundle.name}.") for p in bundle.parent.iterdir())
    return res.output


@pytest.mark.slow
def test_shuffled_or_unrelated_orthophoto_is_refused(fused_setup, tmp_path):
    s = fused_setup
    bundle = _copy(s["geo"], tmp_path / "b")
    o = s["ortho_data"]
    B, (H, W) = 40, o.rgba.shape[:2]
    blocks = [(i, j) for i in range(0, H - B + 1, B) for j in range(0, W - B + 1, B)]
    perm = np.random.default_rng(0).permutation(len(blocks))
    rgba = o.rgba.copy()
    for (i, j), k in zip(blocks, perm):
        i2, j2 = blocks[k]
        rgba[i:i + B, j:j + B] = o.rgba[i2:i2 + B, j2:j2 + B]
    write_orthophoto(replace(o, rgba=rgba), tmp_path / "shuffled.tif")
    out = _refused_unchanged(bundle, "--ortho", str(tmp_path / "shuffled.tif"))
    assert "refused" in out
    other = render_orthophoto(generate_world(seed=7), gsd=0.1)   # same street, other surfaces
    write_orthophoto(other, tmp_path / "other.tif")
    out = _refused_unchanged(bundle, "--ortho", str(tmp_path / "other.tif"), "--dsm", str(s["dsm"]))
    assert "refused" in out


@pytest.mark.slow
def test_fuse_aerial_refuses_bad_inputs(fused_setup, tmp_path):
    s = fused_setup
    raw = _copy(s["raw"], tmp_path / "raw")
    assert "no georeference" in _refused_unchanged(raw, "--ortho", str(s["ortho"]))
    bundle = _copy(s["geo"], tmp_path / "b")
    with rasterio.open(s["ortho"]) as src:                      # the same image 2 km east
        profile, data = src.profile, src.read()
        profile["transform"] = src.transform * Affine.translation(20000, 0)
    with rasterio.open(tmp_path / "elsewhere.tif", "w", **profile) as dst:
        dst.write(data)
    assert "does not cover" in _refused_unchanged(bundle, "--ortho", str(tmp_path / "elsewhere.tif"))
    assert "does not exist" in _refused_unchanged(bundle, "--ortho", str(tmp_path / "nope.tif"))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    assert "cannot read" in _refused_unchanged(bundle, "--ortho", str(tmp_path / "junk.tif"))


@pytest.mark.slow
def test_orthophoto_in_geographic_crs_is_warped_to_utm_and_registered(fused_setup, world, tmp_path):
    s = fused_setup
    ll = reproject_raster(read_raster(s["ortho"]), "EPSG:4326")
    path = tmp_path / "ortho_wgs84.tif"
    H, W = ll.shape
    with rasterio.open(path, "w", driver="GTiff", width=W, height=H, count=4, dtype="uint8", crs="EPSG:4326",
                       transform=ll.transform, photometric="RGB") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        dst.write(np.concatenate([np.moveaxis(ll.array, 2, 0), 255 * ll.valid[None].astype(np.uint8)]))
    res = fuse_bundle(s["geo"], path, None)
    assert res.applied, res.reason
    assert res.report["crs"] == "EPSG:32632" and res.report["gsd_m"] == pytest.approx(0.1, rel=0.1)
    xyz, _ = load_map_points(s["geo"])
    ground = np.abs(world.georef.enu_from_map.transform(xyz)[:, 2]) < 0.1
    e = _errors(res.georef, world.georef, xyz[ground])
    assert e["h_max"] < 0.3 and e["yaw_deg"] < 0.5
