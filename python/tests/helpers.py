"""Starting a real engine process on a real Unix socket, and talking to it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

from inference import config
from inference._proto import engine_pb2 as pb
from inference._proto import engine_pb2_grpc as pb_grpc
from inference.jobs import JobSpec

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Small sizes keep the tiny model fast on a 2-core CPU.
SMALL_LIMITS = ("--min-long-side", "64", "--max-long-side", "256", "--default-long-side", "128")

# The metadata key of a job's fault commands, read by the test engine only.
FAULT_KEY = "vstage-test-fault"


def small_settings(**kw: Any) -> config.Settings:
    """Settings for a backend called in process at 64 to 128 px (kw overrides)."""
    base: dict[str, Any] = {
        "socket": "unused",
        "device": "cpu",
        "min_long_side": 64,
        "default_long_side": 64,
        "max_long_side": 128,
    }
    return config.Settings(**(base | kw))


def job_spec(**kw: Any) -> JobSpec:
    """A guided 64 px canny img2img job at full strength (kw overrides)."""
    base: dict[str, Any] = {
        "job_id": "t",
        "prompt": "a furnished room",
        "negative_prompt": "blurry",
        "seed": 1,
        "strength": 1.0,
        "guidance_scale": 5.0,
        "steps": 2,
        "control": "canny",
        "conditioning_scale": 0.5,
        "long_side": 64,
        "output_format": "png",
        "quality": 90,
    }
    return JobSpec(**(base | kw))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def gradient(width: int, height: int) -> Image.Image:
    """A deterministic picture with edges, so Canny finds something."""
    img = Image.new("RGB", (width, height))
    px = img.load()
    assert px is not None
    for y in range(height):
        for x in range(width):
            px[x, y] = ((x * 7) % 256, (y * 5) % 256, ((x // 16 + y // 16) % 2) * 200)
    return img


def request(image: bytes, /, **kw: object) -> pb.StageRequest:
    base: dict[str, object] = {
        "job_id": "job-1",
        "image": image,
        "prompt": "a furnished room",
        "negative_prompt": "blurry",
        "seed": 1,
        "strength": 0.8,
        "guidance_scale": 5.0,
        "steps": 4,
        "conditioning_scale": 0.5,
        "output_long_side": 64,
        "output_format": pb.IMAGE_FORMAT_PNG,
    }
    base.update(kw)
    return pb.StageRequest(**base)  # type: ignore[arg-type]


def reason_of(err: grpc.RpcError) -> int:
    """Returns the FailureReason named by the ErrorInfo of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no status details in {err}"
    reasons = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "engine.vstage"
            reasons.append(pb.FailureReason.Value(info.reason))
    assert len(reasons) == 1
    return reasons[0]


def fault(commands: str) -> tuple[tuple[str, str], ...]:
    """Returns call metadata carrying fault commands for the test engine."""
    return ((FAULT_KEY, commands),)


@dataclass
class Engine:
    """A running engine process and clients for it."""

    proc: subprocess.Popen[bytes]
    socket: str
    workdir: str
    stderr_path: str
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            "unix:" + self.socket,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.stub = pb_grpc.EngineStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def health_status(self, timeout: float = 1.0) -> int | None:
        try:
            resp = self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(resp.status)

    def wait_for(self, status: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited {self.proc.returncode}:\n{self.logs()}")
            if self.health_status() == status:
                return
            time.sleep(0.05)
        raise AssertionError(f"health never reached {status}:\n{self.logs()}")

    def stage(
        self, req: pb.StageRequest, timeout: float = 60, faults: str = ""
    ) -> list[pb.StageEvent]:
        return list(
            self.stub.Stage(req, timeout=timeout, metadata=fault(faults) if faults else None)
        )

    def result(self, req: pb.StageRequest, timeout: float = 60, faults: str = "") -> pb.Result:
        events = self.stage(req, timeout, faults)
        assert events[-1].WhichOneof("event") == "result"
        return events[-1].result

    def logs(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            # SIGCONT first: a test may have left it stopped.
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    wait_serving: float | None = 120,
    module: str = "inference",
) -> Engine:
    """Starts `python -m MODULE` on a fresh socket; waits for SERVING unless None.

    MODULE is the engine (inference) or the fault-injecting test engine (enginetest).
    """
    # A short private directory: socket paths are limited to about 100 bytes.
    workdir = tempfile.mkdtemp(prefix="vse")
    sock = os.path.join(workdir, "engine.sock")
    stderr_path = os.path.join(workdir, "stderr.log")
    # OTEL_*: a test's traces go where it says, never to a collector the shell names.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "OTEL_"))}
    full_env.pop("MODEL_DIR", None)
    full_env.update(env or {})
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--socket", sock, *args],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    engine = Engine(proc=proc, socket=sock, workdir=workdir, stderr_path=stderr_path)
    if wait_serving is not None:
        try:
            engine.wait_for(SERVING, wait_serving)
        except BaseException:
            engine.close()
            raise
    return engine


def kinds(events: Iterable[pb.StageEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def start_test(
    args: Sequence[str], env: dict[str, str] | None = None, wait_serving: float | None = 120
) -> Engine:
    """Starts the test engine (python -m enginetest)."""
    return start(args, env, wait_serving, module="enginetest")
