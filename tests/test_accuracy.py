"""core.accuracy.aligned_centre_errors: centre errors after one similarity onto the truth."""
from __future__ import annotations

import cv2
import numpy as np

from core.accuracy import aligned_centre_errors


def test_a_scaled_rotated_shifted_copy_has_zero_error_and_a_moved_camera_shows():
    rng = np.random.default_rng(0)
    truth = {f"im{i:02d}": rng.normal(size=3) for i in range(12)}
    R = cv2.Rodrigues(np.array([0.1, -0.4, 0.3]))[0]
    est = {n: 2.5 * R @ c + np.array([1.0, -2.0, 0.5]) for n, c in truth.items()}
    est["extra"] = np.zeros(3)  # a name the truth lacks is left out
    err = aligned_centre_errors(est, truth)
    assert err.shape == (12,) and err.max() < 1e-9
    est["im03"] = est["im03"] + 2.5 * np.array([0.0, 0.0, 0.5])  # 0.5 m in the truth's scale
    err = aligned_centre_errors(est, truth)
    assert np.argmax(err) == 3 and 0.3 < err[3] < 0.5 and np.median(err) < 0.1
