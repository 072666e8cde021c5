"""The console benchmark's large map (bench.console_map): a valid bundle with the asked number of
points, the added ones on the room's true surfaces with the rendered colours."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from api.mapdata import read_points
from api.testing import shared_test_map
from bench.console_map import densify_bundle
from bundleio.manifest import read_manifest, verify_files

pytestmark = pytest.mark.timeout(300)


def test_densified_bundle_is_valid_and_its_points_lie_on_the_room(tmp_path):
    tm = shared_test_map()
    info = densify_bundle(tm.bundle, tm.bundle.parent, tmp_path / "big", 40_000)
    assert info["total"] == 40_000 and info["sfm_points"] + info["depth_points"] == 40_000
    manifest = read_manifest(tmp_path / "big")
    assert verify_files(tmp_path / "big", manifest) == [] and manifest["statistics"]["n_points3D"] == 40_000
    pts = read_points(tmp_path / "big")
    rec = pycolmap.Reconstruction(str(tmp_path / "big" / "model"))
    assert len(pts) == rec.num_points3D() == 40_000
    added = pts.xyz[pts.observations == 0].astype(np.float64)
    assert len(added) == info["depth_points"]
    d = tm.scene.distance_to_surfaces(added)
    assert np.median(d) < 0.01 and np.mean(d < 0.05) > 0.98
    assert len(np.unique(pts.rgb[pts.observations == 0], axis=0)) > 1000  # the rendered colours, not one value
    # the SfM points are untouched
    orig = read_points(tm.bundle)
    assert np.array_equal(pts.xyz[: len(orig)], orig.xyz) and np.array_equal(pts.rgb[: len(orig)], orig.rgb)
