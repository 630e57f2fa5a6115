"""Loading the model components from MODEL_DIR, strictly offline.

MODEL_DIR layout (each a diffusers or transformers save_pretrained folder):

    base/              SDXL: unet, text_encoder(_2), tokenizer(_2), scheduler, vae
    vae/               optional, replaces base/vae (for example an fp16-safe VAE)
    controlnet-canny/  the Canny ControlNet (required)
    controlnet-depth/  optional depth ControlNet
    depth-estimator/   optional transformers depth model; depth control needs
                       both this and controlnet-depth
    few-step/          optional few-step UNet or LoRA (see fewstep.py)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from .conditioning import DepthEstimator

CONFIG_SUFFIXES = (".json", ".txt", ".model")


@dataclasses.dataclass
class Components:
    """Components are the modules every job's pipeline shares."""

    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    unet: Any
    controlnets: dict[str, Any]
    scheduler: Any
    model_rev: str
    depth_estimator: DepthEstimator | None = None


def dir_rev(folder: str) -> str:
    """Returns a stable hash of what a model folder holds: the bytes of its
    config and vocabulary files, and the names and sizes of its weight files
    (hashing gigabytes of weights at every start would cost minutes)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            digest.update(rel.encode() + b"\0")
            if name.endswith(CONFIG_SUFFIXES):
                with open(path, "rb") as f:
                    digest.update(f.read())
            else:
                digest.update(str(os.path.getsize(path)).encode())
            digest.update(b"\0")
    return "dir-" + digest.hexdigest()[:16]


def load_dir(folder: str, dtype: Any) -> Components:
    """Loads every component from folder with local_files_only; raises on anything missing."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers import schedulers as diffusers_schedulers
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = os.path.join(folder, "base")
    opts: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}
    # transformers renamed torch_dtype to dtype; diffusers still takes torch_dtype.
    topts: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    vae_dir = os.path.join(folder, "vae")
    if os.path.isdir(vae_dir):
        vae = AutoencoderKL.from_pretrained(vae_dir, **opts)
    else:
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **opts)
    with open(os.path.join(base, "scheduler", "scheduler_config.json")) as f:
        scheduler_config = json.load(f)
    scheduler_cls = getattr(diffusers_schedulers, str(scheduler_config["_class_name"]))
    controlnets = {
        "canny": ControlNetModel.from_pretrained(os.path.join(folder, "controlnet-canny"), **opts)
    }
    depth_estimator = None
    depth_cn = os.path.join(folder, "controlnet-depth")
    depth_model = os.path.join(folder, "depth-estimator")
    if os.path.isdir(depth_cn) and os.path.isdir(depth_model):
        controlnets["depth"] = ControlNetModel.from_pretrained(depth_cn, **opts)
        depth_estimator = DepthEstimator.from_folder(depth_model, dtype)
    return Components(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **topts),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            base, subfolder="text_encoder_2", **topts
        ),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(
            base, subfolder="tokenizer_2", local_files_only=True
        ),
        unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", **opts),
        controlnets=controlnets,
        scheduler=scheduler_cls.from_config(scheduler_config),
        model_rev=dir_rev(folder),
        depth_estimator=depth_estimator,
    )


def save_dir(components: Components, folder: str) -> None:
    """Writes components in the MODEL_DIR layout (used to test load_dir)."""
    base = os.path.join(folder, "base")
    for name in (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    ):
        getattr(components, name).save_pretrained(os.path.join(base, name))
    for kind, model in components.controlnets.items():
        model.save_pretrained(os.path.join(folder, f"controlnet-{kind}"))
    if components.depth_estimator is not None:
        out = os.path.join(folder, "depth-estimator")
        components.depth_estimator.model.save_pretrained(out)
        components.depth_estimator.processor.save_pretrained(out)
