"""The upscale phase's torch-free parts: tile layout, blending, seeds, validation, settings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from helpers import gradient, request, small_settings
from inference import config, errors, upscale
from inference._proto import engine_pb2 as pb
from inference.jobs import validate


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [
        (64, 64, 8),
        (72, 64, 8),
        (2048, 1024, 128),
        (2048, 512, 64),
        (1536, 1024, 128),
        (4096, 1000 // 8 * 8, 128),
        (2048, 256, 128),
        (1032, 1024, 512),
    ],
)
def test_starts_cover_the_axis_with_the_overlap(length: int, tile: int, overlap: int) -> None:
    s = upscale.starts(length, tile, overlap)
    assert s[0] == 0 and s[-1] + min(tile, length) == length
    assert all(x % 8 == 0 for x in s)
    assert s == sorted(set(s))
    for a, b in itertools.pairwise(s):
        assert a + tile - b >= overlap, (a, b)
    if len(s) > 1:
        # No more tiles than needed: one fewer could not keep the overlap.
        assert (len(s) - 2) * (tile - overlap) + tile < length


def test_layout_covers_every_pixel() -> None:
    size = (2048, 1536)
    cover = np.zeros((size[1], size[0]), dtype=int)
    tiles = upscale.layout(size, 512, 64)
    assert [t.index for t in tiles] == list(range(len(tiles)))
    for t in tiles:
        assert (t.width, t.height) == (512, 512)
        cover[t.top : t.top + t.height, t.left : t.left + t.width] += 1
    assert cover.min() >= 1
    assert len(tiles) == 5 * 4


def test_small_image_is_one_tile() -> None:
    assert upscale.layout((200, 104), 256, 32) == [upscale.Tile(0, 0, 0, 200, 104)]


def test_weights_are_positive_and_full_on_the_border() -> None:
    size = (1024, 512)
    tiles = upscale.layout(size, 512, 64)
    for t in tiles:
        w = upscale.weights(t, size, 64)
        assert w.shape == (t.height, t.width)
        assert w.min() > 0 and w.max() == 1
    first = upscale.weights(tiles[0], size, 64)
    assert first[:, 0].min() == 1 and first[0, : 512 - 64].min() == 1
    assert first[256, -1] < 0.01


def test_identity_refine_of_a_constant_stays_constant() -> None:
    img = Image.new("RGB", (1024, 768), (37, 120, 201))
    out = upscale.refine_tiled(img, 256, 64, lambda px, _t: px)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_identity_refine_keeps_a_picture() -> None:
    img = gradient(520, 264)
    out = upscale.refine_tiled(img, 128, 32, lambda px, _t: px)
    assert np.array_equal(np.asarray(out), np.asarray(img))


def _offset(px: Image.Image, t: upscale.Tile) -> Image.Image:
    """A stand-in refiner whose tiles disagree: each adds 20 levels per index."""
    arr = np.asarray(px, dtype=np.int32) + 20 * t.index
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def test_disagreeing_tiles_meet_without_a_seam() -> None:
    img = Image.new("RGB", (1024, 256), (10, 10, 10))
    tiles = upscale.layout(img.size, 256, 64)
    assert len(tiles) == 5
    out = np.asarray(upscale.refine_tiled(img, 256, 64, _offset), dtype=np.int32)
    steps = np.abs(np.diff(out, axis=1))
    # Tiles 20 levels apart, blended over at least 64 px: under a level per pixel.
    assert steps.max() <= 1
    assert out[0, 0, 0] == 10 and out[0, -1, 0] == 10 + 20 * 4
    # The same tiles pasted without weights jump by the full 20 at each edge.
    hard = np.zeros_like(out)
    for t in tiles:
        hard[:, t.left : t.left + t.width] = np.asarray(_offset(img.crop(t.box), t))
    assert np.abs(np.diff(hard, axis=1)).max() == 20


def test_disagreeing_tiles_in_two_dimensions() -> None:
    img = Image.new("RGB", (512, 512), (10, 10, 10))
    out = np.asarray(upscale.refine_tiled(img, 256, 96, _offset), dtype=np.int32)
    assert np.abs(np.diff(out, axis=0)).max() <= 1
    assert np.abs(np.diff(out, axis=1)).max() <= 1


def test_check_runs_before_each_tile() -> None:
    seen: list[int] = []

    class Stop(Exception):
        pass

    def check() -> None:
        if len(seen) == 2:
            raise Stop

    def refine(px: Image.Image, t: upscale.Tile) -> Image.Image:
        seen.append(t.index)
        return px

    with pytest.raises(Stop):
        upscale.refine_tiled(Image.new("RGB", (1024, 256)), 256, 64, refine, check)
    assert seen == [0, 1]


def test_a_wrongly_sized_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="refined tile 0"):
        upscale.refine_tiled(Image.new("RGB", (64, 64)), 64, 8, lambda px, _t: px.resize((8, 8)))


def test_tile_seeds_are_fixed_and_distinct() -> None:
    seeds = [upscale.tile_seed(7, i) for i in range(64)]
    assert seeds == [upscale.tile_seed(7, i) for i in range(64)]
    assert len(set(seeds)) == 64
    assert upscale.tile_seed(8, 0) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)


def test_target_size_keeps_the_aspect() -> None:
    assert upscale.target_size((1024, 768), 2048) == (2048, 1536)
    assert upscale.target_size((768, 1024), 2048) == (1536, 2048)
    assert upscale.target_size((128, 16), 2048) == (2048, 256)


def test_keep_unmasked_is_the_resampled_source_outside_the_mask() -> None:
    source = gradient(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    generated = Image.new("RGB", (256, 256), (255, 0, 0))
    out = np.asarray(upscale.keep_unmasked(source, generated, mask, 4))
    resampled = np.asarray(source.resize((256, 256), Image.Resampling.LANCZOS))
    # The feather (4 px at 64, 16 at 256) grows the mask by up to 2 * 16 px.
    assert np.array_equal(out[:32], resampled[:32])
    assert np.array_equal(out[:, 224:], resampled[:, 224:])
    assert (out[96:160, 96:160] == (255, 0, 0)).all()


def _reason(req: pb.StageRequest, **settings: object) -> str:
    with pytest.raises(errors.EngineError) as info:
        validate(req, small_settings(**settings), ("canny",))
    return info.value.message


def test_validate_upscale_long_side() -> None:
    ok = validate(request(b"", upscale_long_side=2048), small_settings(), ("canny",))
    assert ok.upscale_long_side == 2048 and ok.long_side == 64
    assert validate(request(b""), small_settings(), ("canny",)).upscale_long_side == 0
    for bad in (2044, 64, 56, 4104):
        msg = _reason(request(b"", upscale_long_side=bad))
        assert "upscale_long_side must be a multiple of 8 above the output long side (64)" in msg
        assert "at most 4096" in msg
    msg = _reason(request(b"", upscale_long_side=1024), max_upscale_long_side=0)
    assert "does not upscale" in msg


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--max-upscale-long-side", "2047", "ENGINE_MAX_UPSCALE_LONG_SIDE"),
        ("--max-upscale-long-side", "9000", "ENGINE_MAX_UPSCALE_LONG_SIDE"),
        ("--upscale-strength", "0", "ENGINE_UPSCALE_STRENGTH"),
        ("--upscale-strength", "1.5", "ENGINE_UPSCALE_STRENGTH"),
        ("--upscale-steps", "0", "ENGINE_UPSCALE_STEPS"),
        ("--upscale-tile", "100", "ENGINE_UPSCALE_TILE"),
        ("--upscale-tile", "4096", "ENGINE_UPSCALE_TILE"),
        ("--upscale-overlap", "0", "ENGINE_UPSCALE_OVERLAP"),
        ("--upscale-overlap", "520", "ENGINE_UPSCALE_OVERLAP"),
    ],
)
def test_upscale_settings_refused(flag: str, value: str, needle: str) -> None:
    with pytest.raises(config.ConfigError, match=needle):
        config.parse(["--socket", "s", "--tiny-model", flag, value], {})


def test_upscale_settings_from_environment() -> None:
    s = config.parse(
        ["--socket", "s", "--tiny-model"],
        {"ENGINE_MAX_UPSCALE_LONG_SIDE": "0", "ENGINE_UPSCALE_TILE": "512"},
    )
    assert (s.max_upscale_long_side, s.upscale_tile, s.upscale_overlap) == (0, 512, 128)
    with pytest.raises(config.ConfigError, match="--upscale-steps \\* --upscale-strength"):
        config.parse(["--socket", "s", "--tiny-model", "--upscale-steps", "2"], {})
