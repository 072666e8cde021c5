"""Map building on the shared real data (skips with a reason when ../shared/datasets is absent)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pycolmap
import pytest
from conftest import shared_dataset

from bench.mapping import sfm_centre_errors
from mapping.build import BuildConfig, build_map
from mapping.reconstruct import reprojection_errors

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_redkitchen_posed_map_reprojects_below_1_5_px(tmp_path):
    from datasets.sevenscenes import frame_number, load_pgt
    root = shared_dataset("7scenes-redkitchen")
    records = [r for r in load_pgt(root / "pgt_sfm_seq01.txt") if frame_number(r.name) % 15 == 0]
    assert len(records) == 20
    manifest = build_map(root, records, tmp_path / "rk", BuildConfig())
    rec = pycolmap.Reconstruction(str(tmp_path / "rk" / "model"))
    assert rec.num_reg_images() == 20 and rec.num_points3D() > 2000
    err = reprojection_errors(rec)
    assert np.median(err) < 1.5
    assert manifest["statistics"]["reprojection_error_px"]["median"] == pytest.approx(np.median(err), rel=1e-3)


@pytest.mark.parametrize("scene,max_median_m", [("fountain-P11", 0.05)])
def test_strecha_sfm_aligned_centres(tmp_path, scene, max_median_m):
    from datasets.strecha import load_strecha
    root = shared_dataset(f"strecha/{scene}")
    gt = load_strecha(root)
    build_map(root, [replace(r, cam_from_world=None) for r in gt], tmp_path / "sfm", BuildConfig())
    res = sfm_centre_errors(tmp_path / "sfm", gt)
    assert res["n_registered"] == len(gt)
    assert res["median_centre_error_m"] < max_median_m
