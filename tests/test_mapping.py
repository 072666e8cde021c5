"""Map building on generated scenes with exact truth, bad inputs, and the bundle format."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from typer.testing import CliRunner

from bundleio import FORMAT_VERSION, read_features_h5, read_manifest, verify_files
from core.geometry import estimate_sim3
from core.types import VlocError
from datasets.synthetic import generate_scene, write_dataset
from mapping.build import BuildConfig, build_map
from mapping.reconstruct import images_cam_from_world, observation_errors, reprojection_errors
from vloc.cli import app

runner = CliRunner()
N_FRAMES = 24


@pytest.fixture(scope="module")
def scene():
    return generate_scene(seed=3)


@pytest.fixture(scope="module")
def dataset(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    records = write_dataset(scene, root, N_FRAMES)
    return root, records


@pytest.fixture(scope="module")
def posed_bundle(dataset, tmp_path_factory):
    root, _ = dataset
    out = tmp_path_factory.mktemp("bundles") / "posed"
    res = runner.invoke(app, ["map", "build", "--images", str(root), "--poses", str(root / "pgt_sfm_seq01.txt"),
                              "--poses-format", "pgt", "--camera", (root / "camera.txt").read_text().strip(),
                              "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_posed_map_points_lie_on_true_surfaces(posed_bundle, scene):
    rec = pycolmap.Reconstruction(str(posed_bundle / "model"))
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    assert len(xyz) > 2000, "too few triangulated points"
    d = scene.distance_to_surfaces(xyz)
    # Measured on these renders: SIFT localises to ~0.2 px median / ~0.6 px p90, so points seen at
    # 2 m under ~6-9 deg triangulation angles scatter along their rays: median ~2.7 mm, ~92 % within 1 cm.
    assert np.median(d) < 0.0035
    assert np.mean(d <= 0.01) >= 0.90, f"only {np.mean(d <= 0.01):.1%} of points within 1 cm"
    assert np.mean(d <= 0.05) >= 0.99, "gross outliers in the map"


def test_posed_map_keeps_true_poses_and_all_images(posed_bundle, dataset):
    _, records = dataset
    est = images_cam_from_world(pycolmap.Reconstruction(str(posed_bundle / "model")))
    assert len(est) == N_FRAMES
    for r in records:
        T = est[r.name]
        assert np.allclose(T.rotation, r.cam_from_world.rotation, atol=1e-6)
        assert np.allclose(T.translation, r.cam_from_world.translation, atol=1e-6)


def test_bundle_manifest_and_features_are_consistent(posed_bundle):
    m = read_manifest(posed_bundle)
    assert m["format_version"] == 1  # a SIFT root set: readers that predate feature sets can take it
    assert m["conventions"]["units"] == "metres" and "cam_from_world" in m["conventions"]["pose"]
    assert m["cameras"][0]["model"] == "PINHOLE"
    assert len(m["sources"]["images"]) == N_FRAMES and len(m["sources"]["pose_file"]["sha256"]) == 64
    assert verify_files(posed_bundle, m) == []
    table = read_features_h5(posed_bundle / "features.h5")
    rec = pycolmap.Reconstruction(str(posed_bundle / "model"))
    # each stored observation is the model's 2D point with the same 3D point id
    for k, name in enumerate(table.image_names):
        im = rec.find_image_with_name(name)
        rows = table.rows(k)
        assert rows.stop - rows.start == im.num_points2D()
        assert np.array_equal([p.point3D_id for p in im.points2D], table.point3d_ids[rows])
    assert table.descriptors.dtype == np.uint8 and table.descriptors.shape[1] == 128
    # the point table is an exact copy of the model's points, sorted by id
    assert np.array_equal(table.points_id, sorted(rec.points3D))
    assert np.allclose(table.points_xyz, [rec.points3D[int(i)].xyz for i in table.points_id])
    centres = [rec.find_image_with_name(n).projection_center() for n in table.image_names]
    assert np.allclose(table.image_centres, centres)


def test_manifest_reprojection_errors_match_the_model(posed_bundle):
    """The build's vectorised per-observation errors equal a per-2D-point projection of the model."""
    rec = pycolmap.Reconstruction(str(posed_bundle / "model"))
    slow = []
    for im in rec.images.values():
        T = im.cam_from_world()
        for p in im.points2D:
            if p.has_point3D():
                uv = im.camera.img_from_cam(T * rec.points3D[p.point3D_id].xyz)
                slow.append(np.linalg.norm(np.asarray(uv).ravel()[:2] - p.xy))
    assert len(slow) > 1000
    assert np.allclose(np.sort(reprojection_errors(rec)), np.sort(slow), atol=1e-9)
    table = read_features_h5(posed_bundle / "features.h5")
    kps = [np.array([p.xy for p in rec.find_image_with_name(n).points2D]) for n in table.image_names]
    pids = [table.point3d_ids[table.rows(k)] for k in range(len(table.image_names))]
    fast = observation_errors(rec, table.image_names, kps, pids)
    assert np.allclose(np.sort(fast), np.sort(slow), atol=1e-9)
    stats = read_manifest(posed_bundle)["statistics"]["reprojection_error_px"]
    assert stats["median"] == pytest.approx(np.median(slow), abs=1e-4)


def test_map_info_cli(posed_bundle):
    res = runner.invoke(app, ["map", "info", str(posed_bundle), "--json", "--verify"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["statistics"]["n_images"] == N_FRAMES and info["corrupt_files"] == []
    res = runner.invoke(app, ["map", "info", str(posed_bundle)])
    assert res.exit_code == 0 and "registered" in res.stdout


def test_info_detects_corruption(posed_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(posed_bundle, copy)
    with open(copy / "retrieval.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    res = runner.invoke(app, ["map", "info", str(copy), "--verify"])
    assert res.exit_code == 1 and "retrieval.npz" in res.stdout


def test_sfm_without_poses_matches_truth_after_similarity(dataset, tmp_path):
    root, records = dataset
    unposed = [replace(r, cam_from_world=None) for r in records]
    manifest = build_map(root, unposed, tmp_path / "sfm", BuildConfig())
    assert manifest["world_frame"]["kind"] == "sfm"
    est = images_cam_from_world(pycolmap.Reconstruction(str(tmp_path / "sfm" / "model")))
    assert len(est) >= N_FRAMES - 1
    names = sorted(est)
    truth = {r.name: r.cam_from_world.centre for r in records}
    a = np.array([est[n].centre for n in names])
    b = np.array([truth[n] for n in names])
    err = np.linalg.norm(estimate_sim3(a, b).transform(a) - b, axis=1)
    assert err.max() < 0.02, f"camera centres off by up to {err.max():.3f} m"


# ---- bundle format ------------------------------------------------------------------------------

def test_loader_refuses_newer_or_unknown_format(posed_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(posed_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VlocError, match="newer than this vloc supports"):
        read_manifest(copy)
    m["format"] = "something-else"
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VlocError, match="unknown bundle format"):
        read_manifest(copy)
    res = runner.invoke(app, ["map", "info", str(copy)])
    assert res.exit_code == 2 and "unknown bundle format" in res.output


# ---- bad inputs: one clear message, non-zero exit, no half-written bundle -----------------------

def _build(root: Path, out: Path, *extra: str):
    return runner.invoke(app, ["map", "build", "--images", str(root), "--out", str(out), "--quiet", *extra])


def _no_leftovers(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


@pytest.fixture()
def small_copy(dataset, tmp_path):
    """Six frames of the dataset and their pgt lines, in a scratch folder."""
    root, _ = dataset
    dst = tmp_path / "data"
    (dst / "seq-01").mkdir(parents=True)
    lines = (root / "pgt_sfm_seq01.txt").read_text().splitlines()[:6]
    for line in lines:
        name = line.split()[0]
        shutil.copy(root / name, dst / name)
    (dst / "pgt.txt").write_text("\n".join(lines) + "\n")
    return dst


def test_missing_pose_file(small_copy, tmp_path):
    out = tmp_path / "out" / "m"
    res = _build(small_copy, out, "--poses", str(small_copy / "nope.txt"), "--poses-format", "pgt")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not out.exists()


def test_missing_image_root(tmp_path):
    res = _build(tmp_path / "nowhere", tmp_path / "m")
    assert res.exit_code == 2 and "not a directory" in res.output


def test_unreadable_image(small_copy, tmp_path):
    first = (small_copy / "pgt.txt").read_text().split()[0]
    (small_copy / first).write_bytes(b"not an image at all")
    out = tmp_path / "m"
    res = _build(small_copy, out, "--poses", str(small_copy / "pgt.txt"), "--poses-format", "pgt")
    assert res.exit_code == 2 and "cannot read image" in res.output and first in res.output
    assert _no_leftovers(out)


def test_pose_file_not_matching_images(small_copy, tmp_path):
    text = (small_copy / "pgt.txt").read_text().replace("frame-000002", "frame-009999")
    (small_copy / "pgt.txt").write_text(text)
    out = tmp_path / "m"
    res = _build(small_copy, out, "--poses", str(small_copy / "pgt.txt"), "--poses-format", "pgt")
    assert res.exit_code == 2 and "missing" in res.output and "frame-009999" in res.output
    assert _no_leftovers(out)


def test_malformed_pose_line(small_copy, tmp_path):
    with open(small_copy / "pgt.txt", "a") as f:
        f.write("seq-01/frame-000001.color.png 1 0 0\n")
    res = _build(small_copy, tmp_path / "m", "--poses", str(small_copy / "pgt.txt"), "--poses-format", "pgt")
    assert res.exit_code == 2 and "pgt.txt:7" in res.output


@pytest.mark.parametrize("camera", ["PINHOLE 640 480 525", "FISHEYE_X 640 480 1 2 3", "PINHOLE 640 x 525 525 320 240",
                                    "PINHOLE 640 480 -5 525 320 240", "PINHOLE 640 480 nan 525 320 240"])
def test_camera_string_that_does_not_parse(small_copy, tmp_path, camera):
    res = _build(small_copy, tmp_path / "m", "--camera", camera)
    assert res.exit_code == 2 and res.output.startswith("error:")
    assert not (tmp_path / "m").exists()


def test_camera_size_must_match_images(small_copy, tmp_path):
    res = _build(small_copy, tmp_path / "m", "--poses", str(small_copy / "pgt.txt"), "--poses-format", "pgt",
                 "--camera", "PINHOLE 320 240 262 262 160 120")
    assert res.exit_code == 2 and "but its camera says 320x240" in res.output


def test_failed_rebuild_keeps_previous_bundle(small_copy, posed_bundle, tmp_path):
    out = tmp_path / "keep"
    shutil.copytree(posed_bundle, out)
    before = read_manifest(out)
    first = (small_copy / "pgt.txt").read_text().split()[0]
    (small_copy / first).write_bytes(b"")
    res = _build(small_copy, out, "--poses", str(small_copy / "pgt.txt"), "--poses-format", "pgt")
    assert res.exit_code == 2
    assert read_manifest(out) == before and verify_files(out, before) == []
    assert not any(p.name.startswith(".keep.") for p in tmp_path.iterdir())


def test_global_sfm_option(dataset, tmp_path):
    root, records = dataset
    unposed = [replace(r, cam_from_world=None) for r in records[:10]]
    cfg = replace(BuildConfig(), reconstruction=replace(BuildConfig().reconstruction, sfm_method="global"))
    build_map(root, unposed, tmp_path / "g", cfg)
    est = images_cam_from_world(pycolmap.Reconstruction(str(tmp_path / "g" / "model")))
    assert len(est) == 10
    truth = {r.name: r.cam_from_world.centre for r in records}
    a = np.array([est[n].centre for n in sorted(est)])
    b = np.array([truth[n] for n in sorted(est)])
    err = np.linalg.norm(estimate_sim3(a, b).transform(a) - b, axis=1)
    assert err.max() < 0.02


def test_update_bundle_is_atomic_and_versioned(posed_bundle, tmp_path):
    from bundleio import update_bundle
    copy = tmp_path / "b"
    shutil.copytree(posed_bundle, copy)
    before = (copy / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError):
        with update_bundle(copy, "broken") as (tmp, m):
            (tmp / "extra.txt").write_text("x")
            m["georeference"] = {"half": "written"}
            raise RuntimeError("killed mid-stage")
    assert (copy / "manifest.json").read_bytes() == before and not (copy / "extra.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    with update_bundle(copy, "layers") as (tmp, m):
        (tmp / "extra.txt").write_text("x")
        m["layers"] = {"extra": "extra.txt"}
    m = read_manifest(copy)
    assert m["revision"] == 1 and m["history"][-1]["stage"] == "layers" and m["layers"]
    assert "extra.txt" in m["files"] and verify_files(copy, m) == []
