"""Automatic metrics that compare a staged room with the empty-room photo it came from.

`compute(original, staged, mask)` brings both images to one working size (long side
WORK_LONG_SIDE pixels, the original's aspect) and returns, in METRICS order:

| metric              | range      | better | flagged when      |
| ------------------- | ---------- | ------ | ----------------- |
| `edge_f1`           | 0..1       | higher | below 0.5         |
| `edge_recall`       | 0..1       | higher | below 0.5         |
| `vertical_tilt_deg` | 0..30 deg  | lower  | above 1.5         |
| `psnr_outside_mask` | 0..100 dB  | higher | below 25          |
| `mad_outside_mask`  | 0..255     | lower  | above 10          |
| `clipped_fraction`  | 0..1       | lower  | above 0.1         |
| `sharpness`         | 0..1040400 | higher | below 20          |
| `color_cast`        | 0..134     | lower  | above 20          |

Structure (`edge_*`, `vertical_tilt_deg`) is judged outside the mask when one is given
(walls, windows and doors live there) and over the whole image otherwise. Preservation
(`*_outside_mask`) needs a mask: without one it is NaN, "not applicable". Every metric is
also NaN when the mask leaves less than MIN_OUTSIDE_SHARE of the image outside it, and the
tilt is NaN when either image has no near-vertical line to measure. Artifacts
(`clipped_fraction`, `sharpness`, `color_cast`) describe the staged image alone. Every
other value is a finite float.

`structure_score(original, staged, mask)` is `edge_recall` alone, the check the engine
runs on every job (QA_STRUCTURE_MIN). `flags(values)` names the metrics beyond their
thresholds; `clip_score(image, text, model_dir)` scores how well an image matches a text
with a local CLIP model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

_STRUCTURE = ("edge_f1", "edge_recall", "vertical_tilt_deg")
_PRESERVATION = ("psnr_outside_mask", "mad_outside_mask")

U8 = npt.NDArray[np.uint8]
Bools = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]

# WORK_LONG_SIDE fixes the scale every metric is computed at, so pixel tolerances and
# the Laplacian variance mean the same for a 768 px and a 2048 px photo.
WORK_LONG_SIDE = 512

# MIN_SIDE refuses images too small for edges and lines to mean anything.
MIN_SIDE = 32

# ASPECT_TOLERANCE is how far (relative) the staged aspect may differ from the
# original's: the service rounds the output's sides, e.g. 768x512 becomes 1024x683.
ASPECT_TOLERANCE = 0.02

# EDGE_TOLERANCE_PX: an edge counts as kept when the other image has one this close
# (0.6% of the long side), which absorbs resampling and Canny's one-pixel jitter.
EDGE_TOLERANCE_PX = 3.0

# MASK_MARGIN_PX widens the repaint region before "outside" is taken: new furniture's
# edges sit on the mask's border, and the engine feathers its result into the original
# up to 2 x ENGINE_MASK_FEATHER (4 by default) output pixels beyond it, which is at most
# 8 px here for any output with a long side of 512 px or more.
MASK_MARGIN_PX = 8

# MIN_OUTSIDE_SHARE: with less of the image outside the mask, nothing is left to judge.
MIN_OUTSIDE_SHARE = 0.01

# Canny on a Gaussian-blurred (sigma BLUR_SIGMA) grayscale; the high threshold is half
# the Otsu level of the original, clamped, and the low one half of the high. The same
# thresholds serve both images, so a difference in edges is a difference in the images.
# An edge is searched for in the other image among edges found at LENIENT times these
# thresholds: an edge whose strength sits near a threshold would otherwise count as
# lost or added when it merely got a little weaker or stronger.
BLUR_SIGMA = 1.0
CANNY_HIGH_MIN = 30.0  # a dark, low-contrast photo would otherwise turn noise into edges
CANNY_HIGH_MAX = 100.0  # a bright photo would otherwise lose the soft corners of its walls
LENIENT = 0.5

# Line segments for the tilt: at least HOUGH_MIN_LENGTH of the short side long, and
# within VERTICAL_WINDOW_DEG of vertical (wider than any tilt worth flagging, narrower
# than the convergence of verticals in most interior shots).
HOUGH_MIN_LENGTH = 0.08
HOUGH_VOTES = 30
HOUGH_MAX_GAP = 3
VERTICAL_WINDOW_DEG = 15.0

# PSNR_CAP_DB is the PSNR of identical pixels, so the value stays finite in JSON.
PSNR_CAP_DB = 100.0

# A pixel is clipped when its luminance (Rec. 601 luma) is at most CLIP_LOW or at
# least CLIP_HIGH: detail there is lost to black or white.
CLIP_LOW = 2
CLIP_HIGH = 253

# The largest chroma sRGB can hold (pure blue, a*b* about (79, -108)), rounded up.
MAX_CHROMA = 134.0

# The 4-neighbour Laplacian of 8-bit values lies in [-1020, 1020].
MAX_LAPLACIAN_VAR = 1020.0**2


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: what it measures, its range, which way is better and when a value
    is flagged for review (beyond flag_below or flag_above; None is no threshold)."""

    name: str
    description: str
    lo: float
    hi: float
    better: str
    flag_below: float | None
    flag_above: float | None


def _metrics(*items: Metric) -> dict[str, Metric]:
    return {m.name: m for m in items}


METRICS: dict[str, Metric] = _metrics(
    Metric(
        "edge_f1",
        "F1 of the Canny edges of the staged image against the original's (an edge "
        "counts when the other image has one, even a weaker one, within "
        f"{EDGE_TOLERANCE_PX:g} px at a {WORK_LONG_SIDE} px long side), outside the "
        "mask when there is one; 1 means the same walls, windows and doors.",
        0.0,
        1.0,
        "higher",
        # Furniture in an unmasked room adds edges and hides some, but below 0.5 the
        # edges disagree more than they agree: the room itself has changed.
        0.5,
        None,
    ),
    Metric(
        "edge_recall",
        "Share of the original's edges that the staged image keeps within the same "
        "tolerance and region; unlike edge_f1 it does not count edges furniture adds.",
        0.0,
        1.0,
        "higher",
        # Furniture hides part of the room, but rarely half of its edges.
        0.5,
        None,
    ),
    Metric(
        "vertical_tilt_deg",
        "Absolute difference, in degrees, between the length-weighted median deviation "
        "from vertical of the near-vertical lines of the staged image and of the "
        "original; 0 means the verticals stand as they did.",
        0.0,
        2 * VERTICAL_WINDOW_DEG,
        "lower",
        None,
        # A lean of 1.5 degrees is visible on a wall or door frame; below it, line
        # detection jitter dominates.
        1.5,
    ),
    Metric(
        "psnr_outside_mask",
        "PSNR in dB of the RGB pixels outside the mask (widened by a few pixels), capped "
        f"at {PSNR_CAP_DB:g} for identical pixels; n/a without a mask.",
        0.0,
        PSNR_CAP_DB,
        "higher",
        # The engine pastes the original back outside the mask, so only resampling
        # and encoding remain there: the sample room resized to 1024x683 and saved as
        # JPEG at quality 75 measures 46 dB. Below 25 dB (an RMS error of 14 levels)
        # something repainted what it should have kept.
        25.0,
        None,
    ),
    Metric(
        "mad_outside_mask",
        "Mean absolute difference (0-255 per RGB channel) of the pixels outside the "
        "mask (widened by a few pixels); n/a without a mask.",
        0.0,
        255.0,
        "lower",
        None,
        # Ten levels (4%) over a whole region is a visible change of tone or content.
        10.0,
    ),
    Metric(
        "clipped_fraction",
        f"Share of the staged image's pixels whose luminance is <= {CLIP_LOW} or >= "
        f"{CLIP_HIGH}, i.e. crushed to black or blown to white.",
        0.0,
        1.0,
        "lower",
        None,
        # A blown-out window often takes a few percent of an interior photo; a tenth of
        # the frame without detail is over- or under-exposure.
        0.1,
    ),
    Metric(
        "sharpness",
        "Variance of the 4-neighbour Laplacian of the staged image's grayscale at a "
        f"{WORK_LONG_SIDE} px long side; low values mean a blurry image.",
        0.0,
        MAX_LAPLACIAN_VAR,
        "higher",
        # The project's sample room (a soft render) measures about 125 at this size
        # and 13 after a Gaussian blur of sigma 1 px; photos measure higher.
        20.0,
        None,
    ),
    Metric(
        "color_cast",
        "Distance from neutral grey of the staged image's mean CIELab (a*, b*), in "
        "CIELab units (the scale of delta E).",
        0.0,
        MAX_CHROMA,
        "lower",
        None,
        # Warm indoor light gives a mean b* of 5 to 15; past 20 the whole image looks
        # tinted.
        20.0,
    ),
)


def compute(
    original: np.ndarray, staged: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Returns every metric of METRICS for a staged image of original.

    original and staged are HxWx3 uint8 RGB; staged may have another size but the
    same aspect. mask, if given, is HxW (the original's size), uint8 or bool, nonzero
    where the model may repaint. Raises ValueError on any other input.
    """
    w = _working(original, staged, mask)
    out = _artifacts(w.staged)
    if not w.judged:
        out.update(dict.fromkeys(_STRUCTURE + _PRESERVATION, float("nan")))
    elif w.region is None:
        out.update(_structure(w.original, w.staged, None))
        out.update(dict.fromkeys(_PRESERVATION, float("nan")))
    else:
        out.update(_structure(w.original, w.staged, w.region))
        out.update(_preservation(w.original, w.staged, w.region))
    return {name: out[name] for name in METRICS}


def structure_score(
    original: np.ndarray, staged: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Returns compute()'s edge_recall alone: the share of the original's edges
    (walls, windows, doors) that staged keeps, outside the mask when there is one.

    It is the check the engine runs on every job, and the harness's edge_recall
    comes from the same code, so a threshold tuned on the quality loop's numbers
    means the same in production. Inputs and errors are compute()'s; NaN when
    the mask leaves less than MIN_OUTSIDE_SHARE of the image to judge. It runs
    only the two edge maps its answer needs, of compute()'s four, and no line search.
    """
    w = _working(original, staged, mask)
    if not w.judged:
        return float("nan")
    gray_o = _blurred_gray(w.original)
    low, high = _canny_thresholds(gray_o)
    edges_o = _canny(gray_o, low, high, w.region)
    return _edge_recall(edges_o, _blurred_gray(w.staged), low, high, w.region)


def flags(values: dict[str, float]) -> list[str]:
    """Returns, in METRICS order, the names whose value is below the metric's
    flag_below or above its flag_above. NaN is never flagged; names that METRICS
    does not know (a score the caller added) are not judged here."""
    flagged = []
    for name, metric in METRICS.items():
        if name not in values:
            continue
        value = float(values[name])
        if math.isnan(value):
            continue
        low = metric.flag_below is not None and value < metric.flag_below
        high = metric.flag_above is not None and value > metric.flag_above
        if low or high:
            flagged.append(name)
    return flagged


def clip_score(image: np.ndarray, text: str, model_dir: str) -> float:
    """Returns the CLIPScore of image (HxWx3 uint8 RGB) and text: 100 times the cosine
    similarity of their CLIP embeddings, clipped at 0, so 0..100.

    The CLIPModel and its processor are loaded from model_dir with local files only,
    once per model_dir in this process. Raises ValueError on bad input.
    """
    _check_image(image, "image")
    if not text.strip():
        raise ValueError("text must not be empty")
    if not os.path.isdir(model_dir):
        raise ValueError(f"model_dir {model_dir!r} is not a directory")
    import torch

    model, processor = _load_clip(model_dir)
    inputs = processor(
        text=[text], images=[image], return_tensors="pt", padding=True, truncation=True
    )
    with torch.no_grad():
        out = model(**inputs)
    # The forward pass returns both projections already scaled to unit length.
    cosine = (out.image_embeds * out.text_embeds).sum().item()
    return max(0.0, 100.0 * float(cosine))


@functools.lru_cache(maxsize=4)
def _load_clip(model_dir: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    # Any: transformers' from_pretrained is only partly typed.
    model: Any = CLIPModel.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    return model, processor


# Input checks.


def _check_image(img: np.ndarray, name: str) -> None:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must be HxWx3 RGB, got shape {img.shape}")
    if min(img.shape[:2]) < MIN_SIDE:
        raise ValueError(f"{name} must be at least {MIN_SIDE} px on each side, got {img.shape[:2]}")


def _check_aspect(orig: tuple[int, ...], staged: tuple[int, ...]) -> None:
    aspect_o = orig[1] / orig[0]
    aspect_s = staged[1] / staged[0]
    if abs(aspect_s / aspect_o - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(
            f"staged {staged[1]}x{staged[0]} does not have the aspect of original "
            f"{orig[1]}x{orig[0]} (within {ASPECT_TOLERANCE:.0%})"
        )


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> Bools | None:
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray):
        raise ValueError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.dtype not in (np.uint8, np.bool_):
        raise ValueError(f"mask must be uint8 or bool, got dtype {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if mask.shape != shape:
        raise ValueError(f"mask is {mask.shape}, it must have the original's size {shape}")
    return mask.astype(bool)


# Working size.


@dataclasses.dataclass(frozen=True)
class _Working:
    """Both images at the working size and the region structure is judged in:
    None for the whole image; judged is False when a mask leaves too little."""

    original: U8
    staged: U8
    region: Bools | None
    judged: bool


def _working(original: np.ndarray, staged: np.ndarray, mask: np.ndarray | None) -> _Working:
    _check_image(original, "original")
    _check_image(staged, "staged")
    _check_aspect(original.shape[:2], staged.shape[:2])
    repaint = _check_mask(mask, original.shape[:2])
    size = _work_size(original.shape[:2])
    # OpenCV refuses views with negative strides, such as a channel flip.
    orig = _resize(np.ascontiguousarray(original), size)
    stag = _resize(np.ascontiguousarray(staged), size)
    if repaint is None:
        return _Working(orig, stag, None, True)
    region = _outside(repaint, size)
    return _Working(orig, stag, region, bool(region.mean() >= MIN_OUTSIDE_SHARE))


def _work_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """Returns (width, height) with the long side WORK_LONG_SIDE and shape's aspect."""
    h, w = shape[0], shape[1]
    scale = WORK_LONG_SIDE / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _resize(img: U8, size: tuple[int, int]) -> U8:
    if (img.shape[1], img.shape[0]) == size:
        return img
    # Area averaging shrinks without aliasing; enlarging needs interpolation.
    shrink = img.shape[1] >= size[0] and img.shape[0] >= size[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(img, size, interpolation=interp), dtype=np.uint8)


def _outside(repaint: Bools, size: tuple[int, int]) -> Bools:
    """Returns the pixels at the working size that are clear of the repaint region
    by MASK_MARGIN_PX."""
    # Any working pixel that a repainted pixel reaches counts as repainted.
    small = cv2.resize(repaint.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) > 0
    side = 2 * MASK_MARGIN_PX + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    grown = cv2.dilate(small.astype(np.uint8), kernel) > 0
    return np.asarray(~grown, dtype=np.bool_)


# Structure.


def _structure(orig: U8, staged: U8, region: Bools | None) -> dict[str, float]:
    nan = float("nan")
    gray_o = _blurred_gray(orig)
    gray_s = _blurred_gray(staged)
    low, high = _canny_thresholds(gray_o)
    edges_o = _canny(gray_o, low, high, region)
    edges_s = _canny(gray_s, low, high, region)
    loose_o = _canny(gray_o, LENIENT * low, LENIENT * high, region)
    recall = _edge_recall(edges_o, gray_s, low, high, region)
    precision = _share_near(edges_s, loose_o)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    tilt_o = _vertical_deviation(edges_o)
    tilt_s = _vertical_deviation(edges_s)
    tilt = nan if tilt_o is None or tilt_s is None else abs(tilt_s - tilt_o)
    return {"edge_f1": f1, "edge_recall": recall, "vertical_tilt_deg": tilt}


def _edge_recall(
    edges_o: Bools, gray_s: U8, low: float, high: float, region: Bools | None
) -> float:
    """Returns the share of the original's edges_o that the staged image (its
    blurred grayscale gray_s) has within EDGE_TOLERANCE_PX, among its edges at
    LENIENT times the original's thresholds: edge_recall and structure_score."""
    loose_s = _canny(gray_s, LENIENT * low, LENIENT * high, region)
    return _share_near(edges_o, loose_s)


def _gray(img: U8) -> U8:
    return np.asarray(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def _blurred_gray(img: U8) -> U8:
    # The light blur keeps sensor noise and JPEG blocks from becoming edges.
    return np.asarray(cv2.GaussianBlur(_gray(img), (0, 0), BLUR_SIGMA), dtype=np.uint8)


def _canny_thresholds(gray: U8) -> tuple[float, float]:
    """Returns Canny's (low, high): half of Otsu's level of gray, clamped, and half
    of that.

    Otsu's level sits between the dark and light halves of the picture, so it scales
    with the photo's contrast, as the gradients of its real edges do; half of it keeps
    the soft corners between two walls of similar paint.
    """
    otsu, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = min(max(float(otsu) / 2, CANNY_HIGH_MIN), CANNY_HIGH_MAX)
    return high / 2, high


def _canny(gray: U8, low: float, high: float, region: Bools | None) -> Bools:
    edges = cv2.Canny(gray, low, high) > 0
    return edges if region is None else edges & region


def _share_near(edges: Bools, other: Bools) -> float:
    """Returns the share of edges' pixels that have a pixel of other within
    EDGE_TOLERANCE_PX. No edges at all are all kept (1); edges against an empty
    other are all lost (0)."""
    count = int(edges.sum())
    if count == 0:
        return 1.0
    if not other.any():
        return 0.0
    # distanceTransform measures the distance to the nearest zero pixel: the edges.
    free = np.where(other, 0, 255).astype(np.uint8)
    dist = cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return int((dist[edges] <= EDGE_TOLERANCE_PX).sum()) / count


def _vertical_deviation(edges: Bools) -> float | None:
    """Returns the length-weighted median signed angle, in degrees, between vertical
    and the line segments of edges within VERTICAL_WINDOW_DEG of it, or None when
    there are none.

    The median ignores the few slanted outliers (a chair leg, a stair rail); the sign
    is kept so that a rotation shifts the whole distribution, while verticals that
    converge towards a vanishing point cancel out.
    """
    short = min(edges.shape)
    segments = cv2.HoughLinesP(
        edges.astype(np.uint8) * 255,
        rho=1,
        theta=np.pi / 360,
        threshold=HOUGH_VOTES,
        minLineLength=max(10.0, HOUGH_MIN_LENGTH * short),
        maxLineGap=HOUGH_MAX_GAP,
    )
    if segments is None:
        return None
    x1, y1, x2, y2 = (segments[:, 0, i].astype(np.float64) for i in range(4))
    dx, dy = x2 - x1, y2 - y1
    # Orient every segment downwards (image y grows down), so the angle is the same
    # whichever end Hough reports first.
    flip = dy < 0
    dx[flip], dy[flip] = -dx[flip], -dy[flip]
    angles = np.degrees(np.arctan2(dx, dy))
    lengths = np.hypot(dx, dy)
    near = np.abs(angles) <= VERTICAL_WINDOW_DEG
    if not near.any():
        return None
    return _weighted_median(angles[near], lengths[near])


def _weighted_median(values: F64, weights: F64) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, cumulative[-1] / 2))
    return float(values[order][index])


# Preservation.


def _preservation(orig: U8, staged: U8, region: Bools) -> dict[str, float]:
    diff = orig[region].astype(np.float64) - staged[region].astype(np.float64)
    mse = float(np.mean(diff**2))
    psnr = PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse))
    return {"psnr_outside_mask": psnr, "mad_outside_mask": float(np.mean(np.abs(diff)))}


# Artifacts of the staged image alone.


def _artifacts(img: U8) -> dict[str, float]:
    gray = _gray(img)
    clipped = float(np.mean((gray <= CLIP_LOW) | (gray >= CLIP_HIGH)))
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    # Float input gives CIELab in its own units (L* 0..100, a* b* signed), not the
    # 8-bit encoding with its offset of 128.
    lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    cast = math.hypot(float(lab[..., 1].mean()), float(lab[..., 2].mean()))
    return {"clipped_fraction": clipped, "sharpness": sharpness, "color_cast": cast}
