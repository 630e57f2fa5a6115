"""The upscale phase on the tiny model: sizes, determinism, inpainting, cancellation, refiner."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import (
    SMALL_LIMITS,
    Engine,
    decode,
    gradient,
    job_spec,
    png,
    request,
    small_settings,
    start,
)
from inference import errors, models, tiny, upscale
from inference._proto import engine_pb2 as pb
from inference.diffusers_backend import DiffusersBackend
from inference.jobs import JobContext, Work

# Small tiles, one refinement step each: the tiny model at 2048 px stays quick on a CPU.
UPSCALE_FLAGS = (
    "--upscale-tile",
    "256",
    "--upscale-overlap",
    "32",
    "--upscale-steps",
    "2",
    "--upscale-strength",
    "0.5",
)
UPSCALE_SETTINGS = {
    "upscale_tile": 128,
    "upscale_overlap": 32,
    "upscale_steps": 2,
    "upscale_strength": 0.5,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    e = start(["--tiny-model", "--device", "cpu", *SMALL_LIMITS, *UPSCALE_FLAGS])
    yield e
    e.close()


@pytest.fixture(scope="module")
def backend() -> DiffusersBackend:
    b = DiffusersBackend(small_settings(tiny_model=True, **UPSCALE_SETTINGS))
    b.load()
    return b


def _ctx(progress: object = None, stop: threading.Event | None = None) -> JobContext:
    return JobContext(
        stop or threading.Event(),
        lambda: pb.FAILURE_REASON_CANCELLED,
        progress if callable(progress) else (lambda step, total: None),
    )


def test_2048_long_side_in_tiles(engine: Engine) -> None:
    info = engine.stub.Info(pb.InfoRequest(), timeout=10)
    assert info.limits.max_upscale_long_side == 4096
    # 8:1, so that 2048 px stay few pixels: one row of nine 256 px tiles.
    events = engine.stage(
        request(png(gradient(256, 32)), output_long_side=128, upscale_long_side=2048, steps=5),
        timeout=300,
    )
    accepted = events[0].accepted
    assert (accepted.width, accepted.height) == (128, 16)
    result = events[-1].result
    assert (result.width, result.height) == (2048, 256)
    assert decode(result.image).size == (2048, 256)
    assert result.timings.upscale_ms > 0
    assert result.timings.total_ms >= result.timings.upscale_ms
    # Render steps first, then the refinement's, counted over all nine tiles.
    totals = [e.progress.total for e in events if e.WhichOneof("event") == "progress"]
    assert totals[0] == 4 and totals[-1] == 9
    assert len(upscale.layout((2048, 256), 256, 32)) == 9


def test_upscale_refused_past_the_limit(engine: Engine) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        engine.stage(request(png(gradient(64, 64)), upscale_long_side=4104))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "upscale_long_side" in str(info.value.details())


def test_inpaint_outside_the_mask_is_the_resampled_input(engine: Engine) -> None:
    picture = gradient(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = engine.result(
        request(png(picture), mask=png(mask), upscale_long_side=256, strength=1.0, steps=2),
        timeout=120,
    )
    out = np.asarray(decode(result.image)).astype(int)
    resampled = np.asarray(picture.resize((256, 256), Image.Resampling.LANCZOS)).astype(int)
    # The default feather (4 px) scaled by 4 grows the mask by up to 32 px.
    far = np.ones((256, 256), bool)
    far[64 - 33 : 192 + 33, 64 - 33 : 192 + 33] = False
    assert np.array_equal(out[far], resampled[far])
    assert np.abs(out[80:176, 80:176] - resampled[80:176, 80:176]).mean() > 10


def test_upscale_after_a_structure_retry_takes_the_answered_seed(engine: Engine) -> None:
    # A room's edges, so that the tiny model's noise scores below 1 on every seed.
    room = Path(__file__).resolve().parents[2] / "quality" / "sets" / "bundled"
    with Image.open(sorted(room.glob("*.jpg"))[0]) as img:
        photo = png(img.convert("RGB").resize((64, 48)))
    common = {"upscale_long_side": 256, "steps": 2}
    # The best of three renders is deterministic per seed; find a start whose
    # best is not its first, so the answer's seed is a retry's.
    for first in range(1, 9):
        checked = engine.result(
            request(photo, seed=first, structure_min=1.0, structure_retries=2, **common),
            timeout=300,
        )
        if checked.seed != first:
            break
    assert checked.seed != first and list(checked.warnings) == ["structure_check_failed"]
    plain = engine.result(request(photo, seed=checked.seed, **common), timeout=300)
    # The answered seed reproduces the answer, upscale included.
    assert plain.image == checked.image


def _work(seed: int = 1) -> Work:
    return Work(spec=job_spec(seed=seed, upscale_long_side=256), image=gradient(64, 48), mask=None)


def test_same_seed_same_pixels(backend: DiffusersBackend) -> None:
    image = gradient(64, 48)
    size = upscale.target_size(image.size, 256)
    assert size == (256, 192) and len(upscale.layout(size, 128, 32)) == 6
    a = np.asarray(backend.upscale(image, _work(), size, _ctx()).image)
    b = np.asarray(backend.upscale(image, _work(), size, _ctx()).image)
    c = np.asarray(backend.upscale(image, _work(seed=2), size, _ctx()).image)
    assert a.shape == (192, 256, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # The refinement changed the resampled picture.
    plain = np.asarray(image.resize(size, Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(a.astype(int) - plain).mean() > 1


def test_cancel_between_tiles(backend: DiffusersBackend) -> None:
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def progress(step: int, total: int) -> None:
        seen.append((step, total))
        if step == 2:
            stop.set()

    image = gradient(64, 48)
    with pytest.raises(errors.JobCancelled):
        backend.upscale(image, _work(), (256, 192), _ctx(progress, stop))
    # One step per tile: the second tile's step stopped it, the third never ran.
    assert seen == [(1, 6), (2, 6)]


def test_refiner_folder_is_used(tmp_path: Path, backend: DiffusersBackend) -> None:
    folder = str(tmp_path / "model")
    models.save_dir(tiny.build(), folder)
    tiny.save_refiner(os.path.join(folder, "refiner"))
    b = DiffusersBackend(small_settings(model_dir=folder, **UPSCALE_SETTINGS))
    b.load()
    assert b.refiner_source == "refiner" and backend.refiner_source == "base"
    # The refiner decodes with the base's VAE, loaded once.
    assert b._refiner is not None and b._refiner._parts["vae"] is b._components().vae
    image = gradient(64, 48)
    size = (256, 192)
    with_refiner = np.asarray(b.upscale(image, _work(), size, _ctx()).image)
    again = np.asarray(b.upscale(image, _work(), size, _ctx()).image)
    with_base = np.asarray(backend.upscale(image, _work(), size, _ctx()).image)
    assert with_refiner.shape == (192, 256, 3)
    assert np.array_equal(with_refiner, again)
    assert not np.array_equal(with_refiner, with_base)
