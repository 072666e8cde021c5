"""`vloc map add-features BUNDLE --features TYPE`: a second feature set for an existing map.

The new set is triangulated with the map's own poses (the root set's ``model/``: no new SfM, so
both sets share one world frame), from the source images the bundle recorded (their checksums
must still match), and written under ``features/<type>/`` as a new revision of the bundle in one
atomic rename.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pycolmap

import bundleio as bundle_io
from core.camera import Camera
from core.geometry import Rigid3
from core.progress import QUIET, Reporter
from core.types import ImageRecord, VlocError
from mapping.build import feature_set_entry, reconstruct_set, write_set
from mapping.config import BuildConfig


def map_records(bundle: Path, manifest: dict) -> list[ImageRecord]:
    """The registered images of the bundle's root set, with their cameras and ``cam_from_world``, in
    the order of its features.h5 (the map's image order)."""
    rec = pycolmap.Reconstruction(str(Path(bundle) / "model"))
    names = bundle_io.read_features_h5(Path(bundle) / "features.h5", descriptors=False).image_names
    out = []
    for name in names:
        im = rec.find_image_with_name(name)
        if im is None:
            raise VlocError(f"{bundle}: image {name} of features.h5 is not in the model")
        out.append(ImageRecord(name, Camera.from_pycolmap(rec.cameras[im.camera_id]),
                               Rigid3.from_pycolmap(im.cam_from_world())))
    return out


def check_sources(root: Path, records: list[ImageRecord], manifest: dict) -> dict[str, str]:
    """sha256 of each map image under ``root``; the images must be the ones the map was built from."""
    recorded = manifest.get("sources", {}).get("images", {})
    sha = {}
    for r in records:
        p = Path(root) / r.name
        if not p.is_file():
            raise VlocError(f"map image {r.name} is not under {root} (pass --images DIR: the folder the map "
                            "was built from)")
        sha[r.name] = bundle_io.sha256_file(p)
        if r.name in recorded and recorded[r.name] != sha[r.name]:
            raise VlocError(f"{p} differs from the image the map was built from (sha256 {sha[r.name][:12]} "
                            f"!= {recorded[r.name][:12]})")
    return sha


def add_features(bundle: Path, feature_type: str, cfg: BuildConfig = BuildConfig(),
                 images_root: Path | None = None, reporter: Reporter = QUIET) -> dict:
    """Add a ``feature_type`` set to ``bundle`` (see module docstring); returns the new manifest."""
    bundle = Path(bundle)
    manifest = bundle_io.read_manifest(bundle)
    name = bundle_io.canonical_name(feature_type)
    sets = bundle_io.feature_sets(manifest)
    if name in sets:
        raise VlocError(f"{bundle} already has {name} features (sets: {', '.join(sets)})")
    root = Path(images_root) if images_root is not None else Path(manifest.get("sources", {}).get("images_root", ""))
    if not str(root) or not root.is_dir():
        raise VlocError(f"the map's source images are not at {str(root) or '(unrecorded)'}: pass --images DIR")
    records = map_records(bundle, manifest)
    sha = check_sources(root, records, manifest)
    cfg = replace(cfg, feature_type=name)
    s = reconstruct_set(root, records, cfg, reporter, None, sha)
    path = f"features/{name}"
    with bundle_io.update_bundle(bundle, f"add-features {name}") as (tmp, m):
        write_set(tmp / path, s, with_keypoints=cfg.learned_features)
        m["feature_sets"] = {**{n: fs.to_json() for n, fs in sets.items()},
                             **m.get("feature_sets", {}), name: feature_set_entry(cfg, path, s)}
    return bundle_io.read_manifest(bundle)
