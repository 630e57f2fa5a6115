"""A tiny SDXL-shaped model built in code with seeded random weights.

Every component has SDXL's structure (two CLIP text encoders, a text_time
UNet, a ControlNet, an 8x VAE) at sizes that load in about a second and run a
denoising step in milliseconds on a CPU. The output is noise-like, but it is
deterministic, so tests can check the whole pipeline without any download.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessor,
)

from .conditioning import DepthEstimator
from .models import Components

# Bump when a size or a seed below changes: it is part of model_rev.
TINY_VERSION = 1

MAX_TOKENS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# The text_time embedding concatenates six size numbers (8 channels each) and
# the pooled text_encoder_2 output (projection_dim): 6 * 8 + 32.
TIME_EMBED_DIM = 8
PROJECTION_DIM = 32
UNET_BLOCKS = (32, 64)
CROSS_ATTENTION_DIM = 64  # hidden sizes of both text encoders, concatenated

TEXT_CONFIG: dict[str, Any] = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
    "hidden_size": 32,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "vocab_size": 1000,
    "hidden_act": "gelu",
    "projection_dim": PROJECTION_DIM,
    "max_position_embeddings": MAX_TOKENS,
}

UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": UNET_BLOCKS,
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + PROJECTION_DIM,
    "cross_attention_dim": CROSS_ATTENTION_DIM,
}

CONTROLNET_CONFIG: dict[str, Any] = {
    key: UNET_CONFIG[key]
    for key in (
        "block_out_channels",
        "layers_per_block",
        "in_channels",
        "down_block_types",
        "attention_head_dim",
        "use_linear_projection",
        "addition_embed_type",
        "addition_time_embed_dim",
        "transformer_layers_per_block",
        "projection_class_embeddings_input_dim",
        "cross_attention_dim",
    )
}
# Four stages with three stride-2 convolutions: the control image is brought
# down 8x, to the latent size of the 8x VAE below.
CONTROLNET_CONFIG["conditioning_embedding_out_channels"] = (16, 16, 32, 32)

ZERO_CONV_STD = 0.05

# Four blocks give SDXL's 8x downscale; 32 channels is GroupNorm's minimum.
VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 32, 64, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "sample_size": 128,
    "scaling_factor": 0.13025,
    "force_upcast": False,
}

# DPT with four ViT layers feeding its four reassemble stages.
DEPTH_INPUT = 64
DEPTH_CONFIG: dict[str, Any] = {
    "image_size": DEPTH_INPUT,
    "patch_size": 16,
    "num_channels": 3,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "backbone_out_indices": (0, 1, 2, 3),
    "neck_hidden_sizes": (16, 16, 32, 32),
    "fusion_hidden_size": 16,
    "reassemble_factors": (4, 2, 1, 0.5),
    "is_hybrid": False,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


def _byte_alphabet() -> list[str]:
    """Returns one printable character per byte value, as byte-level BPE expects.

    Bytes that print as themselves keep their character; the rest (controls,
    space, a few Latin-1 gaps) are moved to code points from 256 up, in order.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    chars: list[str] = []
    extra = 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tokenizer() -> CLIPTokenizer:
    """Builds a CLIP tokenizer offline: two special tokens and every byte,
    alone and word-final, with no merges. Every text encodes; ids stay < 1000."""
    vocab = {BOS: 0, EOS: 1}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    if len(vocab) > TEXT_CONFIG["vocab_size"]:
        raise AssertionError("tiny vocabulary outgrew the text encoder")
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=MAX_TOKENS,
    )


def model_rev() -> str:
    """Returns the tiny model's revision: a hash of every size and seed above."""
    blob = json.dumps(
        [
            TINY_VERSION,
            TEXT_CONFIG,
            UNET_CONFIG,
            CONTROLNET_CONFIG,
            VAE_CONFIG,
            DEPTH_CONFIG,
            SCHEDULER_CONFIG,
        ],
        sort_keys=True,
        default=list,
    )
    return "tiny-random-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def build() -> Components:
    """Builds every component in float32 on the CPU; the weights depend only
    on the seeds here."""
    # A fixed seed before each component, so adding or reordering one does not
    # change the others' weights.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(0)
    canny = _controlnet()
    torch.manual_seed(1)
    depth = _controlnet()
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_config = CLIPTextConfig(**TEXT_CONFIG)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    return Components(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_tokenizer(),
        tokenizer_2=build_tokenizer(),
        unet=unet,
        controlnets={"canny": canny, "depth": depth},
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        model_rev=model_rev(),
        depth_estimator=build_depth_estimator(),
    )


def _controlnet() -> ControlNetModel:
    """A ControlNet whose output convolutions are not zero.

    A new ControlNet starts with zero output convolutions, so it adds nothing
    until trained; random ones make the control image and conditioning scale
    change the tiny model's output, which the tests rely on.
    """
    model: Any = ControlNetModel(**CONTROLNET_CONFIG)
    with torch.no_grad():
        for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=ZERO_CONV_STD)
    return model


def build_depth_estimator() -> DepthEstimator:
    """A tiny DPT depth model; its maps are noise, but they flow through the
    same code as a real estimator's."""
    torch.manual_seed(0)
    model = DPTForDepthEstimation(DPTConfig(**DEPTH_CONFIG))
    processor = DPTImageProcessor(
        size={"height": DEPTH_INPUT, "width": DEPTH_INPUT}, keep_aspect_ratio=False
    )
    return DepthEstimator(model, processor)


def save_refiner(folder: str) -> None:
    """Writes a tiny SDXL refiner as a diffusers pipeline folder (MODEL_DIR/refiner).

    Shaped like SDXL's refiner: text_encoder_2 alone, and a UNet whose
    text_time embedding takes five size numbers (the aesthetic score replaces
    the target size) and text_encoder_2's hidden states as its context.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline

    text_config = CLIPTextConfig(**TEXT_CONFIG)
    unet_config = dict(
        UNET_CONFIG,
        projection_class_embeddings_input_dim=5 * TIME_EMBED_DIM + PROJECTION_DIM,
        cross_attention_dim=int(TEXT_CONFIG["hidden_size"]),
    )
    torch.manual_seed(2)
    unet = UNet2DConditionModel(**unet_config)
    torch.manual_seed(2)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    torch.manual_seed(2)
    vae = AutoencoderKL(**VAE_CONFIG)
    pipe: Any = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=build_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
