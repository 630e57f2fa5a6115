"""The few-step profile: a distilled UNet (or a LoRA that distils the base one)
run for a handful of steps with its own scheduler and no guidance.

MODEL_DIR/few-step/ holds one of

    unet/               a distilled UNet in diffusers format (save_pretrained)
    unet.safetensors    a distilled UNet's weights under the base UNet's names
    lora.safetensors    a LoRA for the base UNet, fused into it at load

and optionally scheduler/scheduler_config.json; without it the base
scheduler's settings are used with Euler steps on trailing timesteps, which
is what SDXL-Lightning and Hyper-SD style checkpoints are distilled for.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

FOLDER = "few-step"
UNET_DIR = "unet"
UNET_FILE = "unet.safetensors"
LORA_FILE = "lora.safetensors"

# Suffixes of a LoRA's tensors, in the layouts diffusers and PEFT write:
# the down (A) and up (B) matrices and the optional alpha.
_LORA_PARTS = (
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight.alpha", "alpha"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
)
# Older diffusers names put the attention projections under a processor.
_ATTENTION_RENAMES = (
    (".processor.", "."),
    ("to_out_lora", "to_out.0.lora"),
    ("to_q_lora", "to_q.lora"),
    ("to_k_lora", "to_k.lora"),
    ("to_v_lora", "to_v.lora"),
)


class FewStepError(ValueError):
    """The few-step model is missing or does not fit the base model."""


@dataclasses.dataclass
class Profile:
    """Profile is the loaded few-step profile: its scheduler and where its UNet came from."""

    scheduler: Any
    source: str


def steps_for(steps: int, strength: float) -> int:
    """Returns the steps to ask the pipeline for: the profile's, or more when an
    img2img strength would otherwise leave no step to run (it runs int(steps * strength))."""
    total = steps
    while int(total * strength) < 1:
        total += 1
    return total


def scheduler(base: Any, folder: str | None) -> Any:
    """Returns the profile's scheduler: folder/scheduler when present, else the
    base scheduler's settings as an Euler scheduler on trailing timesteps."""
    from diffusers import EulerDiscreteScheduler
    from diffusers import schedulers as diffusers_schedulers

    if folder is not None:
        path = os.path.join(folder, "scheduler", "scheduler_config.json")
        if os.path.exists(path):
            with open(path) as f:
                config = json.load(f)
            cls = getattr(diffusers_schedulers, str(config.get("_class_name", "")), None)
            if cls is None:
                raise FewStepError(f"{path}: unknown scheduler {config.get('_class_name')!r}")
            return cls.from_config(config)
    return EulerDiscreteScheduler.from_config(base.config, timestep_spacing="trailing")


def load(
    model_dir: str | None, unet: Any, base_scheduler: Any, dtype: torch.dtype
) -> tuple[Any, Profile]:
    """Returns the UNet to use and the profile.

    With model_dir, MODEL_DIR/few-step/ must hold a UNet or a LoRA (a LoRA is
    fused into unet in place). Without it (the tiny model, benchmarks with
    random weights) the base UNet serves as its own distillate: only the
    scheduler, steps and guidance change.
    """
    if model_dir is None:
        return unet, Profile(scheduler=scheduler(base_scheduler, None), source="")
    folder = os.path.join(model_dir, FOLDER)
    sched = scheduler(base_scheduler, folder)
    unet_dir = os.path.join(folder, UNET_DIR)
    unet_file = os.path.join(folder, UNET_FILE)
    lora_file = os.path.join(folder, LORA_FILE)
    if os.path.isdir(unet_dir):
        from diffusers import UNet2DConditionModel

        distilled = UNet2DConditionModel.from_pretrained(
            unet_dir, local_files_only=True, torch_dtype=dtype
        )
        return distilled, Profile(scheduler=sched, source=f"{FOLDER}/{UNET_DIR}")
    if os.path.isfile(unet_file):
        from safetensors.torch import load_file

        try:
            unet.load_state_dict(load_file(unet_file), strict=True)
        except RuntimeError as exc:
            raise FewStepError(f"{unet_file} does not fit the base UNet: {exc}") from exc
        return unet, Profile(scheduler=sched, source=f"{FOLDER}/{UNET_FILE}")
    if os.path.isfile(lora_file):
        fuse_lora(unet, read_lora(lora_file, unet))
        return unet, Profile(scheduler=sched, source=f"{FOLDER}/{LORA_FILE}")
    raise FewStepError(
        f"the few-step profile needs {folder}/ with {UNET_DIR}/, {UNET_FILE} or {LORA_FILE}"
    )


def read_lora(path: str, unet: Any) -> dict[str, torch.Tensor]:
    """Reads a LoRA file into diffusers' layout; kohya-style names are converted
    by diffusers' own SDXL LoRA reader."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
    from safetensors.torch import load_file

    raw = load_file(path)
    state, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(raw, unet_config=unet.config)
    merged = dict(state)
    for key, value in (alphas or {}).items():
        merged[key if key.endswith(".alpha") else key + ".alpha"] = torch.tensor(float(value))
    return merged


def _split(key: str) -> tuple[str, str]:
    name = key.removeprefix("unet.")
    for old, new in _ATTENTION_RENAMES:
        name = name.replace(old, new)
    for suffix, part in _LORA_PARTS:
        if name.endswith(suffix):
            return name[: -len(suffix)], part
    raise FewStepError(f"LoRA tensor {key!r} is not a LoRA down, up or alpha weight")


def fuse_lora(unet: Any, state: dict[str, torch.Tensor]) -> int:
    """Adds alpha/rank * up @ down to the weight of every layer the LoRA
    names, in place, and returns how many layers changed. Raises FewStepError
    for a tensor of the text encoders or a layer the UNet lacks."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key.startswith(("text_encoder", "te_", "lora_te")):
            raise FewStepError(f"LoRA tensor {key!r} is for a text encoder; only UNet LoRAs fuse")
        module, part = _split(key)
        layers.setdefault(module, {})[part] = tensor
    with torch.no_grad():
        for name, parts in layers.items():
            if "down" not in parts or "up" not in parts:
                raise FewStepError(f"LoRA layer {name!r} lacks its down or up weight")
            try:
                layer = unet.get_submodule(name)
            except AttributeError:
                raise FewStepError(f"LoRA layer {name!r} is not in the UNet") from None
            down = parts["down"].float().flatten(1)
            up = parts["up"].float().flatten(1)
            rank = down.shape[0]
            alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
            weight = layer.weight
            delta = (up @ down).reshape(weight.shape) * (alpha / rank)
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    return len(layers)
