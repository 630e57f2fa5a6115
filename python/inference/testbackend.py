"""A torch-free stand-in for the model, for the sidecar's integration and chaos tests.

It inverts the image (deterministic and easy to check), streams one progress
event per step and, only when the engine was started with --test-faults, obeys
the fault commands carried in StageRequest.test_faults.
"""

from __future__ import annotations

import os
import platform
import signal
import threading
import time

from PIL import ImageOps

from . import errors, logs
from .config import Settings
from .jobs import BackendInfo, JobContext, Output, Work

MODEL_REV = "test-invert-v1"
DEFAULT_CRASH_CODE = 70


class TestBackend:
    """TestBackend inverts images; see the module doc."""

    name = "test"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        if self._settings.test_start_delay:
            time.sleep(self._settings.test_start_delay)

    def info(self) -> BackendInfo:
        return BackendInfo(
            model_rev=MODEL_REV,
            device="cpu",
            dtype="uint8",
            versions={"python": platform.python_version()},
            control_kinds=("canny", "depth"),
        )

    def run(self, work: Work, ctx: JobContext) -> Output:
        faults = work.spec.faults
        if faults:
            logs.get().warning("test fault", extra=logs.fields(job_id=work.spec.job_id, **faults))
        if "crash" in faults:
            _crash(faults["crash"])
        if "hang" in faults:
            _hang(faults["hang"])
        steps = work.spec.steps
        step_delay = self._settings.test_step_delay
        if "sleep" in faults:
            step_delay = _seconds(faults["sleep"]) / steps
        start = time.monotonic()
        for step in range(1, steps + 1):
            if step_delay:
                ctx.sleep(step_delay)
            ctx.progress(step, steps)
            if "oom" in faults:
                raise errors.out_of_memory()
        denoise_ms = (time.monotonic() - start) * 1000
        return Output(image=ImageOps.invert(work.image), denoise_ms=denoise_ms)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise errors.invalid(errors.OUT_OF_RANGE, "test_faults sleep must be seconds in [0, 3600]")
    return value


def _crash(value: str) -> None:
    # Flush nothing and run no handlers: the point is an abrupt death.
    if value == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        code = int(value) if value else DEFAULT_CRASH_CODE
    except ValueError:
        code = DEFAULT_CRASH_CODE
    os._exit(code)


def _hang(value: str) -> None:
    if value == "process":
        os.kill(os.getpid(), signal.SIGSTOP)
    # Blocks this job forever and ignores cancellation, as a wedged CUDA call would.
    threading.Event().wait()
