"""core.threads: kernel thread counts inside a block, and back afterwards."""
from __future__ import annotations

import cv2
import torch

from core.threads import kernel_threads


def test_kernel_threads_sets_and_restores_both_pools():
    cv_before, torch_before = cv2.getNumThreads(), torch.get_num_threads()
    with kernel_threads(1):
        assert cv2.getNumThreads() == 1 and torch.get_num_threads() == 1
    assert (cv2.getNumThreads(), torch.get_num_threads()) == (cv_before, torch_before)
    try:
        with kernel_threads(1):
            raise RuntimeError("a failing stage")
    except RuntimeError:
        pass
    assert (cv2.getNumThreads(), torch.get_num_threads()) == (cv_before, torch_before)
