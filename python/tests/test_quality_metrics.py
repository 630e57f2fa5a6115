"""The quality metrics on synthetic rooms whose answers are known by construction."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference import tiny
from quality import metrics
from quality.metrics import METRICS, compute, flags

W, H = 768, 512

# The furniture region of the masked tests: the middle of the floor.
FURNITURE = (250, 330, 530, 490)  # x0, y0, x1, y1
# A region of the same size on the ceiling and upper walls, for edits where none belong.
ELSEWHERE = (250, 10, 530, 170)


def room(offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """An empty room in one-point perspective: ceiling, floor with boards, side and
    back walls, a window with muntins and a door, over soft shading and sensor noise.
    offset moves every wall, the window and the door."""
    ox, oy = offset
    img = np.zeros((H, W, 3), np.uint8)
    x0, y0, x1, y1 = 220 + ox, 110 + oy, 560 + ox, 360 + oy  # the back wall
    polygon = {
        "ceiling": ([(0, 0), (W, 0), (x1, y0), (x0, y0)], (236, 234, 228)),
        "floor": ([(0, H), (W, H), (x1, y1), (x0, y1)], (150, 112, 80)),
        "left": ([(0, 0), (x0, y0), (x0, y1), (0, H)], (196, 190, 178)),
        "right": ([(W, 0), (x1, y0), (x1, y1), (W, H)], (176, 170, 160)),
    }
    for points, color in polygon.values():
        cv2.fillPoly(img, [np.array(points, np.int32)], color)
    cv2.rectangle(img, (x0, y0), (x1, y1), (208, 202, 190), -1)
    for k in range(1, 6):  # floor boards converging to the back wall
        cv2.line(img, (x0 + k * (x1 - x0) // 6, y1), (k * W // 6, H), (110, 80, 55), 2)
    wx0, wy0, wx1, wy1 = x0 + 40, y0 + 40, x0 + 180, y0 + 160  # window
    cv2.rectangle(img, (wx0, wy0), (wx1, wy1), (246, 248, 250), -1)
    cv2.rectangle(img, (wx0, wy0), (wx1, wy1), (70, 66, 60), 4)
    cv2.line(img, ((wx0 + wx1) // 2, wy0), ((wx0 + wx1) // 2, wy1), (70, 66, 60), 3)
    cv2.line(img, (wx0, (wy0 + wy1) // 2), (wx1, (wy0 + wy1) // 2), (70, 66, 60), 3)
    cv2.rectangle(img, (x1 - 100, y0 + 60), (x1 - 30, y1), (120, 84, 60), -1)  # door
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    shade = 12 * np.sin(xx / 97.0) * np.cos(yy / 71.0)
    noise = rng.normal(0, 3, (H, W, 1))
    return np.clip(img + shade[..., None] + noise, 0, 255).astype(np.uint8)


def mask_of(box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def furnish(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Draws a sofa-like set of rectangles strictly inside box."""
    out = img.copy()
    x0, y0, x1, y1 = box
    cv2.rectangle(out, (x0 + 10, y0 + 40), (x1 - 10, y1 - 10), (40, 60, 110), -1)
    cv2.rectangle(out, (x0 + 20, y0 + 10), (x1 - 20, y0 + 60), (60, 80, 140), -1)
    cv2.rectangle(out, (x0 + 30, y0 + 70), (x0 + 120, y1 - 30), (200, 180, 60), -1)
    return out


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return room()


def test_metrics_are_documented() -> None:
    assert list(METRICS) == [
        "edge_f1",
        "edge_recall",
        "vertical_tilt_deg",
        "psnr_outside_mask",
        "mad_outside_mask",
        "clipped_fraction",
        "sharpness",
        "color_cast",
    ]
    for name, m in METRICS.items():
        assert m.name == name
        assert m.description.endswith(".") and len(m.description) > 40
        assert m.lo < m.hi
        assert m.better in ("higher", "lower")
        thresholds = [t for t in (m.flag_below, m.flag_above) if t is not None]
        assert thresholds, name
        assert all(m.lo < t < m.hi for t in thresholds), name


def test_import_needs_no_torch() -> None:
    code = "import sys, quality.metrics; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(metrics.__file__).parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_identical_images(original: np.ndarray) -> None:
    values = compute(original, original, mask_of(FURNITURE))
    assert list(values) == list(METRICS)
    assert values["edge_f1"] >= 0.999
    assert values["edge_recall"] >= 0.999
    assert values["vertical_tilt_deg"] < 0.05
    assert values["psnr_outside_mask"] == metrics.PSNR_CAP_DB
    assert values["mad_outside_mask"] == 0.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    assert flags(values) == []


def test_without_mask_preservation_is_not_applicable(original: np.ndarray) -> None:
    values = compute(original, original)
    assert math.isnan(values["psnr_outside_mask"])
    assert math.isnan(values["mad_outside_mask"])
    finite = {k: v for k, v in values.items() if k not in metrics._PRESERVATION}
    assert all(math.isfinite(v) for v in finite.values())
    assert values["edge_f1"] >= 0.999


def test_mask_covering_everything_leaves_nothing_to_judge(original: np.ndarray) -> None:
    values = compute(original, furnish(original, FURNITURE), np.ones((H, W), bool))
    for name in (*metrics._STRUCTURE, *metrics._PRESERVATION):
        assert math.isnan(values[name]), name
    assert math.isfinite(values["sharpness"])


def test_moved_walls_lower_edge_f1(original: np.ndarray) -> None:
    values = compute(original, room(offset=(20, 20)))
    assert values["edge_f1"] < 0.4
    assert "edge_f1" in flags(values)


@pytest.mark.parametrize("offset", [(1, 0), (2, 1), (-2, -2)])
def test_small_shift_is_within_tolerance(original: np.ndarray, offset: tuple[int, int]) -> None:
    values = compute(original, room(offset=offset))
    assert values["edge_f1"] >= 0.95
    assert values["edge_recall"] >= 0.95
    assert values["vertical_tilt_deg"] < 0.3


def test_blur_lowers_sharpness(original: np.ndarray) -> None:
    sharp = compute(original, original)["sharpness"]
    blurred = compute(original, cv2.GaussianBlur(original, (0, 0), 3.0))["sharpness"]
    assert blurred * 3 < sharp


@pytest.mark.parametrize("angle", [3.0, -3.0])
def test_rotation_shows_as_tilt(original: np.ndarray, angle: float) -> None:
    turn = cv2.getRotationMatrix2D((W / 2, H / 2), angle, 1.0)
    rotated = cv2.warpAffine(original, turn, (W, H), borderMode=cv2.BORDER_REFLECT)
    values = compute(original, rotated)
    assert abs(values["vertical_tilt_deg"] - 3.0) < 0.7
    assert "vertical_tilt_deg" in flags(values)


def test_no_verticals_make_tilt_not_applicable() -> None:
    stripes = np.zeros((H, W, 3), np.uint8)
    stripes[(np.arange(H) // 32) % 2 == 1] = 200
    values = compute(stripes, stripes)
    assert math.isnan(values["vertical_tilt_deg"])
    assert values["edge_f1"] >= 0.999


def test_edit_inside_mask_preserves_the_rest(original: np.ndarray) -> None:
    staged = furnish(original, FURNITURE)
    values = compute(original, staged, mask_of(FURNITURE))
    assert values["edge_f1"] >= 0.99
    assert values["psnr_outside_mask"] == metrics.PSNR_CAP_DB
    assert values["mad_outside_mask"] == 0.0
    assert flags(values) == []
    # The same edit judged over the whole image: the furniture's edges are new.
    assert compute(original, staged)["edge_f1"] < values["edge_f1"]


def test_bool_and_uint8_masks_agree(original: np.ndarray) -> None:
    staged = furnish(original, FURNITURE)
    as_u8 = compute(original, staged, mask_of(FURNITURE))
    as_bool = compute(original, staged, mask_of(FURNITURE) > 0)
    assert as_u8 == as_bool


def test_edit_outside_mask_is_flagged(original: np.ndarray) -> None:
    staged = furnish(original, ELSEWHERE)
    values = compute(original, staged, mask_of(FURNITURE))
    assert values["psnr_outside_mask"] < 25.0
    assert values["mad_outside_mask"] > 1.0
    assert {"psnr_outside_mask"} <= set(flags(values))
    assert values["edge_f1"] < 0.999


def test_over_exposure_is_clipped(original: np.ndarray) -> None:
    bright = np.clip(original.astype(np.float64) * 2.0, 0, 255).astype(np.uint8)
    before = compute(original, original)["clipped_fraction"]
    values = compute(original, bright)
    assert values["clipped_fraction"] > before + 0.3
    assert "clipped_fraction" in flags(values)


def test_tint_is_a_color_cast(original: np.ndarray) -> None:
    tinted = original.astype(np.int16) + np.array([45, 0, -45], np.int16)
    tinted = np.clip(tinted, 0, 255).astype(np.uint8)
    before = compute(original, original)["color_cast"]
    values = compute(original, tinted)
    assert values["color_cast"] > before + 15
    assert "color_cast" in flags(values)
    assert "color_cast" not in flags(compute(original, original))


def test_staged_of_another_size(original: np.ndarray) -> None:
    staged = cv2.resize(original, (1024, 683), interpolation=cv2.INTER_CUBIC)
    values = compute(original, staged, mask_of(FURNITURE))
    assert values["edge_f1"] >= 0.95
    assert values["edge_recall"] >= 0.95
    assert values["vertical_tilt_deg"] < 0.3
    assert values["psnr_outside_mask"] > 30.0


def test_views_are_accepted(original: np.ndarray) -> None:
    flipped = original[..., ::-1]  # a view with a negative stride
    values = compute(original, flipped, mask_of(FURNITURE))
    assert values["edge_f1"] >= 0.95
    assert values["mad_outside_mask"] > 0.0


@pytest.mark.parametrize(
    ("original", "staged", "mask", "message"),
    [
        (np.zeros((H, W, 3), np.float32), None, None, "original must be uint8"),
        (np.zeros((H, W), np.uint8), None, None, r"original must be HxWx3"),
        (None, np.zeros((H, W, 4), np.uint8), None, r"staged must be HxWx3"),
        (None, np.zeros((16, 24, 3), np.uint8), None, "at least 32 px"),
        (None, np.zeros((H, H, 3), np.uint8), None, "does not have the aspect"),
        (None, None, np.zeros((H // 2, W // 2), np.uint8), "original's size"),
        (None, None, np.zeros((H, W), np.float64), "mask must be uint8 or bool"),
        (None, None, np.zeros((H, W, 3), np.uint8), "mask must be HxW"),
        ([[0]], None, None, "must be a numpy array"),
    ],
)
def test_bad_input(original, staged, mask, message) -> None:
    good = room()
    with pytest.raises(ValueError, match=message):
        compute(good if original is None else original, good if staged is None else staged, mask)


def test_flags_names_exactly_the_values_beyond_thresholds() -> None:
    values = {
        "edge_f1": 0.4,  # below 0.5
        "edge_recall": 0.5,  # on the threshold: not beyond it
        "vertical_tilt_deg": 2.0,  # above 1.5
        "psnr_outside_mask": float("nan"),  # not applicable
        "mad_outside_mask": 0.0,
        "clipped_fraction": 0.5,  # above 0.1
        "sharpness": 100.0,
        "color_cast": 5.0,
        "clip_score": 0.0,  # not one of METRICS
    }
    assert flags(values) == ["edge_f1", "vertical_tilt_deg", "clipped_fraction"]
    assert flags({"sharpness": 1.0, "mad_outside_mask": 11.0}) == ["mad_outside_mask", "sharpness"]
    assert flags({}) == []


# CLIP score with a tiny random model.


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-clip")
    # The engine's own offline tokenizer: every byte is a token, no download.
    tokenizer = tiny.build_tokenizer()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_clip_score(clip_dir: str, original: np.ndarray) -> None:
    first = metrics.clip_score(original, "an empty kitchen", clip_dir)
    again = metrics.clip_score(original, "an empty kitchen", clip_dir)
    assert isinstance(first, float)
    # With these seeded weights this text scores above the clip at 0, so the repeat
    # compares a computed similarity rather than two zeros.
    assert 0.0 < first <= 100.0
    assert first == again
    scores = [
        metrics.clip_score(original, text, clip_dir)
        for text in ("a living room with a blue sofa", "scandinavian bedroom, oak floor", "zzz")
    ]
    assert all(0.0 <= s <= 100.0 for s in scores)
    assert len({first, *scores}) > 1
    assert metrics._load_clip.cache_info().hits >= 3


def test_clip_score_bad_input(clip_dir: str, original: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="text must not be empty"):
        metrics.clip_score(original, "  ", clip_dir)
    with pytest.raises(ValueError, match="is not a directory"):
        metrics.clip_score(original, "a room", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="image must be HxWx3"):
        metrics.clip_score(original[..., 0], "a room", clip_dir)
