"""GPU benchmark: SDXL + ControlNet at full size, random weights, through the
engine's code path, sweeping the engine's speed settings.

Builds the SDXL UNet, a ControlNet, the VAE and both text encoders from the
configs in bench/sdxl/ with random weights (timing does not depend on weight
values) once, then for each row of the plan loads an engine backend on those
modules with the row's settings, runs a first job (kernel selection,
compilation), then timed img2img jobs, and undoes the row's changes to the
modules. Rows, most informative first; the first compiled row comes after
the quick eager ones, so its minutes of compilation cannot crowd them out:

    eager              fp16, PyTorch's default attention kernel (the baseline),
                       at the large size (and later at the small one)
    few-step           the few-step profile: 4 steps, no guidance
    cfg-cutoff-0.5     guidance for the first half of the steps only
    controlnet-end-0.5 the ControlNet for the first half of the steps only
    eager-stack        channels-last, fused QKV, cut-off 0.5, ControlNet end 0.5
    compile            channels-last, fused QKV, torch.compile, one or two buckets
                       (as the budget allows): 'ready s' is load plus the engine's
                       warm-up, as before SERVING, with each bucket's share
    channels-last      channels-last memory format
    fused-qkv          fused attention projections
    sdpa-cudnn         cuDNN attention preferred
    concurrency-2      two jobs at once on the GPU (throughput and P95)
    sdpa-efficient     memory-efficient attention preferred
    compile-autotune   as compile, in mode max-autotune-no-cudagraphs

Each row reports P50/P95 seconds per image, denoising it/s, VAE decode time,
images per second, peak GPU memory, the first job's time and, where it
applies, the ready time. A row starts only if its estimated cost fits the
time budget; results are written after every row, so an interrupted run
keeps what it measured, and a short table is printed last.

--tiny (or --dry-run) swaps in the tiny model on the CPU, with tiny sizes
unless --sizes says otherwise, and compiles with the eager backend (graph
capture only): it checks the whole path on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
CONFIGS = Path(__file__).resolve().parent / "sdxl"

# Set before diffusers is imported: no hub access, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import gpu_report  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from inference import config, models, speed, tiny  # noqa: E402
from inference._proto import engine_pb2 as pb  # noqa: E402
from inference.diffusers_backend import DiffusersBackend  # noqa: E402
from inference.jobs import DENOISE, VAE_DECODE, JobContext, JobSpec, Work  # noqa: E402

LARGE, SMALL = "large", "small"
STACK = {"channels_last": True, "fuse_qkv": True}


@dataclasses.dataclass(frozen=True)
class Variant:
    """Variant is one row of the plan: engine settings at one size."""

    name: str
    size: str  # LARGE or SMALL
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    concurrency: int = 1
    # compiled rows run with output buckets and time load plus the engine's
    # warm-up (the ready time); their compilation is budgeted per bucket.
    compiled: bool = False


def plan() -> list[Variant]:
    """Returns the rows in the order they run."""
    compiled = {**STACK, "compile": True}
    return [
        Variant("eager", LARGE),
        Variant("few-step", LARGE, {"few_step": True}),
        Variant("cfg-cutoff-0.5", LARGE, {"cfg_cutoff": 0.5}),
        Variant("controlnet-end-0.5", LARGE, {"controlnet_end": 0.5}),
        Variant("eager-stack", LARGE, {**STACK, "cfg_cutoff": 0.5, "controlnet_end": 0.5}),
        Variant("compile", LARGE, compiled, compiled=True),
        Variant("eager", SMALL),
        Variant("channels-last", LARGE, {"channels_last": True}),
        Variant("fused-qkv", LARGE, {"fuse_qkv": True}),
        Variant("sdpa-cudnn", LARGE, {"sdpa_backends": "cudnn,flash,efficient,math"}),
        Variant("concurrency-2", LARGE, {"concurrency": 2}, concurrency=2),
        Variant("few-step", SMALL, {"few_step": True}),
        Variant("sdpa-efficient", LARGE, {"sdpa_backends": "efficient,math"}),
        Variant(
            "compile-autotune",
            LARGE,
            {**compiled, "compile_mode": "max-autotune-no-cudagraphs"},
            compiled=True,
        ),
    ]


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


@dataclasses.dataclass
class Job:
    """Job is one timed job: wall seconds, steps run, denoise and VAE ms, peak bytes."""

    wall: float
    steps: int
    denoise_ms: float
    vae_ms: float
    peak: int


class Bench:
    """Bench runs the plan's rows on one set of modules and collects their numbers."""

    def __init__(self, args: argparse.Namespace, components: models.Components) -> None:
        self.args = args
        self.c = components
        self.cuda = not args.tiny
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.snapshot = speed.Snapshot(components)
        # Seconds per 30-step eager job, refined by the eager rows; guesses for an H100-class card.
        self.job_s = {LARGE: 3.0, SMALL: 1.7} if self.cuda else {LARGE: 1.0, SMALL: 0.5}

    def px(self, size: str) -> int:
        return int(self.args.sizes[0] if size == LARGE else self.args.sizes[1])

    def settings(self, v: Variant, buckets: int) -> config.Settings:
        px = self.px(v.size)
        extra = dict(v.settings)
        if v.compiled:
            # Square, then 4:3 landscape: the standard set's two most common shapes.
            sizes = [f"{px}x{px}", f"{px}x{px * 3 // 4 // 64 * 64}"]
            extra["buckets"] = ",".join(sizes[:buckets])
        if self.args.tiny:
            extra.setdefault("compile_backend", "eager")
        s = config.Settings(
            socket="unused",
            device=self.device.type,
            dtype=self.args.dtype if self.cuda else "float32",
            min_long_side=min(self.args.sizes),
            max_long_side=max(self.args.sizes),
            default_long_side=px,
            warmup_steps=2,
            **extra,
        )
        # The components are built here and handed to the backend, so no model is named.
        config.validate(s, needs_model=False)
        return s

    def estimate(self, v: Variant, buckets: int) -> float:
        """Seconds the row should take: its jobs, plus compilation when it compiles
        (a further bucket recompiles the same graphs at another shape: cheaper)."""
        steps = 4 if v.settings.get("few_step") else self.args.steps
        jobs = (1 + self.args.runs) * v.concurrency
        cost = self.job_s[v.size] * steps / 30 * jobs / (1.5 if v.concurrency > 1 else 1)
        if v.compiled:
            cost += self.args.compile_estimate_s * (1 + 0.6 * (buckets - 1))
        return cost

    def buckets_that_fit(self, v: Variant, seconds_left: float) -> int:
        """Returns how many buckets a row can afford (1 for uncompiled rows), 0 for none."""
        if not v.compiled:
            return 1 if self.estimate(v, 1) <= seconds_left else 0
        for n in range(self.args.compile_buckets, 0, -1):
            if self.estimate(v, n) <= seconds_left:
                return n
        return 0

    def job(self, backend: DiffusersBackend, px: int, seed: int) -> Job:
        spec = JobSpec(
            job_id=f"bench-{px}-{seed}",
            prompt="a furnished living room, photo",
            negative_prompt="blurry",
            seed=seed,
            strength=1.0,
            guidance_scale=5.0,
            steps=self.args.steps,
            control="canny",
            conditioning_scale=0.5,
            long_side=px,
            output_format="png",
            quality=90,
        )
        steps = [0]

        def progress(step: int, _total: int) -> None:
            steps[0] = step

        ctx = JobContext(threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, progress)
        t0 = time.perf_counter()
        out = backend.run(Work(spec=spec, image=picture(px), mask=None), ctx)
        wall = time.perf_counter() - t0
        return Job(wall, steps[0], ctx.ms(DENOISE), ctx.ms(VAE_DECODE), out.peak_gpu_memory_bytes)

    def timed(
        self, backend: DiffusersBackend, px: int, concurrency: int
    ) -> tuple[list[Job], float]:
        """Runs --runs jobs per thread on concurrency threads; returns them and the wall time."""
        results: list[Job] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            for i in range(self.args.runs):
                try:
                    j = self.job(backend, px, seed=1 + k * 1000 + i)
                except BaseException as exc:
                    failures.append(exc)
                    return
                with lock:
                    results.append(j)

        t0 = time.perf_counter()
        if concurrency == 1:
            worker(0)
        else:
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        wall = time.perf_counter() - t0
        if failures:
            raise failures[0]
        return results, wall

    def measure(self, v: Variant, buckets: int) -> dict[str, Any]:
        px = self.px(v.size)
        row: dict[str, Any] = {"name": v.name, "size": px, "concurrency": v.concurrency}
        settings = self.settings(v, buckets)
        row["settings"] = {
            k: val
            for k, val in dataclasses.asdict(settings).items()
            if k in v.settings or (k == "buckets" and val)
        }
        t0 = time.perf_counter()
        backend = DiffusersBackend(settings, self.c)
        backend.load()
        if v.compiled:
            # With buckets, the engine's warm-up is exactly one job per bucket.
            warmed = backend.warmup_buckets()
            row["ready_s"] = time.perf_counter() - t0
            row["bucket_warm_s"] = [round(x, 1) for x in warmed]
        t1 = time.perf_counter()
        first = self.job(backend, px, seed=0)
        row["first_s"] = time.perf_counter() - t1
        jobs, wall = self.timed(backend, px, v.concurrency)
        walls = [j.wall for j in jobs]
        row.update(
            steps=first.steps,
            runs=len(jobs),
            p50_s=percentile(walls, 0.5),
            p95_s=percentile(walls, 0.95),
            it_s=statistics.fmean(j.steps / (j.denoise_ms / 1000) for j in jobs),
            vae_ms=percentile([j.vae_ms for j in jobs], 0.5),
            images_per_s=len(jobs) / wall,
            peak_gib=max(j.peak for j in [first, *jobs]) / 2**30,
        )
        if v.name == "eager" and v.concurrency == 1:
            self.job_s[v.size] = row["p50_s"] * 30 / max(1, self.args.steps)
        return row


def versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda or ""),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def write(out: str, summary: dict[str, Any]) -> None:
    """Writes the summary as JSON and as a markdown section into the folder out."""
    if not out:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu-bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "gpu-bench.md").write_text(gpu_report.section(summary))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--tiny",
        "--dry-run",
        dest="tiny",
        action="store_true",
        help="tiny model on the CPU (tiny sizes unless --sizes)",
    )
    p.add_argument("--sizes", default="", help="large,small long sides (1024,768)")
    p.add_argument("--steps", type=int, default=0, help="denoising steps (30)")
    p.add_argument("--runs", type=int, default=0, help="timed jobs per row and thread (4)")
    p.add_argument("--only", default="", help="comma-separated row names to run (all)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument(
        "--compile-buckets", type=int, default=2, choices=(1, 2), help="most buckets to compile"
    )
    p.add_argument(
        "--compile-estimate-s",
        type=float,
        default=0.0,
        help="budgeted seconds to compile the first bucket (150 on a GPU, 60 with --tiny)",
    )
    p.add_argument(
        "--check-configs",
        action="store_true",
        help="build the full-size modules on the meta device and count parameters",
    )
    p.add_argument(
        "--budget-s", type=float, default=330.0, help="rows start only if expected to end by then"
    )
    p.add_argument("--out", default="", help="folder for gpu-bench.json and gpu-bench.md")
    args = p.parse_args(argv)
    args.sizes = [
        int(s) for s in (args.sizes or ("128,64" if args.tiny else "1024,768")).split(",")
    ]
    if len(args.sizes) != 2:
        p.error("--sizes wants two long sides: large,small")
    args.steps = args.steps or (3 if args.tiny else 30)
    args.runs = args.runs or (2 if args.tiny else 4)
    args.compile_estimate_s = args.compile_estimate_s or (60.0 if args.tiny else 150.0)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    rows_plan = plan()
    if args.only:
        wanted = set(args.only.split(","))
        if unknown := wanted - {v.name for v in rows_plan}:
            raise SystemExit(f"unknown rows {sorted(unknown)}")
        rows_plan = [v for v in rows_plan if v.name in wanted]
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # NaNs from random weights
    device = torch.device("cpu" if args.tiny else "cuda")
    t0 = time.perf_counter()
    components = tiny.build() if args.tiny else build_full(device)
    summary: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": platform.processor() or "cpu"
        if args.tiny
        else torch.cuda.get_device_name(device),
        "dtype": "float32" if args.tiny else args.dtype,
        "versions": versions(),
        "steps": args.steps,
        "tiny": args.tiny,
        "command": "bench/gpu.sh" + (" --tiny" if args.tiny else ""),
        "build_s": round(time.perf_counter() - t0, 1),
        "total_s": 0.0,
        "rows": [],
        "skipped": [],
        "interrupted": "",
        "notes": [],
    }
    bench = Bench(args, components)
    try:
        for v in rows_plan:
            label = f"{v.name}@{bench.px(v.size)}"
            elapsed = time.perf_counter() - started
            buckets = bench.buckets_that_fit(v, args.budget_s - elapsed)
            if not buckets:
                summary["skipped"].append(label)
                continue
            print(f"row {label}: starting at {elapsed:.0f} s", flush=True)
            summary["interrupted"] = f"interrupted by the time limit during {label}"
            try:
                row = bench.measure(v, buckets)
            except Exception as exc:  # a kernel or a mode this card lacks: the row says so
                row = {"name": v.name, "size": bench.px(v.size), "concurrency": v.concurrency}
                row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            finally:
                undone = True
                try:
                    bench.snapshot.restore()
                except Exception as exc:
                    # Later rows would run on changed modules: stop after this one.
                    summary["notes"].append(f"stopped after {label}: undo failed: {exc}")
                    undone = False
            summary["interrupted"] = ""
            summary["rows"].append(row)
            summary["total_s"] = round(time.perf_counter() - started, 1)
            write(args.out, summary)
            print(json.dumps({"row": row}), flush=True)
            if not undone:
                break
    except KeyboardInterrupt:
        # gpu.sh's timeout sends SIGINT first: keep what was measured, and say
        # which row was cut off and after how long.
        summary["interrupted"] += (
            f" at {time.perf_counter() - started:.0f} s; later rows are missing"
        )
    summary["total_s"] = round(time.perf_counter() - started, 1)
    write(args.out, summary)
    return summary


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.check_configs:
        return check_configs()
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device: run with --tiny to check the script on a CPU", file=sys.stderr)
        return 2
    summary = run(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    print()
    print(
        f"{summary['device']}, {summary['dtype']}, {summary['steps']} steps, "
        "img2img strength 1.0 + ControlNet (canny); build "
        f"{summary['build_s']} s, total {summary['total_s']} s"
    )
    print(gpu_report.table(summary["rows"]))
    if summary["skipped"]:
        print("skipped (time budget): " + ", ".join(summary["skipped"]))
    if summary["interrupted"]:
        print(summary["interrupted"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
