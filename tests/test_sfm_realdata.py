"""Unposed SfM on the shared Strecha scenes (skips with a reason when ../shared/datasets is absent):
as accurate as before the loop check and two-view classification, and `--sfm global` right or refused."""
from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import shared_dataset

from bench.mapping import sfm_centre_errors
from core.types import VlocError
from mapping.build import BuildConfig, build_map

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


# measured (incremental, 2 cores), before these changes and after (the same models: the verified
# essential geometries pass the loop check here): fountain-P11 0.16 / 0.32 cm median / max,
# Herz-Jesus-P8 0.37 / 0.47 cm; global 0.26 / 0.44 and 0.40 / 0.95 cm. The bars leave ~2x.
@pytest.mark.parametrize("scene,max_median_m,max_max_m", [("fountain-P11", 0.005, 0.008),
                                                          ("Herz-Jesus-P8", 0.008, 0.015)])
@pytest.mark.parametrize("method", ["auto", "global"])
def test_strecha_unposed_right_or_refused(tmp_path, scene, max_median_m, max_max_m, method):
    from datasets.strecha import load_strecha
    root = shared_dataset(f"strecha/{scene}")
    gt = load_strecha(root)
    cfg = BuildConfig()
    cfg = replace(cfg, reconstruction=replace(cfg.reconstruction, sfm_method=method))
    try:
        build_map(root, [replace(r, cam_from_world=None) for r in gt], tmp_path / "sfm", cfg)
    except VlocError as e:
        assert method == "global" and "refused" in str(e), e
        return
    res = sfm_centre_errors(tmp_path / "sfm", gt)
    assert res["n_registered"] == len(gt)
    assert res["median_centre_error_m"] < max_median_m and res["max_centre_error_m"] < max_max_m, res
