"""vision.matching: the int16 fast paths rank non-negative bf16 scores exactly like the values."""
from __future__ import annotations

import numpy as np
import torch

from vision.features import root_sift
from vision.matching import (
    INT8_SCALE,
    column_max,
    int8_scores,
    match_descriptors,
    match_sift_int8,
    quantize_int8,
    row_top2,
    search_candidates,
)


def _scores(n1: int, n2: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n1, 128, generator=g) ** 4  # peaky, like RootSIFT
    b = torch.rand(n2, 128, generator=g) ** 4
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return a.bfloat16() @ b.bfloat16().T


def test_column_max_equals_bf16_amax():
    for seed in range(3):
        s = _scores(300, 500, seed)
        assert torch.equal(column_max(s, non_negative=True), s.amax(dim=0))
        assert torch.equal(column_max(s, non_negative=False), s.amax(dim=0))


def test_row_top2_picks_the_two_largest_values():
    for seed in range(3):
        s = _scores(400, 350, seed)
        best, second = row_top2(s, non_negative=True)
        rows = torch.arange(len(s))
        top = s.float().topk(2, dim=1).values
        assert torch.equal(s[rows, best].float(), top[:, 0]) and torch.equal(s[rows, second].float(), top[:, 1])
        assert bool((best != second).all())


def test_int16_ranking_would_be_wrong_for_negative_scores():
    """Why the fast path needs non_negative: negative bf16 bit patterns sort the other way."""
    s = torch.tensor([[-0.5, -0.25, -1.0]], dtype=torch.bfloat16)
    assert s.view(torch.int16).argmax(dim=1).item() != 1  # int16 order: wrong for negatives
    assert row_top2(s, non_negative=False)[0].item() == 1  # the default path is right
    assert column_max(s.T.contiguous(), non_negative=False).item() == -0.25


def test_match_descriptors_finds_the_planted_matches():
    rng = np.random.default_rng(0)
    d1 = rng.integers(0, 60, (800, 128)).astype(np.uint8)
    noise = rng.integers(0, 4, (400, 128)).astype(np.uint8)
    d2 = np.concatenate([rng.integers(0, 60, (500, 128)).astype(np.uint8), d1[:400] + noise])
    m = match_descriptors(root_sift(d1), root_sift(d2), ratio=0.85, mutual=True)
    truth = {(i, 500 + i) for i in range(400)}
    assert len(m) >= 390 and {tuple(x) for x in m.tolist()} <= truth
    assert np.array_equal(m, match_descriptors(root_sift(d1), root_sift(d2), non_negative=True))


def _rootsift_like(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(n, 128, generator=g) ** 4
    return d / d.norm(dim=1, keepdim=True)


def test_int8_candidate_scores_rank_like_the_float_scores():
    a, b = _rootsift_like(300, 0), _rootsift_like(400, 1)
    s = torch._int_mm(quantize_int8(a), quantize_int8(b).T)
    exact = a @ b.T
    assert float((s.float() / INT8_SCALE ** 2 - exact).abs().max()) < 0.01
    # each row's int8 pick is the exact best, or within the quantisation error of it
    best, second = row_top2(s, non_negative=True)
    rows = torch.arange(len(a))
    assert float((exact.max(dim=1).values - exact[rows, best]).max()) < 0.005
    top = s.topk(2, dim=1).values
    assert torch.equal(s[rows, best], top[:, 0]) and torch.equal(s[rows, second], top[:, 1])
    assert torch.equal(column_max(s, non_negative=True), s.amax(dim=0))


def test_blocked_candidate_search_equals_the_whole_matrix():
    a, b = _rootsift_like(333, 2), _rootsift_like(250, 3)
    s = torch._int_mm(quantize_int8(a), quantize_int8(b).T)
    best, second = row_top2(s, non_negative=True)
    for block_bytes in (1, 7 * 4 * 250, 1 << 30):  # 16-row minimum, uneven blocks, one block
        c = search_candidates(a, b, non_negative=True, block_bytes=block_bytes)
        assert torch.equal(c.best, best) and torch.equal(c.second, second)
        assert torch.equal(c.best_score, s[torch.arange(len(a)), best])
        assert torch.equal(c.column_max, s.amax(dim=0))
    f = search_candidates(a, b, non_negative=False, block_bytes=4 * 250 * 20)  # bf16 path, blocked
    assert f.best_score.dtype == torch.bfloat16 and f.column_max.shape == (250,)
    sim16 = a.bfloat16() @ b.bfloat16().T
    assert torch.equal(f.column_max, sim16.amax(dim=0))
    assert torch.equal(f.best_score, sim16.amax(dim=1))
    assert search_candidates(a, b, True, column_max_too=False).column_max is None
    assert len(search_candidates(a[:0], b, True).best) == 0  # no query rows: nothing to pick


def test_int8_quantisation_saturates_instead_of_wrapping():
    d = torch.tensor([[1.0] + [0.0] * 127, [0.3] * 128])
    q = quantize_int8(d)
    assert q.dtype == torch.int8 and int(q[0, 0]) == 127 and int(q[1, 0]) == round(0.3 * INT8_SCALE)


def test_int8_and_bf16_paths_find_the_same_planted_matches():
    rng = np.random.default_rng(1)
    d1 = rng.integers(0, 60, (600, 128)).astype(np.uint8)
    d2 = np.concatenate([rng.integers(0, 60, (300, 128)).astype(np.uint8),
                         d1[:300] + rng.integers(0, 4, (300, 128)).astype(np.uint8)])
    int8 = match_descriptors(root_sift(d1), root_sift(d2), non_negative=True)      # int8 GEMM on the CPU
    float_path = match_descriptors(root_sift(d1) - 0.0, root_sift(d2), non_negative=False)  # bf16
    assert {tuple(x) for x in int8.tolist()} == {tuple(x) for x in float_path.tolist()}


def test_int8_scores_fallback_is_exact(monkeypatch):
    a, b = quantize_int8(_rootsift_like(50, 4)), quantize_int8(_rootsift_like(60, 5))
    fast = int8_scores(a, b)
    monkeypatch.delattr(torch, "_int_mm")
    assert torch.equal(int8_scores(a, b), fast) and torch.equal(fast, a.int() @ b.int().T)


def test_prepared_int8_matching_equals_matching_the_rootsift():
    rng = np.random.default_rng(2)
    d1 = rng.integers(0, 60, (700, 128)).astype(np.uint8)
    d2 = np.concatenate([rng.integers(0, 60, (350, 128)).astype(np.uint8),
                         d1[:350] + rng.integers(0, 5, (350, 128)).astype(np.uint8)])
    q1, q2 = (quantize_int8(torch.from_numpy(root_sift(d))) for d in (d1, d2))
    for mutual in (True, False):
        want = match_descriptors(root_sift(d1), root_sift(d2), 0.85, mutual, non_negative=True)
        assert len(want) > 300
        assert np.array_equal(match_sift_int8(q1, q2, d1, d2, 0.85, mutual), want)
    assert len(match_sift_int8(q1[:1], q2, d1[:1], d2)) == 0
