"""The gRPC server: Engine and Health services on a Unix socket."""

from __future__ import annotations

import concurrent.futures
import platform
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import errors, imageio, logs
from ._proto import engine_pb2 as pb
from ._proto import engine_pb2_grpc as pb_grpc
from .config import Settings
from .jobs import CONTROL_KINDS, FORMATS, Backend, JobContext, JobSpec, Output, Work, validate

SERVICE_NAME = "vstage.engine.v1.Engine"

# Handler threads: every Stage call holds one while it streams, queued or not,
# so this is sized well above the job slots to keep Info and Health answering
# while jobs wait (or hang).
EXTRA_HANDLER_THREADS = 32

DEADLINE_SLACK = 0.05


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[Any, ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing


def rich_status(err: errors.EngineError) -> grpc.Status:
    """Builds a status with a google.rpc.ErrorInfo detail and the vstage-reason trailer."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=errors.DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    code_value: int = err.code.value[0]
    status = status_pb2.Status(code=code_value, message=err.message, details=[detail])
    trailing = (
        ("grpc-status-details-bin", status.SerializeToString()),
        (errors.REASON_METADATA_KEY, err.reason),
    )
    return _Status(err.code, err.message, trailing)


class EngineService(pb_grpc.EngineServicer):
    """EngineService runs jobs on a backend, at most `concurrency` at once, in order."""

    def __init__(self, settings: Settings, backend: Backend, test_faults: bool) -> None:
        self._settings = settings
        self._backend = backend
        self._test_faults = test_faults
        self._ready = threading.Event()
        # The executor's FIFO queue is the job queue; its threads are the job slots.
        self._slots = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="job"
        )
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
            test_faults=self._test_faults,
            ready=self.ready,
            limits=pb.Limits(
                min_long_side=s.min_long_side,
                max_long_side=s.max_long_side,
                default_long_side=s.default_long_side,
                max_steps=s.max_steps,
                max_input_pixels=s.max_input_pixels,
                max_message_bytes=s.max_message_bytes,
                concurrency=s.concurrency,
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

    def Stage(  # noqa: N802
        self, request: pb.StageRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StageEvent]:
        started = time.monotonic()
        ended = threading.Event()
        context.add_callback(ended.set)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        job_id = request.job_id

        remaining = context.time_remaining()
        deadline = None if remaining is None else started + remaining

        def reason() -> str:
            # Once the RPC has ended, the context no longer says why; the clock does.
            # The slack covers the caller's and our clocks expiring a moment apart.
            if deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK:
                return errors.DEADLINE
            return errors.CANCELLED

        try:
            if not self.ready:
                raise errors.EngineError(
                    grpc.StatusCode.UNAVAILABLE, errors.NOT_READY, "the model is still loading"
                )
            info = self._backend.info()
            spec = validate(request, self._settings, info.control_kinds)
            t0 = time.monotonic()
            image = imageio.as_rgb(imageio.decode(request.image, self._settings.max_input_pixels))
            mask = None
            if request.mask:
                mask = imageio.decode(request.mask, self._settings.max_input_pixels, "mask")
                if mask.size != image.size:
                    raise errors.invalid(
                        errors.MASK_SIZE_MISMATCH,
                        f"mask is {mask.size[0]}x{mask.size[1]}, "
                        f"image is {image.size[0]}x{image.size[1]}; they must match",
                    )
            decode_ms = _ms(t0)
            t1 = time.monotonic()
            size = imageio.target_size(image.size[0], image.size[1], spec.long_side)
            work = Work(
                spec=spec,
                image=imageio.resize(image, size),
                mask=imageio.resize_mask(mask, size) if mask is not None else None,
            )
            resize_ms = _ms(t1)
        except errors.EngineError as err:
            self._fail(context, job_id, err)
            return

        ctx = JobContext(ended, reason, lambda step, total: events.put(("progress", (step, total))))
        enqueued = time.monotonic()

        def job() -> None:
            # Outcomes are logged here, not in the RPC thread: once the caller
            # has gone, grpc stops pulling events and that thread never resumes.
            try:
                ctx.check()
                events.put(("accepted", _ms(enqueued)))
                out = self._backend.run(work, ctx)
                if work.mask is not None:
                    out.image = imageio.composite(
                        work.image, out.image, work.mask, self._settings.mask_feather
                    )
                ctx.check()
                t2 = time.monotonic()
                data = imageio.encode(out.image, spec.output_format, spec.quality)
                timings = pb.Timings(
                    decode_ms=decode_ms,
                    preprocess_ms=resize_ms + out.preprocess_ms,
                    denoise_ms=out.denoise_ms,
                    vae_decode_ms=out.vae_decode_ms,
                    encode_ms=_ms(t2),
                    total_ms=_ms(started),
                )
                events.put(("result", self._result(spec, info.model_rev, out, data, size, timings)))
            except BaseException as exc:
                events.put(("error", self._job_error(job_id, exc)))

        self._slots.submit(job)
        self._log.info(
            "job queued",
            extra=logs.fields(
                job_id=job_id,
                seed=spec.seed,
                steps=spec.steps,
                width=size[0],
                height=size[1],
                control=spec.control,
                inpaint=work.mask is not None,
            ),
        )
        self._log.debug(
            "job prompts",
            extra=logs.fields(
                job_id=job_id, prompt=spec.prompt, negative_prompt=spec.negative_prompt
            ),
        )
        while True:
            kind, value = events.get()
            if kind == "accepted":
                yield pb.StageEvent(
                    accepted=pb.Accepted(
                        job_id=job_id, queue_ms=value, width=size[0], height=size[1]
                    )
                )
            elif kind == "progress":
                yield pb.StageEvent(progress=pb.Progress(step=value[0], total=value[1]))
            elif kind == "result":
                yield value
                return
            else:
                # The caller may be gone already; the status is for one that is not.
                context.abort_with_status(rich_status(value))
                return

    def _result(
        self,
        spec: JobSpec,
        model_rev: str,
        out: Output,
        data: bytes,
        size: tuple[int, int],
        timings: pb.Timings,
    ) -> pb.StageEvent:
        self._log.info(
            "job done",
            extra=logs.fields(
                job_id=spec.job_id,
                seed=spec.seed,
                bytes=len(data),
                decode_ms=round(timings.decode_ms, 1),
                preprocess_ms=round(timings.preprocess_ms, 1),
                denoise_ms=round(timings.denoise_ms, 1),
                vae_decode_ms=round(timings.vae_decode_ms, 1),
                encode_ms=round(timings.encode_ms, 1),
                total_ms=round(timings.total_ms, 1),
                peak_gpu_memory_bytes=out.peak_gpu_memory_bytes,
            ),
        )
        return pb.StageEvent(
            result=pb.Result(
                image=data,
                width=size[0],
                height=size[1],
                format=FORMATS[spec.output_format],
                model_rev=self._settings.model_rev or model_rev,
                seed=spec.seed,
                timings=timings,
                peak_gpu_memory_bytes=out.peak_gpu_memory_bytes,
            )
        )

    def _job_error(self, job_id: str, exc: BaseException) -> errors.EngineError:
        """Logs a job's failure and returns what the caller is told."""
        if isinstance(exc, errors.JobCancelled):
            self._log.info("job stopped", extra=logs.fields(job_id=job_id, reason=exc.reason))
            if exc.reason == errors.DEADLINE:
                return errors.EngineError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, errors.DEADLINE, "the deadline passed"
                )
            return errors.EngineError(
                grpc.StatusCode.CANCELLED, errors.CANCELLED, "the job was cancelled"
            )
        if isinstance(exc, errors.EngineError):
            self._log_failure(job_id, exc)
            return exc
        self._log.error(
            "job failed",
            extra=logs.fields(job_id=job_id, code="INTERNAL", reason=errors.INTERNAL),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return errors.EngineError(
            grpc.StatusCode.INTERNAL, errors.INTERNAL, "the engine failed to run the job"
        )

    def _log_failure(self, job_id: str, err: errors.EngineError) -> None:
        self._log.info(
            "job rejected" if err.code == grpc.StatusCode.INVALID_ARGUMENT else "job failed",
            extra=logs.fields(
                job_id=job_id, code=err.code.name, reason=err.reason, error=err.message
            ),
        )

    def _fail(self, context: grpc.ServicerContext, job_id: str, err: errors.EngineError) -> None:
        self._log_failure(job_id, err)
        context.abort_with_status(rich_status(err))

    def close(self) -> None:
        # Never wait: a hung job would hold the process forever.
        self._slots.shutdown(wait=False, cancel_futures=True)


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


class Server:
    """Server owns the grpc.Server, the Engine service and the health status."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
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
        self.engine = EngineService(settings, backend, settings.test_faults)
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
