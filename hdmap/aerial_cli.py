"""`vloc map fuse-aerial`: refine a bundle's GPS georeference against an orthophoto (and a DSM)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import typer

from bundleio import read_manifest, sha256_file, update_bundle
from core.cli_util import user_errors
from core.types import VlocError

if TYPE_CHECKING:  # rasterio and the fusion load when the command runs, not with the CLI
    from hdmap.aerial import AerialConfig, AerialFusion


def _jsonable(x):
    """numpy scalars / arrays inside dicts and lists -> plain Python (manifests are strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


_CARRIED = ("crs", "crs_name", "origin_in_crs", "vertical_reference")


def georeference_entry(result: AerialFusion, previous: dict, ortho: Path, dsm: Path | None) -> dict:
    """The manifest's new ``georeference``: origin / enu_from_map of the refined georeference,
    ``source: aerial``, the registration evidence under ``aerial``, the replaced entry under ``prior``;
    the previous entry's CRS and vertical reference carry over (the origin does not move)."""
    r = result.report
    aerial = {"residual_px": r["residual_px"], "residual_m": r["residual_m"], "n_inliers": r["n_inliers"],
              "n_matches": r["n_matches"], "spread_m": r["spread_m"], "gsd_m": r["gsd_m"], "crs": r["crs"],
              "correction": r["correction"],
              "ortho": {"path": str(Path(ortho).absolute()), "sha256": sha256_file(Path(ortho))}}
    if dsm is not None:
        aerial["dsm"] = {"path": str(Path(dsm).absolute()), "sha256": sha256_file(Path(dsm)), **r.get("dsm", {})}
    prior = {k: v for k, v in previous.items() if k != "prior"}
    kept = {k: previous[k] for k in _CARRIED if k in previous}
    return _jsonable(result.georef.to_manifest(source="aerial", **kept, aerial=aerial, prior=prior))


class RefusedRegistration(VlocError):
    """The registration was not well supported; the bundle is unchanged (``result`` says why)."""

    def __init__(self, result: AerialFusion) -> None:
        super().__init__(f"aerial registration refused, bundle unchanged: {result.reason}")
        self.result = result


def fuse_and_store(bundle: Path, ortho: Path, dsm: Path | None, cfg: AerialConfig) -> tuple[AerialFusion, dict]:
    """Register and, when applied, write the refined georeference into the bundle (atomically).
    Returns (result, the new manifest entry); RefusedRegistration when refused."""
    from hdmap.aerial import fuse_bundle
    before = read_manifest(bundle).get("georeference")
    result = fuse_bundle(bundle, ortho, dsm, cfg)
    if not result.applied:
        raise RefusedRegistration(result)
    with update_bundle(bundle, "fuse-aerial") as (_, manifest):
        previous = manifest.get("georeference")
        if previous != before:
            raise VlocError(f"{bundle}: its georeference changed while fusing; run fuse-aerial again")
        manifest["georeference"] = entry = georeference_entry(result, previous, ortho, dsm)
    return result, entry


@user_errors
def fuse_aerial_cmd(
    bundle: Path = typer.Argument(..., help="georeferenced bundle directory (changed in place, atomically)"),
    ortho: Path = typer.Option(..., "--ortho", help="orthophoto GeoTIFF (any CRS; RGB, alpha / nodata respected)"),
    dsm: Optional[Path] = typer.Option(None, "--dsm", help="DSM GeoTIFF: heights (ellipsoidal, as the georeference)"),
    max_shift: float = typer.Option(10.0, "--max-shift", min=0.5,
                                    help="largest plausible error (m) of the current georeference: search radius"),
    keep_scale: bool = typer.Option(False, "--keep-scale", help="do not refine the scale (metric maps)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Register the map to an orthophoto and refine its georeference (east, north, yaw, scale; heights
    from the DSM). Refuses, leaving the bundle untouched, when the registration is not well supported."""
    from hdmap.aerial import AerialConfig
    cfg = AerialConfig(max_shift_m=max_shift, refine_scale=not keep_scale)
    try:
        result, entry = fuse_and_store(bundle, ortho, dsm, cfg)
    except RefusedRegistration as e:
        if as_json:
            print(json.dumps(_jsonable({"bundle": str(bundle), "applied": False, "reason": e.result.reason,
                                        "report": e.result.report})))
        raise
    r, c = result.report, result.report["correction"]
    if as_json:
        print(json.dumps({"bundle": str(bundle), "applied": True, "georeference": entry,
                          "report": _jsonable(r)}))
        return
    print(f"georeference refined from {Path(ortho).name}: {r['n_inliers']}/{r['n_matches']} patches agree, "
          f"residual {r['residual_px']:.2f} px = {r['residual_m']:.3f} m; correction "
          f"{c['east_m']:+.2f} m east, {c['north_m']:+.2f} m north, {c['up_m']:+.2f} m up, "
          f"yaw {c['yaw_deg']:+.3f} deg, scale x{c['scale']:.4f}"
          + (f"; DSM: {r['dsm']['n_inliers']} points, residual {r['dsm']['residual_m']:.3f} m" if "dsm" in r else ""))
