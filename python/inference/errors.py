"""Failures the engine reports to its caller, each with a FailureReason from the protocol."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from ._proto import engine_pb2 as pb

# DOMAIN is the google.rpc.ErrorInfo domain of every engine failure.
DOMAIN = "engine.vstage"

Reason: TypeAlias = pb.FailureReason


class EngineError(Exception):
    """A failure with the gRPC code and reason the caller sees.

    The message goes to the caller verbatim, so it says what was wrong and what
    is allowed, and never carries internals.
    """

    def __init__(self, code: grpc.StatusCode, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    @property
    def reason_name(self) -> str:
        """The reason as ErrorInfo carries it: the enum value's name."""
        return pb.FailureReason.Name(self.reason)


def invalid(reason: Reason, message: str) -> EngineError:
    """Returns an INVALID_ARGUMENT failure."""
    return EngineError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def out_of_memory() -> EngineError:
    """Returns the failure for an accelerator out of memory."""
    return EngineError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        pb.FAILURE_REASON_OOM,
        "the accelerator ran out of memory for this job",
    )


def not_ready() -> EngineError:
    """Returns the failure for a job sent before the model is loaded."""
    return EngineError(
        grpc.StatusCode.UNAVAILABLE, pb.FAILURE_REASON_NOT_READY, "the model is still loading"
    )


def stopped(reason: Reason) -> EngineError:
    """Returns the failure for a job that stopped early: cancelled or past its deadline."""
    if reason == pb.FAILURE_REASON_DEADLINE:
        return EngineError(
            grpc.StatusCode.DEADLINE_EXCEEDED, pb.FAILURE_REASON_DEADLINE, "the deadline passed"
        )
    return EngineError(
        grpc.StatusCode.CANCELLED, pb.FAILURE_REASON_CANCELLED, "the job was cancelled"
    )


def internal() -> EngineError:
    """Returns the failure for anything unexpected; the message names no internals."""
    return EngineError(
        grpc.StatusCode.INTERNAL, pb.FAILURE_REASON_INTERNAL, "the engine failed to run the job"
    )


class JobCancelled(Exception):
    """Raised inside a job to unwind it when its RPC ended or Cancel named it.

    Raising, rather than setting a pipeline's interrupt flag, is what keeps the
    VAE decode and everything after it from running. reason is
    FAILURE_REASON_CANCELLED or FAILURE_REASON_DEADLINE.
    """

    def __init__(self, reason: Reason) -> None:
        super().__init__(pb.FailureReason.Name(reason))
        self.reason = reason
