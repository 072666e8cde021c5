"""The feature sets a bundle carries: one per local-feature type, each a sparse model of its own.

A bundle's first feature set lives at its root (``model/``, ``features.h5``, ``retrieval.npz``),
as every bundle before multi-feature support had it. ``vloc map add-features`` adds more under
``features/<name>/`` (the same three entries, triangulated with the map's own poses). The
manifest lists them::

    "feature_sets": {
      "sift":       {"path": ".", "type": "sift-opencv", "descriptor": "sift-uint8", "dim": 128, ...},
      "aliked-n16": {"path": "features/aliked-n16", "type": "aliked-n16", "descriptor": "float32",
                     "dim": 128, "matcher": "lightglue-aliked", ...}
    }

A bundle without that key (every bundle written before it) has one set, described by its
``features`` entry, at the root. Names: ``sift``, ``aliked-n16``, ``aliked-n32``, ``aliked-t16``,
``disk``; ``aliked`` means ``aliked-n16``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.types import VlocError

#: feature set names a user may ask for, and what a short name means.
ALIASES = {"aliked": "aliked-n16", "sift-opencv": "sift"}
KNOWN = ("sift", "aliked-n16", "aliked-n32", "aliked-t16", "disk")


def canonical_name(name: str) -> str:
    """``aliked`` -> ``aliked-n16``; ``sift-opencv`` -> ``sift``; known names unchanged; anything
    else is a VlocError naming the known ones."""
    n = ALIASES.get(name.strip().lower(), name.strip().lower())
    if n not in KNOWN:
        raise VlocError(f"unknown feature type {name!r}; known: {', '.join(KNOWN)} (aliked = aliked-n16)")
    return n


@dataclass(frozen=True)
class FeatureSet:
    """One feature set of a bundle.

    path: its folder relative to the bundle ("." for the root set); type: the backend name that
    extracted it; descriptor: "sift-uint8" or "float32" (unit L2 norm); matcher: the pair matcher
    its model was built with ("lightglue-aliked", "lightglue-disk", or "nn" for nearest neighbours).
    """

    name: str
    path: str
    type: str
    descriptor: str
    dim: int
    matcher: str = "nn"
    config: dict = field(default_factory=dict)

    def dir(self, bundle: Path) -> Path:
        return Path(bundle) / self.path

    @property
    def learned(self) -> bool:
        return self.name != "sift"

    def to_json(self) -> dict:
        return {"path": self.path, "type": self.type, "descriptor": self.descriptor, "dim": self.dim,
                "matcher": self.matcher, "config": self.config}


def feature_sets(manifest: dict) -> dict[str, FeatureSet]:
    """Name -> FeatureSet of a manifest; the root set first."""
    sets = manifest.get("feature_sets")
    if not sets:  # every bundle before multi-feature support: one set at the root
        f = manifest.get("features") or {}
        t = str(f.get("type", "sift-opencv"))
        name = ALIASES.get(t, t)
        return {name: FeatureSet(name, ".", t, str(f.get("descriptor", "sift-uint8")), int(f.get("dim", 128)),
                                 "nn", dict(f.get("config", {})))}
    out = {}
    for name, s in sorted(sets.items(), key=lambda kv: kv[1].get("path") != "."):
        out[name] = FeatureSet(name, str(s["path"]), str(s["type"]), str(s["descriptor"]), int(s["dim"]),
                               str(s.get("matcher", "nn")), dict(s.get("config", {})))
    return out


def resolve_feature_set(manifest: dict, requested: str | None, bundle: str | Path = "the bundle") -> FeatureSet:
    """The set a query asked for (None: the root set). A set the bundle lacks is a VlocError that
    names the ones it has."""
    sets = feature_sets(manifest)
    if requested is None:
        return next(iter(sets.values()))
    name = canonical_name(requested)
    if name in sets:
        return sets[name]
    raise VlocError(f"{bundle} has no {name!r} features; it has: {', '.join(sets)}"
                    + (f" (add them with `vloc map add-features {bundle} --features {requested}`)"
                       if isinstance(bundle, Path) else ""))


def root_is_legacy(sets: dict[str, FeatureSet]) -> bool:
    """Whether a reader that predates feature sets can use this bundle: its root set is SIFT."""
    root = [s for s in sets.values() if s.path == "."]
    return bool(root) and root[0].name == "sift"
