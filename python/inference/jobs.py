"""What a backend gets (a validated job and a context) and what it returns."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from opentelemetry.util.types import AttributeValue
from PIL import Image

from . import errors, tracing
from ._proto import engine_pb2 as pb
from .config import Settings

CONTROL_NAMES = {
    pb.CONTROL_KIND_UNSPECIFIED: "canny",
    pb.CONTROL_KIND_CANNY: "canny",
    pb.CONTROL_KIND_DEPTH: "depth",
}
CONTROL_KINDS = {"canny": pb.CONTROL_KIND_CANNY, "depth": pb.CONTROL_KIND_DEPTH}
FORMAT_NAMES = {
    pb.IMAGE_FORMAT_JPEG: "jpeg",
    pb.IMAGE_FORMAT_PNG: "png",
    pb.IMAGE_FORMAT_WEBP: "webp",
}
FORMATS = {name: value for value, name in FORMAT_NAMES.items()}
POLICY_NAMES = {
    pb.CONTENT_POLICY_UNSPECIFIED: "off",
    pb.CONTENT_POLICY_OFF: "off",
    pb.CONTENT_POLICY_WARN: "warn",
    pb.CONTENT_POLICY_REJECT: "reject",
}

# Result.warnings, in the order the protocol promises.
WARN_PEOPLE = "people_detected"
WARN_STRUCTURE = "structure_check_failed"

DEFAULT_QUALITY = 90
MAX_JOB_ID_BYTES = 128
MAX_PROMPT_CHARS = 8192


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """JobSpec is a request with its numbers checked and its defaults filled in."""

    job_id: str
    prompt: str
    negative_prompt: str
    seed: int
    strength: float
    guidance_scale: float
    steps: int
    control: str
    conditioning_scale: float
    long_side: int
    output_format: str
    quality: int
    # content_policy is "off", "warn" or "reject". structure_min is 0 (no check)
    # or the lowest structure score a render may have; structure_retries is how
    # many more seeds a render below it may try.
    content_policy: str = "off"
    structure_min: float = 0.0
    structure_retries: int = 0
    # upscale_long_side is the final long side after the upscale phase; 0: none.
    upscale_long_side: int = 0


@dataclasses.dataclass
class Work:
    """Work is a job ready for a backend: the input resized to the output size.

    mask is binary L (255 = repaint) at the same size, or None for img2img.
    attempt counts the job's renders before this one (structure retries, whose
    spec has the next seed); backends need not read it.
    """

    spec: JobSpec
    image: Image.Image
    mask: Image.Image | None
    attempt: int = 0


@dataclasses.dataclass
class Output:
    """Output is a backend's answer: an RGB image of the Work's size.

    A backend times its steps with JobContext.phase, not here.
    """

    image: Image.Image
    peak_gpu_memory_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """BackendInfo is what Info reports about the loaded backend."""

    model_rev: str
    device: str
    dtype: str
    versions: dict[str, str]
    control_kinds: tuple[str, ...]


# Phase names: the Timings fields and the spans under a job's Stage span.
QUEUE = "queue"
DECODE = "decode"
PREPROCESS = "preprocess"
DENOISE = "denoise"
VAE_DECODE = "vae_decode"
ENCODE = "encode"
CONTENT_CHECK = "content_check"
STRUCTURE_CHECK = "structure_check"
UPSCALE = "upscale"


class Phase:
    """Phase is one timed step of a job, from its creation to end().

    Its time is added to the job's timings under its name and, when spans are
    exported, the same interval is a span under the Stage span: both come from
    one pair of clock readings, so a Timings field and its spans always agree.
    """

    def __init__(
        self,
        name: str,
        timings: dict[str, float],
        trace: tracing.JobTrace,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self.name = name
        self.ms = 0.0
        self._timings = timings
        self._span = None
        self._wall = 0
        if trace.recording:
            # Span times are wall-clock; the duration below is monotonic.
            self._wall = time.time_ns()
            self._span = trace.start_phase(name, self._wall, attributes)
        self._start = time.monotonic_ns()
        self._open = True

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Adds attributes learnt during the phase to its span, when there is one."""
        if self._span is not None:
            self._span.set_attributes(attributes)

    def end(self, exc: BaseException | None = None) -> float:
        """Ends the phase (a failed one when exc is given); returns its milliseconds.

        Only the first call counts.
        """
        if not self._open:
            return self.ms
        self._open = False
        elapsed = time.monotonic_ns() - self._start
        self.ms = elapsed / 1e6
        self._timings[self.name] = self._timings.get(self.name, 0.0) + self.ms
        if self._span is not None:
            tracing.end_phase(self._span, self._wall + elapsed, exc)
        return self.ms


class JobContext:
    """JobContext links a running job to its RPC: progress out, cancellation and metadata in.

    metadata is the call's request metadata, for backends that act on it; the
    model backend reads none. trace is the job's place in its caller's trace
    (tracing.UNTRACED for the engine's own jobs); timings holds each phase's
    milliseconds, summed when a phase runs more than once.
    """

    def __init__(
        self,
        cancelled: threading.Event,
        reason: Callable[[], errors.Reason],
        progress: Callable[[int, int], None],
        metadata: Mapping[str, str] | None = None,
        trace: tracing.JobTrace = tracing.UNTRACED,
    ) -> None:
        self._cancelled = cancelled
        self._reason = reason
        self._progress = progress
        self.metadata: Mapping[str, str] = metadata or {}
        self.trace = trace
        self.timings: dict[str, float] = {}

    def begin(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Phase:
        """Starts a phase that ends in another block or thread (the queue)."""
        return Phase(name, self.timings, self.trace, attributes)

    @contextlib.contextmanager
    def phase(
        self, name: str, attributes: Mapping[str, AttributeValue] | None = None
    ) -> Iterator[Phase]:
        """Times the block as the phase name (see Phase)."""
        p = self.begin(name, attributes)
        try:
            yield p
        except BaseException as exc:
            p.end(exc)
            raise
        p.end()

    def ms(self, name: str) -> float:
        """The milliseconds the job spent in phase name so far."""
        return self.timings.get(name, 0.0)

    def check(self) -> None:
        """Raises JobCancelled when the RPC has ended."""
        if self._cancelled.is_set():
            raise errors.JobCancelled(self._reason())

    def progress(self, step: int, total: int) -> None:
        """Reports a finished step (1-based), then stops the job if the RPC has ended."""
        self._progress(step, total)
        self.check()

    def sleep(self, seconds: float) -> None:
        """Waits, waking at once to raise JobCancelled when the RPC ends."""
        if self._cancelled.wait(seconds):
            raise errors.JobCancelled(self._reason())


class Backend(Protocol):
    """Backend turns Work into an Output. One backend serves every job; run() may
    be called from several threads at once (ENGINE_CONCURRENCY), so per-job state
    lives in run()'s locals."""

    name: str

    def load(self) -> None:
        """Loads the model; called once, before warmup()."""

    def warmup(self) -> None:
        """Runs one small job so the first real job pays no first-call costs."""

    def info(self) -> BackendInfo:
        """Describes what was loaded; valid after load()."""
        ...

    def run(self, work: Work, ctx: JobContext) -> Output:
        """Runs one job. Raises EngineError or JobCancelled on failure."""
        ...

    def upscale(
        self, image: Image.Image, work: Work, size: tuple[int, int], ctx: JobContext
    ) -> Output:
        """Brings run()'s image (after any mask composite) to size, larger than
        the Work's, within the server's upscale phase. Raises like run()."""
        ...


def _finite_in(value: float, lo: float, hi: float, name: str, lo_open: bool = False) -> float:
    ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE, f"{name} must be in {left}{lo:g}, {hi:g}]"
        )
    return float(value)


def validate(req: pb.StageRequest, settings: Settings, control_kinds: tuple[str, ...]) -> JobSpec:
    """Checks every field of req against the engine's limits; raises EngineError."""
    check_job_id(req.job_id)
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name)) > MAX_PROMPT_CHARS:
            raise errors.invalid(
                pb.FAILURE_REASON_OUT_OF_RANGE,
                f"{name} is longer than {MAX_PROMPT_CHARS} characters",
            )
    strength = _finite_in(req.strength, 0.0, 1.0, "strength", lo_open=True)
    guidance = _finite_in(req.guidance_scale, 0.0, 30.0, "guidance_scale")
    cond = _finite_in(req.conditioning_scale, 0.0, 2.0, "conditioning_scale")
    if not 1 <= req.steps <= settings.max_steps:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE, f"steps must be in [1, {settings.max_steps}]"
        )
    # img2img runs only the last steps*strength steps; zero of them is no job.
    if int(req.steps * strength) < 1:
        raise errors.invalid(pb.FAILURE_REASON_OUT_OF_RANGE, "steps * strength must be at least 1")
    long_side = req.output_long_side or settings.default_long_side
    lo, hi = settings.min_long_side, settings.max_long_side
    if long_side % 8 or not lo <= long_side <= hi:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE,
            f"output_long_side must be a multiple of 8 in [{lo}, {hi}], or 0",
        )
    upscale = _upscale_long_side(req.upscale_long_side, long_side, settings)
    fmt = FORMAT_NAMES.get(req.output_format)
    if fmt is None:
        raise errors.invalid(
            pb.FAILURE_REASON_UNSUPPORTED_FORMAT, "output_format must be JPEG, PNG or WEBP"
        )
    quality = req.quality or DEFAULT_QUALITY
    if not 1 <= quality <= 100:
        raise errors.invalid(pb.FAILURE_REASON_OUT_OF_RANGE, "quality must be in [1, 100], or 0")
    policy = POLICY_NAMES.get(req.content_policy)
    if policy is None:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE, "content_policy must be OFF, WARN or REJECT"
        )
    structure_min = _finite_in(req.structure_min, 0.0, 1.0, "structure_min")
    retries = settings.max_structure_retries
    if req.structure_retries > retries:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE, f"structure_retries must be in [0, {retries}]"
        )
    control = CONTROL_NAMES.get(req.control)
    if control is None or control not in control_kinds:
        raise errors.invalid(
            pb.FAILURE_REASON_CONTROL_UNAVAILABLE, f"control must be one of {list(control_kinds)}"
        )
    return JobSpec(
        job_id=req.job_id,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        seed=req.seed,
        strength=strength,
        guidance_scale=guidance,
        steps=req.steps,
        control=control,
        conditioning_scale=cond,
        long_side=long_side,
        output_format=fmt,
        quality=quality,
        content_policy=policy,
        structure_min=structure_min,
        # Without a check there is nothing to retry for.
        structure_retries=req.structure_retries if structure_min > 0 else 0,
        upscale_long_side=upscale,
    )


def _upscale_long_side(value: int, long_side: int, settings: Settings) -> int:
    if value == 0:
        return 0
    limit = settings.max_upscale_long_side
    if limit == 0:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE,
            "upscale_long_side must be 0: this engine does not upscale "
            "(its max_upscale_long_side is 0)",
        )
    if value % 8 or not long_side < value <= limit:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE,
            f"upscale_long_side must be a multiple of 8 above the output long side "
            f"({long_side}) and at most {limit}, or 0",
        )
    return value


def check_job_id(job_id: str) -> None:
    """Raises EngineError when job_id is over MAX_JOB_ID_BYTES."""
    if len(job_id.encode()) > MAX_JOB_ID_BYTES:
        raise errors.invalid(
            pb.FAILURE_REASON_OUT_OF_RANGE, f"job_id is longer than {MAX_JOB_ID_BYTES} bytes"
        )
