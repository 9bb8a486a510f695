"""Native resolution: overlap tiling covers any size, blends without seams, keeps geometry."""
from __future__ import annotations

import numpy as np
import pytest

from lowlight.runtime.tiling import apply_tiled, merge, plan_tiles, split


@pytest.mark.parametrize("h,w", [(64, 64), (100, 150), (37, 201), (201, 37), (20, 30), (1, 1), (931, 160)])
def test_identity_model_reproduces_any_frame(h: int, w: int) -> None:
    x = np.random.default_rng(h * w).random((h, w, 3)).astype(np.float32)
    y = apply_tiled(lambda t: t, x, 64, 64)
    assert y.shape == x.shape and np.abs(y - x).max() < 1e-5


def test_weights_are_a_partition_of_unity_and_overlap_holds() -> None:
    plan = plan_tiles(300, 500, 64, 96, overlap=16)
    total = merge([np.ones((64, 96, 1), np.float32)] * plan.count, plan)
    assert np.allclose(total, 1.0, atol=1e-5)
    for starts, tile in ((plan.ys, 64), (plan.xs, 96)):
        assert starts[0] == 0 and all(b - a <= tile - 16 for a, b in zip(starts, starts[1:]))
    assert starts[-1] + tile == 500


def test_blend_hides_a_per_tile_offset() -> None:
    """Tiles that disagree by a constant blend smoothly: no step larger than the ramp's slope."""
    x = np.zeros((128, 256, 3), np.float32)
    plan = plan_tiles(128, 256, 64, 64, overlap=32)
    tiles = [t + (i % 2) * 0.1 for i, t in enumerate(split(x, plan))]
    y = merge(tiles, plan)
    assert np.abs(np.diff(y, axis=1)).max() <= 0.1 / 32 + 1e-6
