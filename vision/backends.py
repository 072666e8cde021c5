"""Feature backends by name: OpenCV SIFT (:mod:`vision.features`) or a learned network
(:mod:`vision.learned`, imported on first use: torch, kornia and the weights load only then)."""
from __future__ import annotations

from vision.features import FeatureBackend, SiftBackend, SiftConfig

#: learned feature types (vision.learned) and their backend configs' model names.
LEARNED_TYPES = ("aliked-n16", "aliked-n32", "aliked-t16", "disk")


def learned_kwargs(name: str, max_keypoints: int, max_image_side: int, device: str, fp16: bool,
                   keypoint_selection: str = "top_k", batch_size: int = 8, min_image_side: int = 0) -> dict:
    """Backend kwargs of a learned type from vloc's settings. ``keypoint_selection``: "top_k" (the
    ``max_keypoints`` best maxima; ALIKED's score threshold off) or "threshold" (the network's own)."""
    if keypoint_selection not in ("top_k", "threshold"):
        raise ValueError(f"keypoint_selection must be top_k or threshold, got {keypoint_selection!r}")
    kw = dict(max_keypoints=max_keypoints, max_image_side=max_image_side, device=device, fp16=fp16,
              batch_size=batch_size, min_image_side=min_image_side)
    if keypoint_selection == "top_k" and name.startswith("aliked"):
        kw["detection_threshold"] = 0.0  # ALIKED: <= 0 keeps exactly the top max_keypoints
    return kw


def make_backend(name: str = "sift", **kwargs) -> FeatureBackend:
    """Backend by name: "sift" (OpenCV; kwargs of :class:`SiftConfig`), or a learned type
    ("aliked" = "aliked-n16", "aliked-n32", "aliked-t16", "disk"; kwargs of the learned configs:
    max_keypoints, max_image_side, device, fp16, batch_size, ...). Learned backends load torch,
    kornia and their weights on first use only."""
    if name in ("sift", "sift-opencv"):
        return SiftBackend(SiftConfig(**kwargs))
    name = "aliked-n16" if name == "aliked" else name
    if name in LEARNED_TYPES:
        from vision.learned import AlikedBackend, AlikedConfig, DiskBackend, DiskConfig
        if name == "disk":
            return DiskBackend(DiskConfig(**kwargs))
        return AlikedBackend(AlikedConfig(model=name, **kwargs))
    raise ValueError(f"unknown feature backend {name!r}; available: sift, {', '.join(LEARNED_TYPES)}")
