"""HD layers on a generated room with exact truth: mesh, PLY/LAS, GeoTIFF, floors, occupancy, GeoJSON, CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import laspy
import numpy as np
import open3d as o3d
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from bundleio import read_manifest, update_bundle, verify_files
from core.camera import Camera
from core.geo import Georeference
from core.geometry import Rigid3, Sim3
from datasets.synthetic import generate_scene
from hdmap.geodesy import utm_crs_for
from hdmap.layers.build import LayersConfig, build_layers
from hdmap.layers.depth import backproject, load_depth_folder
from hdmap.layers.floors import find_floors, level_from_map
from hdmap.layers.mesh import PoissonConfig, TsdfConfig, sparse_mesh, tsdf_mesh
from hdmap.layers.occupancy import FREE, OCCUPIED, OccupancyGrid, write_ros_map
from hdmap.layers.ortho import OrthoConfig, render_mesh_ortho, render_ortho, write_geotiff
from hdmap.layers.pointcloud import read_map_points, read_ply, write_las, write_ply
from mapping.build import BuildConfig, build_map
from vloc.cli import app

runner = CliRunner()
CAMERA = Camera("PINHOLE", 240, 180, (196.875, 196.875, 120.0, 90.0))
VOXEL = 0.04
LAT, LON, ALT = 55.7047, 13.1910, 70.0  # Lund


def _pitch_down(cam_from_world: Rigid3, deg: float) -> Rigid3:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return Rigid3(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), np.zeros(3)) * cam_from_world


def _write_frames(scene, root: Path, poses: list[Rigid3], camera: Camera) -> None:
    """A 7-Scenes-style folder (as datasets.synthetic.write_dataset) for arbitrary poses."""
    (root / "seq-01").mkdir(parents=True)
    lines = []
    for i, cam_from_world in enumerate(poses):
        rgb, depth = scene.render(cam_from_world, camera)
        stem = root / "seq-01" / f"frame-{i:06d}"
        cv2.imwrite(f"{stem}.color.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}.depth.png", np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16))
        np.savetxt(f"{stem}.pose.txt", cam_from_world.inverse().matrix4())
        vals = [*cam_from_world.quat_wxyz, *cam_from_world.translation]
        lines.append(" ".join([f"seq-01/frame-{i:06d}.color.png"] + [f"{v:.9f}" for v in vals] +
                              [f"{camera.focals[0]:.10g}"]))
    (root / "pgt_sfm_seq01.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def scene():
    return generate_scene(seed=3)


@pytest.fixture(scope="module")
def dataset(scene, tmp_path_factory):
    """20 frames: the usual loop, and the same loop pitched 30 deg further down (sees the floor)."""
    root = tmp_path_factory.mktemp("layers-data")
    loop = scene.trajectory(10)
    _write_frames(scene, root, loop + [_pitch_down(p, 30) for p in loop], CAMERA)
    return root


@pytest.fixture(scope="module")
def frames(dataset):
    return load_depth_folder(dataset, CAMERA, registered_colour=True)


@pytest.fixture(scope="module")
def bundle(dataset, tmp_path_factory):
    from datasets.posefile import load_poses
    out = tmp_path_factory.mktemp("layers-bundle") / "map"
    records = load_poses(dataset / "pgt_sfm_seq01.txt", "pgt", camera=CAMERA)
    build_map(dataset, records, out, BuildConfig(), pose_file=dataset / "pgt_sfm_seq01.txt", pose_format="pgt")
    return out


@pytest.fixture(scope="module")
def layered(bundle, frames, tmp_path_factory):
    """A copy of the bundle with layers from the depth frames (small voxels / cells for speed)."""
    out = tmp_path_factory.mktemp("layered") / "map"
    shutil.copytree(bundle, out)
    cfg = LayersConfig(tsdf=TsdfConfig(voxel=VOXEL), ortho=OrthoConfig(resolution=0.04))
    info = build_layers(out, cfg, frames)
    return out, info


# ---- mesh -------------------------------------------------------------------------------------

def test_tsdf_mesh_lies_on_and_covers_the_true_surfaces(frames, scene):
    # weight > 0.5: surfaces seen once count too (10 frames per loop overlap little)
    mesh = tsdf_mesh(frames, TsdfConfig(voxel=VOXEL, weight_threshold=0.5))
    v = np.asarray(mesh.vertices)
    assert len(v) > 5000, f"only {len(v)} vertices"
    d = scene.distance_to_surfaces(v)
    assert np.percentile(d, 95) < 2 * VOXEL, f"p95 {np.percentile(d, 95):.3f} m off the true surfaces"
    assert np.median(d) < 0.25 * VOXEL
    # coverage: the observed surface (depth pixels of every frame) lies near the mesh
    obs = np.vstack([backproject(f.load()[0], f.camera, f.world_from_cam, step=4, max_depth=4.0) for f in frames])
    to_mesh = np.asarray(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(obs))
                         .compute_point_cloud_distance(o3d.geometry.PointCloud(mesh.vertices)))
    assert np.mean(to_mesh < 2 * VOXEL) > 0.9, f"mesh covers only {np.mean(to_mesh < 2 * VOXEL):.1%}"
    # colours come from the registered colour images: a vertex's colour matches the render at it
    assert mesh.has_vertex_colors() and np.asarray(mesh.vertex_colors).std() > 0.05


def test_sparse_model_mesh_lies_near_surfaces(bundle, scene):
    pts = read_map_points(bundle)
    mesh = sparse_mesh(pts.xyz, pts.rgb, pts.centres, pts.observer, PoissonConfig())
    v = np.asarray(mesh.vertices)
    assert len(v) > 500
    d = scene.distance_to_surfaces(v)
    assert np.median(d) < 0.03 and np.percentile(d, 90) < 0.15, np.percentile(d, [50, 90])


# ---- point clouds -----------------------------------------------------------------------------

def test_ply_and_las_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-5, 5, (1000, 3)) + [400000.0, 6170000.0, 50.0]
    rgb = rng.integers(0, 256, (1000, 3)).astype(np.uint8)
    write_ply(tmp_path / "p.ply", xyz, rgb)
    xyz2, rgb2 = read_ply(tmp_path / "p.ply")
    assert np.array_equal(xyz2, xyz) and np.array_equal(rgb2, rgb)
    crs = utm_crs_for(LAT, LON)
    write_las(tmp_path / "p.las", xyz, rgb, crs, scale=0.001)
    las = laspy.read(tmp_path / "p.las")
    assert len(las.points) == 1000
    got = np.stack([las.x, las.y, las.z], 1)
    assert np.abs(got - xyz).max() <= 0.0005 + 1e-9
    assert np.array_equal(np.stack([las.red, las.green, las.blue], 1) // 257, rgb)
    assert las.header.parse_crs().equals(crs)
    write_las(tmp_path / "q.las", xyz, rgb, None)
    assert laspy.read(tmp_path / "q.las").header.parse_crs() is None


# ---- orthophoto -------------------------------------------------------------------------------

def test_orthophoto_of_points_has_crs_bounds_and_colours(tmp_path):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 4, (20000, 2)) + [500000.0, 6000000.0]
    z = rng.uniform(0, 0.5, 20000)
    rgb = np.where((xy[:, :1] - 500000.0) < 2, [200, 30, 30], [30, 30, 200]).astype(np.uint8)
    top = np.array([[500001.013, 6000001.013, 3.0], [500003.013, 6000003.013, 3.0]])  # highest: must win
    pts = np.vstack([np.c_[xy, z], top])
    cols = np.vstack([rgb, [[0, 255, 0], [255, 255, 0]]]).astype(np.uint8)
    ortho = render_ortho(pts, cols, OrthoConfig(resolution=0.05))
    crs = utm_crs_for(LAT, LON)
    write_geotiff(tmp_path / "o.tif", ortho, crs, {"VLOC_FRAME": "test"})
    with rasterio.open(tmp_path / "o.tif") as src:
        assert src.crs is not None and src.crs.to_epsg() == crs.to_epsg()
        b = src.bounds
        assert b.left <= pts[:, 0].min() and b.right >= pts[:, 0].max()
        assert b.bottom <= pts[:, 1].min() and b.top >= pts[:, 1].max()
        img = src.read()
        for p, c in zip(top, cols[-2:]):
            r, cc = src.index(p[0], p[1])
            assert list(img[:3, r, cc]) == list(c) and img[3, r, cc] == 255
        r, cc = src.index(500000.5, 6000002.5)
        assert list(img[:3, r, cc]) == [200, 30, 30]


def test_orthophoto_of_a_mesh_interpolates_vertex_colours():
    v = np.array([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0], [0.5, 0.5, 1], [1.5, 0.5, 1], [1, 1.5, 1]], float)
    t = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    c = np.array([[10, 10, 10]] * 4 + [[250, 0, 0]] * 3, np.uint8)
    o = render_mesh_ortho(v, t, c, OrthoConfig(resolution=0.05))
    r, cc = o.pixel_of(np.array([[1.0, 0.9], [1.8, 1.8]]))
    assert list(o.rgba[r[0], cc[0]]) == [250, 0, 0, 255]   # the raised triangle hides the floor
    assert list(o.rgba[r[1], cc[1]]) == [10, 10, 10, 255]
    assert (o.rgba[..., 3] == 255).mean() > 0.9


# ---- floors -----------------------------------------------------------------------------------

def test_two_levels_give_two_floors_at_the_right_heights():
    rng = np.random.default_rng(2)
    # upward-facing surfaces only (ceilings face down and are left out by the caller), with noise
    z = np.concatenate([rng.normal(0.0, 0.005, 3000), rng.normal(0.75, 0.005, 600),      # floor 0 + tables
                        rng.normal(3.2, 0.005, 3000), rng.normal(3.95, 0.005, 500),      # floor 1 + tables
                        rng.normal(2.25, 0.005, 300),                                    # a wardrobe top
                        rng.uniform(-0.5, 7, 200)])                                      # outliers
    cams = np.concatenate([rng.uniform(1.2, 1.5, 40), rng.uniform(4.4, 4.7, 40)])
    floors = find_floors(z, cams)
    assert len(floors) == 2
    assert abs(floors[0].elevation - 0.0) < 0.02 and abs(floors[1].elevation - 3.2) < 0.02
    assert floors[0].top == pytest.approx(floors[1].elevation) and np.isinf(floors[1].top)
    assert all(f.observed for f in floors)


def test_level_frame_takes_up_to_z():
    up = np.array([0.2, -0.9, 0.1])
    R = level_from_map(up)
    assert np.allclose(R.rotation @ (up / np.linalg.norm(up)), [0, 0, 1])
    assert np.allclose(level_from_map(np.array([0, 0, 1.0])).rotation, np.eye(3))


# ---- occupancy --------------------------------------------------------------------------------

def test_ros_yaml_maps_world_points_to_the_right_pixel(tmp_path):
    cells = np.full((4, 6), FREE, np.int8)
    cells[0, 5] = OCCUPIED  # top-right cell in the image = largest x, largest y
    grid = OccupancyGrid(cells, 0.5, (10.0, 20.0))
    y = yaml.safe_load(write_ros_map(grid, tmp_path / "m.pgm").read_text())
    assert y["mode"] == "trinary" and y["negate"] == 0 and y["image"] == "m.pgm"
    img = cv2.imread(str(tmp_path / y["image"]), cv2.IMREAD_UNCHANGED)
    ox, oy, _ = y["origin"]
    x, yy = 12.9, 21.9   # inside the cell at column 5, row 0 (world y in [21.5, 22.0))
    col, row = int((x - ox) / y["resolution"]), img.shape[0] - 1 - int((yy - oy) / y["resolution"])
    assert (row, col) == (0, 5) and img[row, col] == 0
    occ = (255 - img.astype(float)) / 255
    assert occ[row, col] > y["occupied_thresh"] and occ[3, 0] < y["free_thresh"]


def _grid_cells(layer_dir: Path, name: str):
    y = yaml.safe_load((layer_dir / name).read_text())
    img = cv2.imread(str(layer_dir / y["image"]), cv2.IMREAD_UNCHANGED)
    H, W = img.shape
    rows, cols = np.mgrid[0:H, 0:W]
    res, (ox, oy, _) = y["resolution"], y["origin"]
    xy = np.stack([ox + (cols + 0.5) * res, oy + (H - 1 - rows + 0.5) * res], -1).reshape(-1, 2)
    return xy, img.ravel()


def test_occupancy_grid_of_the_room(layered, scene, frames):
    out, info = layered
    assert len(info["floors"]) == 1 and abs(info["floors"][0]["elevation"]) < 0.03
    xy, v = _grid_cells(out / "layers", "occupancy_floor0.yaml")
    p = np.c_[xy, np.full(len(xy), 0.3)]
    lo, hi = scene.bounds
    inside = np.all((xy > lo[:2] + 0.3) & (xy < hi[:2] - 0.3), 1)
    box_d = np.min([b.solid_distance(p) for b in scene.boxes], 0)
    # truth from the rendered depth: floor (z = 0) and box tops seen, at the build's ray step (4 px)
    seen = np.vstack([backproject(f.load()[0], f.camera, f.world_from_cam, step=4) for f in frames])
    cell_xy = np.floor(xy / 0.05).astype(np.int64)
    W = 1_000_000  # key = x * W + y, unique for |y| < W / 2

    def cells_seen(pts):
        c = np.floor(pts[:, :2] / 0.05).astype(np.int64)
        return np.isin(cell_xy[:, 0] * W + cell_xy[:, 1], c[:, 0] * W + c[:, 1])

    open_floor = inside & (box_d > 0.3) & cells_seen(seen[np.abs(seen[:, 2]) < 0.005])
    assert open_floor.sum() > 2000
    assert np.mean(v[open_floor] == 254) > 0.9, f"seen open floor free {np.mean(v[open_floor] == 254):.1%}"
    assert np.mean(v[open_floor] == 0) < 0.02
    assert np.mean(v[inside & (box_d > 0.3)] == 254) > 0.4  # the loop's centre is never seen
    outside = np.any((xy < lo[:2] - 0.1) | (xy > hi[:2] + 0.1), 1)
    assert not np.any(v[outside] == 254), "free cells beyond the walls"
    n_solid = 0
    for b in scene.boxes:
        interior = np.all(b.excess(p)[:, :2] < -0.06, 1)
        assert not np.any(v[interior] == 254), "free cells inside furniture"
        top = seen[(np.abs(seen[:, 2] - b.height) < 0.005) & np.all(b.excess(seen)[:, :2] < 0, 1)]
        top_seen = interior & cells_seen(top)
        if top_seen.any() and b.height < 1.5:  # a seen top inside the robot band is an obstacle
            assert np.mean(v[top_seen] == 0) > 0.95, f"seen box top occupied {np.mean(v[top_seen] == 0):.1%}"
        n_solid += np.mean(v[interior] == 0) > 0.9
    assert n_solid >= 2, "fewer than 2 boxes are solid obstacles"
    # cells on the walls (within 3 cm of a wall plane, inside the room's extent) are mostly occupied
    on_wall = (np.min(np.abs(np.c_[xy - lo[:2], xy - hi[:2]]), 1) < 0.03) & \
        np.all((xy > lo[:2] - 0.03) & (xy < hi[:2] + 0.03), 1)
    assert np.mean(v[on_wall] == 0) > 0.5, f"walls occupied {np.mean(v[on_wall] == 0):.1%}"


# ---- footprint --------------------------------------------------------------------------------

def _exterior(geometry: dict) -> np.ndarray:
    """(K, 2) exterior ring of a Polygon, or of the first polygon of a MultiPolygon."""
    return np.array(geometry["coordinates"][0] if geometry["type"] == "Polygon" else geometry["coordinates"][0][0])


def test_footprint_geojson_in_map_frame_and_georeferenced(layered, tmp_path):
    out, _ = layered
    gj = json.loads((out / "layers" / "footprint.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 1
    f = gj["features"][0]
    assert "map frame" in f["properties"]["frame"]
    ring = _exterior(f["geometry"])
    assert np.allclose(ring[0], ring[-1]) and np.abs(ring).max() < 4.5
    assert 15 < f["properties"]["area_m2"] < 32  # the 6 x 5 m room, minus unseen corners

    geo = tmp_path / "geo"
    shutil.copytree(out, geo)
    ref = Georeference.from_sim3(LAT, LON, ALT, Sim3(1.0, np.eye(3), np.zeros(3)))
    with update_bundle(geo, "georeference") as (_, man):
        man["georeference"] = ref.to_manifest(source="test")
    info = build_layers(geo, LayersConfig(tsdf=TsdfConfig(voxel=0.08), ortho=OrthoConfig(resolution=0.1)))
    gj = json.loads((geo / "layers" / "footprint.geojson").read_text())
    ring = _exterior(gj["features"][0]["geometry"])
    assert np.all(np.abs(ring[:, 0] - LON) < 1e-4) and np.all(np.abs(ring[:, 1] - LAT) < 1e-4)
    assert "crs" not in gj
    crs = utm_crs_for(LAT, LON)
    assert info["frames"]["projected_crs"] == f"EPSG:{crs.to_epsg()}"
    las = laspy.read(geo / "layers" / "points.las")
    assert las.header.parse_crs().equals(crs)
    from hdmap.geodesy import map_to_crs
    pts = read_map_points(geo)
    expect = map_to_crs(pts.xyz, ref, crs)
    assert np.abs(np.stack([las.x, las.y, las.z], 1) - expect).max() <= 0.0005 + 1e-6
    with rasterio.open(geo / "layers" / "ortho.tif") as src:
        assert src.crs.to_epsg() == crs.to_epsg()
        b = src.bounds
        assert b.left <= expect[:, 0].min() and b.right >= expect[:, 0].max()


# ---- CLI --------------------------------------------------------------------------------------

def test_cli_writes_layers_and_manifest(bundle, dataset, tmp_path):
    out = tmp_path / "map"
    shutil.copytree(bundle, out)
    res = runner.invoke(app, ["map", "layers", str(out), "--depth-root", str(dataset), "--depth-camera",
                              str(CAMERA), "--depth-stride", "2", "--voxel", "0.06", "--ortho-resolution", "0.1",
                              "--depth-colour", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    assert verify_files(out, m) == []
    listed = set(m["layers"]["files"])
    for name in ("mesh.ply", "points.ply", "points.las", "ortho.tif", "floors.json", "occupancy_floor0.pgm",
                 "occupancy_floor0.yaml", "footprint.geojson"):
        assert f"layers/{name}" in listed and f"layers/{name}" in m["files"]
    assert m["layers"]["statistics"]["n_depth_frames"] == 10
    assert m["history"][-1]["stage"] == "layers"
    # without depth: the sparse model's Poisson mesh
    res = runner.invoke(app, ["map", "layers", str(out), "--quiet", "--ortho-resolution", "0.1"])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    assert "Poisson" in m["layers"]["files"]["layers/mesh.ply"]["source"] and verify_files(out, m) == []


@pytest.mark.parametrize("args, message", [
    (["--depth-root", "/nonexistent/depth", "--depth-camera", "PINHOLE 240 180 196 196 120 90"], "depth root"),
    (["--depth-root", "DATA", "--depth-camera", "PINHOLE 240 180 196"], "PINHOLE takes 4 parameters"),
    (["--depth-root", "DATA", "--depth-camera", "PINHOLE 320 240 196 196 160 120"], "depth camera is 320x240"),
    (["--depth-root", "DATA"], "--depth-camera"),
    (["--crs", "EPSG:32633"], "georeferenced"),
])
def test_cli_bad_input_exits_2_and_leaves_the_bundle(bundle, dataset, tmp_path, args, message):
    out = tmp_path / "map"
    shutil.copytree(bundle, out)
    before = (out / "manifest.json").read_bytes()
    args = [str(dataset) if a == "DATA" else a for a in args]
    res = runner.invoke(app, ["map", "layers", str(out), "--quiet", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert (out / "manifest.json").read_bytes() == before and not (out / "layers").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["map"]
