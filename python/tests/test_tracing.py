"""The engine's traces: it continues the caller's trace and exports its own spans.

Real engine processes on real sockets export over OTLP to an in-process
receiver (otlp.py), as they would to a collector.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace

from helpers import Engine, fault, gradient, png, reason_of, request, start, start_test
from inference import config, tracing
from inference._proto import engine_pb2 as pb
from otlp import (
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    Receiver,
    Span,
    grpc_receiver,
    http_receiver,
)

IMAGE = png(gradient(96, 48))
PHASES = {"queue", "decode", "preprocess", "denoise", "vae_decode", "encode"}
STAGE = "vstage.engine.v1.Engine/Stage"
SMALL = ("--min-long-side", "64", "--max-long-side", "256", "--default-long-side", "128")
PROMPT = "a furnished room"


class Caller:
    """A caller's span: the traceparent it sends, and its ids."""

    def __init__(self, sampled: bool = True) -> None:
        self.trace_id = secrets.token_hex(16)
        self.span_id = secrets.token_hex(8)
        flags = "01" if sampled else "00"
        self.traceparent = f"00-{self.trace_id}-{self.span_id}-{flags}"

    def metadata(self, faults: str = "") -> list[tuple[str, str]]:
        md = [("traceparent", self.traceparent), ("tracestate", "vendor=x")]
        if faults:
            md.extend(fault(faults))
        return md


def otlp_env(receiver: Receiver, protocol: str = "http/protobuf", **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def job_lines_all(engine: Engine) -> list[dict[str, Any]]:
    return [json.loads(line) for line in engine.logs().splitlines() if line.startswith("{")]


def job_lines(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    return [entry for entry in job_lines_all(engine) if entry.get("job_id") == job_id]


def by_name(spans: list[Span]) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for s in spans:
        out.setdefault(s.name, []).append(s)
    return out


def the_stage(spans: list[Span]) -> Span:
    stages = [s for s in spans if s.name == STAGE]
    assert len(stages) == 1, [s.name for s in spans]
    return stages[0]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = http_receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def traced(receiver: Receiver) -> Iterator[Engine]:
    """The test engine exporting over OTLP/HTTP to receiver."""
    engine = start_test(["--concurrency", "1", *SMALL], env=otlp_env(receiver))
    yield engine
    engine.close()


def assert_job_trace(
    spans: list[Span], caller: Caller, job_id: str, result: pb.Result, queue_ms: float
) -> Span:
    """The checks every successful job's trace passes; returns its Stage span."""
    assert spans and all(s.trace_id == caller.trace_id for s in spans)
    stage = the_stage(spans)
    assert stage.parent_span_id == caller.span_id
    assert stage.trace_state == "vendor=x"  # the caller's tracestate carries on
    assert stage.kind == SPAN_KIND_SERVER
    assert stage.status_code == STATUS_UNSET
    assert stage.attributes["rpc.system"] == "grpc"
    assert stage.attributes["rpc.service"] == "vstage.engine.v1.Engine"
    assert stage.attributes["rpc.method"] == "Stage"
    assert stage.attributes["vstage.job_id"] == job_id
    assert stage.attributes["rpc.grpc.status_code"] == 0
    assert stage.resource["service.name"] == "vstage-engine"

    children = [s for s in spans if s is not stage]
    assert all(s.parent_span_id == stage.span_id for s in children)
    assert all(s.kind == SPAN_KIND_INTERNAL for s in children)
    names = by_name(children)
    assert set(names) == PHASES
    for s in children:
        assert stage.start_ns <= s.start_ns <= s.end_ns <= stage.end_ns, s.name

    # One clock reading makes both the Timings field and the span.
    t = result.timings
    for name, ms in [
        ("decode", t.decode_ms),
        ("preprocess", t.preprocess_ms),
        ("denoise", t.denoise_ms),
        ("vae_decode", t.vae_decode_ms),
        ("encode", t.encode_ms),
        ("queue", queue_ms),
    ]:
        assert sum(s.duration_ms for s in names[name]) == pytest.approx(ms, abs=0.002), name

    for s in spans:
        assert PROMPT not in json.dumps(s.attributes, default=str), s.name
    return stage


def test_stage_continues_the_callers_trace(traced: Engine, receiver: Receiver) -> None:
    caller = Caller()
    req = request(IMAGE, job_id="traced-1", steps=3, strength=0.7, guidance_scale=4.5)
    events = list(traced.stub.Stage(req, timeout=30, metadata=caller.metadata()))
    assert events[-1].WhichOneof("event") == "result"
    result = events[-1].result
    spans = receiver.trace(caller.trace_id, len(PHASES) + 1)

    stage = assert_job_trace(spans, caller, "traced-1", result, events[0].accepted.queue_ms)
    denoise = by_name(spans)["denoise"][0]
    assert denoise.attributes == {
        "vstage.steps": 3,
        "vstage.width": 64,
        "vstage.height": 32,
        "vstage.strength": pytest.approx(0.7),
        "vstage.guidance_scale": pytest.approx(4.5),
        "vstage.control": "canny",
        "vstage.inpaint": False,
    }

    lines = job_lines(traced, "traced-1")
    assert {e["msg"] for e in lines} >= {"job queued", "job done"}
    for entry in lines:
        assert entry["trace_id"] == caller.trace_id, entry
        assert entry["span_id"] == stage.span_id, entry


def test_every_span_belongs_to_a_callers_trace(traced: Engine, receiver: Receiver) -> None:
    # A job without a traceparent starts its own trace; nothing else exports.
    result = traced.result(request(IMAGE, job_id="untraced-1"))
    assert result.width == 64
    spans = receiver.wait_for(
        lambda ss: any(s.attributes.get("vstage.job_id") == "untraced-1" for s in ss)
    )
    stage = next(s for s in spans if s.attributes.get("vstage.job_id") == "untraced-1")
    assert stage.parent_span_id == ""
    mine = [s for s in spans if s.trace_id == stage.trace_id]
    assert {s.name for s in mine} == PHASES | {STAGE}
    stages = [s for s in spans if s.name == STAGE]
    assert all(any(s.trace_id == st.trace_id for st in stages) for s in spans)


def test_oom_fault_marks_the_stage_span_failed(traced: Engine, receiver: Receiver) -> None:
    caller = Caller()
    with pytest.raises(grpc.RpcError) as info:
        list(
            traced.stub.Stage(
                request(IMAGE, job_id="oom-1"), timeout=30, metadata=caller.metadata("oom")
            )
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    spans = receiver.trace(caller.trace_id, 5)
    stage = the_stage(spans)
    assert stage.status_code == STATUS_ERROR
    assert stage.status_message == "FAILURE_REASON_OOM"
    assert stage.attributes["error.type"] == "FAILURE_REASON_OOM"
    assert stage.attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    exc = [e for e in stage.events if e.name == "exception"]
    assert len(exc) == 1
    assert exc[0].attributes["exception.type"] == "inference.errors.EngineError"
    assert "out of memory" in exc[0].attributes["exception.message"]
    names = by_name(spans)
    assert names["denoise"][0].status_code == STATUS_ERROR
    assert "vae_decode" not in names and "encode" not in names

    lines = job_lines(traced, "oom-1")
    assert "job failed" in {e["msg"] for e in lines}
    assert "test fault" in {e["msg"] for e in lines}  # logged by the backend, inside the job
    assert all(e["trace_id"] == caller.trace_id for e in lines)


def test_rejected_input_marks_the_stage_span_failed(traced: Engine, receiver: Receiver) -> None:
    caller = Caller()
    with pytest.raises(grpc.RpcError) as info:
        list(
            traced.stub.Stage(
                request(b"not an image", job_id="bad-1"), timeout=30, metadata=caller.metadata()
            )
        )
    assert reason_of(info.value) == pb.FAILURE_REASON_BAD_IMAGE
    spans = receiver.trace(caller.trace_id, 2)
    stage = the_stage(spans)
    assert stage.status_code == STATUS_ERROR
    assert stage.status_message == "FAILURE_REASON_BAD_IMAGE"
    decode = by_name(spans)["decode"][0]
    assert decode.status_code == STATUS_ERROR and decode.parent_span_id == stage.span_id
    (rejected,) = [e for e in job_lines(traced, "bad-1") if e["msg"] == "job rejected"]
    assert rejected["trace_id"] == caller.trace_id
    assert rejected["span_id"] == stage.span_id


def test_cancelled_job_is_an_error_named_cancelled(traced: Engine, receiver: Receiver) -> None:
    caller = Caller()
    call = traced.stub.Stage(
        request(IMAGE, job_id="cancel-1", steps=10), metadata=caller.metadata("sleep=30")
    )
    assert next(call).WhichOneof("event") == "accepted"
    call.cancel()
    with pytest.raises(grpc.RpcError):
        list(call)
    spans = receiver.trace(caller.trace_id, 4)
    stage = the_stage(spans)
    assert stage.status_code == STATUS_ERROR
    assert stage.status_message == "cancelled"
    assert by_name(spans)["denoise"][0].status_code == STATUS_ERROR


def test_job_cancelled_in_the_queue(traced: Engine, receiver: Receiver) -> None:
    running = traced.stub.Stage(
        request(IMAGE, job_id="busy-1", steps=10), metadata=fault("sleep=30")
    )
    assert next(running).WhichOneof("event") == "accepted"
    caller = Caller()
    queued = traced.stub.Stage(
        request(IMAGE, job_id="queued-1"), timeout=60, metadata=caller.metadata()
    )
    deadline = time.monotonic() + 20
    while not job_lines(traced, "queued-1") and time.monotonic() < deadline:
        time.sleep(0.05)
    resp = traced.stub.Cancel(pb.CancelRequest(job_id="queued-1"), timeout=20)
    assert resp.outcome == pb.CancelResponse.OUTCOME_STOPPED
    with pytest.raises(grpc.RpcError):
        list(queued)
    running.cancel()

    spans = receiver.trace(caller.trace_id, 4)
    stage = the_stage(spans)
    assert stage.status_message == "cancelled"
    names = by_name(spans)
    assert set(names) == {STAGE, "decode", "preprocess", "queue"}
    assert names["queue"][0].status_code == STATUS_ERROR
    (stopped,) = [e for e in job_lines(traced, "queued-1") if e["msg"] == "job stopped"]
    assert stopped["trace_id"] == caller.trace_id
    assert stopped["span_id"] == stage.span_id


def test_unsampled_caller_exports_nothing_but_logs_keep_the_trace(
    traced: Engine, receiver: Receiver
) -> None:
    caller = Caller(sampled=False)
    events = list(
        traced.stub.Stage(request(IMAGE, job_id="unsampled-1"), metadata=caller.metadata())
    )
    assert events[-1].WhichOneof("event") == "result"
    # A later sampled job's spans arriving means the batch with this one went out.
    marker = Caller()
    list(traced.stub.Stage(request(IMAGE, job_id="marker-1"), metadata=marker.metadata()))
    spans = receiver.trace(marker.trace_id, 1)
    assert not [s for s in receiver.spans() if s.trace_id == caller.trace_id]
    assert spans
    lines = job_lines(traced, "unsampled-1")
    assert lines
    for entry in lines:
        assert entry["trace_id"] == caller.trace_id
        assert entry["span_id"] == caller.span_id


def test_sigterm_flushes_the_last_spans(receiver: Receiver) -> None:
    # A schedule far beyond the test: only the shutdown can send the spans.
    env = otlp_env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000")
    engine = start_test(["--concurrency", "1", *SMALL], env=env)
    try:
        caller = Caller()
        list(engine.stub.Stage(request(IMAGE, job_id="flush-1"), metadata=caller.metadata()))
        time.sleep(0.5)
        assert not [s for s in receiver.spans() if s.trace_id == caller.trace_id]
        engine.proc.send_signal(signal.SIGTERM)
        assert engine.wait_exit(20) == 0
        spans = [s for s in receiver.spans() if s.trace_id == caller.trace_id]
        assert {s.name for s in spans} == PHASES | {STAGE}
    finally:
        engine.close()


def test_a_collector_that_is_down_holds_neither_jobs_nor_the_stop() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    engine = start_test(["--concurrency", "1", *SMALL], env=env)
    try:
        caller = Caller()
        for i in range(3):
            req = request(IMAGE, job_id=f"down-{i}")
            events = list(engine.stub.Stage(req, timeout=10, metadata=caller.metadata()))
            assert events[-1].WhichOneof("event") == "result"
        time.sleep(0.3)  # the exporter is retrying by now
        t0 = time.monotonic()
        engine.proc.send_signal(signal.SIGTERM)
        assert engine.wait_exit(20) == 0
        # The flush gives up after main.TRACE_FLUSH_TIMEOUT, not the exporter's own 10 s.
        assert time.monotonic() - t0 < 9
        assert "trace export unfinished" in {e["msg"] for e in job_lines_all(engine)}
    finally:
        engine.close()


def test_grpc_protocol_and_resource_settings() -> None:
    receiver = grpc_receiver()
    env = otlp_env(
        receiver,
        "grpc",
        OTEL_SERVICE_NAME="engine-a",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,service.name=ignored",
    )
    engine = start_test(["--concurrency", "1", *SMALL], env=env)
    try:
        caller = Caller()
        list(engine.stub.Stage(request(IMAGE, job_id="grpc-1"), metadata=caller.metadata()))
        spans = receiver.trace(caller.trace_id, len(PHASES) + 1)
        stage = the_stage(spans)
        assert stage.parent_span_id == caller.span_id
        assert stage.resource["service.name"] == "engine-a"
        assert stage.resource["deployment.environment.name"] == "test"
    finally:
        engine.close()
        receiver.close()


def test_service_name_from_resource_attributes() -> None:
    receiver = http_receiver()
    env = otlp_env(receiver, OTEL_RESOURCE_ATTRIBUTES="service.name=engine-b")
    engine = start_test(["--concurrency", "1", *SMALL], env=env)
    try:
        caller = Caller()
        list(engine.stub.Stage(request(IMAGE, job_id="res-1"), metadata=caller.metadata()))
        stage = the_stage(receiver.trace(caller.trace_id, len(PHASES) + 1))
        assert stage.resource["service.name"] == "engine-b"
    finally:
        engine.close()
        receiver.close()


def test_exporter_unset_sends_nothing_and_logs_keep_the_callers_ids() -> None:
    receiver = http_receiver()
    env = otlp_env(receiver)
    del env["OTEL_TRACES_EXPORTER"]
    engine = start_test(["--concurrency", "1", *SMALL], env=env)
    try:
        caller = Caller()
        events = list(engine.stub.Stage(request(IMAGE, job_id="off-1"), metadata=caller.metadata()))
        assert events[-1].WhichOneof("event") == "result"
        with pytest.raises(grpc.RpcError):
            list(engine.stub.Stage(request(IMAGE, job_id="off-2"), metadata=caller.metadata("oom")))
        engine.proc.send_signal(signal.SIGTERM)
        assert engine.wait_exit(20) == 0
        assert receiver.requests == 0
        (starting,) = [e for e in job_lines_all(engine) if e["msg"] == "engine starting"]
        assert starting["traces_exporter"] == "none"
        for job_id, msg in (("off-1", "job done"), ("off-2", "job failed")):
            lines = job_lines(engine, job_id)
            assert msg in {e["msg"] for e in lines}
            for entry in lines:
                # No span of its own: the caller's ids, so the line joins its trace.
                assert entry["trace_id"] == caller.trace_id
                assert entry["span_id"] == caller.span_id
    finally:
        engine.close()
        receiver.close()


def test_lines_without_a_trace_carry_no_ids(test_engine: Engine) -> None:
    test_engine.result(request(IMAGE, job_id="plain-1"))
    lines = job_lines(test_engine, "plain-1")
    assert lines and not any("trace_id" in e or "span_id" in e for e in lines)
    assert all("trace_id" not in e for e in job_lines_all(test_engine))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,none"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_bad_exporter_setting_refuses_to_start(env: dict[str, str], named: str) -> None:
    engine = start_test(["--concurrency", "1"], env=env, wait_serving=None)
    try:
        assert engine.wait_exit(20) == 2
        (line,) = [e for e in job_lines_all(engine) if e["msg"] == "bad configuration"]
        assert line["error"].startswith(named + ":")
        assert "otlp" in line["error"] or "grpc" in line["error"]
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("environ", "exporters", "protocol"),
    [
        ({}, (), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "none"}, (), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": " OTLP "}, ("otlp",), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp"), "http/protobuf"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("otlp",),
            "grpc",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ("otlp",),
            "http/protobuf",
        ),
        # The protocol matters only to otlp.
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, (), "http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, (), "http/protobuf"),
    ],
)
def test_parse(environ: dict[str, str], exporters: tuple[str, ...], protocol: str) -> None:
    got = tracing.parse(environ)
    assert got.exporters == exporters
    assert got.protocol == protocol


def test_parse_refuses_unknown_exporter() -> None:
    with pytest.raises(config.ConfigError, match="OTEL_TRACES_EXPORTER: want one of otlp"):
        tracing.parse({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_off_installs_no_sdk_and_keeps_the_callers_context() -> None:
    # In a fresh interpreter: this one may have loaded the SDK for other tests.
    code = """
import sys
from opentelemetry import trace
from inference import tracing
t = tracing.start(tracing.parse({}))
assert t.provider is None and not t.enabled
job = t.start_job({"traceparent": sys.argv[1]}, "j")
span = trace.get_current_span(job.context)
assert not span.is_recording()
ctx = span.get_span_context()
print(trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id))
print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
"""
    caller = Caller()
    out = subprocess.run(
        [sys.executable, "-c", code, caller.traceparent],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out == [f"{caller.trace_id} {caller.span_id}", "[]"]


def test_a_job_without_traceparent_has_no_context_when_off() -> None:
    job = tracing.Tracing().start_job({}, "j")
    assert not trace.get_current_span(job.context).get_span_context().is_valid


def test_diffusers_backend_spans() -> None:
    """The model backend makes the same spans, on the tiny model, on the CPU."""
    receiver = http_receiver()
    args = ["--tiny-model", "--device", "cpu", *SMALL, "--warmup-long-side", "64"]
    engine = start(args, otlp_env(receiver))
    try:
        caller = Caller()
        req = request(IMAGE, job_id="tiny-1", steps=2, strength=1.0, guidance_scale=3.0)
        events = list(engine.stub.Stage(req, timeout=120, metadata=caller.metadata()))
        assert events[-1].WhichOneof("event") == "result"
        result = events[-1].result
        spans = receiver.trace(caller.trace_id, len(PHASES) + 1)
        assert_job_trace(spans, caller, "tiny-1", result, events[0].accepted.queue_ms)
        names = by_name(spans)
        # The resize before the queue and the control image on the worker.
        assert len(names["preprocess"]) == 2
        assert names["denoise"][0].attributes == {
            "vstage.steps": 2,
            "vstage.width": 64,
            "vstage.height": 32,
            "vstage.strength": 1.0,
            "vstage.guidance_scale": 3.0,
            "vstage.control": "canny",
            "vstage.inpaint": False,
        }
        # The warm-up job is the engine's own: no trace at all.
        assert all(s.trace_id == caller.trace_id for s in receiver.spans())
        lines = job_lines(engine, "tiny-1")
        assert {"job queued", "job done"} <= {e["msg"] for e in lines}
        assert all(e["trace_id"] == caller.trace_id for e in lines)

        bad = Caller()
        with pytest.raises(grpc.RpcError):
            list(
                engine.stub.Stage(
                    request(IMAGE, job_id="tiny-2", steps=0), timeout=30, metadata=bad.metadata()
                )
            )
        stage = the_stage(receiver.trace(bad.trace_id, 1))
        assert stage.status_code == STATUS_ERROR
        assert stage.status_message == "FAILURE_REASON_OUT_OF_RANGE"
    finally:
        engine.close()
        receiver.close()
