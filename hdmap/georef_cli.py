"""`vloc map georef`: the command; the work is in :mod:`hdmap.georef_bundle` (pyproj, pycolmap and
scipy load when the command runs, not with the CLI)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from core.cli_util import user_errors
from core.types import VlocError
from hdmap.gravity import Gravity


@user_errors
def georef(
    bundle: Path = typer.Argument(..., help="map bundle directory"),
    from_exif: bool = typer.Option(False, "--from-exif", help="camera positions from the images' EXIF GPS"),
    gnss: Optional[Path] = typer.Option(None, "--gnss", help="GNSS CSV: name,latitude,longitude,altitude"
                                                             "[,sigma_h,sigma_v]"),
    gcp: Optional[Path] = typer.Option(None, "--gcp", help="GCP CSV: x,y,z,lat,lon,alt or image,u,v,lat,lon,alt rows"),
    origin: Optional[str] = typer.Option(None, "--origin", help="ENU origin LAT,LON,ALT (default: centroid)"),
    crs: Optional[str] = typer.Option(None, "--crs", help="projected CRS for map products, e.g. EPSG:32633 "
                                                         "(default: the UTM zone of the origin)"),
    images: Optional[Path] = typer.Option(None, "--images", help="image folder for --from-exif "
                                                                 "(default: the one the map was built from)"),
    max_error: Optional[float] = typer.Option(None, "--max-error", help="horizontal inlier threshold, metres "
                                                                        "(default 10 for GPS, 1 for GCPs)"),
    gravity: Gravity = typer.Option(Gravity.auto, "--gravity", help="map up from upright cameras: auto (when "
                                                                    "they are upright), images (required), none"),
    fix_scale: bool = typer.Option(False, "--fix-scale", help="keep scale 1 (metric, posed maps)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="fit and report, do not change the bundle"),
    as_json: bool = typer.Option(False, "--json", help="print the georeference entry as JSON"),
) -> None:
    """Georeference a map bundle: robust similarity map -> local ENU, stored in the manifest."""
    sources = [s for s, on in (("exif", from_exif), ("gnss", gnss is not None), ("gcp", gcp is not None)) if on]
    if len(sources) != 1:
        raise VlocError("give exactly one of --from-exif, --gnss FILE, --gcp FILE"
                        + (f" (got {', '.join('--' + s.replace('exif', 'from-exif') for s in sources)})"
                           if sources else ""))
    from hdmap.georef_bundle import georeference_bundle
    entry, est, notes = georeference_bundle(bundle, sources[0], gnss or gcp, images, origin, crs, max_error,
                                            gravity, fix_scale, write=not dry_run)
    if as_json:
        print(json.dumps({"bundle": str(bundle), "written": not dry_run, "notes": notes, "georeference": entry}))
        return
    console = Console()
    t = Table(title=f"georeference residuals ({entry['source']['kind']}), metres: fitted - given")
    for c in ("point", "inlier", "horizontal", "vertical"):
        t.add_column(c, justify="left" if c == "point" else "right")
    order = np.argsort(-est.residuals_m)
    shown = order[:30] if len(order) > 30 else np.arange(len(order))
    for k in shown:
        p = entry["points"][k]
        t.add_row(p["name"], "yes" if p["inlier"] else "[red]no[/red]",
                  f"{est.horizontal_m[k]:.2f}", f"{est.vertical_m[k]:+.2f}")
    if len(order) > len(shown):
        t.caption = f"the {len(shown)} largest of {len(order)} residuals"
    console.print(t)
    s, o = entry["residuals"], entry["origin"]
    for n in notes:
        console.print(f"note: {n}")
    console.print(
        f"{s['n_inliers']}/{s['n']} inliers; horizontal median {s['horizontal_m']['median']:.2f} m "
        f"max {s['horizontal_m']['max']:.2f} m; vertical median {s['vertical_m']['median']:.2f} m "
        f"max {s['vertical_m']['max']:.2f} m\n"
        f"origin {o['latitude']:.7f}, {o['longitude']:.7f}, {o['altitude']:.2f} m; scale {s['scale']:.6g} "
        f"(+-{100 * s['scale_rel_sigma']:.2f} %); yaw {s['yaw_deg']:.2f} deg; "
        f"CRS {entry['crs']} ({entry['crs_name']})\n"
        + ("[yellow]dry run: bundle unchanged[/yellow]" if dry_run else f"[green]written[/green] {bundle}"))
