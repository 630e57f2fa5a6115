"""Engine settings: command-line flags, each with an environment variable of the same meaning.

A flag wins over its variable, which wins over the default. Everything is read
once at start, validated, and passed down; nothing else reads the environment,
except the OpenTelemetry SDK, which reads its own OTEL_* variables when trace
export is on (see tracing).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence

from . import buckets

MIB = 1024 * 1024

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# CUDA_GRAPH_MODES record CUDA graphs, which are replayed only by the thread that recorded them.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
SDPA_NAMES = ("flash", "efficient", "cudnn", "math")
MAX_FEW_STEPS = 16
# Each structure retry is one more full render, so even a lenient engine stops at ten.
MAX_STRUCTURE_RETRIES = 10


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the flag and variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings is the engine's whole configuration."""

    socket: str = ""
    model_dir: str = ""
    tiny_model: bool = False
    model_rev: str = ""
    device: str = "auto"
    dtype: str = "auto"
    concurrency: int = 1
    min_long_side: int = 768
    max_long_side: int = 1024
    default_long_side: int = 1024
    max_steps: int = 100
    max_input_pixels: int = 50_000_000
    max_message_bytes: int = 64 * MIB
    mask_feather: int = 4
    max_structure_retries: int = 3
    warmup_steps: int = 1
    warmup_long_side: int = 0
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    channels_last: bool = False
    fuse_qkv: bool = False
    sdpa_backends: str = ""
    buckets: str = ""
    cfg_cutoff: float = 1.0
    controlnet_end: float = 1.0
    few_step: bool = False
    few_step_steps: int = 4
    few_step_guidance: float = 0.0
    max_upscale_long_side: int = 4096
    upscale_strength: float = 0.3
    upscale_steps: int = 20
    upscale_tile: int = 1024
    upscale_overlap: int = 128
    parent_pid: int = 0
    shutdown_grace: float = 10.0
    log_level: str = "info"

    def warmup_side(self) -> int:
        """The warm-up job's long side: warmup_long_side (or the default) within the limits."""
        side = self.warmup_long_side or self.default_long_side
        return min(max(side - side % 8, self.min_long_side), self.max_long_side)


# Each option: flag, environment variable, type, help. The defaults come from Settings.
_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("socket", "ENGINE_SOCKET", str, "Unix socket path to serve on (required)"),
    ("model_dir", "MODEL_DIR", str, "folder of diffusers-format models"),
    ("tiny_model", "ENGINE_TINY_MODEL", bool, "build the tiny random model (tests, demos)"),
    ("model_rev", "ENGINE_MODEL_REV", str, "model revision to report; empty: derived from files"),
    ("device", "ENGINE_DEVICE", str, "auto, cpu or cuda"),
    ("dtype", "ENGINE_DTYPE", str, "auto, float32, float16 or bfloat16 (auto: fp32 on CPU)"),
    ("concurrency", "ENGINE_CONCURRENCY", int, "jobs run at once; more wait in order"),
    ("min_long_side", "ENGINE_MIN_LONG_SIDE", int, "smallest output long side, pixels"),
    ("max_long_side", "ENGINE_MAX_LONG_SIDE", int, "largest output long side, pixels"),
    ("default_long_side", "ENGINE_DEFAULT_LONG_SIDE", int, "long side when a job asks for 0"),
    ("max_steps", "ENGINE_MAX_STEPS", int, "largest number of denoising steps"),
    ("max_input_pixels", "ENGINE_MAX_INPUT_PIXELS", int, "pixel cap of input image and mask"),
    ("max_message_bytes", "ENGINE_MAX_MESSAGE_BYTES", int, "gRPC message limit each way"),
    ("mask_feather", "ENGINE_MASK_FEATHER", int, "inpaint blend width in output pixels"),
    (
        "max_structure_retries",
        "ENGINE_MAX_STRUCTURE_RETRIES",
        int,
        "most extra seeds a job may try when its render fails the structure check",
    ),
    ("warmup_steps", "ENGINE_WARMUP_STEPS", int, "steps of the warm-up job before SERVING"),
    (
        "warmup_long_side",
        "ENGINE_WARMUP_LONG_SIDE",
        int,
        "long side of the warm-up job, clamped to the limits; 0: default-long-side",
    ),
    ("compile", "ENGINE_COMPILE", bool, "torch.compile the UNet, ControlNets and VAE decoder"),
    ("compile_mode", "ENGINE_COMPILE_MODE", str, "torch.compile mode: " + ", ".join(COMPILE_MODES)),
    ("compile_backend", "ENGINE_COMPILE_BACKEND", str, "torch.compile backend (inductor)"),
    ("channels_last", "ENGINE_CHANNELS_LAST", bool, "channels-last memory format"),
    ("fuse_qkv", "ENGINE_FUSE_QKV", bool, "fuse attention query/key/value projections"),
    ("sdpa_backends", "ENGINE_SDPA_BACKENDS", str, "attention kernels allowed, preferred first"),
    ("buckets", "ENGINE_BUCKETS", str, "output sizes: empty, standard or WxH,WxH,..."),
    ("cfg_cutoff", "ENGINE_CFG_CUTOFF", float, "fraction of steps with guidance (1: all)"),
    ("controlnet_end", "ENGINE_CONTROLNET_END", float, "fraction of steps with control (1: all)"),
    ("few_step", "ENGINE_FEW_STEP", bool, "run every job with the few-step profile"),
    ("few_step_steps", "ENGINE_FEW_STEP_STEPS", int, "steps of the few-step profile"),
    ("few_step_guidance", "ENGINE_FEW_STEP_GUIDANCE", float, "guidance of the few-step profile"),
    (
        "max_upscale_long_side",
        "ENGINE_MAX_UPSCALE_LONG_SIDE",
        int,
        "largest long side a job may ask to be upscaled to; 0: no upscaling",
    ),
    ("upscale_strength", "ENGINE_UPSCALE_STRENGTH", float, "img2img strength of the refinement"),
    ("upscale_steps", "ENGINE_UPSCALE_STEPS", int, "scheduler steps of the refinement"),
    ("upscale_tile", "ENGINE_UPSCALE_TILE", int, "refinement tile side, pixels"),
    ("upscale_overlap", "ENGINE_UPSCALE_OVERLAP", int, "least overlap of refinement tiles"),
    ("parent_pid", "ENGINE_PARENT_PID", int, "exit when this process dies; 0: the parent"),
    ("shutdown_grace", "ENGINE_SHUTDOWN_GRACE", float, "seconds jobs get to finish on SIGTERM"),
    ("log_level", "ENGINE_LOG_LEVEL", str, "debug, info, warning or error"),
)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: want true or false, got {text!r}")


def _convert(kind: type, text: str, name: str) -> object:
    if kind is bool:
        return _parse_bool(text, name)
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}: want {kind.__name__}, got {text!r}") from None


def parse(argv: Sequence[str], environ: Mapping[str, str], needs_model: bool = True) -> Settings:
    """Builds Settings from flags and environment variables, or raises ConfigError.

    needs_model requires a choice of model: MODEL_DIR, or the tiny model asked
    for by name; a backend that loads no model passes False.
    """
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description="vstage engine: SDXL + ControlNet over gRPC on a Unix socket.",
    )
    defaults = Settings(socket="")
    for name, env, kind, text in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        helptext = f"{text} [env {env}, default {getattr(defaults, name)!r}]"
        if kind is bool:
            parser.add_argument(
                flag, dest=name, default=None, help=helptext, action=argparse.BooleanOptionalAction
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=helptext)
    args = parser.parse_args(list(argv))

    values: dict[str, object] = {}
    for name, env, kind, _ in _OPTIONS:
        flag_value = getattr(args, name)
        label = f"--{name.replace('_', '-')}"
        if flag_value is not None:
            values[name] = flag_value if kind is bool else _convert(kind, flag_value, label)
        elif env in environ:
            values[name] = _convert(kind, environ[env], env)
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings, needs_model)
    return settings


def validate(s: Settings, needs_model: bool = True) -> None:
    """Raises ConfigError naming the first setting that is out of range."""
    if not s.socket:
        raise ConfigError("--socket (ENGINE_SOCKET) is required")
    if len(os.fsencode(s.socket)) > 100:
        raise ConfigError("--socket: a Unix socket path must be under 100 bytes")
    if s.device not in DEVICES:
        raise ConfigError(f"--device: want one of {DEVICES}, got {s.device!r}")
    if s.dtype not in DTYPES:
        raise ConfigError(f"--dtype: want one of {DTYPES}, got {s.dtype!r}")
    if not 1 <= s.concurrency <= 64:
        raise ConfigError("--concurrency (ENGINE_CONCURRENCY): want 1 to 64")
    for name in ("min_long_side", "max_long_side", "default_long_side"):
        value = getattr(s, name)
        if value < 64 or value > 4096 or value % 8:
            raise ConfigError(f"--{name.replace('_', '-')}: want a multiple of 8 in [64, 4096]")
    if not s.min_long_side <= s.default_long_side <= s.max_long_side:
        raise ConfigError("want min-long-side <= default-long-side <= max-long-side")
    if not 1 <= s.max_steps <= 1000:
        raise ConfigError("--max-steps: want 1 to 1000")
    if s.max_input_pixels < 64 * 64:
        raise ConfigError("--max-input-pixels: want at least 4096")
    if s.max_message_bytes < 64 * MIB:
        raise ConfigError("--max-message-bytes: want at least 64 MiB")
    if not 0 <= s.mask_feather <= 64:
        raise ConfigError("--mask-feather: want 0 to 64")
    if not 0 <= s.max_structure_retries <= MAX_STRUCTURE_RETRIES:
        raise ConfigError(f"--max-structure-retries: want 0 to {MAX_STRUCTURE_RETRIES}")
    if not 1 <= s.warmup_steps <= 50:
        raise ConfigError("--warmup-steps: want 1 to 50")
    if not 0 <= s.warmup_long_side <= 4096:
        raise ConfigError("--warmup-long-side: want 0 to 4096")
    if s.shutdown_grace < 0:
        raise ConfigError("--shutdown-grace: must not be negative")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("--log-level: want debug, info, warning or error")
    # Random weights are never served by accident: the model is always named.
    if s.model_dir and s.tiny_model:
        raise ConfigError("MODEL_DIR (--model-dir) and --tiny-model exclude each other")
    if needs_model and not s.model_dir and not s.tiny_model:
        raise ConfigError(
            "MODEL_DIR (--model-dir) is required; --tiny-model (ENGINE_TINY_MODEL=true) "
            "builds a tiny random model for tests and demos instead"
        )
    validate_speed(s)
    validate_upscale(s)


def validate_upscale(s: Settings) -> None:
    """Raises ConfigError naming the first upscale setting that is out of range."""
    m = s.max_upscale_long_side
    if m and (m % 8 or not 64 <= m <= 8192):
        raise ConfigError(
            "--max-upscale-long-side (ENGINE_MAX_UPSCALE_LONG_SIDE): want 0, "
            "or a multiple of 8 in [64, 8192]"
        )
    if not 0.0 < s.upscale_strength <= 1.0:
        raise ConfigError("--upscale-strength (ENGINE_UPSCALE_STRENGTH): want (0, 1]")
    if not 1 <= s.upscale_steps <= s.max_steps:
        raise ConfigError(f"--upscale-steps (ENGINE_UPSCALE_STEPS): want 1 to {s.max_steps}")
    # The refinement runs the last steps*strength steps; none would be a plain resampling.
    if int(s.upscale_steps * s.upscale_strength) < 1:
        raise ConfigError("want --upscale-steps * --upscale-strength of at least 1")
    if s.upscale_tile % 8 or not 64 <= s.upscale_tile <= 2048:
        raise ConfigError(
            "--upscale-tile (ENGINE_UPSCALE_TILE): want a multiple of 8 in [64, 2048]"
        )
    if s.upscale_overlap % 8 or not 8 <= s.upscale_overlap <= s.upscale_tile // 2:
        raise ConfigError(
            "--upscale-overlap (ENGINE_UPSCALE_OVERLAP): want a multiple of 8 "
            f"in [8, {s.upscale_tile // 2}] (half the tile)"
        )


def parse_sdpa(text: str) -> tuple[str, ...]:
    """Splits the --sdpa-backends setting into names, most preferred first;
    empty means PyTorch's own choice."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def validate_speed(s: Settings) -> None:
    """Raises ConfigError naming the first speed setting that is out of range."""
    if s.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"--compile-mode: want one of {COMPILE_MODES}, got {s.compile_mode!r}")
    if s.compile and s.compile_mode in CUDA_GRAPH_MODES and s.concurrency > 1:
        raise ConfigError(
            f"--compile-mode {s.compile_mode} records CUDA graphs, which need --concurrency 1"
        )
    if not s.compile_backend:
        raise ConfigError("--compile-backend: want a torch.compile backend name, such as inductor")
    names = parse_sdpa(s.sdpa_backends)
    if any(n not in SDPA_NAMES for n in names) or len(set(names)) != len(names):
        raise ConfigError(
            f"--sdpa-backends: want distinct names from {SDPA_NAMES}, got {s.sdpa_backends!r}"
        )
    for name in ("cfg_cutoff", "controlnet_end"):
        value = getattr(s, name)
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')}: want a fraction in (0, 1], got {value}")
    if not 1 <= s.few_step_steps <= min(MAX_FEW_STEPS, s.max_steps):
        raise ConfigError(f"--few-step-steps: want 1 to {min(MAX_FEW_STEPS, s.max_steps)}")
    if not 0.0 <= s.few_step_guidance <= 30.0:
        raise ConfigError("--few-step-guidance: want 0 to 30")
    try:
        sizes = buckets.parse(s.buckets, s.default_long_side)
    except buckets.BucketError as exc:
        raise ConfigError(f"--buckets (ENGINE_BUCKETS): {exc}") from None
    for width, height in sizes:
        if not s.min_long_side <= max(width, height) <= s.max_long_side:
            raise ConfigError(
                f"--buckets: {width}x{height} has a long side outside "
                f"[{s.min_long_side}, {s.max_long_side}]"
            )
