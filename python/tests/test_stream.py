"""The order and coalescing of a job's stream, on the queue the worker fills."""

from __future__ import annotations

import queue
import threading
from typing import Any, cast

import grpc
import pytest

from inference import errors
from inference._proto import engine_pb2 as pb
from inference.server import Failed, StreamItem, stream


def progress(step: int, total: int = 5) -> pb.StageEvent:
    return pb.StageEvent(progress=pb.Progress(step=step, total=total))


def filled(*items: StreamItem) -> queue.Queue[StreamItem]:
    q: queue.Queue[StreamItem] = queue.Queue()
    for item in items:
        q.put(item)
    return q


class Aborted(Exception):
    pass


class FakeContext:
    """The one method stream calls on a grpc.ServicerContext."""

    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted


def events_of(q: queue.Queue[StreamItem], ctx: Any = None) -> list[pb.StageEvent]:
    return list(stream(q, cast(grpc.ServicerContext, ctx or FakeContext())))


def test_steps_queued_behind_each_other_are_sent_as_the_newest() -> None:
    accepted = pb.StageEvent(accepted=pb.Accepted(job_id="j"))
    result = pb.StageEvent(result=pb.Result(width=8))
    q = filled(accepted, *(progress(i) for i in range(1, 6)), result)
    assert events_of(q) == [accepted, progress(5), result]


def test_a_step_read_alone_is_sent_alone() -> None:
    # The worker has put nothing after each step yet: every one goes out.
    q: queue.Queue[StreamItem] = queue.Queue()
    out = stream(q, cast(grpc.ServicerContext, FakeContext()))
    sent = []
    for step in (1, 2, 3):
        q.put(progress(step, 3))
        sent.append(next(out))
    q.put(pb.StageEvent(result=pb.Result(width=8)))
    sent.extend(out)
    assert [e.WhichOneof("event") for e in sent] == ["progress"] * 3 + ["result"]
    assert [e.progress.step for e in sent[:3]] == [1, 2, 3]


def test_a_failure_behind_steps_ends_the_call_with_its_status() -> None:
    ctx = FakeContext()
    failed = Failed(errors.stopped(pb.FAILURE_REASON_CANCELLED))
    q = filled(progress(1), progress(2), failed)
    out = stream(q, cast(grpc.ServicerContext, ctx))
    assert next(out) == progress(2)
    with pytest.raises(Aborted):
        next(out)
    assert ctx.status is not None and ctx.status.code == grpc.StatusCode.CANCELLED


def test_the_worker_hears_that_the_result_was_sent() -> None:
    # grpc asks for the next event only once the previous one is on the
    # wire; the worker holds back its log line until then.
    taken = threading.Event()
    result = pb.StageEvent(result=pb.Result(width=8))
    out = stream(filled(progress(1), result), cast(grpc.ServicerContext, FakeContext()), taken)
    assert next(out) == progress(1)
    assert next(out) == result
    assert not taken.is_set()
    assert list(out) == []
    assert taken.is_set()


def test_a_failure_is_not_a_sent_result() -> None:
    taken = threading.Event()
    failed = Failed(errors.stopped(pb.FAILURE_REASON_CANCELLED))
    out = stream(filled(failed), cast(grpc.ServicerContext, FakeContext()), taken)
    with pytest.raises(Aborted):
        next(out)
    assert not taken.is_set()
