"""What tracing costs the engine per job: the test engine with tracing off, with
only a caller's traceparent (export off), and exporting over OTLP/HTTP to a
local sink; then the phase wrapper alone, in process.

    .venv/bin/python bench/engine_tracing.py [--jobs 200]

The test engine's jobs are tiny (a 64 px inversion and a PNG encode), so its
per-job time is almost all gRPC and the engine's own bookkeeping, which is
where tracing adds its cost; a model's job takes seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from PIL import Image  # noqa: E402

from inference import tracing  # noqa: E402
from inference._proto import engine_pb2 as pb  # noqa: E402
from inference._proto import engine_pb2_grpc as pb_grpc  # noqa: E402
from inference.jobs import JobContext  # noqa: E402

SMALL = ["--min-long-side", "64", "--max-long-side", "256", "--default-long-side", "64"]


class _Sink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them, as a collector's receiver would."""

    exports = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def engine(env: dict[str, str]) -> Iterator[pb_grpc.EngineStub]:
    workdir = tempfile.mkdtemp(prefix="vsb")
    sock = os.path.join(workdir, "engine.sock")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "OTEL_"))}
    full_env["PYTHONPATH"] = str(ROOT / "python")
    full_env.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "enginetest", "--socket", sock, *SMALL],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel("unix:" + sock)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + 60
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("the test engine did not start")
            time.sleep(0.05)
        yield pb_grpc.EngineStub(channel)
    finally:
        channel.close()
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _image() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (120, 80, 40)).save(buf, "PNG")
    return buf.getvalue()


IMAGE = _image()


def one_job(stub: pb_grpc.EngineStub, i: int, traceparent: bool) -> tuple[float, float]:
    """Runs a job; returns its milliseconds as the caller saw them and as the
    engine reports them (Timings.total_ms, arrival to result)."""
    md = []
    if traceparent:
        md.append(("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"))
    req = pb.StageRequest(
        job_id=f"b{i}",
        image=IMAGE,
        prompt="p",
        seed=1,
        strength=1.0,
        guidance_scale=5.0,
        steps=4,
        conditioning_scale=0.5,
        output_long_side=64,
        output_format=pb.IMAGE_FORMAT_PNG,
    )
    t0 = time.perf_counter()
    events = list(stub.Stage(req, timeout=30, metadata=md))
    elapsed = (time.perf_counter() - t0) * 1000
    if events[-1].WhichOneof("event") != "result":
        raise RuntimeError("a job failed")
    return elapsed, events[-1].result.timings.total_ms


def summary(times: list[float]) -> str:
    q = statistics.quantiles(times, n=20)
    return (
        f"mean {statistics.fmean(times):6.3f} ms  p50 {statistics.median(times):6.3f}  "
        f"p95 {q[18]:6.3f}"
    )


def phase_cost(n: int) -> tuple[float, float, float]:
    """Microseconds per phase: two monotonic clock reads (what timing a step
    cost before phases), JobContext.phase untraced, and with the SDK recording
    into a batch processor whose exporter drops everything."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def ctx(trace: tracing.JobTrace) -> JobContext:
        return JobContext(
            threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, lambda s, t: None, trace=trace
        )

    off = ctx(tracing.UNTRACED)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    job = tracing.Tracing(provider).start_job({}, "bench")
    on = ctx(job)

    def one(c: JobContext) -> None:
        with c.phase("denoise", {"vstage.steps": 4}):
            pass

    def clocks() -> None:
        t0 = time.monotonic()
        _ = (time.monotonic() - t0) * 1000

    clocks_us = min(timeit.repeat(clocks, number=n, repeat=3)) / n * 1e6
    off_us = min(timeit.repeat(lambda: one(off), number=n, repeat=3)) / n * 1e6
    on_us = min(timeit.repeat(lambda: one(on), number=n, repeat=3)) / n * 1e6
    provider.shutdown()
    return clocks_us, off_us, on_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--phase-calls", type=int, default=20000)
    args = parser.parse_args()

    with sink() as endpoint, contextlib.ExitStack() as stack:
        modes = [
            ("off, no traceparent", {}, False),
            ("off, traceparent", {}, True),
            (
                "otlp/http, traceparent",
                {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                },
                True,
            ),
        ]
        stubs = [stack.enter_context(engine(env)) for _, env, _ in modes]
        client: list[list[float]] = [[] for _ in modes]
        server: list[list[float]] = [[] for _ in modes]
        # One job on each engine in turn, so that the machine's load, which
        # drifts, falls on every mode alike.
        for i in range(args.warmup + args.jobs):
            for k, (_, _, traceparent) in enumerate(modes):
                c, e = one_job(stubs[k], i, traceparent)
                if i >= args.warmup:
                    client[k].append(c)
                    server[k].append(e)
        for k, (name, _, _) in enumerate(modes):
            print(f"{name:24s} {args.jobs} jobs, caller: {summary(client[k])}")
            print(f"{'':24s} {args.jobs} jobs, engine: {summary(server[k])}")
        stack.close()
        print(f"OTLP exports received: {_Sink.exports}")
    clocks_us, off_us, on_us = phase_cost(args.phase_calls)
    print(
        f"per phase: {clocks_us:.2f} us two clock reads (the timing before phases), "
        f"{off_us:.2f} us JobContext.phase untraced, {on_us:.2f} us with a recorded span"
    )


if __name__ == "__main__":
    main()
