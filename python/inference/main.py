"""Process lifecycle: parse settings, serve, load, warm up, and exit when told or orphaned."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from . import config, logs, tracing
from .config import Settings
from .jobs import Backend
from .server import Server

EXIT_OK = 0
EXIT_LOAD_FAILED = 1
EXIT_CONFIG = 2

WATCH_INTERVAL = 0.25
# TRACE_FLUSH_TIMEOUT bounds the export of the last spans on the way out.
TRACE_FLUSH_TIMEOUT = 5.0

BackendFactory = Callable[[Settings], Backend]


def _offline() -> None:
    # Set before diffusers or transformers is imported: the hub client reads
    # these once. The engine must never reach for the network, even where one exists.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["DIFFUSERS_NO_ADVISORY_WARNINGS"] = "1"


def diffusers_backend(settings: Settings) -> Backend:
    """Returns the model backend; importing it imports torch and diffusers."""
    # Before the heavy imports: they log while importing.
    logs.adopt_library_loggers()
    from .diffusers_backend import DiffusersBackend

    return DiffusersBackend(settings)


class _Stop:
    """_Stop records the first reason to exit and wakes the main thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self.code = EXIT_OK
        self.graceful = True
        self._lock = threading.Lock()

    def request(self, reason: str, code: int = EXIT_OK, graceful: bool = True) -> None:
        with self._lock:
            if not self.event.is_set():
                self.reason, self.code, self.graceful = reason, code, graceful
                self.event.set()


def _watch(settings: Settings, parent: int, inode: int, stop: _Stop) -> None:
    """Stops the engine when its parent dies or its socket file is removed or replaced."""
    explicit = settings.parent_pid != 0
    while not stop.event.wait(WATCH_INTERVAL):
        if explicit:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                stop.request("parent exited", graceful=False)
            except PermissionError:
                pass
        elif os.getppid() != parent:
            # Reparented: the process that started us is gone.
            stop.request("parent exited", graceful=False)
        try:
            current = os.stat(settings.socket).st_ino
        except FileNotFoundError:
            current = -1
        if current != inode:
            stop.request("socket removed", graceful=False)


def _load(
    server: Server, backend: Backend, settings: Settings, stop: _Stop, t0: float, import_s: float
) -> None:
    log = logs.get()
    try:
        t1 = time.monotonic()
        backend.load()
        t2 = time.monotonic()
        backend.warmup()
        t3 = time.monotonic()
    except Exception:
        log.exception("model load failed")
        stop.request("model load failed", EXIT_LOAD_FAILED, graceful=False)
        return
    server.set_serving()
    info = backend.info()
    # Where start-up time goes: imports (torch, diffusers), building or
    # loading the model, the warm-up job; ready_s counts from run().
    log.info(
        "engine ready",
        extra=logs.fields(
            model_rev=settings.model_rev or info.model_rev,
            device=info.device,
            dtype=info.dtype,
            import_s=round(import_s, 3),
            load_s=round(t2 - t1, 3),
            warmup_s=round(t3 - t2, 3),
            warmup_long_side=settings.warmup_side(),
            ready_s=round(t3 - t0, 3),
        ),
    )


def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    make_backend: BackendFactory = diffusers_backend,
    needs_model: bool = True,
) -> int:
    """Runs the engine until it is stopped; returns the exit code.

    make_backend builds the backend from the settings; a backend that loads no
    model passes needs_model=False, so that no model has to be named.
    """
    t0 = time.monotonic()
    try:
        settings = config.parse(argv, environ, needs_model)
        trace_settings = tracing.parse(environ)
    except config.ConfigError as err:
        logs.setup("info").error("bad configuration", extra=logs.fields(error=str(err)))
        return EXIT_CONFIG
    _offline()
    log = logs.setup(settings.log_level)
    log.info(
        "engine starting",
        extra=logs.fields(
            pid=os.getpid(),
            socket=settings.socket,
            concurrency=settings.concurrency,
            traces_exporter=trace_settings.describe(),
        ),
    )
    traces = tracing.start(trace_settings)

    parent = settings.parent_pid or os.getppid()
    t1 = time.monotonic()
    backend = make_backend(settings)
    import_s = time.monotonic() - t1
    # A socket left by a dead engine would make the bind fail; anything else
    # at the path is not ours to delete, and the bind reports it.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(settings.socket).st_mode):
            os.unlink(settings.socket)
    server = Server(settings, backend, traces)
    try:
        server.start()
    except (OSError, RuntimeError) as err:  # grpc reports a failed bind as RuntimeError
        log.error("cannot listen", extra=logs.fields(socket=settings.socket, error=str(err)))
        return EXIT_CONFIG
    # Only our own user may connect: the socket carries no authentication.
    os.chmod(settings.socket, 0o600)
    inode = os.stat(settings.socket).st_ino

    stop = _Stop()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.request(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(
        target=_watch, args=(settings, parent, inode, stop), name="watch", daemon=True
    ).start()
    log.info("engine listening", extra=logs.fields(socket=settings.socket, backend=backend.name))
    threading.Thread(
        target=_load,
        args=(server, backend, settings, stop, t0, import_s),
        name="load",
        daemon=True,
    ).start()

    # A bounded wait keeps the main thread able to run signal handlers.
    while not stop.event.wait(1.0):
        pass
    log.info("engine stopping", extra=logs.fields(reason=stop.reason, graceful=stop.graceful))
    server.stop(settings.shutdown_grace if stop.graceful else 0)
    with contextlib.suppress(OSError):
        if os.stat(settings.socket).st_ino == inode:
            os.unlink(settings.socket)
    if not traces.shutdown(TRACE_FLUSH_TIMEOUT):
        log.warning("trace export unfinished", extra=logs.fields(timeout_s=TRACE_FLUSH_TIMEOUT))
    log.info("engine stopped", extra=logs.fields(code=stop.code))
    return stop.code


def main() -> None:
    code = run(sys.argv[1:], os.environ)
    sys.stderr.flush()
    # os._exit: a job thread stuck in a library call must not keep a stopped engine alive.
    os._exit(code)
