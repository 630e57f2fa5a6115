"""The Diffusers backend called directly: cancellation skips the VAE decode; OOM maps."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from helpers import gradient, job_spec, small_settings
from inference import errors
from inference._proto import engine_pb2 as pb
from inference.diffusers_backend import DiffusersBackend
from inference.jobs import JobContext, Work


@pytest.fixture(scope="module")
def backend() -> DiffusersBackend:
    b = DiffusersBackend(small_settings(tiny_model=True, max_long_side=256))
    b.load()
    return b


def _work(steps: int = 8) -> Work:
    return Work(spec=job_spec(steps=steps), image=gradient(64, 64), mask=None)


def test_cancel_stops_at_next_step_without_vae_decode(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    decodes: list[int] = []
    real = backend._decode
    monkeypatch.setattr(backend, "_decode", lambda *a: decodes.append(1) or real(*a))
    ended = threading.Event()
    steps: list[int] = []

    def progress(step: int, total: int) -> None:
        steps.append(step)
        if step == 3:
            ended.set()

    ctx = JobContext(ended, lambda: pb.FAILURE_REASON_CANCELLED, progress)
    with pytest.raises(errors.JobCancelled):
        backend.run(_work(), ctx)
    assert steps == [1, 2, 3]
    assert decodes == []
    # The same backend runs the next job to the end.
    out = backend.run(_work(2), JobContext(threading.Event(), lambda: "", lambda s, t: None))
    assert decodes == [1]
    assert isinstance(out.image, Image.Image) and out.image.size == (64, 64)


@pytest.mark.parametrize("phase", ["_run", "_upscale"])
def test_oom_maps_to_resource_exhausted(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    def boom(*_a: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend, phase, boom)
    ctx = JobContext(threading.Event(), lambda: "", lambda s, t: None)
    with pytest.raises(errors.EngineError) as info:
        if phase == "_run":
            backend.run(_work(), ctx)
        else:
            backend.upscale(Image.new("RGB", (64, 64)), _work(), (128, 128), ctx)
    assert info.value.reason == pb.FAILURE_REASON_OOM
    assert info.value.code.name == "RESOURCE_EXHAUSTED"


def test_other_errors_pass_through(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object) -> None:
        raise ValueError("shape mismatch")

    monkeypatch.setattr(backend, "_run", boom)
    with pytest.raises(ValueError):
        backend.run(_work(), JobContext(threading.Event(), lambda: "", lambda s, t: None))


def test_tokenizer_is_offline_and_77_long() -> None:
    from inference import tiny

    tok = tiny.build_tokenizer()
    assert tok.model_max_length == 77
    ids = tok("a room", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 0 and max(ids) < tiny.TEXT_CONFIG["vocab_size"]
    long_ids = tok("word " * 200, truncation=True, max_length=77).input_ids
    assert len(long_ids) == 77 and long_ids[-1] == 1
