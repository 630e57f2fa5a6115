"""Fault commands: what a test asks of one job, sent in the call's metadata."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from inference import errors
from inference._proto import engine_pb2 as pb

# KEY is the metadata key of a job's fault commands: comma-separated
# `name[=value]` items, for example "sleep=2" or "oom". Acted on in this order:
#   crash[=CODE|kill]  exit at once with CODE (default 70), or die by SIGKILL as
#                      a kernel OOM kill would
#   hang[=job|process] block this job forever, ignoring cancellation, while
#                      health answers (job, the default); or stop the whole
#                      process (SIGSTOP), so health stops answering too
#   hold=DIR           create DIR/running when the job starts; once stopped, keep
#                      the worker until DIR/release exists (a slow last step)
#   oom                fail with RESOURCE_EXHAUSTED oom after the first step
#   sleep=SECONDS      spread SECONDS over the steps, honouring cancellation
#   shift=PIXELS       roll the output PIXELS right and down (wrapping round), so
#                      that its walls no longer stand where the input's do: the
#                      structure check fails it
#   shift_renders=N    shift only the job's first N renders (structure retries
#                      render again); without it, every render is shifted
KEY = "vstage-test-fault"
KNOWN = ("crash", "hang", "hold", "oom", "sleep", "shift", "shift_renders")

DEFAULT_CRASH_CODE = 70
MAX_SLEEP = 3600.0
MAX_SHIFT = 4096


@dataclasses.dataclass(frozen=True)
class Faults:
    """Faults is one job's parsed fault commands; None or False means absent."""

    crash: str | None = None
    hang: str | None = None
    hold: str | None = None
    oom: bool = False
    sleep: float | None = None
    shift: int = 0
    shift_renders: int | None = None

    def shifts(self, attempt: int) -> bool:
        """Whether the render after attempt earlier ones is shifted."""
        return self.shift > 0 and (self.shift_renders is None or attempt < self.shift_renders)

    def __bool__(self) -> bool:
        return self != Faults()


def parse(metadata: Mapping[str, str]) -> Faults:
    """Parses the fault commands in metadata; raises EngineError on a bad one."""
    text = metadata.get(KEY, "").strip()
    if not text:
        return Faults()
    items: dict[str, str] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        items[name] = value
    unknown = sorted(set(items) - set(KNOWN))
    if unknown:
        raise _bad(f"unknown fault commands {unknown}; known: {', '.join(KNOWN)}")
    hang = items.get("hang")
    if hang is not None and hang not in ("", "job", "process"):
        raise _bad("hang must be job or process")
    hold = items.get("hold")
    if hold is not None and not os.path.isdir(hold):
        raise _bad("hold must name an existing folder")
    sleep = None
    if "sleep" in items:
        try:
            sleep = float(items["sleep"])
        except ValueError:
            sleep = -1.0
        if not 0 <= sleep <= MAX_SLEEP:
            raise _bad(f"sleep must be seconds in [0, {MAX_SLEEP:g}]")
    shift = _count(items, "shift", MAX_SHIFT) or 0
    shift_renders = _count(items, "shift_renders", 1000)
    return Faults(
        crash=items.get("crash"),
        hang=None if hang is None else hang or "job",
        hold=hold,
        oom="oom" in items,
        sleep=sleep,
        shift=shift,
        shift_renders=shift_renders,
    )


def _count(items: dict[str, str], name: str, most: int) -> int | None:
    if name not in items:
        return None
    try:
        value = int(items[name])
    except ValueError:
        value = -1
    if not 0 <= value <= most:
        raise _bad(f"{name} must be a whole number in [0, {most}]")
    return value


def _bad(message: str) -> errors.EngineError:
    return errors.invalid(pb.FAILURE_REASON_OUT_OF_RANGE, f"{KEY}: {message}")
