"""The job registry behind Engine.Cancel, without a server."""

from __future__ import annotations

import concurrent.futures
import threading

from inference._proto import engine_pb2 as pb
from inference.registry import Jobs

STOPPED = pb.CancelResponse.OUTCOME_STOPPED
UNKNOWN = pb.CancelResponse.OUTCOME_UNKNOWN


def test_unknown_ids_are_refused_once_and_forgotten_oldest_first() -> None:
    jobs = Jobs(remember=2)
    for job_id in ("a", "b", "c"):
        assert jobs.cancel(job_id, lambda: True) == UNKNOWN
    assert jobs.arrive("a", threading.Event()) is not None  # forgotten: only two are kept
    assert jobs.arrive("b", threading.Event()) is None
    assert jobs.arrive("b", threading.Event()) is not None  # refused once only
    assert jobs.arrive("c", threading.Event()) is None


def test_cancel_stops_every_job_with_the_id_and_waits_for_their_release() -> None:
    jobs = Jobs()
    first, second = threading.Event(), threading.Event()
    a, b = jobs.arrive("x", first), jobs.arrive("x", second)
    assert a is not None and b is not None
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(jobs.cancel("x", lambda: True)))
    waiter.start()
    assert first.wait(10) and second.wait(10)
    jobs.release(a)
    waiter.join(0.2)
    assert waiter.is_alive(), "answered while one job still held its worker"
    jobs.release(b)
    jobs.release(b)  # a second release changes nothing
    waiter.join(10)
    assert got == [STOPPED]
    assert jobs.cancel("x", lambda: True) == UNKNOWN


def test_cancel_returns_none_when_its_caller_leaves() -> None:
    jobs = Jobs()
    assert jobs.arrive("x", threading.Event()) is not None
    caller = threading.Event()
    caller.set()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(jobs.cancel("x", caller.is_set)))
    waiter.start()
    caller.clear()
    jobs.wake()
    waiter.join(10)
    assert got == [None]


def test_a_queued_job_is_cancelled_without_a_worker() -> None:
    jobs = Jobs()
    slots = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    hold = threading.Event()
    try:
        slots.submit(hold.wait)  # the only worker is busy
        job = jobs.arrive("q", threading.Event())
        assert job is not None
        ran: list[str] = []
        assert jobs.submit(job, slots, lambda: ran.append("run"), lambda: ran.append("cancelled"))
        assert jobs.cancel("q", lambda: True) == STOPPED
        assert ran == ["cancelled"]
        # A job stopped before it was queued is not queued at all.
        stopped = threading.Event()
        late = jobs.arrive("late", stopped)
        assert late is not None
        stopped.set()
        assert not jobs.submit(late, slots, lambda: ran.append("late"), lambda: None)
    finally:
        hold.set()
        slots.shutdown(wait=True)
    assert ran == ["cancelled"]
