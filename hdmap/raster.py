"""GeoTIFF rasters (orthophotos, DSMs) through rasterio: read (a window, alpha / nodata as a
mask), reproject, tile, sample. Coordinates: the raster's CRS (x = easting, y = northing for
projected CRSs); pixel (col, row) -> CRS by the raster's ``transform`` (GDAL convention:
(0, 0) is the top-left corner of the top-left pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import rasterio
import rasterio.warp
import rasterio.windows
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine

from core.types import VlocError


@dataclass(frozen=True, eq=False)
class Raster:
    """A georeferenced raster in memory.

    array: (H, W, C) data bands (alpha excluded), dtype as in the file.
    valid: (H, W) bool, True where the data is valid (GDAL dataset mask: alpha band, nodata,
        or all valid).
    transform: pixel (col, row) -> CRS (x, y), GDAL corner convention.  crs: the raster's CRS.
    nodata: the file's nodata value, or None.  path: the source file, or None when computed.
    """

    array: np.ndarray
    valid: np.ndarray
    transform: Affine
    crs: RioCRS
    nodata: float | None = None
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return self.array.shape[0], self.array.shape[1]

    @property
    def gsd(self) -> float:
        """Ground sampling distance: mean pixel size in CRS units (metres for projected CRSs)."""
        t = self.transform
        return float((math.hypot(t.a, t.d) + math.hypot(t.b, t.e)) / 2)

    @property
    def bounds(self) -> rasterio.coords.BoundingBox:
        """(left, bottom, right, top) in CRS units."""
        return rasterio.coords.BoundingBox(*rasterio.transform.array_bounds(*self.shape, self.transform))

    def grey(self) -> np.ndarray:
        """(H, W) float32 luminance (Rec. 601) of RGB rasters, band 0 otherwise; 0 where invalid."""
        a = self.array.astype(np.float32)
        g = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114 if a.shape[2] >= 3 else a[..., 0]
        return np.where(self.valid, g, 0.0).astype(np.float32)


def read_raster(path: str | Path, bounds: tuple[float, float, float, float] | None = None) -> Raster:
    """Read a GeoTIFF (any GDAL raster) with its CRS, geotransform and validity mask.

    bounds: optional (left, bottom, right, top) in the raster's CRS: read only that window
    (clipped to the raster; VlocError when they do not overlap).
    """
    path = Path(path)
    if not path.is_file():
        raise VlocError(f"raster {path} does not exist")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise VlocError(f"{path} has no CRS: georeference it first (e.g. gdal_edit.py -a_srs EPSG:...)")
            if src.transform.is_identity:
                raise VlocError(f"{path} has no geotransform: it is not georeferenced")
            window = None
            if bounds is not None:
                window = _window_for(bounds, src.transform, src.width, src.height)
                if window is None:
                    raise VlocError(f"{path} does not cover the map's area {tuple(round(b, 1) for b in bounds)} "
                                    f"(raster bounds {tuple(round(b, 1) for b in src.bounds)}, {src.crs})")
            alpha = [i + 1 for i, c in enumerate(src.colorinterp) if c == ColorInterp.alpha]
            bands = [i for i in range(1, src.count + 1) if i not in alpha] or [1]
            data = src.read(bands, window=window)
            valid = src.dataset_mask(window=window) > 0
            transform = src.window_transform(window) if window is not None else src.transform
            return Raster(np.ascontiguousarray(np.moveaxis(data, 0, 2)), valid, transform, src.crs,
                          src.nodata, path)
    except RasterioIOError as e:
        raise VlocError(f"cannot read {path} as a raster ({e})") from None


def _window_for(bounds: tuple[float, float, float, float], transform: Affine, W: int, H: int
                ) -> rasterio.windows.Window | None:
    """Pixel window covering (left, bottom, right, top), clipped to the raster; None when disjoint."""
    l, b, r, t = bounds
    cols, rows = apply_affine(~transform, np.array([[l, b], [l, t], [r, b], [r, t]], np.float64))
    c0, c1 = max(0, math.floor(cols.min() + 1e-6)), min(W, math.ceil(cols.max() - 1e-6))
    r0, r1 = max(0, math.floor(rows.min() + 1e-6)), min(H, math.ceil(rows.max() - 1e-6))
    if c1 <= c0 or r1 <= r0:
        return None
    return rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)


def reproject_raster(src: Raster, dst_crs: str | CRS | RioCRS, resolution: float | None = None,
                     resampling: Resampling = Resampling.bilinear) -> Raster:
    """Warp a raster to another CRS (rasterio.warp), north-up, at ``resolution`` (dst CRS units;
    default: rasterio's estimate preserving the pixel count).  A pixel is valid only where
    every source pixel it draws from was valid."""
    dst_crs = RioCRS.from_user_input(dst_crs.to_wkt() if isinstance(dst_crs, CRS) else dst_crs)
    H, W = src.shape
    kw = {"resolution": resolution} if resolution is not None else {}
    transform, w, h = rasterio.warp.calculate_default_transform(src.crs, dst_crs, W, H, *src.bounds, **kw)
    bands = np.zeros((src.array.shape[2], h, w), src.array.dtype)
    rasterio.warp.reproject(np.moveaxis(src.array, 2, 0), bands, src_transform=src.transform, src_crs=src.crs,
                            dst_transform=transform, dst_crs=dst_crs, resampling=resampling)
    cover = np.zeros((h, w), np.float32)
    rasterio.warp.reproject(src.valid.astype(np.float32), cover, src_transform=src.transform, src_crs=src.crs,
                            dst_transform=transform, dst_crs=dst_crs, resampling=resampling, dst_nodata=0.0)
    return Raster(np.ascontiguousarray(np.moveaxis(bands, 0, 2)), cover >= 0.999, transform, dst_crs, src.nodata,
                  None)


@dataclass(frozen=True, eq=False)
class Tile:
    """One tile: its index (row, col) in the tile grid, pixel window, data, and CRS bounds."""

    row: int
    col: int
    window: rasterio.windows.Window
    raster: Raster

    @property
    def bounds(self) -> rasterio.coords.BoundingBox:
        return self.raster.bounds


def tile_raster(src: Raster | str | Path, tile_px: int) -> Iterator[Tile]:
    """Cut a raster into tile_px x tile_px tiles (edge tiles smaller), row by row.

    The tiles partition the raster exactly; each carries its own transform and bounds.  A path
    is read window by window (large orthophotos never load whole).
    """
    if tile_px < 1:
        raise VlocError(f"tile size must be at least 1 pixel, got {tile_px}")
    if isinstance(src, Raster):
        H, W = src.shape
        for r, c, win in _windows(H, W, tile_px):
            rs, cs = win.toslices()
            yield Tile(r, c, win, Raster(src.array[rs, cs], src.valid[rs, cs],
                                         rasterio.windows.transform(win, src.transform), src.crs, src.nodata,
                                         src.path))
        return
    path = Path(src)
    with rasterio.open(path) as ds:
        alpha = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
        bands = [i for i in range(1, ds.count + 1) if i not in alpha] or [1]
        for r, c, win in _windows(ds.height, ds.width, tile_px):
            data = np.moveaxis(ds.read(bands, window=win), 0, 2)
            yield Tile(r, c, win, Raster(np.ascontiguousarray(data), ds.dataset_mask(window=win) > 0,
                                         ds.window_transform(win), ds.crs, ds.nodata, path))


def _windows(H: int, W: int, tile_px: int) -> Iterator[tuple[int, int, rasterio.windows.Window]]:
    for r, r0 in enumerate(range(0, H, tile_px)):
        for c, c0 in enumerate(range(0, W, tile_px)):
            yield r, c, rasterio.windows.Window(c0, r0, min(tile_px, W - c0), min(tile_px, H - r0))


def apply_affine(t: Affine, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a raster transform to (N, 2) points: pixel (col, row) -> CRS (x, y), or the inverse
    transform for CRS -> pixel.  Returns (x (N,), y (N,))."""
    p = np.asarray(xy, np.float64).reshape(-1, 2)
    return t.a * p[:, 0] + t.b * p[:, 1] + t.c, t.d * p[:, 0] + t.e * p[:, 1] + t.f


def sample_raster(r: Raster, xy: np.ndarray, band: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of one band at (N, 2) CRS points -> (values (N,) float64, ok (N,) bool).

    ok is False outside the raster or where any of the four neighbouring pixels is invalid."""
    c, rr = apply_affine(~r.transform, np.asarray(xy, np.float64))
    x, y = c - 0.5, rr - 0.5                            # pixel-centre coordinates
    H, W = r.shape
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    ok = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < W) & (y0 + 1 < H)
    out = np.full(len(x), np.nan)
    i, j = y0[ok], x0[ok]
    ok[ok] = r.valid[i, j] & r.valid[i, j + 1] & r.valid[i + 1, j] & r.valid[i + 1, j + 1]
    i, j, fx, fy = y0[ok], x0[ok], (x - x0)[ok], (y - y0)[ok]
    a = r.array[..., band].astype(np.float64)
    out[ok] = (a[i, j] * (1 - fx) + a[i, j + 1] * fx) * (1 - fy) + (a[i + 1, j] * (1 - fx) + a[i + 1, j + 1] * fx) * fy
    return out, ok
