"""Run a fixed-size model over a frame of any size: overlapping tiles, blended, output at the input's size.

A bundle is compiled for one H x W. A camera frame of another size is never
cropped or squashed: it is covered by tiles of the compiled size that overlap
by `overlap` pixels (a frame smaller than a tile is reflect-padded up to it);
each tile is enhanced, and the results are blended with weights that ramp
linearly across every overlap (a feathered, partition-of-unity blend), then
cut back to the frame. A tile's border pixels see reflected or missing context,
so they are the ones the ramp weights least.

With `overlap` at least the model's receptive field (AMNet base: ~38 px at full
resolution; tiny ~30 px) the tiles agree in the overlap and the seams vanish;
the default of 1/4 of the tile (64 px for 256-px tiles) covers both configs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowlight.core.errors import InputError

#: Default overlap as a fraction of the tile side (see the module docstring).
OVERLAP_FRACTION = 0.25


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis covering 0..n with at least `overlap` shared pixels; the last tile ends at n."""
    if n <= tile:
        return [0]
    step = max(1, tile - overlap)
    count = int(np.ceil((n - tile) / step)) + 1
    # Spread evenly so every overlap is >= `overlap` (none is a sliver at the end).
    return [int(round(i * (n - tile) / (count - 1))) for i in range(count)]


def _ramp(length: int, lo_overlap: int, hi_overlap: int) -> np.ndarray:
    """1-D weights: rising over the first `lo_overlap` pixels, falling over the last `hi_overlap`."""
    w = np.ones(length, np.float32)
    if lo_overlap > 0:
        w[:lo_overlap] = (np.arange(lo_overlap, dtype=np.float32) + 0.5) / lo_overlap
    if hi_overlap > 0:
        w[length - hi_overlap:] = np.minimum(w[length - hi_overlap:], (np.arange(hi_overlap, 0, -1, dtype=np.float32) - 0.5) / hi_overlap)
    return w


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of an H x W frame lie (in the padded frame) and how they are weighted."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def padded(self) -> tuple[int, int]:
        return max(self.height, self.tile_h), max(self.width, self.tile_w)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def boxes(self) -> list[tuple[int, int]]:
        """(y, x) of each tile's top-left corner, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    def weights(self) -> list[np.ndarray]:
        """Per tile, an h x w x 1 blend weight; they sum to 1 at every pixel of the padded frame."""
        def axis(starts: tuple[int, ...], tile: int) -> list[np.ndarray]:
            out = []
            for i, s in enumerate(starts):
                lo = (starts[i - 1] + tile - s) if i > 0 else 0
                hi = (s + tile - starts[i + 1]) if i + 1 < len(starts) else 0
                out.append(_ramp(tile, lo, hi))
            return out

        wy, wx = axis(self.ys, self.tile_h), axis(self.xs, self.tile_w)
        raw = [np.outer(a, b)[..., None] for a in wy for b in wx]
        total = np.zeros((*self.padded, 1), np.float32)
        for (y, x), w in zip(self.boxes, raw):
            total[y : y + self.tile_h, x : x + self.tile_w] += w
        return [w / total[y : y + self.tile_h, x : x + self.tile_w] for (y, x), w in zip(self.boxes, raw)]


def plan_tiles(height: int, width: int, tile_h: int, tile_w: int, overlap: int | None = None) -> TilePlan:
    """Tiles of `tile_h` x `tile_w` covering an H x W frame, overlapping by at least `overlap` pixels."""
    if height < 1 or width < 1:
        raise InputError(f"cannot tile a {height}x{width} frame", "pass a frame with at least one pixel")
    if overlap is None:
        overlap = int(OVERLAP_FRACTION * min(tile_h, tile_w))
    if not 0 <= overlap < min(tile_h, tile_w):
        raise InputError(f"tile overlap {overlap} must be in 0..{min(tile_h, tile_w) - 1}", "use a smaller overlap (default: a quarter of the tile)")
    return TilePlan(height, width, tile_h, tile_w, overlap,
                    tuple(_starts(height, tile_h, overlap)), tuple(_starts(width, tile_w, overlap)))


def pad_to(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """`frame` (H x W x C) reflect-padded at the bottom/right up to at least h x w (edge-padded when too small to reflect)."""
    H, W = frame.shape[:2]
    ph, pw = max(0, h - H), max(0, w - W)
    if not ph and not pw:
        return frame
    mode = "reflect" if ph < H and pw < W else "edge"
    return np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode=mode)


def split(frame: np.ndarray, plan: TilePlan) -> list[np.ndarray]:
    """The tiles of an H x W x C frame, each tile_h x tile_w x C (padded where the frame is smaller)."""
    padded = pad_to(frame, *plan.padded)
    return [padded[y : y + plan.tile_h, x : x + plan.tile_w] for y, x in plan.boxes]


def merge(tiles: list[np.ndarray], plan: TilePlan, weights: list[np.ndarray] | None = None) -> np.ndarray:
    """Blend enhanced tiles back into an H x W x C frame."""
    weights = plan.weights() if weights is None else weights
    c = tiles[0].shape[-1]
    out = np.zeros((*plan.padded, c), np.float32)
    for (y, x), t, w in zip(plan.boxes, tiles, weights):
        out[y : y + plan.tile_h, x : x + plan.tile_w] += t * w
    return out[: plan.height, : plan.width]


def apply_tiled(fn, frame: np.ndarray, tile_h: int, tile_w: int, overlap: int | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    """`fn(tile) -> tile` over an H x W x C frame of any size; the result has the frame's size."""
    plan = plan_tiles(frame.shape[0], frame.shape[1], tile_h, tile_w, overlap)
    return merge([fn(t) for t in split(frame, plan)], plan)
