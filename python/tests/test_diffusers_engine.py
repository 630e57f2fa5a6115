"""The Diffusers backend with the tiny random SDXL model, over a real socket."""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from helpers import (
    NOT_SERVING,
    SERVING,
    SMALL_LIMITS,
    Engine,
    decode,
    gradient,
    kinds,
    png,
    reason_of,
    request,
    start,
)
from inference._proto import engine_pb2 as pb

PICTURE = gradient(120, 80)
IMAGE = png(PICTURE)


def test_info_describes_tiny_model(tiny_engine: Engine) -> None:
    info = tiny_engine.stub.Info(pb.InfoRequest())
    assert info.ready and info.backend == "diffusers"
    assert info.model_rev.startswith("tiny-random-")
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert {"torch", "diffusers", "transformers"} <= set(info.versions)
    assert list(info.control_kinds) == [pb.CONTROL_KIND_CANNY, pb.CONTROL_KIND_DEPTH]
    assert info.limits.max_message_bytes >= 64 << 20


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_engine: Engine) -> None:
    a = tiny_engine.result(request(IMAGE, seed=7, output_long_side=96))
    b = tiny_engine.result(request(IMAGE, seed=7, output_long_side=96))
    c = tiny_engine.result(request(IMAGE, seed=8, output_long_side=96))
    assert a.image == b.image
    assert a.image != c.image
    assert a.seed == 7 and c.seed == 8
    assert a.model_rev.startswith("tiny-random-")
    t = a.timings
    assert t.denoise_ms > 0 and t.vae_decode_ms > 0 and t.total_ms >= t.denoise_ms
    assert a.peak_gpu_memory_bytes == 0


def test_depth_control_runs_and_differs_from_canny(tiny_engine: Engine) -> None:
    canny = tiny_engine.result(request(IMAGE, control=pb.CONTROL_KIND_CANNY, steps=3))
    depth = tiny_engine.result(request(IMAGE, control=pb.CONTROL_KIND_DEPTH, steps=3))
    again = tiny_engine.result(request(IMAGE, control=pb.CONTROL_KIND_DEPTH, steps=3))
    assert depth.image == again.image
    assert depth.image != canny.image
    # A scale of 0 switches the ControlNet off, which also changes the result.
    off = tiny_engine.result(request(IMAGE, conditioning_scale=0.0, steps=3))
    assert off.image != canny.image
    assert (depth.width, depth.height) == (canny.width, canny.height)


def test_progress_in_order_with_strength(tiny_engine: Engine) -> None:
    events = tiny_engine.stage(request(IMAGE, steps=10, strength=0.5))
    # img2img runs the last steps * strength of the schedule. Each step of
    # the model outlasts a message, but a stalled reader may coalesce two.
    steps = [e.progress.step for e in events[1:-1]]
    assert kinds(events) == ["accepted"] + ["progress"] * len(steps) + ["result"]
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert {e.progress.total for e in events[1:-1]} == {5}


@pytest.mark.parametrize(
    ("size", "long_side", "want"),
    [((120, 80), 96, (96, 64)), ((80, 120), 128, (88, 128)), ((300, 100), 64, (64, 24))],
)
def test_size_and_aspect(
    tiny_engine: Engine, size: tuple[int, int], long_side: int, want: tuple[int, int]
) -> None:
    result = tiny_engine.result(
        request(
            png(gradient(*size)),
            output_long_side=long_side,
            steps=2,
            strength=1.0,
            output_format=pb.IMAGE_FORMAT_JPEG,
            quality=80,
        )
    )
    out = decode(result.image)
    assert out.format == "JPEG"
    assert out.size == want == (result.width, result.height)


def test_default_long_side_and_webp(tiny_engine: Engine) -> None:
    result = tiny_engine.result(
        request(IMAGE, output_long_side=0, steps=2, output_format=pb.IMAGE_FORMAT_WEBP)
    )
    out = decode(result.image)
    assert (out.format, out.size) == ("WEBP", (128, 88))


def test_exif_orientation_applied(tiny_engine: Engine) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    buf = io.BytesIO()
    PICTURE.save(buf, "JPEG", exif=exif)
    result = tiny_engine.result(request(buf.getvalue(), output_long_side=96, steps=2))
    assert (result.width, result.height) == (64, 96)


def test_inpaint_keeps_pixels_outside_mask(tiny_engine: Engine) -> None:
    mask = Image.new("L", PICTURE.size, 0)
    mask.paste(255, (40, 20, 80, 60))
    result = tiny_engine.result(
        request(IMAGE, mask=png(mask), output_long_side=120, strength=1.0, steps=3)
    )
    out = np.asarray(decode(result.image)).astype(int)
    original = np.asarray(PICTURE).astype(int)  # already at the output size
    far = np.ones(out.shape[:2], bool)
    margin = 2 * 4 + 1  # twice the default feather, plus rounding
    far[20 - margin : 60 + margin, 40 - margin : 80 + margin] = False
    assert np.array_equal(out[far], original[far])
    # Inside, the model painted something else.
    assert np.abs(out[25:55, 45:75] - original[25:55, 45:75]).mean() > 10


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image": b"\xff\xd8\xff\xe0 truncated jpeg"}, pb.FAILURE_REASON_BAD_IMAGE),
        ({"mask": png(Image.new("L", (60, 40)))}, pb.FAILURE_REASON_MASK_SIZE_MISMATCH),
        ({"steps": 0}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"guidance_scale": math.nan}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"output_format": pb.IMAGE_FORMAT_UNSPECIFIED}, pb.FAILURE_REASON_UNSUPPORTED_FORMAT),
        ({"control": 7}, pb.FAILURE_REASON_CONTROL_UNAVAILABLE),
    ],
)
def test_bad_input(tiny_engine: Engine, change: dict, reason: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        tiny_engine.stage(request(IMAGE, **change))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == reason


def test_cancel_mid_run_frees_the_worker(tiny_engine: Engine) -> None:
    # Long enough that finishing instead of stopping would show: 100 steps at 256 px.
    call = tiny_engine.stub.Stage(
        request(png(gradient(256, 256)), steps=100, strength=1.0, output_long_side=256),
        timeout=120,
    )
    progress_at = []
    for event in call:
        if event.WhichOneof("event") == "progress":
            progress_at.append(time.monotonic())
            if len(progress_at) == 3:
                call.cancel()
                break
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    events = tiny_engine.stage(request(IMAGE, job_id="after-cancel", steps=2))
    assert kinds(events)[-1] == "result"
    # The next job waited for the cancelled one to reach its next step, not
    # for the 97 steps it had left. The bound is counted in this run's own
    # steps, so a loaded machine, which slows both, does not fail it.
    step_ms = (progress_at[-1] - progress_at[0]) * 1000 / (len(progress_at) - 1)
    queue_ms = events[0].accepted.queue_ms
    assert queue_ms < 25 * step_ms, f"waited {queue_ms:.0f} ms; a step took {step_ms:.0f} ms"
    # The worker logs the stop before it takes the next job; the wait is a
    # guard for a slow write, not a bound under test.
    deadline = time.monotonic() + 30
    while '"reason": "FAILURE_REASON_CANCELLED"' not in tiny_engine.logs() and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert '"msg": "job stopped"' in tiny_engine.logs()
    assert '"reason": "FAILURE_REASON_CANCELLED"' in tiny_engine.logs()


def test_stderr_is_json_lines(tiny_engine: Engine) -> None:
    lines = [line for line in tiny_engine.logs().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "msg"} <= set(entry)
    # Prompts stay out of logs below debug level.
    assert "a furnished room" not in tiny_engine.logs()


def test_model_dir_loads_offline_and_matches_tiny(tiny_engine: Engine) -> None:
    from inference import models, tiny

    folder = tempfile.mkdtemp(prefix="vsm")
    models.save_dir(tiny.build(), folder)
    # A long warm-up makes the NOT_SERVING phase long enough to observe.
    engine = start(
        [
            "--model-dir",
            folder,
            "--device",
            "cpu",
            *SMALL_LIMITS,
            "--warmup-steps",
            "50",
            "--default-long-side",
            "256",
        ],
        env={"HF_HUB_OFFLINE": "0"},
        wait_serving=None,
    )
    try:
        engine.wait_for(NOT_SERVING, 120)
        engine.wait_for(SERVING, 120)
        info = engine.stub.Info(pb.InfoRequest())
        assert info.model_rev.startswith("dir-")
        assert info.model_rev == models.dir_rev(folder)
        assert pb.CONTROL_KIND_DEPTH in info.control_kinds
        req = request(IMAGE, seed=3, output_long_side=96)
        loaded = np.asarray(decode(engine.result(req).image)).astype(int)
        built = np.asarray(decode(tiny_engine.result(req).image)).astype(int)
        # Same weights, but loaded tensors may take other CPU kernel paths:
        # equal up to float rounding, where other weights would differ wholesale.
        assert np.abs(loaded - built).max() <= 2
    finally:
        engine.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_concurrent_jobs_match_sequential(tiny_engine: Engine) -> None:
    reqs = [
        request(IMAGE, job_id=f"c{i}", seed=100 + i, steps=6, output_long_side=96) for i in range(3)
    ]
    want = [tiny_engine.result(r).image for r in reqs]
    engine = start(["--tiny-model", "--device", "cpu", "--concurrency", "3", *SMALL_LIMITS])
    try:
        got: dict[int, bytes] = {}

        def run(i: int) -> None:
            got[i] = engine.result(reqs[i]).image

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [got[i] for i in range(3)] == want
    finally:
        engine.close()


def test_fault_commands_mean_nothing_to_the_engine(tiny_engine: Engine) -> None:
    # Only the test engine reads them; the production engine runs the job.
    result = tiny_engine.result(request(IMAGE, steps=2), faults="crash")
    assert (result.width, result.height) == (64, 40)
    assert tiny_engine.proc.poll() is None


def test_warmup_renders_at_the_served_size(tiny_engine: Engine) -> None:
    ready = [
        json.loads(line)
        for line in tiny_engine.logs().splitlines()
        if '"msg": "engine ready"' in line
    ]
    assert len(ready) == 1
    # No --warmup-long-side: the default long side (128 here).
    assert ready[0]["warmup_long_side"] == 128
    assert ready[0]["import_s"] > 0 and ready[0]["ready_s"] >= ready[0]["warmup_s"]


@pytest.mark.parametrize(
    ("args", "env"),
    [([], {}), (["--tiny-model", "--model-dir", "/models"], {}), ([], {"MODEL_DIR": ""})],
)
def test_no_model_or_two_models_is_a_config_error(args: list[str], env: dict[str, str]) -> None:
    engine = start(args, env=env, wait_serving=None)
    try:
        assert engine.wait_exit(60) == 2
        lines = [line for line in engine.logs().splitlines() if line.strip()]
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert entry["msg"] == "bad configuration" and "MODEL_DIR" in entry["error"]
    finally:
        engine.close()
