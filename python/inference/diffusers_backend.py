"""The model backend: Diffusers SDXL + ControlNet, img2img or inpainting."""

from __future__ import annotations

import copy
import gc
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from diffusers import (
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
)
from opentelemetry.util.types import AttributeValue
from PIL import Image

from . import (
    buckets,
    conditioning,
    config,
    errors,
    fewstep,
    imageio,
    logs,
    models,
    refine,
    speed,
    tiny,
)
from ._proto import engine_pb2 as pb
from .config import Settings
from .jobs import (
    DENOISE,
    PREPROCESS,
    VAE_DECODE,
    BackendInfo,
    JobContext,
    JobSpec,
    Output,
    Work,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

WARMUP_SEED = 0


def pick_device(setting: str) -> torch.device:
    """Returns the device for a --device setting; cuda when asked must exist."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but CUDA is not available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device, fp16_safe_vae: bool) -> torch.dtype:
    """fp32 on the CPU; on CUDA fp16 where the VAE survives it, else bf16."""
    if setting != "auto":
        dtype = DTYPES[setting]
        if dtype == torch.float16 and not fp16_safe_vae:
            raise RuntimeError(
                "float16 needs an fp16-safe VAE (force_upcast false in its config): "
                "use bfloat16, or put such a VAE in MODEL_DIR/vae"
            )
        return dtype
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if fp16_safe_vae else torch.bfloat16


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class DiffusersBackend:
    """DiffusersBackend runs SDXL + ControlNet jobs on shared modules.

    Every job gets its own pipeline object and scheduler (a pipeline keeps
    per-call state on itself) and its thread's own tokenizers (a fast
    tokenizer is not safe to call from two threads at once); the heavy modules
    are shared and only read.
    """

    name = "diffusers"

    def __init__(self, settings: Settings, components: models.Components | None = None) -> None:
        """components, when given, replace MODEL_DIR and the tiny model (benchmarks)."""
        self._settings = settings
        self._given = components
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self._c: models.Components | None = None
        self._local = threading.local()
        self._log = logs.get()
        self._buckets = buckets.parse(settings.buckets, settings.default_long_side)
        self._few_step: fewstep.Profile | None = None
        self._refiner: refine.TileRefiner | None = None

    # Loading

    def load(self) -> None:
        s = self._settings
        self._device = pick_device(s.device)
        if self._given is not None:
            c = self._given
            self._dtype = pick_dtype(
                s.dtype, self._device, fp16_safe_vae=not c.vae.config.force_upcast
            )
        elif s.model_dir:
            # The VAE config decides between fp16 and bf16 before anything loads.
            probe = self._probe_vae_fp16_safe(s.model_dir)
            self._dtype = pick_dtype(s.dtype, self._device, probe)
            c = models.load_dir(s.model_dir, self._dtype)
        elif s.tiny_model:
            c = tiny.build()
            self._dtype = pick_dtype(s.dtype, self._device, fp16_safe_vae=True)
        else:
            raise RuntimeError("no model: set MODEL_DIR, or ask for the tiny model")
        if s.few_step:
            # Before the modules move, so a distilled UNet moves with the rest.
            folder = s.model_dir if self._given is None and s.model_dir else None
            c.unet, self._few_step = fewstep.load(folder, c.unet, c.scheduler, self._dtype)
        # The pipelines upcast a force_upcast VAE to fp32 and back around every
        # encode, in place on the shared module; with a dtype that needs no
        # upcast (fp32, bf16, or an fp16-safe VAE) that churn is switched off.
        c.vae.register_to_config(force_upcast=False)
        modules = [c.vae, c.text_encoder, c.text_encoder_2, c.unet, *c.controlnets.values()]
        for m in modules:
            m.to(self._device)
            if m.dtype != self._dtype:
                m.to(self._dtype)
            m.eval()
            m.requires_grad_(False)
        if c.depth_estimator is not None:
            c.depth_estimator.prepare(self._device, self._dtype)
        self._apply_speed(c)
        self._c = c
        self._refiner = self._load_refiner(c)

    def _load_refiner(self, c: models.Components) -> refine.TileRefiner:
        """The upscale phase's refiner: MODEL_DIR/refiner when it exists, else
        an img2img pipeline over the modules just loaded (no weights load)."""
        s = self._settings
        folder = refine.refiner_folder(s.model_dir) if self._given is None else None
        if folder is not None:
            refiner = refine.TileRefiner.from_folder(folder, s, self._device, self._dtype, c.vae)
        else:
            parts = {
                "vae": c.vae,
                "text_encoder": c.text_encoder,
                "text_encoder_2": c.text_encoder_2,
                "tokenizer": c.tokenizer,
                "tokenizer_2": c.tokenizer_2,
                "unet": c.unet,
            }
            refiner = refine.TileRefiner(
                parts, s, self._device, source="base", tokenizers=self._tokenizers
            )
        self._log.info(
            "upscale settings",
            extra=logs.fields(
                refiner=refiner.source,
                max_upscale_long_side=s.max_upscale_long_side,
                tile=s.upscale_tile,
                overlap=s.upscale_overlap,
                strength=s.upscale_strength,
                steps=s.upscale_steps,
            ),
        )
        return refiner

    @property
    def refiner_source(self) -> str:
        """Which modules refine upscaled images: "refiner" (MODEL_DIR/refiner) or "base"."""
        if self._refiner is None:
            raise RuntimeError("model not loaded")
        return self._refiner.source

    def _apply_speed(self, c: models.Components) -> None:
        """Applies the load-time speed switches to the shared modules, in the
        order they compose: layout and fused weights first, compilation last."""
        s = self._settings
        if s.channels_last:
            speed.to_channels_last(c)
        if s.fuse_qkv:
            speed.fuse_qkv(c)
        speed.set_sdpa_backends(config.parse_sdpa(s.sdpa_backends))
        if s.compile:
            speed.compile_modules(
                c,
                mode=s.compile_mode,
                backend=s.compile_backend,
                fixed_shapes=bool(self._buckets),
                bucket_count=len(self._buckets),
            )
        few_step = ""
        if self._few_step is not None:
            few_step = self._few_step.source or "base unet"
        self._log.info(
            "speed settings",
            extra=logs.fields(
                compile=s.compile,
                compile_mode=s.compile_mode if s.compile else "",
                channels_last=s.channels_last,
                fuse_qkv=s.fuse_qkv,
                sdpa_backends=s.sdpa_backends,
                buckets=len(self._buckets),
                cfg_cutoff=s.cfg_cutoff,
                controlnet_end=s.controlnet_end,
                few_step=few_step,
            ),
        )

    def _probe_vae_fp16_safe(self, folder: str) -> bool:
        for path in (
            os.path.join(folder, "vae", "config.json"),
            os.path.join(folder, "base", "vae", "config.json"),
        ):
            if os.path.exists(path):
                with open(path) as f:
                    return json.load(f).get("force_upcast", True) is False
        return False

    def warmup(self) -> None:
        # At the size jobs will have, so that the first job finds its kernels
        # chosen and its memory allocated; square, the largest image of that
        # long side. One step already runs every module once. With buckets,
        # every job renders at one of them, so warming each is all it takes.
        if self._buckets:
            self.warmup_buckets()
            return
        s = self._settings
        side = s.warmup_side()
        self.run(_warmup_work(side, side, s.warmup_steps), _never_cancelled())

    def warmup_buckets(self) -> list[float]:
        """Runs one job at each output bucket, so that with compilation on every
        graph a job can meet is built before the engine reports SERVING, and
        returns each one's seconds. The jobs are long enough for each per-step
        switch to change state once."""
        s = self._settings
        steps = speed.warmup_steps(s.warmup_steps, s.cfg_cutoff, s.controlnet_end, s.max_steps)
        ctx = _never_cancelled()
        seconds = []
        for width, height in self._buckets:
            t0 = time.monotonic()
            self.run(_warmup_work(width, height, steps), ctx)
            seconds.append(time.monotonic() - t0)
            self._log.info(
                "bucket warm",
                extra=logs.fields(
                    width=width,
                    height=height,
                    steps=steps,
                    duration_ms=round(seconds[-1] * 1000, 1),
                ),
            )
        return seconds

    def info(self) -> BackendInfo:
        c = self._components()
        device = str(self._device)
        if self._device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self._device)})"
        import diffusers
        import transformers

        kinds = ["canny"]
        if "depth" in c.controlnets and c.depth_estimator is not None:
            kinds.append("depth")
        return BackendInfo(
            model_rev=c.model_rev + self._rev_suffix(),
            device=device,
            dtype=str(self._dtype).removeprefix("torch."),
            versions={
                "python": platform.python_version(),
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "cuda": str(torch.version.cuda or ""),
            },
            control_kinds=tuple(kinds),
        )

    def _rev_suffix(self) -> str:
        """Names the switches that change what a seed renders, so that results
        made with them never pass for the plain model's."""
        s = self._settings
        parts = []
        if s.few_step:
            parts.append(f"+fewstep{s.few_step_steps}g{s.few_step_guidance:g}")
        if s.cfg_cutoff < 1.0:
            parts.append(f"+cfg{s.cfg_cutoff:g}")
        if s.controlnet_end < 1.0:
            parts.append(f"+cnend{s.controlnet_end:g}")
        if self._buckets:
            parts.append("+buckets")
        return "".join(parts)

    def _components(self) -> models.Components:
        if self._c is None:
            raise RuntimeError("model not loaded")
        return self._c

    def _tokenizers(self) -> tuple[Any, Any]:
        pair = getattr(self._local, "tokenizers", None)
        if pair is None:
            c = self._components()
            pair = (copy.deepcopy(c.tokenizer), copy.deepcopy(c.tokenizer_2))
            self._local.tokenizers = pair
        return pair

    # Running

    def run(self, work: Work, ctx: JobContext) -> Output:
        return self._guarded(work, lambda: self._run(work, ctx))

    def upscale(
        self, image: Image.Image, work: Work, size: tuple[int, int], ctx: JobContext
    ) -> Output:
        return self._guarded(work, lambda: self._upscale(image, work, size, ctx))

    def _guarded(self, work: Work, call: Callable[[], Output]) -> Output:
        """Runs call without autograd; an accelerator out-of-memory becomes the
        engine's oom failure once the memory it held is released."""
        try:
            with torch.inference_mode():
                return call()
        except (errors.JobCancelled, errors.EngineError):
            raise
        except Exception as exc:
            if not _is_oom(exc):
                raise
            self._log.warning("out of memory", extra=logs.fields(job_id=work.spec.job_id))
        # Outside the except block, so the traceback (and the tensors it pins) is gone.
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        raise errors.out_of_memory()

    def _upscale(
        self, image: Image.Image, work: Work, size: tuple[int, int], ctx: JobContext
    ) -> Output:
        if self._refiner is None:
            raise RuntimeError("model not loaded")
        ctx.check()
        pixels = self._refiner.upscale(image, work.spec, size, ctx, self._upscale_profile())
        cuda = self._device.type == "cuda"
        # Not reset since run(): the job's peak over both phases.
        peak = int(torch.cuda.max_memory_allocated(self._device)) if cuda else 0
        return Output(image=pixels, peak_gpu_memory_bytes=peak)

    def _upscale_profile(self) -> refine.Profile:
        """The refinement's sampling: the upscale settings, or with the few-step
        profile on the base modules, its steps, guidance and scheduler."""
        s = self._settings
        refiner = self._refiner
        if refiner is not None and refiner.source == refine.REFINER_DIR:
            return refine.Profile(s.upscale_steps, None, refiner.scheduler)
        return refine.Profile(*self._sampling(s.upscale_steps, s.upscale_strength))

    def _run(self, work: Work, ctx: JobContext) -> Output:
        spec = work.spec
        cuda = self._device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self._device)
        ctx.check()

        with ctx.phase(PREPROCESS):
            image, mask = self._render_inputs(work)
            control = self._control_image(spec, image)

        pipe, args = self._pipeline(spec, image, control, mask)
        s = self._settings
        # The inpaint pipeline's step callback cannot replace its doubled mask
        # and time ids, so guidance is never cut there.
        switches = speed.StepSwitches(s.cfg_cutoff, s.controlnet_end, cut_guidance=mask is None)
        args.update(switches.pipeline_args)

        def on_step_end(p: Any, i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            replaced = switches.after_step(p, i, kw)
            # Raising here (inside ctx.progress) leaves the pipeline before the
            # next step and before its VAE decode.
            ctx.progress(i + 1, int(p.num_timesteps))
            return replaced

        with ctx.phase(DENOISE, _denoise_attributes(args, spec, mask is not None)):
            latents = pipe(
                **args,
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=switches.tensor_inputs,
            ).images
            if cuda:
                torch.cuda.synchronize(self._device)
        ctx.check()

        with ctx.phase(VAE_DECODE):
            pixels = self._decode(pipe, latents)
            if pixels.size != work.image.size:
                pixels = imageio.resize(pixels, work.image.size)
        peak = int(torch.cuda.max_memory_allocated(self._device)) if cuda else 0
        return Output(image=pixels, peak_gpu_memory_bytes=peak)

    def _control_image(self, spec: JobSpec, image: Image.Image) -> Image.Image:
        """Returns the ControlNet's conditioning image: the depth map or the
        canny edges of the image the model renders."""
        if spec.control != "depth":
            return conditioning.canny(image)
        estimator = self._components().depth_estimator
        if estimator is None:
            raise errors.invalid(
                pb.FAILURE_REASON_CONTROL_UNAVAILABLE, "depth control is not loaded"
            )
        return estimator(image)

    def _pipeline(
        self,
        spec: JobSpec,
        image: Image.Image,
        control: Image.Image,
        mask: Image.Image | None,
    ) -> tuple[Any, dict[str, Any]]:
        """Returns a pipeline over the loaded components (img2img, or inpaint
        with a mask) and the arguments of its call, which returns latents."""
        c = self._components()
        steps, guidance, scheduler = self._profile(spec)
        tokenizer, tokenizer_2 = self._tokenizers()
        parts: dict[str, Any] = {
            "vae": c.vae,
            "text_encoder": c.text_encoder,
            "text_encoder_2": c.text_encoder_2,
            "tokenizer": tokenizer,
            "tokenizer_2": tokenizer_2,
            "unet": c.unet,
            "controlnet": c.controlnets[spec.control],
            "scheduler": type(scheduler).from_config(scheduler.config),
            "add_watermarker": False,
        }
        width, height = image.size
        args: dict[str, Any] = {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt or None,
            "image": image,
            "control_image": control,
            "height": height,
            "width": width,
            "strength": spec.strength,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "controlnet_conditioning_scale": spec.conditioning_scale,
            "generator": torch.Generator(device="cpu").manual_seed(spec.seed),
            "output_type": "latent",
        }
        pipe: Any
        if mask is None:
            pipe = StableDiffusionXLControlNetImg2ImgPipeline(**parts)
        else:
            pipe = StableDiffusionXLControlNetInpaintPipeline(**parts)
            args["mask_image"] = mask
        pipe.set_progress_bar_config(disable=True)
        return pipe, args

    def _render_inputs(self, work: Work) -> tuple[Image.Image, Image.Image | None]:
        """Returns the image and mask at the size the model renders: the Work's
        size, or with buckets the bucket it snaps to (the result is brought back
        to the Work's size after decoding)."""
        size = buckets.snap(work.image.size, self._buckets)
        if size == work.image.size:
            return work.image, work.mask
        mask = imageio.resize_mask(work.mask, size) if work.mask is not None else None
        return imageio.resize(work.image, size), mask

    def _profile(self, spec: JobSpec) -> tuple[int, float, Any]:
        """Returns the steps, guidance scale and scheduler a job runs with: the
        job's own, or the few-step profile's."""
        steps, guidance, scheduler = self._sampling(spec.steps, spec.strength)
        return steps, spec.guidance_scale if guidance is None else guidance, scheduler

    def _sampling(self, steps: int, strength: float) -> tuple[int, float | None, Any]:
        """Returns steps on the base scheduler with no guidance of its own
        (None: the job's); or, with the few-step profile, its steps for
        strength, its guidance and its scheduler."""
        if self._few_step is None:
            return steps, None, self._components().scheduler
        s = self._settings
        steps = fewstep.steps_for(s.few_step_steps, strength)
        return steps, s.few_step_guidance, self._few_step.scheduler

    def _decode(self, pipe: Any, latents: torch.Tensor) -> Image.Image:
        vae = self._components().vae
        cfg = vae.config
        latents = latents.to(vae.dtype)
        mean = getattr(cfg, "latents_mean", None)
        std = getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            m = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
            sd = torch.tensor(std).view(1, -1, 1, 1).to(latents)
            latents = latents * sd / cfg.scaling_factor + m
        else:
            latents = latents / cfg.scaling_factor
        decoded = vae.decode(latents, return_dict=False)[0]
        arr = pipe.image_processor.postprocess(decoded.float(), output_type="np")[0]
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return Image.fromarray(np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8), "RGB")


def _denoise_attributes(
    args: Mapping[str, Any], spec: JobSpec, inpaint: bool
) -> dict[str, AttributeValue]:
    """The denoise span's attributes: what the pipeline is asked to run (the
    few-step profile's steps and guidance when it is on), never the prompts."""
    return {
        "vstage.steps": int(args["num_inference_steps"]),
        "vstage.width": int(args["width"]),
        "vstage.height": int(args["height"]),
        "vstage.strength": float(args["strength"]),
        "vstage.guidance_scale": float(args["guidance_scale"]),
        "vstage.control": spec.control,
        "vstage.inpaint": inpaint,
    }


def _never_cancelled() -> JobContext:
    """A context for the engine's own jobs: nobody cancels them, nobody watches."""
    return JobContext(
        threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, lambda step, total: None
    )


def _warmup_work(width: int, height: int, steps: int) -> Work:
    """A warm-up job at width x height: a picture with edges, full strength, guided."""
    img = Image.fromarray(
        (np.indices((height, width)).sum(axis=0) % 64 * 4).astype(np.uint8)
    ).convert("RGB")
    spec = JobSpec(
        job_id="warmup",
        prompt="warm-up",
        negative_prompt="",
        seed=WARMUP_SEED,
        strength=1.0,
        guidance_scale=5.0,
        steps=steps,
        control="canny",
        conditioning_scale=0.5,
        long_side=max(width, height),
        output_format="png",
        quality=90,
    )
    return Work(spec=spec, image=img, mask=None)
