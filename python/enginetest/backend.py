"""A torch-free stand-in for the model: it inverts images and obeys fault commands."""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import threading
import time

import numpy as np
from opentelemetry.util.types import AttributeValue
from PIL import Image, ImageOps

from inference import errors, imageio, logs
from inference.jobs import DENOISE, VAE_DECODE, BackendInfo, JobContext, Output, Work

from . import faults

MODEL_REV = "test-invert-v1"
HOLD_POLL = 0.02


@dataclasses.dataclass(frozen=True)
class Options:
    """Options are the test engine's own start-up settings.

    start_delay is the warm-up's length in seconds, step_delay each step's;
    never_ready makes the warm-up block forever (health stays NOT_SERVING);
    job_faults apply to every job whose call carries no fault commands, so
    that tests through the sidecar, which sends none, can use them.
    """

    start_delay: float = 0.0
    step_delay: float = 0.0
    never_ready: bool = False
    job_faults: faults.Faults = dataclasses.field(default_factory=faults.Faults)


class FaultBackend:
    """FaultBackend inverts images (deterministic and easy to check), streams one
    progress event per step, and obeys the fault commands of faults.KEY."""

    name = "test"

    def __init__(self, options: Options) -> None:
        self._options = options

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        if self._options.never_ready:
            logs.get().warning("test start fault: staying NOT_SERVING")
            threading.Event().wait()
        if self._options.start_delay:
            time.sleep(self._options.start_delay)

    def info(self) -> BackendInfo:
        return BackendInfo(
            model_rev=MODEL_REV,
            device="cpu",
            dtype="uint8",
            versions={"python": platform.python_version()},
            control_kinds=("canny", "depth"),
        )

    def run(self, work: Work, ctx: JobContext) -> Output:
        f = faults.parse(ctx.metadata) if faults.KEY in ctx.metadata else self._options.job_faults
        if f:
            logs.get().warning(
                "test fault", extra=logs.fields(job_id=work.spec.job_id, faults=str(f))
            )
        if f.crash is not None:
            _crash(f.crash)
        if f.hang is not None:
            _hang(f.hang)
        if f.hold is None:
            return self._steps(work, ctx, f)
        with open(os.path.join(f.hold, "running"), "w"):
            pass
        try:
            return self._steps(work, ctx, f)
        except errors.JobCancelled:
            release = os.path.join(f.hold, "release")
            while not os.path.exists(release):
                time.sleep(HOLD_POLL)
            raise

    def _steps(self, work: Work, ctx: JobContext, f: faults.Faults) -> Output:
        spec = work.spec
        steps = spec.steps
        step_delay = self._options.step_delay if f.sleep is None else f.sleep / steps
        width, height = work.image.size
        # The model backend's phases and attributes, so that tests of the
        # sidecar see the spans a real job makes.
        attributes: dict[str, AttributeValue] = {
            "vstage.steps": steps,
            "vstage.width": width,
            "vstage.height": height,
            "vstage.strength": spec.strength,
            "vstage.guidance_scale": spec.guidance_scale,
            "vstage.control": spec.control,
            "vstage.inpaint": work.mask is not None,
        }
        with ctx.phase(DENOISE, attributes):
            for step in range(1, steps + 1):
                if step_delay:
                    ctx.sleep(step_delay)
                ctx.progress(step, steps)
                if f.oom:
                    raise errors.out_of_memory()
        with ctx.phase(VAE_DECODE):
            image = ImageOps.invert(work.image)
            if f.shifts(work.attempt):
                # The edges the structure check compares move with the pixels.
                pixels = np.roll(np.asarray(image), (f.shift, f.shift), axis=(0, 1))
                image = Image.fromarray(pixels)
        return Output(image=image)

    def upscale(
        self, image: Image.Image, work: Work, size: tuple[int, int], ctx: JobContext
    ) -> Output:
        """Resamples only: the sidecar's tests need the size and the phase, not a model."""
        ctx.check()
        return Output(image=imageio.resize(image, size))


def _crash(value: str) -> None:
    # Flush nothing and run no handlers: the point is an abrupt death.
    if value == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        code = int(value) if value else faults.DEFAULT_CRASH_CODE
    except ValueError:
        code = faults.DEFAULT_CRASH_CODE
    os._exit(code)


def _hang(value: str) -> None:
    if value == "process":
        os.kill(os.getpid(), signal.SIGSTOP)
    # Blocks this job forever and ignores cancellation, as a wedged CUDA call would.
    threading.Event().wait()
