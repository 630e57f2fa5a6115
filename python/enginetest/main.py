"""The test engine's entry point: its own flags, then the production engine's."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from inference import errors, logs
from inference import main as engine

from . import faults
from .backend import FaultBackend, Options

EXIT_START_FAULT = 3
START_FAULTS = ("crash", "never-ready")

# Flag, environment variable, help; each flag wins over its variable.
_FLAGS = (
    ("--start-fault", "ENGINE_TEST_START_FAULT", "crash (exit 3 before listening) or never-ready"),
    ("--start-delay", "ENGINE_TEST_START_DELAY", "seconds of warm-up"),
    ("--step-delay", "ENGINE_TEST_STEP_DELAY", "seconds per denoising step"),
    (
        "--job-faults",
        "ENGINE_TEST_JOB_FAULTS",
        "fault commands for every job whose call carries none (a sidecar sends none)",
    ),
)


class UsageError(ValueError):
    """A test flag is out of range."""


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, Options, list[str]]:
    """Splits argv into the start fault, the backend's options and the engine's flags."""
    parser = argparse.ArgumentParser(prog="python -m enginetest", add_help=False)
    for flag, env, text in _FLAGS:
        parser.add_argument(flag, default=environ.get(env, ""), help=f"{text} [env {env}]")
    known, rest = parser.parse_known_args(list(argv))
    if known.start_fault not in ("", *START_FAULTS):
        raise UsageError(f"--start-fault: want one of {START_FAULTS}")
    delays = []
    for name in ("start_delay", "step_delay"):
        try:
            value = float(getattr(known, name) or 0)
        except ValueError:
            value = -1.0
        if value < 0:
            raise UsageError(f"--{name.replace('_', '-')}: want seconds, at least 0")
        delays.append(value)
    try:
        job_faults = faults.parse({faults.KEY: known.job_faults})
    except errors.EngineError as err:
        raise UsageError(f"--job-faults: {err.message}") from err
    options = Options(
        start_delay=delays[0],
        step_delay=delays[1],
        never_ready=known.start_fault == "never-ready",
        job_faults=job_faults,
    )
    return known.start_fault, options, rest


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Runs the test engine until it is stopped; returns the exit code."""
    try:
        start_fault, options, rest = parse(argv, environ)
    except UsageError as err:
        logs.setup("info").error("bad configuration", extra=logs.fields(error=str(err)))
        return engine.EXIT_CONFIG
    if start_fault == "crash":
        logs.setup("info").error("test start fault: crashing before listening")
        return EXIT_START_FAULT
    return engine.run(rest, environ, lambda _settings: FaultBackend(options), needs_model=False)


def main() -> None:
    code = run(sys.argv[1:], os.environ)
    sys.stderr.flush()
    os._exit(code)
