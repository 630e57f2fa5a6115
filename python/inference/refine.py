"""The model's upscale phase: Lanczos resampling, then SDXL img2img in tiles.

The refinement runs either on the base model's own modules (no weights load
for it) or, when MODEL_DIR/refiner holds an SDXL refiner saved as a diffusers
pipeline, on the refiner. Each tile is a separate low-strength img2img call
with the job's prompts (encoded once per job) and a generator seeded from the
job's seed and the tile's index, so a job's bytes depend only on its request.
GPU memory is bounded by one tile's pipeline call, whatever the final size.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

from . import imageio, upscale
from .config import Settings
from .jobs import JobContext, JobSpec

REFINER_DIR = "refiner"


@dataclasses.dataclass(frozen=True)
class Profile:
    """Profile is how the refinement samples: steps, guidance and scheduler;
    guidance None means the job's own."""

    steps: int
    guidance: float | None
    scheduler: Any


class TileRefiner:
    """TileRefiner upscales images with an img2img pipeline over shared modules.

    parts are the pipeline's modules (tokenizers included, copied per thread
    because a fast tokenizer is not safe to share between threads).
    tokenizers, when given, returns this thread's copies of (tokenizer,
    tokenizer_2) instead: the base model's backend keeps such copies for its
    renders already.
    """

    def __init__(
        self,
        parts: dict[str, Any],
        settings: Settings,
        device: torch.device,
        source: str,
        aesthetics: bool = False,
        scheduler: Any = None,
        tokenizers: Callable[[], tuple[Any, Any]] | None = None,
    ) -> None:
        self._parts = parts
        self._tokenizers = tokenizers
        self._settings = settings
        self._device = device
        self.source = source
        self._aesthetics = aesthetics
        # scheduler is the refiner folder's own; None on the base modules.
        self.scheduler = scheduler
        self._local = threading.local()

    @classmethod
    def from_folder(
        cls,
        folder: str,
        settings: Settings,
        device: torch.device,
        dtype: torch.dtype,
        vae: Any,
    ) -> TileRefiner:
        """Loads an SDXL refiner pipeline folder (offline) and moves it to device.

        vae is the base model's, already loaded: SDXL's refiner works in the
        same latent space, and the base's VAE is the one whose dtype was
        chosen to need no upcast (a refiner folder's stock VAE would be
        upcast in place around every decode, on a module jobs share).
        """
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            folder, vae=vae, dtype=dtype, local_files_only=True, add_watermarker=False
        )
        parts = {k: v for k, v in pipe.components.items() if k in _PIPELINE_PARTS}
        for name in ("text_encoder", "text_encoder_2", "unet"):
            module = parts.get(name)
            if module is None:
                continue
            module.to(device=device, dtype=dtype)
            module.eval()
            module.requires_grad_(False)
        aesthetics = bool(pipe.config.requires_aesthetics_score)
        return cls(
            parts,
            settings,
            device,
            source=REFINER_DIR,
            aesthetics=aesthetics,
            scheduler=pipe.scheduler,
        )

    def _thread_tokenizers(self) -> dict[str, Any]:
        if self._tokenizers is not None:
            tokenizer, tokenizer_2 = self._tokenizers()
            return {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2}
        tokenizers: dict[str, Any] | None = getattr(self._local, "tokenizers", None)
        if tokenizers is None:
            tokenizers = {
                k: copy.deepcopy(self._parts.get(k)) for k in ("tokenizer", "tokenizer_2")
            }
            self._local.tokenizers = tokenizers
        return tokenizers

    def _pipeline(self, scheduler: Any) -> Any:
        parts = dict(self._parts, **self._thread_tokenizers())
        parts["scheduler"] = type(scheduler).from_config(scheduler.config)
        pipe: Any = StableDiffusionXLImg2ImgPipeline(
            **parts, requires_aesthetics_score=self._aesthetics, add_watermarker=False
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def upscale(
        self,
        image: Image.Image,
        spec: JobSpec,
        size: tuple[int, int],
        ctx: JobContext,
        profile: Profile,
    ) -> Image.Image:
        """Resamples image to size and refines it tile by tile.

        Progress counts the refinement's own steps over all tiles, from 1 to
        tiles * steps per tile, after the render's steps.
        """
        s = self._settings
        resampled = imageio.resize(image, size)
        pipe = self._pipeline(profile.scheduler)
        guidance = spec.guidance_scale if profile.guidance is None else profile.guidance
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=spec.prompt,
            device=self._device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=guidance > 1.0,
            negative_prompt=spec.negative_prompt or None,
        )
        tiles = upscale.layout(size, s.upscale_tile, s.upscale_overlap)
        per_tile = max(1, int(profile.steps * s.upscale_strength))
        total = len(tiles) * per_tile

        def refine(pixels: Image.Image, t: upscale.Tile) -> Image.Image:
            def on_step_end(p: Any, i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
                ctx.progress(min(total, t.index * per_tile + i + 1), total)
                return kw

            out = pipe(
                prompt_embeds=pe,
                negative_prompt_embeds=npe,
                pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=npooled,
                image=pixels,
                strength=s.upscale_strength,
                num_inference_steps=profile.steps,
                guidance_scale=guidance,
                generator=torch.Generator(device="cpu").manual_seed(
                    upscale.tile_seed(spec.seed, t.index)
                ),
                output_type="np",
                callback_on_step_end=on_step_end,
            ).images[0]
            arr = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
            return Image.fromarray(arr, "RGB")

        result = upscale.refine_tiled(
            resampled, s.upscale_tile, s.upscale_overlap, refine, ctx.check
        )
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        return result


_PIPELINE_PARTS = (
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "unet",
)


def refiner_folder(model_dir: str) -> str | None:
    """MODEL_DIR/refiner when it exists, else None."""
    if not model_dir:
        return None
    folder = os.path.join(model_dir, REFINER_DIR)
    return folder if os.path.isdir(folder) else None
