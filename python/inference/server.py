"""The gRPC server: Engine and Health services on a Unix socket."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import platform
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import checks, errors, imageio, logs, tracing, upscale
from ._proto import engine_pb2 as pb
from ._proto import engine_pb2_grpc as pb_grpc
from .config import Settings
from .jobs import (
    CONTENT_CHECK,
    CONTROL_KINDS,
    DECODE,
    DENOISE,
    ENCODE,
    FORMATS,
    PREPROCESS,
    QUEUE,
    STRUCTURE_CHECK,
    UPSCALE,
    VAE_DECODE,
    Backend,
    BackendInfo,
    JobContext,
    JobSpec,
    Output,
    Phase,
    Work,
    check_job_id,
    validate,
)
from .registry import Job, Jobs
from .tracing import JobTrace, Tracing

SERVICE_NAME = tracing.RPC_SERVICE

# Handler threads: every Stage call holds one while it streams, queued or not,
# and every Cancel while its job stops, so this is sized well above the job
# slots to keep Info and Health answering while jobs wait (or hang).
EXTRA_HANDLER_THREADS = 32

DEADLINE_SLACK = 0.05

# How long a worker waits for its RPC thread to send a result before it
# logs anyway. The wait ends earlier when the call ends, so this only bounds
# an RPC thread that is starved.
RESULT_HANDOFF_WAIT = 1.0


class _Status(grpc.Status):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, bytes], ...]
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing


def rich_status(err: errors.EngineError) -> grpc.Status:
    """Builds a status with a google.rpc.ErrorInfo detail naming the failure reason."""
    info = error_details_pb2.ErrorInfo(reason=err.reason_name, domain=errors.DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    code_value: int = err.code.value[0]
    status = status_pb2.Status(code=code_value, message=err.message, details=[detail])
    return _Status(
        err.code, err.message, (("grpc-status-details-bin", status.SerializeToString()),)
    )


@dataclasses.dataclass(frozen=True)
class Failed:
    """Failed ends a job's event stream with the failure its caller is told."""

    error: errors.EngineError


# What a job thread hands the RPC thread: the protocol's own events, then
# either a result event or a Failed.
StreamItem = pb.StageEvent | Failed


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Prepared is a request checked, decoded and resized: ready for a worker."""

    spec: JobSpec
    work: Work
    info: BackendInfo
    # started is when the call arrived (time.monotonic()).
    started: float

    @property
    def size(self) -> tuple[int, int]:
        return self.work.image.size


class EngineService(pb_grpc.EngineServicer):
    """EngineService runs jobs on a backend, at most `concurrency` at once, in order."""

    def __init__(self, settings: Settings, backend: Backend, traces: Tracing | None = None) -> None:
        self._settings = settings
        self._backend = backend
        self._tracing = traces or Tracing()
        self._ready = threading.Event()
        # The executor's FIFO queue is the job queue; its threads are the job slots.
        self._slots = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="job"
        )
        self._jobs = Jobs()
        self._log = logs.get()

    def set_ready(self) -> None:
        self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:  # noqa: N802
        s = self._settings
        resp = pb.InfoResponse(
            backend=self._backend.name,
            ready=self.ready,
            limits=pb.Limits(
                min_long_side=s.min_long_side,
                max_long_side=s.max_long_side,
                default_long_side=s.default_long_side,
                max_steps=s.max_steps,
                max_input_pixels=s.max_input_pixels,
                max_message_bytes=s.max_message_bytes,
                concurrency=s.concurrency,
                max_structure_retries=s.max_structure_retries,
                max_upscale_long_side=s.max_upscale_long_side,
            ),
        )
        resp.versions["python"] = platform.python_version()
        resp.versions["grpcio"] = grpc.__version__
        if self.ready:
            info = self._backend.info()
            resp.model_rev = s.model_rev or info.model_rev
            resp.device = info.device
            resp.dtype = info.dtype
            resp.versions.update(info.versions)
            resp.control_kinds.extend(CONTROL_KINDS[k] for k in info.control_kinds)
        return resp

    def Cancel(  # noqa: N802
        self, request: pb.CancelRequest, context: grpc.ServicerContext
    ) -> pb.CancelResponse:
        job_id = request.job_id
        try:
            if not job_id:
                raise errors.invalid(pb.FAILURE_REASON_OUT_OF_RANGE, "job_id is required")
            check_job_id(job_id)
        except errors.EngineError as err:
            context.abort_with_status(rich_status(err))
        # A caller that gives up waiting frees this thread at once.
        context.add_callback(self._jobs.wake)
        outcome = self._jobs.cancel(job_id, context.is_active)
        if outcome is None:
            return pb.CancelResponse()
        self._log.info(
            "job cancel",
            extra=logs.fields(job_id=job_id, outcome=pb.CancelResponse.Outcome.Name(outcome)),
        )
        return pb.CancelResponse(outcome=outcome)

    def Stage(  # noqa: N802
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StageEvent]:
        started = time.monotonic()
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        trace = self._tracing.start_job(metadata, request.job_id)
        taken = threading.Event()
        try:
            # Attached only around the steps before streaming: a generator
            # that kept it across a yield would leave it on this handler thread.
            with trace.attached():
                events = self._start(request, context, metadata, trace, started, taken)
        except BaseException as exc:
            # An abort raised by _fail ended the span already; anything else is a bug.
            trace.end(errors.internal(), exc)
            raise
        if events is not None:
            yield from stream(events, context, taken)

    def _start(
        self,
        request: pb.StageRequest,
        context: grpc.ServicerContext,
        metadata: dict[str, str],
        trace: JobTrace,
        started: float,
        taken: threading.Event,
    ) -> queue.Queue[StreamItem] | None:
        """Checks and queues a job; returns its event queue, or None once the
        call has been ended with a failure. taken is set when the result has
        been sent, or when the call ends."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else started + remaining
        stop = threading.Event()

        def ended() -> None:
            stop.set()
            taken.set()

        if not context.add_callback(ended):
            ended()
        job = self._jobs.arrive(request.job_id, stop)
        if job is None:
            err = errors.EngineError(
                grpc.StatusCode.CANCELLED,
                pb.FAILURE_REASON_CANCELLED,
                "the job was cancelled before it arrived",
            )
            self._fail(context, trace, request.job_id, err)
            return None

        def reason() -> errors.Reason:
            # Once the RPC has ended, the context no longer says why; the clock does.
            # The slack covers the caller's and our clocks expiring a moment apart.
            if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK:
                return pb.FAILURE_REASON_DEADLINE
            return pb.FAILURE_REASON_CANCELLED

        events: queue.Queue[StreamItem] = queue.Queue()
        ctx = JobContext(stop, reason, _progress_to(events), metadata, trace)
        try:
            prepared = self._prepare(request, ctx, started)
        except errors.EngineError as err:
            self._jobs.release(job)
            self._fail(context, trace, request.job_id, err, err)
            return None
        # Begun before submitting: a free worker may start the job at once.
        queued = ctx.begin(QUEUE)
        submitted = self._jobs.submit(
            job,
            self._slots,
            lambda: self._run(prepared, ctx, events, taken, job, queued),
            lambda: self._stopped_in_queue(job, ctx, events, reason(), queued),
        )
        if not submitted:
            self._jobs.release(job)
            stopped = errors.stopped(reason())
            queued.end(stopped)
            self._fail(context, trace, request.job_id, stopped)
            return None
        self._log_queued(prepared)
        return events

    def _prepare(self, request: pb.StageRequest, ctx: JobContext, started: float) -> Prepared:
        """Checks, decodes and resizes the input in the RPC thread; raises EngineError."""
        if not self.ready:
            raise errors.not_ready()
        info = self._backend.info()
        spec = validate(request, self._settings, info.control_kinds)
        max_pixels = self._settings.max_input_pixels
        with ctx.phase(DECODE):
            image = imageio.as_rgb(imageio.decode(request.image, max_pixels))
            mask = imageio.decode(request.mask, max_pixels, "mask") if request.mask else None
            if mask is not None and mask.size != image.size:
                raise errors.invalid(
                    pb.FAILURE_REASON_MASK_SIZE_MISMATCH,
                    f"mask is {mask.size[0]}x{mask.size[1]}, "
                    f"image is {image.size[0]}x{image.size[1]}; they must match",
                )
        with ctx.phase(PREPROCESS):
            size = imageio.target_size(image.size[0], image.size[1], spec.long_side)
            work = Work(
                spec=spec,
                image=imageio.resize(image, size),
                mask=imageio.resize_mask(mask, size) if mask is not None else None,
            )
        return Prepared(spec, work, info, started)

    def _run(
        self,
        p: Prepared,
        ctx: JobContext,
        events: queue.Queue[StreamItem],
        taken: threading.Event,
        job: Job,
        queued: Phase,
    ) -> None:
        """Runs a job on a worker thread and hands its events to the RPC thread.

        Outcomes are logged here, not in the RPC thread: once the caller has
        gone, grpc stops pulling events and that thread never resumes. The
        Stage span ends here for the same reason, before the caller hears
        the outcome, so that it nests inside the caller's span.

        After handing over the result, this thread waits until the RPC
        thread has sent it (or the call has ended) before it logs: both
        need the GIL, and a log line formatted meanwhile delayed the result
        by about 0.2 ms at the median and by milliseconds at the tail.
        """
        queue_ms = queued.end()
        with ctx.trace.attached():
            try:
                ctx.check()
                result = self._result(p, ctx, queue_ms, events)
                ctx.trace.end()
                # The caller first: the log line is not its business.
                events.put(pb.StageEvent(result=result))
                taken.wait(RESULT_HANDOFF_WAIT)
                self._log_done(p.spec, result)
            except BaseException as exc:
                err = self._job_error(p.spec.job_id, exc)
                ctx.trace.end(err, exc)
                events.put(Failed(err))
            finally:
                self._jobs.release(job)

    def _result(
        self, p: Prepared, ctx: JobContext, queue_ms: float, events: queue.Queue[StreamItem]
    ) -> pb.Result:
        """Runs the backend and encodes its image; raises on failure."""
        width, height = p.size
        accepted = pb.Accepted(job_id=p.spec.job_id, queue_ms=queue_ms, width=width, height=height)
        events.put(pb.StageEvent(accepted=accepted))
        warnings = checks.check_content(p.work, ctx)
        rendered = checks.render_checked(p.work, ctx, lambda work: self._render(work, ctx))
        out = rendered.output
        ctx.check()
        if p.spec.upscale_long_side:
            # The answered render's job: its seed refines, so that a request
            # with that seed gives the same bytes.
            out = self._upscale(p, rendered.work, out, ctx)
            width, height = out.image.size
        with ctx.phase(ENCODE):
            data = imageio.encode(out.image, p.spec.output_format, p.spec.quality)
        timings = pb.Timings(
            decode_ms=ctx.ms(DECODE),
            preprocess_ms=ctx.ms(PREPROCESS),
            denoise_ms=ctx.ms(DENOISE),
            vae_decode_ms=ctx.ms(VAE_DECODE),
            encode_ms=ctx.ms(ENCODE),
            total_ms=_ms(p.started),
            content_check_ms=ctx.ms(CONTENT_CHECK),
            structure_check_ms=ctx.ms(STRUCTURE_CHECK),
            upscale_ms=ctx.ms(UPSCALE),
        )
        result = pb.Result(
            image=data,
            width=width,
            height=height,
            format=FORMATS[p.spec.output_format],
            model_rev=self._settings.model_rev or p.info.model_rev,
            seed=rendered.seed,
            timings=timings,
            peak_gpu_memory_bytes=out.peak_gpu_memory_bytes,
            warnings=warnings + rendered.warnings,
            attempts=rendered.attempts,
        )
        if rendered.score is not None:
            result.structure_score = rendered.score
        return result

    def _render(self, work: Work, ctx: JobContext) -> Output:
        """Runs the backend once and pastes its image into the original outside the mask."""
        out = self._backend.run(work, ctx)
        if work.mask is not None:
            out.image = imageio.composite(
                work.image, out.image, work.mask, self._settings.mask_feather
            )
        return out

    def _upscale(self, p: Prepared, work: Work, out: Output, ctx: JobContext) -> Output:
        """Runs the upscale phase on the rendered (and composited) image.

        With a mask, the upscaled image is composited once more over the
        input resampled to the final size, so outside the grown mask the
        result is that resampling, whatever the refinement did there.
        """
        size = upscale.target_size(p.size, p.spec.upscale_long_side)
        attributes = {"vstage.width": size[0], "vstage.height": size[1]}
        with ctx.phase(UPSCALE, attributes):
            up = self._backend.upscale(out.image, work, size, ctx)
            if p.work.mask is not None:
                up.image = upscale.keep_unmasked(
                    p.work.image, up.image, p.work.mask, self._settings.mask_feather
                )
        up.peak_gpu_memory_bytes = max(up.peak_gpu_memory_bytes, out.peak_gpu_memory_bytes)
        ctx.check()
        return up

    def _stopped_in_queue(
        self,
        job: Job,
        ctx: JobContext,
        events: queue.Queue[StreamItem],
        reason: errors.Reason,
        queued: Phase,
    ) -> None:
        """Ends a job that Cancel took out of the queue before it reached a worker."""
        err = errors.stopped(reason)
        queued.end(err)
        with ctx.trace.attached():
            self._log.info(
                "job stopped",
                extra=logs.fields(job_id=job.job_id, reason=pb.FailureReason.Name(reason)),
            )
        ctx.trace.end(err)
        events.put(Failed(err))

    def _log_queued(self, p: Prepared) -> None:
        spec = p.spec
        self._log.info(
            "job queued",
            extra=logs.fields(
                job_id=spec.job_id,
                seed=spec.seed,
                steps=spec.steps,
                width=p.size[0],
                height=p.size[1],
                control=spec.control,
                inpaint=p.work.mask is not None,
                upscale_long_side=spec.upscale_long_side,
            ),
        )
        self._log.debug(
            "job prompts",
            extra=logs.fields(
                job_id=spec.job_id, prompt=spec.prompt, negative_prompt=spec.negative_prompt
            ),
        )

    def _log_done(self, spec: JobSpec, result: pb.Result) -> None:
        t = result.timings
        self._log.info(
            "job done",
            extra=logs.fields(
                job_id=spec.job_id,
                seed=result.seed,
                attempts=result.attempts,
                warnings=",".join(result.warnings),
                bytes=len(result.image),
                decode_ms=round(t.decode_ms, 1),
                preprocess_ms=round(t.preprocess_ms, 1),
                denoise_ms=round(t.denoise_ms, 1),
                vae_decode_ms=round(t.vae_decode_ms, 1),
                encode_ms=round(t.encode_ms, 1),
                upscale_ms=round(t.upscale_ms, 1),
                total_ms=round(t.total_ms, 1),
                peak_gpu_memory_bytes=result.peak_gpu_memory_bytes,
            ),
        )

    def _job_error(self, job_id: str, exc: BaseException) -> errors.EngineError:
        """Logs a job's failure and returns what the caller is told."""
        if isinstance(exc, errors.JobCancelled):
            self._log.info(
                "job stopped",
                extra=logs.fields(job_id=job_id, reason=pb.FailureReason.Name(exc.reason)),
            )
            return errors.stopped(exc.reason)
        if isinstance(exc, errors.EngineError):
            self._log_failure(job_id, exc)
            return exc
        err = errors.internal()
        self._log.error(
            "job failed",
            extra=logs.fields(job_id=job_id, code=err.code.name, reason=err.reason_name),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return err

    def _log_failure(self, job_id: str, err: errors.EngineError) -> None:
        self._log.info(
            "job rejected" if err.code == grpc.StatusCode.INVALID_ARGUMENT else "job failed",
            extra=logs.fields(
                job_id=job_id, code=err.code.name, reason=err.reason_name, error=err.message
            ),
        )

    def _fail(
        self,
        context: grpc.ServicerContext,
        trace: JobTrace,
        job_id: str,
        err: errors.EngineError,
        exc: BaseException | None = None,
    ) -> None:
        """Ends a call that never reached the queue (abort_with_status raises)."""
        self._log_failure(job_id, err)
        trace.end(err, exc)
        context.abort_with_status(rich_status(err))

    def close(self) -> None:
        # Never wait: a hung job would hold the process forever.
        self._slots.shutdown(wait=False, cancel_futures=True)


def stream(
    events: queue.Queue[StreamItem],
    context: grpc.ServicerContext,
    taken: threading.Event | None = None,
) -> Iterator[pb.StageEvent]:
    """Yields a job's events until its result, or ends the call with its failure.

    taken is set once the result has been sent.

    Progress is a latest-value signal: steps that ended while the caller
    was still reading an earlier one are passed over for the newest, so a
    burst of fast steps costs one message, not one per step. Steps slower
    than a message (every real model's) are each sent.
    """
    held: StreamItem | None = None
    while True:
        item = held if held is not None else events.get()
        held = None
        while _is_progress(item):
            try:
                newer = events.get_nowait()
            except queue.Empty:
                break
            if not _is_progress(newer):
                held = newer
                break
            item = newer
        if isinstance(item, Failed):
            # The caller may be gone already; the status is for one that is not.
            context.abort_with_status(rich_status(item.error))
            return
        yield item
        if item.HasField("result"):
            # grpc resumes the generator once the result has been sent.
            if taken is not None:
                taken.set()
            return


def _is_progress(item: StreamItem) -> bool:
    return isinstance(item, pb.StageEvent) and item.HasField("progress")


def _progress_to(events: queue.Queue[StreamItem]) -> Callable[[int, int], None]:
    def progress(step: int, total: int) -> None:
        events.put(pb.StageEvent(progress=pb.Progress(step=step, total=total)))

    return progress


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


class Server:
    """Server owns the grpc.Server, the Engine service and the health status."""

    def __init__(self, settings: Settings, backend: Backend, traces: Tracing | None = None) -> None:
        self.settings = settings
        opts = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
        ]
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=settings.concurrency + EXTRA_HANDLER_THREADS,
                thread_name_prefix="rpc",
            ),
            options=opts,
        )
        self.engine = EngineService(settings, backend, traces)
        self.health = health.HealthServicer()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        pb_grpc.add_EngineServicer_to_server(self.engine, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)

    def start(self) -> None:
        bound = self._grpc.add_insecure_port("unix:" + self.settings.socket)
        if not bound:
            raise OSError(f"cannot listen on {self.settings.socket}")
        self._grpc.start()

    def set_serving(self) -> None:
        self.engine.set_ready()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        """Stops taking jobs and waits up to grace seconds for running ones."""
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc.stop(grace).wait(grace + 1)
        self.engine.close()
