"""`vloc localize`: a thin CLI over localize.Localizer (one JSON object per image with --json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from core.camera import Camera
from core.cli_util import user_errors
from core.imageio import read_image
from core.types import VlocError


def default_camera(manifest: dict, width: int, height: int) -> Camera:
    """The map's camera when it is unique and of the image's size; otherwise ask for --camera."""
    cams = [Camera(c["model"], c["width"], c["height"], tuple(c["params"])) for c in manifest["cameras"]]
    if len(cams) == 1:
        cam = cams[0]
        if (cam.width, cam.height) != (width, height):
            cam = cam.scaled(width / cam.width, height / cam.height)
        return cam
    raise VlocError("the map has several cameras: pass --camera 'MODEL W H PARAMS...'")


@user_errors
def localize_cmd(
    images: List[Path] = typer.Argument(..., help="query image(s)"),
    map_: Path = typer.Option(..., "--map", help="map bundle"),
    camera: Optional[str] = typer.Option(None, "--camera", help='"MODEL W H PARAMS..." (default: the map camera)'),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per image"),
    features: Optional[str] = typer.Option(None, "--features", help="the bundle's feature set: sift | aliked | "
                                           "aliked-n32 | aliked-t16 | disk (default: its first set)"),
    device: str = typer.Option("auto", "--device", help="learned features: auto | cpu | cuda"),
    matcher: str = typer.Option("lightglue", "--matcher", help="learned features: lightglue (query vs each "
                                "retrieved map image) | nn (mutual nearest neighbours 2D-3D, faster)"),
) -> None:
    """Localize camera frames in a map bundle."""
    from core.geo import Georeference
    from localize import Localizer, LocalizerConfig
    if device not in ("auto", "cpu", "cuda"):
        raise VlocError(f"--device must be auto, cpu or cuda, got {device!r}")
    if matcher not in ("lightglue", "nn"):
        raise VlocError(f"--matcher must be lightglue or nn, got {matcher!r}")
    loc = Localizer(map_, LocalizerConfig(features=features, device=device, learned_matcher=matcher))
    try:
        georef = Georeference.from_manifest(loc.map.manifest)
    except ValueError as e:
        raise VlocError(f"{map_}: {e}") from None
    cam = Camera.parse(camera) if camera else None
    n_rejected = 0
    for path in images:
        rgb = read_image(path)
        c = cam or default_camera(loc.map.manifest, rgb.shape[1], rgb.shape[0])
        res = loc.localize(rgb, c)
        n_rejected += not res.accepted
        geo = georef.locate(res.world_from_cam) if georef is not None and res.cam_from_world is not None else {}
        if as_json:
            print(json.dumps({"image": str(path), **res.to_dict(), **geo}))
        elif res.accepted:
            c_w = res.world_from_cam.translation
            where = (f"  lat {geo['latitude']:.7f} lon {geo['longitude']:.7f} alt {geo['altitude']:.2f} m "
                     f"heading {geo['heading']:.1f} deg" if geo else "")
            print(f"{path}: accepted  position [{c_w[0]:.3f} {c_w[1]:.3f} {c_w[2]:.3f}] m{where}  "
                  f"inliers {res.num_inliers}  sigma {res.position_sigma_m * 100:.1f} cm  "
                  f"{res.timings_ms['total']:.0f} ms")
        else:
            print(f"{path}: rejected  ({res.reason})")
