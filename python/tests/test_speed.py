"""The speed switches on the tiny model, on the CPU, one job at 64x64.

Switches that keep the arithmetic (channels-last, fused projections, another
attention kernel) must stay within TOLERANCE of eager: float32 sums taken in
another order differ in their last bits, which can move a pixel across a
rounding boundary of the 8-bit output, and no further. Graph capture
(torch.compile, here with the eager backend so the test does not spend
minutes in a C++ compiler) must match eager exactly. Switches that change
the arithmetic on purpose (guidance cut-off, ControlNet end, buckets, the
few-step profile) are checked against an exact reference of what they
should compute. Every switch must give the same bytes for the same seed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import gradient, job_spec, small_settings
from inference import config, imageio, speed, tiny
from inference._proto import engine_pb2 as pb
from inference.diffusers_backend import DiffusersBackend
from inference.jobs import JobContext, JobSpec, Work

# TOLERANCE is the largest difference allowed, in 8-bit levels, between a
# switch that keeps the arithmetic and eager. Measured here: at most 1 level
# on 1 pixel of 4096 (none for fused projections); 2 leaves room for another
# CPU's kernels.
TOLERANCE = 2
STEPS = 2


settings = small_settings


def backend(**kw: Any) -> DiffusersBackend:
    # Fresh components each time: the switches change the modules in place.
    b = DiffusersBackend(settings(**kw), tiny.build())
    b.load()
    return b


def spec(steps: int = STEPS, seed: int = 1, guidance: float = 5.0) -> JobSpec:
    return job_spec(job_id="speed", steps=steps, seed=seed, guidance_scale=guidance)


def render(
    b: DiffusersBackend,
    job: JobSpec | None = None,
    image: Image.Image | None = None,
    mask: Image.Image | None = None,
    progress: list[tuple[int, int]] | None = None,
) -> np.ndarray:
    seen = progress if progress is not None else []
    ctx = JobContext(
        threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, lambda s, t: seen.append((s, t))
    )
    work = Work(spec=job or spec(), image=image or gradient(64, 64), mask=mask)
    return np.asarray(b.run(work, ctx).image).astype(np.int16)


@pytest.fixture(scope="module")
def eager() -> np.ndarray:
    return render(backend())


@pytest.fixture
def restore_sdpa() -> Iterator[None]:
    state = speed.sdpa_state()
    yield
    speed.restore_sdpa(state)


def assert_deterministic_and_close(b: DiffusersBackend, eager: np.ndarray, tolerance: int) -> None:
    first = render(b)
    assert np.array_equal(first, render(b)), "same seed, different bytes"
    assert int(np.abs(first - eager).max()) <= tolerance


def test_channels_last_within_tolerance(eager: np.ndarray) -> None:
    assert_deterministic_and_close(backend(channels_last=True), eager, TOLERANCE)


def test_fused_qkv_within_tolerance(eager: np.ndarray) -> None:
    b = backend(fuse_qkv=True)
    c = b._components()
    attn = c.controlnets["canny"].down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert type(attn.processor).__name__ == "FusedAttnProcessor2_0"
    assert attn.to_qkv.weight.shape[0] == 3 * attn.to_q.weight.shape[0]
    assert_deterministic_and_close(b, eager, TOLERANCE)


@pytest.mark.usefixtures("restore_sdpa")
def test_sdpa_math_kernel_within_tolerance(eager: np.ndarray) -> None:
    b = backend(sdpa_backends="math")
    q = torch.randn(1, 2, 16, 8)
    # 0 is the math kernel; on the CPU the default would be the flash kernel (1).
    assert torch._fused_sdp_choice(q, q, q) == 0
    assert_deterministic_and_close(b, eager, TOLERANCE)


def test_sdpa_order_puts_the_first_name_first(restore_sdpa: None) -> None:
    speed.set_sdpa_backends(["cudnn", "flash"])
    flags, order = speed.sdpa_state()
    assert flags == (True, False, True, False)  # flash, efficient, cudnn, math
    backend_enum = torch.nn.attention.SDPBackend
    assert order[:2] == [int(backend_enum.CUDNN_ATTENTION), int(backend_enum.FLASH_ATTENTION)]


def test_compile_graphs_match_eager_exactly(eager: np.ndarray) -> None:
    b = backend(compile=True, compile_backend="eager")
    c = b._components()
    for module in (c.unet, c.controlnets["canny"], c.vae.decoder):
        assert module._compiled_call_impl is not None
    assert_deterministic_and_close(b, eager, 0)


def test_cfg_cutoff_drops_the_unconditional_half() -> None:
    b = backend(cfg_cutoff=0.5)
    c = b._components()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((kwargs["encoder_hidden_states"], kwargs["added_cond_kwargs"]["text_embeds"]))

    hook = c.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = render(b, spec(steps=4))
    finally:
        hook.remove()
    assert [h.shape[0] for h, _ in calls] == [2, 2, 1, 1]
    # The guided batch is [negative, positive]; the positive half goes on.
    (h2, t2), (h1, t1) = calls[0], calls[2]
    assert torch.equal(h1[0], h2[1]) and not torch.equal(h1[0], h2[0])
    assert torch.equal(t1[0], t2[1])
    assert np.array_equal(out, render(b, spec(steps=4)))
    assert b.info().model_rev.endswith("+cfg0.5")


def test_cfg_cutoff_leaves_inpaint_guided() -> None:
    b = backend(cfg_cutoff=0.5)
    batches: list[int] = []
    hook = b._components().unet.register_forward_pre_hook(
        lambda _m, a, _k: batches.append(a[0].shape[0]), with_kwargs=True
    )
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    try:
        render(b, spec(steps=4), mask=mask)
    finally:
        hook.remove()
    assert batches == [2, 2, 2, 2]


def test_controlnet_end_skips_calls_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(controlnet_end=0.5)
    controlnet = b._components().controlnets["canny"]
    calls: list[int] = []
    controlnet.register_forward_pre_hook(lambda *_: calls.append(1))
    skipped = render(b, spec(steps=4))
    assert len(calls) == 2
    assert np.array_equal(skipped, render(b, spec(steps=4)))
    # The reference: the pipeline's own control_guidance_end, which calls the
    # ControlNet at every step and scales the late ones by zero.
    calls.clear()
    monkeypatch.setattr(speed, "NoControl", lambda: controlnet)
    reference = render(b, spec(steps=4))
    assert len(calls) == 4
    assert np.array_equal(skipped, reference)


def test_buckets_render_at_the_bucket_and_return_the_work_size() -> None:
    b = backend(buckets="64x64,128x64")
    picture = gradient(96, 64)
    progress: list[tuple[int, int]] = []
    out = render(b, image=picture, progress=progress)
    assert out.shape == (64, 96, 3)
    assert np.array_equal(out, render(b, image=picture))
    # The same job without buckets, given the picture at the bucket's size.
    plain = DiffusersBackend(settings(), tiny.build())
    plain.load()
    at_bucket = render(plain, image=imageio.resize(picture, (128, 64)))
    expected = imageio.resize(Image.fromarray(at_bucket.astype(np.uint8), "RGB"), (96, 64))
    assert np.array_equal(out, np.asarray(expected).astype(np.int16))


def test_bucket_warmup_runs_each_bucket_long_enough_for_the_switches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = DiffusersBackend(
        settings(buckets="64x64,128x64", cfg_cutoff=0.75, warmup_steps=2, tiny_model=True)
    )
    seen: list[tuple[tuple[int, int], int]] = []
    monkeypatch.setattr(
        b, "run", lambda work, _ctx: seen.append((work.image.size, work.spec.steps))
    )
    b.warmup_buckets()
    # Guidance for the first ceil(0.75 * n) steps: four is the fewest steps
    # that leave one step unguided, so the warm-up meets both graphs.
    assert seen == [((64, 64), 4), ((128, 64), 4)]


@pytest.mark.parametrize(
    ("base", "cfg", "end", "want"),
    [
        (2, 1.0, 1.0, 2),
        (2, 0.5, 1.0, 2),
        (2, 0.75, 1.0, 4),
        (2, 1.0, 0.5, 2),
        (2, 0.9, 1.0, 10),
        (2, 1.0, 0.2, 5),
        (30, 0.5, 0.8, 30),
    ],
)
def test_warmup_steps(base: int, cfg: float, end: float, want: int) -> None:
    assert speed.warmup_steps(base, cfg, end, 100) == want


@pytest.mark.parametrize(
    ("total", "fraction", "want"), [(30, 0.5, 15), (10, 0.7, 7), (5, 0.5, 3), (4, 0.1, 1)]
)
def test_guided_steps(total: int, fraction: float, want: int) -> None:
    assert speed.guided_steps(total, fraction) == want


def test_sdpa_names_agree_with_config() -> None:
    assert set(speed.SDPA_BACKENDS) == set(config.SDPA_NAMES)


def test_snapshot_restore_undoes_every_load_time_switch(
    eager: np.ndarray, restore_sdpa: None
) -> None:
    c = tiny.build()
    snap = speed.Snapshot(c)
    switched = DiffusersBackend(
        settings(
            channels_last=True,
            fuse_qkv=True,
            compile=True,
            compile_backend="eager",
            sdpa_backends="math",
        ),
        c,
    )
    switched.load()
    snap.restore()
    for module in (c.unet, c.controlnets["canny"], c.vae.decoder):
        assert module._compiled_call_impl is None
    plain = DiffusersBackend(settings(), c)
    plain.load()
    assert np.array_equal(render(plain), eager)
