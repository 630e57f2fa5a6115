"""The engine server with the test engine's torch-free backend over a real socket:
protocol, Cancel, faults and process lifecycle."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image, ImageOps

from helpers import (
    FAULT_KEY,
    NOT_SERVING,
    SERVING,
    SMALL_LIMITS,
    Engine,
    decode,
    fault,
    gradient,
    kinds,
    png,
    reason_of,
    request,
    start_test,
)
from inference._proto import engine_pb2 as pb

IMAGE = png(gradient(96, 48))


def test_stream_order_and_result(test_engine: Engine) -> None:
    events = test_engine.stage(request(IMAGE, steps=5, strength=1.0))
    # Instant steps may be coalesced: at least the last is sent, in order.
    assert kinds(events)[0] == "accepted" and kinds(events)[-1] == "result"
    steps = [(e.progress.step, e.progress.total) for e in events[1:-1]]
    assert kinds(events)[1:-1] == ["progress"] * len(steps)
    assert steps == sorted(set(steps)) and steps[-1] == (5, 5) and {t for _, t in steps} == {5}
    accepted, result = events[0].accepted, events[-1].result
    assert (accepted.job_id, accepted.width, accepted.height) == ("job-1", 64, 32)
    assert (result.width, result.height, result.format) == (64, 32, pb.IMAGE_FORMAT_PNG)
    assert result.model_rev == "test-invert-v1"
    assert result.seed == 1
    assert result.timings.total_ms > 0
    out = decode(result.image)
    assert out.format == "PNG" and out.size == (64, 32)
    expected = ImageOps.invert(gradient(96, 48).resize((64, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_inpaint_keeps_pixels_outside_mask(test_engine: Engine) -> None:
    mask = Image.new("L", (96, 48), 0)
    mask.paste(255, (30, 10, 60, 30))
    result = test_engine.result(request(IMAGE, mask=png(mask), output_long_side=96))
    out = np.asarray(decode(result.image)).astype(int)
    original = np.asarray(gradient(96, 48)).astype(int)
    # Inside: inverted; well outside (feather 4 -> at most 8 px of blend): untouched.
    assert np.array_equal(out[12:28, 32:58], 255 - original[12:28, 32:58])
    outside = np.ones((48, 96), bool)
    outside[10 - 9 : 30 + 9, 30 - 9 : 60 + 9] = False
    assert np.array_equal(out[outside], original[outside])
    # The seam is a blend: some pixel next to the mask is neither.
    seam = out[20, 60:66]
    assert not np.array_equal(seam, original[20, 60:66])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image": b"not an image"}, pb.FAILURE_REASON_BAD_IMAGE),
        ({"image": b""}, pb.FAILURE_REASON_BAD_IMAGE),
        ({"image": b"GIF89a" + bytes(40)}, pb.FAILURE_REASON_BAD_IMAGE),
        ({"mask": png(Image.new("L", (95, 48)))}, pb.FAILURE_REASON_MASK_SIZE_MISMATCH),
        ({"steps": 0}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"steps": 101}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"strength": math.nan}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"strength": 0.0}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"strength": 0.1, "steps": 5}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"guidance_scale": math.inf}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"conditioning_scale": -0.5}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"output_long_side": 60}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"output_long_side": 512}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"output_format": pb.IMAGE_FORMAT_UNSPECIFIED}, pb.FAILURE_REASON_UNSUPPORTED_FORMAT),
        ({"output_format": 42}, pb.FAILURE_REASON_UNSUPPORTED_FORMAT),
        ({"quality": 101}, pb.FAILURE_REASON_OUT_OF_RANGE),
        ({"control": 9}, pb.FAILURE_REASON_CONTROL_UNAVAILABLE),
        ({"job_id": "x" * 129}, pb.FAILURE_REASON_OUT_OF_RANGE),
    ],
)
def test_bad_input_is_invalid_argument(test_engine: Engine, change: dict, reason: int) -> None:
    with pytest.raises(grpc.RpcError) as info:
        test_engine.stage(request(IMAGE, **change))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == reason
    assert "Traceback" not in (info.value.details() or "")


def test_pixel_cap_checked_on_header() -> None:
    engine = start_test(["--max-input-pixels", "5000", *SMALL_LIMITS])
    try:
        with pytest.raises(grpc.RpcError) as info:
            engine.stage(request(png(Image.new("RGB", (100, 51)))))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(info.value) == pb.FAILURE_REASON_IMAGE_TOO_LARGE
        assert engine.result(request(png(Image.new("RGB", (100, 50))))).width == 64
    finally:
        engine.close()


@pytest.mark.parametrize("commands", ["explode=1", "sleep=soon", "hang=forever"])
def test_bad_fault_commands_are_invalid_argument(test_engine: Engine, commands: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        test_engine.stage(request(IMAGE), faults=commands)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == pb.FAILURE_REASON_OUT_OF_RANGE
    assert FAULT_KEY in (info.value.details() or "")


def test_oom_fault_then_next_job_runs(test_engine: Engine) -> None:
    got: list[pb.StageEvent] = []
    with pytest.raises(grpc.RpcError) as info:
        for event in test_engine.stub.Stage(request(IMAGE), timeout=10, metadata=fault("oom")):
            got.append(event)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(info.value) == pb.FAILURE_REASON_OOM
    assert kinds(got) == ["accepted", "progress"]
    assert test_engine.result(request(IMAGE)).width == 64


def test_cancel_stops_sleeping_job(test_engine: Engine) -> None:
    call = test_engine.stub.Stage(request(IMAGE, steps=10), metadata=fault("sleep=30"))
    first = next(call)
    assert first.WhichOneof("event") == "accepted"
    t0 = time.monotonic()
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    # The slot is free again well before the 30 s job would have ended.
    result = test_engine.result(request(IMAGE), timeout=10)
    assert result.width == 64
    assert time.monotonic() - t0 < 8
    assert '"reason": "FAILURE_REASON_CANCELLED"' in test_engine.logs()


def test_deadline_stops_sleeping_job(test_engine: Engine) -> None:
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        test_engine.stage(request(IMAGE, steps=10), timeout=1.0, faults="sleep=30")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert test_engine.result(request(IMAGE), timeout=10).width == 64
    assert time.monotonic() - t0 < 8
    assert '"reason": "FAILURE_REASON_DEADLINE"' in test_engine.logs()


def test_sleep_fault_streams_progress(test_engine: Engine) -> None:
    t0 = time.monotonic()
    events = test_engine.stage(request(IMAGE, steps=4), faults="sleep=0.8")
    assert time.monotonic() - t0 >= 0.8
    assert kinds(events) == ["accepted"] + ["progress"] * 4 + ["result"]


@pytest.mark.parametrize(
    ("commands", "code"), [("crash", 70), ("crash=9", 9), ("crash=kill", -signal.SIGKILL)]
)
def test_crash_fault_exits_and_fails_call(commands: str, code: int) -> None:
    engine = start_test([*SMALL_LIMITS])
    try:
        with pytest.raises(grpc.RpcError) as info:
            engine.stage(request(IMAGE), timeout=20, faults=commands)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert engine.wait_exit(10) == code
    finally:
        engine.close()


def test_hang_job_ignores_cancel_but_health_answers() -> None:
    engine = start_test([*SMALL_LIMITS])
    try:
        with pytest.raises(grpc.RpcError) as info:
            engine.stage(request(IMAGE, job_id="hung"), timeout=1.0, faults="hang")
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert engine.health_status() == SERVING
        # The only slot is wedged: the next job cannot start.
        with pytest.raises(grpc.RpcError) as info:
            engine.stage(request(IMAGE), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Cancel does not claim that the hung job let go of its worker.
        with pytest.raises(grpc.RpcError) as info:
            engine.stub.Cancel(pb.CancelRequest(job_id="hung"), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert engine.health_status() == SERVING
        assert engine.proc.poll() is None
    finally:
        engine.close()


def test_cancel_stops_a_running_job_and_frees_its_worker(test_engine: Engine) -> None:
    call = test_engine.stub.Stage(
        request(IMAGE, job_id="run-1", steps=10), timeout=60, metadata=fault("sleep=30")
    )
    assert next(call).WhichOneof("event") == "accepted"
    resp = test_engine.stub.Cancel(pb.CancelRequest(job_id="run-1"), timeout=10)
    assert resp.outcome == pb.CancelResponse.OUTCOME_STOPPED
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert reason_of(info.value) == pb.FAILURE_REASON_CANCELLED
    # One worker, and it is free: the next job runs long before the 30 s job would end.
    assert test_engine.result(request(IMAGE, job_id="run-2"), timeout=10).width == 64


def test_cancel_after_the_caller_left(test_engine: Engine) -> None:
    call = test_engine.stub.Stage(
        request(IMAGE, job_id="left-1", steps=10), timeout=60, metadata=fault("sleep=30")
    )
    assert next(call).WhichOneof("event") == "accepted"
    call.cancel()
    resp = test_engine.stub.Cancel(pb.CancelRequest(job_id="left-1"), timeout=10)
    # Stopped by Cancel, or already stopped by the call's end: either way it let go.
    assert resp.outcome in (
        pb.CancelResponse.OUTCOME_STOPPED,
        pb.CancelResponse.OUTCOME_UNKNOWN,
    )
    assert test_engine.result(request(IMAGE, job_id="left-2"), timeout=10).width == 64


def test_cancel_takes_a_queued_job_out_of_the_queue() -> None:
    engine = start_test(["--concurrency", "1", *SMALL_LIMITS])
    try:
        # The only worker hangs for good, so the queued job can never reach one.
        hung = engine.stub.Stage(request(IMAGE, job_id="hung"), metadata=fault("hang"))
        assert next(hung).WhichOneof("event") == "accepted"
        queued = engine.stub.Stage(request(IMAGE, job_id="queued"), timeout=60)
        deadline = time.monotonic() + 20
        while '"job_id": "queued"' not in engine.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        resp = engine.stub.Cancel(pb.CancelRequest(job_id="queued"), timeout=20)
        assert resp.outcome == pb.CancelResponse.OUTCOME_STOPPED
        with pytest.raises(grpc.RpcError) as info:
            list(queued)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        assert '"msg": "job done", "logger": "inference", "job_id": "queued"' not in engine.logs()
        hung.cancel()
    finally:
        engine.close()


def test_cancel_of_an_unknown_id_refuses_its_later_stage(test_engine: Engine) -> None:
    resp = test_engine.stub.Cancel(pb.CancelRequest(job_id="late-1"), timeout=10)
    assert resp.outcome == pb.CancelResponse.OUTCOME_UNKNOWN
    with pytest.raises(grpc.RpcError) as info:
        test_engine.stage(request(IMAGE, job_id="late-1"))
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert reason_of(info.value) == pb.FAILURE_REASON_CANCELLED
    assert '"msg": "job queued", "logger": "inference", "job_id": "late-1"' not in (
        test_engine.logs()
    )
    # The remembered id refused one call; the next one with it runs.
    assert test_engine.result(request(IMAGE, job_id="late-1")).width == 64


@pytest.mark.parametrize("job_id", ["", "x" * 129])
def test_cancel_checks_the_job_id(test_engine: Engine, job_id: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        test_engine.stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == pb.FAILURE_REASON_OUT_OF_RANGE


def test_hang_process_stops_health() -> None:
    engine = start_test([*SMALL_LIMITS])
    try:
        call = engine.stub.Stage(request(IMAGE), timeout=30, metadata=fault("hang=process"))
        deadline = time.monotonic() + 10
        while _state(engine.proc.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(engine.proc.pid) == "T"
        assert engine.health_status(timeout=0.5) is None
        call.cancel()
    finally:
        engine.close()


def test_start_fault_crash() -> None:
    engine = start_test(["--start-fault", "crash"], wait_serving=None)
    try:
        assert engine.wait_exit(20) == 3
        assert not os.path.exists(engine.socket)
    finally:
        engine.close()


def test_health_not_serving_until_warm_then_serving() -> None:
    engine = start_test(["--start-delay", "2", *SMALL_LIMITS], wait_serving=None)
    try:
        engine.wait_for(NOT_SERVING, 20)
        assert engine.stub.Info(pb.InfoRequest()).ready is False
        with pytest.raises(grpc.RpcError) as info:
            engine.stage(request(IMAGE))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(info.value) == pb.FAILURE_REASON_NOT_READY
        engine.wait_for(SERVING, 20)
        assert engine.stub.Info(pb.InfoRequest()).ready is True
    finally:
        engine.close()


def test_never_ready_start_fault() -> None:
    engine = start_test(["--start-fault", "never-ready"], wait_serving=None)
    try:
        engine.wait_for(NOT_SERVING, 20)
        time.sleep(1)
        assert engine.health_status() == NOT_SERVING
    finally:
        engine.close()


def test_concurrency_runs_jobs_side_by_side() -> None:
    for concurrency, overlap in ((2, True), (1, False)):
        engine = start_test(["--concurrency", str(concurrency), *SMALL_LIMITS])
        try:
            spans: dict[str, tuple[float, float]] = {}

            def run(name: str, eng: Engine = engine, spans: dict = spans) -> None:
                t0 = time.monotonic()
                events = eng.stage(request(IMAGE, job_id=name, steps=2), faults="sleep=1")
                assert kinds(events)[-1] == "result"
                spans[name] = (t0, time.monotonic())

            threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ends = sorted(end for _, end in spans.values())
            starts = min(start for start, _ in spans.values())
            # Side by side both finish after about 1 s; one at a time, the last after 2 s.
            assert ((ends[1] - starts) < 1.8) is overlap, (concurrency, spans)
        finally:
            engine.close()


def test_sigterm_exits_cleanly_and_removes_socket() -> None:
    engine = start_test([*SMALL_LIMITS])
    try:
        engine.proc.send_signal(signal.SIGTERM)
        assert engine.wait_exit(15) == 0
        assert not os.path.exists(engine.socket)
    finally:
        engine.close()


def test_exits_when_socket_removed() -> None:
    engine = start_test([*SMALL_LIMITS])
    try:
        os.unlink(engine.socket)
        assert engine.wait_exit(10) == 0
        assert '"reason": "socket removed"' in engine.logs()
    finally:
        engine.close()


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "enginetest", "--socket", sys.argv[1]],
                         stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_exits_when_parent_dies() -> None:
    workdir = tempfile.mkdtemp(prefix="vse")
    sock = os.path.join(workdir, "e.sock")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, sock], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(sock)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0]
    except FileNotFoundError:
        return "gone"


def _alive(pid: int) -> bool:
    # The orphan is reaped by init, not by us; a zombie counts as gone.
    return _state(pid) not in ("Z", "gone")


def test_socket_is_private(test_engine: Engine) -> None:
    assert os.stat(test_engine.socket).st_mode & 0o777 == 0o600


def test_test_engine_loads_no_torch(test_engine: Engine) -> None:
    with open(f"/proc/{test_engine.proc.pid}/maps") as f:
        maps = f.read()
    assert "libtorch" not in maps
    assert "libc" in maps  # the check reads a real map


def test_queued_job_whose_deadline_passes_never_runs(test_engine: Engine) -> None:
    first = test_engine.stub.Stage(
        request(IMAGE, job_id="long", steps=2), timeout=20, metadata=fault("sleep=1.5")
    )
    assert next(first).WhichOneof("event") == "accepted"
    with pytest.raises(grpc.RpcError) as info:
        test_engine.stage(request(IMAGE, job_id="queued"), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert kinds(list(first))[-1] == "result"
    assert test_engine.result(request(IMAGE, job_id="next")).width == 64
    log = test_engine.logs()
    assert '"job_id": "queued", "reason": "FAILURE_REASON_DEADLINE"' in log
    assert '"msg": "job done", "logger": "inference", "job_id": "queued"' not in log


def test_messages_larger_than_grpc_default(test_engine: Engine) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    data = png(Image.fromarray(noise, "RGB"))
    assert len(data) > 8 << 20  # twice gRPC's default 4 MiB limit
    result = test_engine.result(request(data, output_long_side=256))
    assert (result.width, result.height) == (256, 192)


def test_refuses_to_replace_a_regular_file() -> None:
    workdir = tempfile.mkdtemp(prefix="vse")
    path = os.path.join(workdir, "engine.sock")
    with open(path, "w") as f:
        f.write("keep me")
    proc = subprocess.run(
        [sys.executable, "-m", "enginetest", "--socket", path],
        capture_output=True,
        timeout=60,
        check=False,
    )
    try:
        assert proc.returncode == 2
        assert b'"msg": "cannot listen"' in proc.stderr
        with open(path) as f:
            assert f.read() == "keep me"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_replaces_a_stale_socket() -> None:
    import socket

    workdir = tempfile.mkdtemp(prefix="vse")
    path = os.path.join(workdir, "engine.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, as after a killed engine
    proc = subprocess.Popen(
        [sys.executable, "-m", "enginetest", "--socket", path],
        stderr=subprocess.DEVNULL,
    )
    try:
        engine = Engine(proc=proc, socket=path, workdir=workdir, stderr_path=os.devnull)
        engine.wait_for(SERVING, 30)
        engine.channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["--start-fault", "explode"],
        ["--start-delay", "-1"],
        ["--step-delay", "soon"],
        ["--job-faults", "shift=-3"],
        ["--job-faults", "explode"],
    ],
)
def test_bad_test_flags_exit_with_the_config_code(argv: list[str]) -> None:
    from enginetest import main as test_main

    from inference import main as engine_main

    assert test_main.run(["--socket", "/unused.sock", *argv], {}) == engine_main.EXIT_CONFIG
