"""Top-down orthophoto of a coloured mesh or coloured 3D points as an RGBA GeoTIFF (rasterio).

A mesh is ray-cast straight down at every pixel centre (colour interpolated at the first
hit); points are splatted, each pixel taking the colour of its highest point. Pixels with
nothing are transparent (alpha 0). Raster axes are the
horizontal axes of the output frame: easting / northing of a projected CRS when the map is
georeferenced, else the map's level frame (x, y), with no CRS and the frame stated in the tags.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
import rasterio
from pyproj import CRS
from rasterio.transform import Affine, from_origin


@dataclass(frozen=True)
class OrthoConfig:
    """Orthophoto parameters."""

    #: pixel size in metres (CRS units when georeferenced).
    resolution: float = 0.02
    #: the raster is refused beyond this many pixels (choose a coarser resolution).
    max_pixels: int = 100_000_000


@dataclass(frozen=True)
class Ortho:
    """rgba: (H, W, 4) uint8, row 0 = north / largest y; transform: pixel (col, row) corner -> (x, y)."""

    rgba: np.ndarray
    transform: Affine
    resolution: float

    def pixel_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) raster-frame points -> (rows, cols) int."""
        a, b, c, d, e, f = (self.transform.a, self.transform.b, self.transform.c, self.transform.d,
                            self.transform.e, self.transform.f)
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        det = a * e - b * d
        cols = (e * (xy[:, 0] - c) - b * (xy[:, 1] - f)) / det
        rows = (-d * (xy[:, 0] - c) + a * (xy[:, 1] - f)) / det
        return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


def _empty_ortho(xyz: np.ndarray, cfg: OrthoConfig) -> Ortho:
    """A transparent raster covering the (N, 3) points' horizontal extent."""
    if len(xyz) == 0:
        raise ValueError("no points to render")
    res = float(cfg.resolution)
    west, south = np.floor(xyz[:, :2].min(0) / res) * res
    east, north = np.ceil(xyz[:, :2].max(0) / res) * res + res
    W, H = int(round((east - west) / res)), int(round((north - south) / res))
    if W * H > cfg.max_pixels:
        raise ValueError(f"orthophoto of {W}x{H} pixels at {res} m exceeds {cfg.max_pixels} pixels")
    return Ortho(np.zeros((H, W, 4), np.uint8), from_origin(west, north, res, res), res)


def render_ortho(xyz: np.ndarray, rgb: np.ndarray, cfg: OrthoConfig = OrthoConfig()) -> Ortho:
    """Rasterise (N, 3) points (x, y horizontal, z up) with (N, 3) uint8 colours, highest point wins."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    ortho = _empty_ortho(xyz, cfg)
    H, W = ortho.rgba.shape[:2]
    rows, cols = ortho.pixel_of(xyz[:, :2])
    rows, cols = np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1)
    pix = rows * W + cols
    order = np.lexsort((xyz[:, 2], pix))           # by pixel, then height ascending
    last = np.r_[pix[order][1:] != pix[order][:-1], True]
    top = order[last]                              # the highest point of every covered pixel
    ortho.rgba[rows[top], cols[top], :3] = np.asarray(rgb, np.uint8)[top]
    ortho.rgba[rows[top], cols[top], 3] = 255
    return ortho


def render_mesh_ortho(vertices: np.ndarray, triangles: np.ndarray, vertex_rgb: np.ndarray,
                      cfg: OrthoConfig = OrthoConfig()) -> Ortho:
    """Top-down view of a coloured mesh: one vertical ray per pixel centre (open3d RaycastingScene),
    colour interpolated at the first hit. vertices: (V, 3) x, y horizontal, z up; triangles (T, 3)."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    ortho = _empty_ortho(v, cfg)
    H, W = ortho.rgba.shape[:2]
    cols, rows = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    T = ortho.transform
    x = T.a * cols.ravel() + T.b * rows.ravel() + T.c
    y = T.d * cols.ravel() + T.e * rows.ravel() + T.f
    # rays start above the mesh in a frame centred on it (float32 precision for projected coordinates)
    c = v.mean(0)
    top = float(v[:, 2].max() - c[2] + 1.0)
    rays = np.stack([x - c[0], y - c[1], np.full(len(x), top), np.zeros(len(x)), np.zeros(len(x)),
                     -np.ones(len(x))], 1).astype(np.float32)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor((v - c).astype(np.float32)),
                        o3d.core.Tensor(np.asarray(triangles, np.uint32)))
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    hit = np.isfinite(ans["t_hit"].numpy())
    tri = np.asarray(triangles)[ans["primitive_ids"].numpy()[hit].astype(np.int64)]
    uv = ans["primitive_uvs"].numpy()[hit].astype(np.float64)
    w = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)
    colour = np.einsum("nk,nkc->nc", w, np.asarray(vertex_rgb, np.float64)[tri])
    rgba = ortho.rgba.reshape(-1, 4)
    rgba[hit, :3] = np.clip(np.round(colour), 0, 255).astype(np.uint8)
    rgba[hit, 3] = 255
    return ortho


def write_geotiff(path: Path, ortho: Ortho, crs: CRS | None, tags: dict) -> None:
    """RGBA GeoTIFF (deflate, tiled) with ``crs`` (None: no CRS, frame described by ``tags``)."""
    H, W = ortho.rgba.shape[:2]
    profile = dict(driver="GTiff", width=W, height=H, count=4, dtype="uint8", transform=ortho.transform,
                   compress="deflate", photometric="RGB", tiled=W >= 256 and H >= 256,
                   crs=crs.to_wkt() if crs is not None else None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(ortho.rgba, 2, 0))
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
        dst.update_tags(**{k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()})
