"""GPU benchmark: SDXL + ControlNet at full size, random weights, through the engine's code path.

Builds the SDXL UNet, a ControlNet, the VAE and both text encoders from the
configs in bench/sdxl/ with random weights (timing does not depend on weight
values), then runs img2img jobs through inference.diffusers_backend exactly as
the engine does, at each size and variant:

    eager          fp16, SDPA attention, contiguous memory
    channels_last  the same modules converted to channels-last
    compile        channels-last plus torch.compile of the UNet and ControlNet

and prints P50/P95 seconds per image, the mean per-step time, the VAE decode
time and the peak GPU memory, with a short table last. A time budget skips
what would not fit (the run is meant to finish in under 8 minutes on one H100).

--tiny (or --dry-run) swaps in the tiny model on the CPU, with tiny sizes
unless --sizes says otherwise: it checks the whole path on a machine without
a GPU, and bench/cpu_tiny.sh uses it to time the tiny pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
CONFIGS = Path(__file__).resolve().parent / "sdxl"

# Set before diffusers is imported: no hub access, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from inference import config, models, tiny  # noqa: E402
from inference._proto import engine_pb2 as pb  # noqa: E402
from inference.diffusers_backend import DiffusersBackend  # noqa: E402
from inference.jobs import JobContext, JobSpec, Work  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile")


@dataclasses.dataclass
class Row:
    """Row is one (variant, size) measurement."""

    variant: str
    size: int
    runs: int
    p50_s: float
    p95_s: float
    step_ms: float
    vae_ms: float
    peak_gib: float
    warmup_s: float


def load_json(name: str) -> dict[str, Any]:
    with open(CONFIGS / name) as f:
        return dict(json.load(f))


def build_full(device: torch.device) -> models.Components:
    """Full-size SDXL components with random weights, created on the device
    (initialising 3.5 billion parameters on the CPU would take minutes)."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with device:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(load_json("unet.json"))
        torch.manual_seed(0)
        controlnet = ControlNetModel.from_config(load_json("controlnet.json"))
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(load_json("vae.json"))
        torch.manual_seed(0)
        te1 = CLIPTextModel(CLIPTextConfig(**load_json("text_encoder.json")))
        torch.manual_seed(0)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**load_json("text_encoder_2.json")))
    return models.Components(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        # Token ids only index embeddings; the tiny offline vocabulary is enough.
        tokenizer=tiny.build_tokenizer(),
        tokenizer_2=tiny.build_tokenizer(),
        unet=unet,
        controlnets={"canny": controlnet},
        scheduler=EulerDiscreteScheduler.from_config(load_json("scheduler.json")),
        model_rev="bench-random",
    )


def check_configs() -> int:
    """Builds every full-size module without memory and prints its parameter count."""
    c = build_full(torch.device("meta"))
    counts = {
        "unet": c.unet,
        "controlnet": c.controlnets["canny"],
        "vae": c.vae,
        "text_encoder": c.text_encoder,
        "text_encoder_2": c.text_encoder_2,
    }
    for name, module in counts.items():
        n = sum(p.numel() for p in module.parameters())
        print(f"{name:<16}{n / 1e6:>10.1f} M parameters")
    return 0


def picture(size: int) -> Image.Image:
    """A square picture with edges, so Canny has work to do."""
    yy, xx = np.indices((size, size))
    arr = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx // 32 + yy // 32) % 2) * 255], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Bench:
    """Bench runs jobs on one backend and collects their timings."""

    def __init__(self, backend: DiffusersBackend, cuda: bool, steps: int) -> None:
        self.backend = backend
        self.cuda = cuda
        self.steps = steps

    def job(self, size: int, seed: int) -> tuple[float, list[float], float, int]:
        """Runs one job; returns wall seconds, per-step seconds, VAE ms, peak bytes."""
        spec = JobSpec(
            job_id=f"bench-{size}-{seed}",
            prompt="a furnished living room, photo",
            negative_prompt="blurry",
            seed=seed,
            strength=1.0,
            guidance_scale=5.0,
            steps=self.steps,
            control="canny",
            conditioning_scale=0.5,
            long_side=size,
            output_format="png",
            quality=90,
        )
        stamps: list[float] = []

        def progress(_step: int, _total: int) -> None:
            # Synchronise so a step's timestamp is when the GPU finished it,
            # not when Python queued it.
            if self.cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        ctx = JobContext(threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, progress)
        t0 = time.perf_counter()
        out = self.backend.run(Work(spec=spec, image=picture(size), mask=None), ctx)
        wall = time.perf_counter() - t0
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        return wall, steps, out.vae_decode_ms, out.peak_gpu_memory_bytes

    def measure(self, variant: str, size: int, runs: int) -> Row:
        t0 = time.perf_counter()
        self.job(size, seed=0)  # warm-up: kernels, allocator, compilation
        warmup = time.perf_counter() - t0
        walls, steps, vaes, peaks = [], [], [], []
        for i in range(runs):
            wall, step, vae, peak = self.job(size, seed=1 + i)
            walls.append(wall)
            steps.extend(step)
            vaes.append(vae)
            peaks.append(peak)
        return Row(
            variant=variant,
            size=size,
            runs=runs,
            p50_s=percentile(walls, 0.5),
            p95_s=percentile(walls, 0.95),
            step_ms=statistics.fmean(steps) * 1000 if steps else 0.0,
            vae_ms=percentile(vaes, 0.5),
            peak_gib=max(peaks) / 2**30,
            warmup_s=warmup,
        )


def apply_variant(c: models.Components, variant: str, compile_backend: str) -> None:
    """Converts the shared modules in place; variants only ever add to the last."""
    if variant in ("channels_last", "compile") and not getattr(c, "_channels_last", False):
        for m in (c.unet, c.vae, *c.controlnets.values()):
            m.to(memory_format=torch.channels_last)
        c._channels_last = True  # type: ignore[attr-defined]
    if variant == "compile":
        # Static shapes: each size gets its own graph, as bucketed production sizes would.
        c.unet = torch.compile(c.unet, backend=compile_backend, dynamic=False)
        c.controlnets = {
            k: torch.compile(v, backend=compile_backend, dynamic=False)
            for k, v in c.controlnets.items()
        }


def table(rows: list[Row]) -> str:
    head = f"{'variant':<14}{'size':>6}{'runs':>6}{'p50 s':>9}{'p95 s':>9}{'step ms':>10}"
    head += f"{'vae ms':>9}{'peak GiB':>10}{'warm s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.variant:<14}{r.size:>6}{r.runs:>6}{r.p50_s:>9.3f}{r.p95_s:>9.3f}"
            f"{r.step_ms:>10.1f}{r.vae_ms:>9.1f}{r.peak_gib:>10.2f}{r.warmup_s:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny",
        "--dry-run",
        dest="tiny",
        action="store_true",
        help="tiny model on the CPU (tiny sizes unless --sizes)",
    )
    p.add_argument("--sizes", default="", help="comma-separated long sides (768,1024)")
    p.add_argument("--steps", type=int, default=0, help="denoising steps (30)")
    p.add_argument("--runs", type=int, default=0, help="timed runs per size and variant (5)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--compile-backend", default="", help="torch.compile backend (inductor)")
    p.add_argument("--compile-sizes", default="", help="sizes for the compile variant (largest)")
    p.add_argument(
        "--check-configs",
        action="store_true",
        help="build the full-size modules on the meta device and count parameters",
    )
    p.add_argument("--budget-s", type=float, default=420.0, help="skip what would start later")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    args = p.parse_args(argv)

    if args.check_configs:
        return check_configs()
    dry = args.tiny
    sizes = [int(s) for s in (args.sizes or ("64,128" if dry else "768,1024")).split(",")]
    steps = args.steps or (3 if dry else 30)
    runs = args.runs or (2 if dry else 5)
    compile_backend = args.compile_backend or ("eager" if dry else "inductor")
    compile_sizes = (
        [int(s) for s in args.compile_sizes.split(",")] if args.compile_sizes else sizes[-1:]
    )
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}")

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # NaNs from random weights
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not dry
    if not cuda and not dry:
        print("no CUDA device: run with --tiny to check the script on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    components = tiny.build() if dry else build_full(device)
    build_s = time.perf_counter() - t0

    settings = config.Settings(
        socket="unused",
        device=device.type,
        dtype="float32" if dry else args.dtype,
        min_long_side=min(sizes),
        max_long_side=max(sizes),
        default_long_side=min(sizes),
    )
    rows: list[Row] = []
    skipped: list[str] = []
    interrupted = ""
    try:
        for variant in variants:
            apply_variant(components, variant, compile_backend)
            backend = DiffusersBackend(settings, components)
            backend.load()
            bench = Bench(backend, cuda, steps)
            for size in compile_sizes if variant == "compile" else sizes:
                elapsed = time.perf_counter() - started
                if elapsed > args.budget_s:
                    skipped.append(f"{variant}@{size}")
                    continue
                row = bench.measure(variant, size, runs)
                rows.append(row)
                print(json.dumps({"row": dataclasses.asdict(row)}), flush=True)
    except KeyboardInterrupt:
        # gpu.sh's timeout sends SIGINT first: report what was measured.
        interrupted = "interrupted by the time limit; later rows are missing"

    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    import diffusers
    import transformers

    dtype_name = settings.dtype
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda or ""),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    summary = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_name,
        "dtype": dtype_name,
        "versions": versions,
        "steps": steps,
        "tiny": dry,
        "build_s": round(build_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "skipped": skipped,
        "interrupted": interrupted,
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    print()
    print(f"{device_name}, {dtype_name}, {steps} steps, img2img strength 1.0 + ControlNet (canny)")
    print(table(rows))
    if skipped:
        print(f"skipped (time budget): {', '.join(skipped)}")
    if interrupted:
        print(interrupted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
