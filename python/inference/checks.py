"""The checks around every job's render, whatever the backend: the content
policy before denoising, and the structure check (with its retries) after.

The structure score is the quality loop's own (quality.metrics.structure_score),
so a threshold read off the quality reports means the same here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import grpc
import numpy as np

from quality.metrics import structure_score

from . import content, errors, logs
from ._proto import engine_pb2 as pb
from .jobs import (
    CONTENT_CHECK,
    STRUCTURE_CHECK,
    WARN_PEOPLE,
    WARN_STRUCTURE,
    JobContext,
    Output,
    Work,
)

# Seeds are 64-bit in the protocol; a retry past the top wraps to 0.
SEED_SPACE = 2**64


def check_content(work: Work, ctx: JobContext) -> list[str]:
    """Applies the job's content policy to its input; returns its warnings.

    Raises EngineError FAILED_PRECONDITION CONTENT_REJECTED under "reject" when
    the input shows a face or a person. The decision is logged with the
    detector counts, never with anything of the image.
    """
    spec = work.spec
    if spec.content_policy == "off":
        return []
    with ctx.phase(CONTENT_CHECK, {"vstage.content.policy": spec.content_policy}) as phase:
        found = content.detector().detect(work.image)
        decision = "pass"
        if found.found:
            decision = "reject" if spec.content_policy == "reject" else "warn"
        phase.set_attributes(
            {
                "vstage.content.decision": decision,
                "vstage.content.faces": found.faces,
                "vstage.content.profiles": found.profiles,
                "vstage.content.people": found.people,
            }
        )
    logs.get().info(
        "content check",
        extra=logs.fields(
            job_id=spec.job_id,
            policy=spec.content_policy,
            decision=decision,
            faces=found.faces,
            profiles=found.profiles,
            people=found.people,
            ms=round(phase.ms, 1),
        ),
    )
    if decision == "reject":
        raise errors.EngineError(
            grpc.StatusCode.FAILED_PRECONDITION,
            pb.FAILURE_REASON_CONTENT_REJECTED,
            "the photo shows people; the content policy refuses photos with faces or people",
        )
    return [WARN_PEOPLE] if decision == "warn" else []


@dataclasses.dataclass
class Rendered:
    """Rendered is the render a job answers with.

    work is the job as rendered (its spec's seed the one that made output);
    score its structure score, None when the job asked for no check or its mask
    left nothing to judge; attempts the renders made; warnings holds
    "structure_check_failed" when no render passed.
    """

    output: Output
    work: Work
    score: float | None
    attempts: int
    warnings: list[str]

    @property
    def seed(self) -> int:
        """The seed of the answered render."""
        return self.work.spec.seed


def render_checked(work: Work, ctx: JobContext, render: Callable[[Work], Output]) -> Rendered:
    """Renders work, checks its structure against the input when the job asks,
    and renders again with the next seed while it fails and retries are left.

    Answers the first render that passes, else the best-scoring one (the first
    of equals). Cancellation is honoured between renders.
    """
    spec = work.spec
    best: Rendered | None = None
    renders = peak = 0
    for attempt in range(spec.structure_retries + 1):
        if attempt:
            ctx.check()
        seed = (spec.seed + attempt) % SEED_SPACE
        job = work
        if attempt:
            job = dataclasses.replace(
                work, spec=dataclasses.replace(spec, seed=seed), attempt=attempt
            )
        out = render(job)
        renders += 1
        peak = max(peak, out.peak_gpu_memory_bytes)
        if spec.structure_min <= 0:
            return Rendered(out, job, None, renders, [])
        score = _score(work, out, ctx, attempt, seed)
        if score is None or score >= spec.structure_min:
            best = Rendered(out, job, score, renders, [])
            break
        if best is None or best.score is None or score > best.score:
            best = Rendered(out, job, score, renders, [WARN_STRUCTURE])
    assert best is not None  # the loop runs at least once
    best.attempts = renders
    # Every render held the accelerator; the job's peak is the highest.
    best.output.peak_gpu_memory_bytes = peak
    _log(work, best)
    return best


def _score(work: Work, out: Output, ctx: JobContext, attempt: int, seed: int) -> float | None:
    attributes = {"vstage.structure.attempt": attempt, "vstage.seed": seed}
    with ctx.phase(STRUCTURE_CHECK, attributes) as phase:
        mask = None if work.mask is None else np.asarray(work.mask.convert("L"))
        value = structure_score(np.asarray(work.image), np.asarray(out.image.convert("RGB")), mask)
        score = None if math.isnan(value) else value
        if score is not None:
            phase.set_attributes({"vstage.structure.score": score})
    return score


def _log(work: Work, r: Rendered) -> None:
    spec = work.spec
    logs.get().info(
        "structure check",
        extra=logs.fields(
            job_id=spec.job_id,
            minimum=spec.structure_min,
            score=None if r.score is None else round(r.score, 4),
            passed=not r.warnings,
            seed=r.seed,
            attempts=r.attempts,
        ),
    )
