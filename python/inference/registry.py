"""The jobs between their arrival and the release of their worker, for Engine.Cancel."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable
from typing import TypeAlias

from ._proto import engine_pb2 as pb

# REMEMBERED_CANCELS is how many ids of jobs cancelled before they arrived
# are kept (the protocol promises at least 1024); the oldest go first.
REMEMBERED_CANCELS = 1024

Outcome: TypeAlias = pb.CancelResponse.Outcome


@dataclasses.dataclass(eq=False)
class Job:
    """Job is one Stage call from its arrival until it holds no worker and will take none.

    stop is set when the call ends or Cancel names the job; the job stops at
    its next check. future and released are guarded by the registry's lock.
    """

    job_id: str
    stop: threading.Event
    future: concurrent.futures.Future[None] | None = None
    released: bool = False


class Jobs:
    """Jobs tracks the jobs in flight by id, so that Cancel can stop them and wait.

    Ids need not be unique: Cancel stops every job with the id.
    """

    def __init__(self, remember: int = REMEMBERED_CANCELS) -> None:
        # One condition for everything here: releases and callers leaving are rare
        # enough that waking every waiting Cancel costs nothing.
        self._cond = threading.Condition()
        self._active: dict[str, list[Job]] = {}
        self._refused: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember

    def arrive(self, job_id: str, stop: threading.Event) -> Job | None:
        """Registers a Stage call; None when Cancel named its id before it arrived.

        The remembered id is used up: only the one call it was meant for is refused.
        """
        with self._cond:
            if job_id in self._refused:
                del self._refused[job_id]
                return None
            job = Job(job_id, stop)
            self._active.setdefault(job_id, []).append(job)
            return job

    def submit(
        self,
        job: Job,
        slots: concurrent.futures.Executor,
        run: Callable[[], None],
        on_cancelled: Callable[[], None],
    ) -> bool:
        """Queues run for a worker unless the job was stopped already.

        on_cancelled runs, instead of run, when Cancel takes the job out of the
        queue; the job is released after it.
        """
        with self._cond:
            if job.stop.is_set():
                return False
            future = slots.submit(run)
            job.future = future

        def done(f: concurrent.futures.Future[None]) -> None:
            if f.cancelled():
                on_cancelled()
                self.release(job)

        future.add_done_callback(done)
        return True

    def release(self, job: Job) -> None:
        """Records that job holds no worker and will take none; safe to call twice."""
        with self._cond:
            if job.released:
                return
            job.released = True
            same = self._active.get(job.job_id, [])
            if job in same:
                same.remove(job)
            if not same:
                self._active.pop(job.job_id, None)
            self._cond.notify_all()

    def cancel(self, job_id: str, waiting: Callable[[], bool]) -> Outcome | None:
        """Stops the jobs with job_id and waits until none holds a worker.

        It returns OUTCOME_STOPPED once they are released, OUTCOME_UNKNOWN at
        once when none is in flight (the id is then remembered, so that its
        Stage is refused if it comes later), or None as soon as waiting()
        turns false: the caller left. Call wake() when that happens.
        """
        with self._cond:
            jobs = list(self._active.get(job_id, ()))
            if not jobs:
                self._refused[job_id] = None
                self._refused.move_to_end(job_id)
                while len(self._refused) > self._remember:
                    self._refused.popitem(last=False)
                return pb.CancelResponse.OUTCOME_UNKNOWN
            for job in jobs:
                job.stop.set()
                # A queued job never reaches a worker; its done callback
                # (run here, under the re-entrant lock) releases it.
                if job.future is not None:
                    job.future.cancel()
            self._cond.wait_for(lambda: all(j.released for j in jobs) or not waiting())
            if all(j.released for j in jobs):
                return pb.CancelResponse.OUTCOME_STOPPED
            return None

    def wake(self) -> None:
        """Wakes waiting cancels so that they look at their callers again."""
        with self._cond:
            self._cond.notify_all()
