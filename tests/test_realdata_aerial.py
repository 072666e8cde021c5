"""The shared aerial GeoTIFFs: read, reprojected and tiled with correct bounds, masks respected.

NAIP-style RGB (EPSG:26913, 0.15 m) and a Pix4D RGBA orthophoto with an alpha band
(EPSG:32750, 0.35 m), from rio-tiler's test fixtures (see LICENSE-rio-tiler there).
"""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import shared_dataset
from pyproj import Transformer

from hdmap.raster import apply_affine, read_raster, reproject_raster, sample_raster, tile_raster

pytestmark = pytest.mark.realdata

FILES = {  # name: (EPSG, (H, W), data bands, GSD x, GSD y, left, top, another UTM zone for the warp)
    "201404_13SED190110_201404_0x1500m_CL_1.tif": (26913, (232, 383), 3, 0.14982, 0.15000, 519467.496,
                                                    4311669.766, "EPSG:26912"),
    "pix4d_alpha_nodata.tif": (32750, (758, 686), 3, 0.35272, 0.35272, 297463.303, 9050677.061, "EPSG:32749"),
}


@pytest.fixture(params=sorted(FILES))
def aerial(request):
    return shared_dataset("aerial") / request.param, FILES[request.param]


def _corners(r):
    b = r.bounds
    return np.array([[b.left, b.bottom], [b.left, b.top], [b.right, b.bottom], [b.right, b.top]])


def test_read_crs_bounds_gsd_and_mask(aerial):
    path, (epsg, shape, bands, gx, gy, left, top, _) = aerial
    r = read_raster(path)
    assert r.crs.to_epsg() == epsg and r.shape == shape and r.array.shape[2] == bands
    assert abs(r.transform.a) == pytest.approx(gx, abs=1e-4) and abs(r.transform.e) == pytest.approx(gy, abs=1e-4)
    assert r.gsd == pytest.approx((gx + gy) / 2, abs=1e-4)
    assert r.bounds.left == pytest.approx(left, abs=1e-3) and r.bounds.top == pytest.approx(top, abs=1e-3)
    assert r.bounds.right == pytest.approx(left + shape[1] * gx, abs=0.05)
    assert r.bounds.bottom == pytest.approx(top - shape[0] * gy, abs=0.05)
    with rasterio.open(path) as ds:
        alpha = [i + 1 for i, c in enumerate(ds.colorinterp) if c.name == "alpha"]
        if alpha:          # the mask is exactly the alpha band
            assert np.array_equal(r.valid, ds.read(alpha[0]) > 0)
            assert 0.5 < r.valid.mean() < 0.99
        else:
            assert r.valid.all()


@pytest.mark.parametrize("target", ["EPSG:4326", "other-utm"])
def test_reprojected_bounds_contain_the_same_place(aerial, target):
    path, (epsg, *_, other) = aerial
    r = read_raster(path)
    dst = other if target == "other-utm" else target
    w = reproject_raster(r, dst)
    assert w.crs.to_string() == dst
    x, y = Transformer.from_crs(f"EPSG:{epsg}", dst, always_xy=True).transform(*_corners(r).T)
    b, px = w.bounds, w.gsd
    assert b.left == pytest.approx(x.min(), abs=1.5 * px) and b.right == pytest.approx(x.max(), abs=1.5 * px)
    assert b.bottom == pytest.approx(y.min(), abs=1.5 * px) and b.top == pytest.approx(y.max(), abs=1.5 * px)
    if target == "other-utm":      # metres in, metres out: about the same ground sampling distance
        assert px == pytest.approx(r.gsd, rel=0.05)
    # valid area preserved (the warped grid adds rotated corners, nothing else), and content in place
    if target == "other-utm":
        assert w.valid.sum() * w.gsd ** 2 == pytest.approx(r.valid.sum() * r.gsd ** 2, rel=0.05)
    back = Transformer.from_crs(dst, f"EPSG:{epsg}", always_xy=True)
    rows, cols = np.nonzero(w.valid)
    pick = np.linspace(0, len(rows) - 1, 200).astype(int)
    cx, cy = apply_affine(w.transform, np.c_[cols[pick] + 0.5, rows[pick] + 0.5])
    ex, ny = back.transform(cx, cy)
    v, ok = sample_raster(r, np.c_[ex, ny])
    diff = np.abs(v[ok] - w.array[rows[pick], cols[pick], 0][ok])
    assert ok.mean() > 0.9 and np.median(diff) < 2      # same place (measured 0.24; 3 px off: 4-11)


def test_tiles_cover_the_raster_exactly(aerial):
    path, *_ = aerial
    r = read_raster(path)
    tile = 100
    tiles = list(tile_raster(path, tile))
    H, W = r.shape
    assert len(tiles) == -(-H // tile) * -(-W // tile)
    seen = np.zeros((H, W), int)
    for t in tiles:
        rs, cs = t.window.toslices()
        seen[rs, cs] += 1
        assert np.array_equal(t.raster.array, r.array[rs, cs]) and np.array_equal(t.raster.valid, r.valid[rs, cs])
        (x0, x1), (y0, y1) = apply_affine(r.transform, np.array([[cs.start, rs.start], [cs.stop, rs.stop]]))
        b = t.bounds
        assert (b.left, b.top, b.right, b.bottom) == pytest.approx((x0, y0, x1, y1), abs=1e-6)
    assert (seen == 1).all()
    edges = [t for t in tiles if t.window.width < tile or t.window.height < tile]
    assert all(t.window.col_off + t.window.width == W or t.window.row_off + t.window.height == H for t in edges)
