"""Upscaling a rendered image: resampling, then refinement in overlapping tiles.

This module holds what does not need torch: the tile layout, the blending
weights, the per-tile seed and the loop that refines and blends. The model
backend supplies the refinement of one tile; the test engine supplies none
and only resamples.

The tiles cover the image in a grid; neighbours overlap by at least the
overlap setting. Each tile's weight ramps linearly from near 0 at an edge it
shares with the image's interior up to 1 over `overlap` pixels (edges on the
image's border keep full weight), and the output is the weighted mean of
every tile covering a pixel. So a tile's contribution fades in where it
starts, and two tiles that disagree meet in a gradient, never at a line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from . import imageio

# GRID is the tile step: positions and sizes stay multiples of 8, the VAE's factor.
GRID = 8


@dataclasses.dataclass(frozen=True)
class Tile:
    """Tile is one box of the layout: its index (row-major) and pixel box."""

    index: int
    left: int
    top: int
    width: int
    height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.left + self.width, self.top + self.height


def target_size(rendered: tuple[int, int], long_side: int) -> tuple[int, int]:
    """The upscaled size of a rendered image: long side exactly long_side, aspect kept."""
    return imageio.target_size(rendered[0], rendered[1], long_side)


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Returns the tile starts along one axis of length pixels.

    Tiles are tile pixels long (or the whole axis when shorter), spread evenly
    so that neighbours overlap by at least overlap pixels; all multiples of GRID.
    """
    if length % GRID or tile % GRID:
        raise ValueError("length and tile must be multiples of 8")
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be in [0, tile)")
    # In units of GRID; the count is the fewest tiles whose steps leave the overlap.
    n_len, n_tile, n_over = length // GRID, tile // GRID, math.ceil(overlap / GRID)
    count = math.ceil((n_len - n_over) / (n_tile - n_over))
    span = n_len - n_tile
    return [round(i * span / (count - 1)) * GRID for i in range(count)]


def layout(size: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Returns the tiles of an image of size (width, height), row by row."""
    width, height = size
    xs, ys = starts(width, tile, overlap), starts(height, tile, overlap)
    tw, th = min(tile, width), min(tile, height)
    out: list[Tile] = []
    for y in ys:
        for x in xs:
            out.append(Tile(len(out), x, y, tw, th))
    return out


def _ramp(start: int, extent: int, full: int, overlap: int) -> np.ndarray:
    """One axis of a tile's weight: linear over overlap pixels from each
    inner edge (a tile edge that is not the image's), 1 elsewhere."""
    w = np.ones(extent, dtype=np.float64)
    if overlap <= 0:
        return w
    r = min(overlap, extent)
    up = (np.arange(r, dtype=np.float64) + 0.5) / r
    if start > 0:
        w[:r] = np.minimum(w[:r], up)
    if start + extent < full:
        w[extent - r :] = np.minimum(w[extent - r :], up[::-1])
    return w


def weights(t: Tile, size: tuple[int, int], overlap: int) -> np.ndarray:
    """Returns the tile's blending weights, shape (height, width), all > 0."""
    wx = _ramp(t.left, t.width, size[0], overlap)
    wy = _ramp(t.top, t.height, size[1], overlap)
    return np.outer(wy, wx)


def tile_seed(seed: int, index: int) -> int:
    """A tile's generator seed: fixed by the job's seed and the tile's index,
    and unrelated between neighbours (so no pattern repeats across tiles)."""
    digest = hashlib.blake2b(f"upscale:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# Refine takes a tile's pixels and its index and returns refined pixels of the same size.
Refine = Callable[[Image.Image, Tile], Image.Image]


def refine_tiled(
    image: Image.Image,
    tile: int,
    overlap: int,
    refine: Refine,
    check: Callable[[], None] = lambda: None,
) -> Image.Image:
    """Refines image tile by tile and blends the tiles with their weights.

    check runs before each tile, so a cancelled job stops between tiles.
    """
    size = image.size
    acc = np.zeros((size[1], size[0], 3), dtype=np.float64)
    total = np.zeros((size[1], size[0], 1), dtype=np.float64)
    for t in layout(size, tile, overlap):
        check()
        out = refine(image.crop(t.box), t)
        if out.size != (t.width, t.height):
            raise ValueError(f"refined tile {t.index} is {out.size}, want {t.width}x{t.height}")
        w = weights(t, size, overlap)[..., None]
        rows, cols = slice(t.top, t.top + t.height), slice(t.left, t.left + t.width)
        acc[rows, cols] += np.asarray(out.convert("RGB"), dtype=np.float64) * w
        total[rows, cols] += w
    return Image.fromarray(np.clip(np.rint(acc / total), 0, 255).astype(np.uint8), "RGB")


def keep_unmasked(
    source: Image.Image, upscaled: Image.Image, mask: Image.Image, feather: int
) -> Image.Image:
    """For inpainting: pastes the upscaled image over the source resampled to
    its size where the mask (resampled too) asks for a repaint, with the
    feather scaled by the upscale factor, so outside the grown mask the result
    is the resampled source exactly."""
    size = upscaled.size
    scale = size[0] / source.size[0]
    return imageio.composite(
        imageio.resize(source, size),
        upscaled,
        imageio.resize_mask(mask, size),
        min(64, round(feather * scale)),
    )
