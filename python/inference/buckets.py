"""Output size buckets: a small fixed set of sizes that every job snaps to.

A compiled UNet keeps one graph per input shape; with buckets, every job runs
at one of a few shapes, so the graphs compiled during warm-up are the only
ones ever needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# MULTIPLE is the granularity of a bucket side: 64 pixels are 8 latent pixels,
# which survive the UNet's three halvings without rounding.
MULTIPLE = 64

# STANDARD_RATIOS are short side / long side of the `standard` set: square,
# 4:3, 3:2 and 16:9, each in landscape and portrait.
STANDARD_RATIOS = (1.0, 3 / 4, 2 / 3, 9 / 16)

Size = tuple[int, int]


class BucketError(ValueError):
    """A bucket list that cannot be used; the message says what is allowed."""


def standard(long_side: int) -> tuple[Size, ...]:
    """Returns the standard set at long_side: every ratio in STANDARD_RATIOS,
    landscape and portrait, short sides rounded to MULTIPLE."""
    if long_side % MULTIPLE:
        raise BucketError(f"standard buckets need a long side that is a multiple of {MULTIPLE}")
    sizes: list[Size] = []
    for ratio in STANDARD_RATIOS:
        short = max(MULTIPLE, round(long_side * ratio / MULTIPLE) * MULTIPLE)
        for size in ((long_side, short), (short, long_side)):
            if size not in sizes:
                sizes.append(size)
    return tuple(sizes)


def parse(text: str, default_long_side: int) -> tuple[Size, ...]:
    """Parses a bucket setting: empty (no buckets), `standard`, or a comma-separated
    list of WIDTHxHEIGHT sizes whose sides are multiples of MULTIPLE."""
    text = text.strip().lower()
    if not text:
        return ()
    if text == "standard":
        return standard(default_long_side)
    sizes: list[Size] = []
    for item in text.split(","):
        parts = item.strip().split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise BucketError(f"want WIDTHxHEIGHT, got {item.strip()!r}")
        size = (int(parts[0]), int(parts[1]))
        if min(size) < MULTIPLE or any(side % MULTIPLE for side in size):
            raise BucketError(f"{item.strip()}: both sides must be multiples of {MULTIPLE}")
        if size not in sizes:
            sizes.append(size)
    return tuple(sizes)


def snap(size: Size, buckets: Sequence[Size]) -> Size:
    """Returns the bucket for an output size: among the buckets whose long side
    is nearest to size's, the one nearest in aspect ratio (compared as logarithms,
    so 4:3 and 3:4 are equally far from 1:1). Without buckets, size itself."""
    if not buckets:
        return size
    width, height = size
    long_side = max(width, height)
    aspect = math.log(width / height)

    def distance(bucket: Size) -> tuple[int, float]:
        return abs(max(bucket) - long_side), abs(math.log(bucket[0] / bucket[1]) - aspect)

    return min(buckets, key=distance)
