"""Failures the engine reports to its caller, each with a stable reason string."""

from __future__ import annotations

import grpc

# DOMAIN is the google.rpc.ErrorInfo domain of every engine failure.
DOMAIN = "engine.vstage"

# REASON_METADATA_KEY repeats the reason in trailing metadata for clients that
# do not decode status details.
REASON_METADATA_KEY = "vstage-reason"

BAD_IMAGE = "bad_image"
IMAGE_TOO_LARGE = "image_too_large"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
OUT_OF_RANGE = "out_of_range"
UNSUPPORTED_FORMAT = "unsupported_format"
CONTROL_UNAVAILABLE = "control_unavailable"
TEST_FAULTS_DISABLED = "test_faults_disabled"
OOM = "oom"
CANCELLED = "cancelled"
DEADLINE = "deadline"
NOT_READY = "not_ready"
INTERNAL = "internal"


class EngineError(Exception):
    """A failure with the gRPC code and reason the caller sees.

    The message goes to the caller verbatim, so it says what was wrong and what
    is allowed, and never carries internals.
    """

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def invalid(reason: str, message: str) -> EngineError:
    """Returns an INVALID_ARGUMENT failure."""
    return EngineError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def out_of_memory() -> EngineError:
    """Returns the failure for an accelerator out of memory."""
    return EngineError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, OOM, "the accelerator ran out of memory for this job"
    )


class JobCancelled(Exception):
    """Raised inside a job to unwind it when its RPC ended (cancel or deadline).

    Raising, rather than setting a pipeline's interrupt flag, is what keeps the
    VAE decode and everything after it from running.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
