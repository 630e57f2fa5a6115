"""The engine's speed switches: how the shared modules are prepared at load,
and what changes between denoising steps.

Every switch is off by default and changes nothing when off. The load-time
switches (memory format, fused projections, attention kernels, compilation)
keep the model's arithmetic and change only how it is carried out; the
per-step switches (guidance cut-off, ControlNet end) change the arithmetic on
purpose and are therefore opt-in per deployment.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from typing import Any

import torch

from .models import Components

# SDPA_BACKENDS maps the setting's names to PyTorch's scaled-dot-product
# attention kernels and to the switches that enable them.
SDPA_BACKENDS: dict[str, tuple[str, Any]] = {
    "flash": ("FLASH_ATTENTION", torch.backends.cuda.enable_flash_sdp),
    "efficient": ("EFFICIENT_ATTENTION", torch.backends.cuda.enable_mem_efficient_sdp),
    "cudnn": ("CUDNN_ATTENTION", torch.backends.cuda.enable_cudnn_sdp),
    "math": ("MATH", torch.backends.cuda.enable_math_sdp),
}

# Graphs a compiled module may keep per bucket: guidance on or off times
# ControlNet residuals present or absent.
GRAPHS_PER_BUCKET = 4

# Tensors the img2img pipeline hands a step callback and takes back, which hold
# the unconditional and conditional halves of a guided batch.
GUIDED_TENSORS = ("prompt_embeds", "add_text_embeds", "add_time_ids", "control_image")


def set_sdpa_backends(names: Sequence[str]) -> None:
    """Enables exactly the named attention kernels, preferred in the given order;
    an empty list leaves PyTorch's defaults. The choice is process-wide, as
    PyTorch keeps it: the engine makes it once, at load."""
    if not names:
        return
    for name, (_, enable) in SDPA_BACKENDS.items():
        enable(name in names)
    # The order only matters on CUDA, where several kernels may fit one call.
    # PyTorch's public switch for it is a context manager that restores the
    # old order on exit; the engine wants it for its whole life.
    set_order = getattr(torch._C, "_set_sdp_priority_order", None)
    if set_order is not None:
        backend = torch.nn.attention.SDPBackend
        wanted = [int(getattr(backend, SDPA_BACKENDS[n][0])) for n in names]
        order = wanted + [int(b) for b in torch._C._get_sdp_priority_order() if b not in wanted]
        set_order(order)


def sdpa_state() -> tuple[tuple[bool, ...], list[int]]:
    """Returns the attention kernel switches and order, for restore_sdpa."""
    flags = (
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    )
    return flags, list(torch._C._get_sdp_priority_order())


def restore_sdpa(state: tuple[tuple[bool, ...], list[int]]) -> None:
    """Restores what sdpa_state returned."""
    flags, order = state
    for (_, enable), on in zip(SDPA_BACKENDS.values(), flags, strict=True):
        enable(on)
    set_order = getattr(torch._C, "_set_sdp_priority_order", None)
    if set_order is not None:
        set_order(order)


def to_channels_last(c: Components) -> None:
    """Converts the convolution-heavy modules to channels-last memory format."""
    for m in (c.unet, c.vae, *c.controlnets.values()):
        m.to(memory_format=torch.channels_last)


def fuse_qkv(c: Components) -> None:
    """Fuses the query, key and value projections of every attention layer of
    the UNet, the VAE and the ControlNets into one matrix product each."""
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    c.unet.fuse_qkv_projections()
    c.vae.fuse_qkv_projections()
    for cn in c.controlnets.values():
        # The ControlNet has no fusing method of its own that reaches these
        # layers, so it gets what the UNet's does: fused weights, then the
        # processor that uses them.
        for module in cn.modules():
            if isinstance(module, Attention):
                module.fuse_projections(fuse=True)
        cn.set_attn_processor(FusedAttnProcessor2_0())


def compile_modules(
    c: Components, mode: str, backend: str, fixed_shapes: bool, bucket_count: int
) -> None:
    """Compiles the UNet, the ControlNets and the VAE decoder in place.

    fixed_shapes (sizes come from buckets) compiles one graph per shape; without
    it, the second size seen makes the graphs shape-generic, since arbitrary
    sizes would otherwise each compile anew.
    """
    dynamic = False if fixed_shapes else None
    options: dict[str, Any] = {"backend": backend, "dynamic": dynamic}
    if backend == "inductor":
        options["mode"] = mode
    if fixed_shapes:
        _raise_recompile_limit(bucket_count * GRAPHS_PER_BUCKET + GRAPHS_PER_BUCKET)
    # In place, so the modules keep their types (the pipelines check them).
    c.unet.compile(**options)
    for cn in c.controlnets.values():
        cn.compile(**options)
    c.vae.decoder.compile(**options)


class Snapshot:
    """Snapshot records the shared modules as built, before any load-time switch,
    so that restore can undo them all (memory format, fused projections,
    compilation, attention kernels): one set of modules can then serve
    several settings in turn, as the GPU benchmark's rows do."""

    def __init__(self, c: Components) -> None:
        self._c = c
        # Each attention layer's own processor: the ControlNet's are not all
        # reachable through its attn_processors mapping.
        self._processors = {id(a): a.processor for a in self._attention_layers()}
        self._sdpa = sdpa_state()

    def _attention_layers(self) -> list[Any]:
        from diffusers.models.attention_processor import Attention

        c = self._c
        return [
            a
            for m in (c.unet, c.vae, *c.controlnets.values())
            for a in m.modules()
            if isinstance(a, Attention)
        ]

    def restore(self) -> None:
        c = self._c
        for m in (c.unet, c.vae, *c.controlnets.values()):
            m.to(memory_format=torch.contiguous_format)
        for a in self._attention_layers():
            if getattr(a, "fused_projections", False):
                for name in ("to_qkv", "to_kv"):
                    if hasattr(a, name):
                        delattr(a, name)
                a.fused_projections = False
            a.set_processor(self._processors[id(a)])
        for m in (c.unet, c.vae.decoder, *c.controlnets.values()):
            m._compiled_call_impl = None
        torch._dynamo.reset()
        restore_sdpa(self._sdpa)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _raise_recompile_limit(graphs: int) -> None:
    import torch._dynamo

    cfg: Any = torch._dynamo.config
    # recompile_limit is the current name; older PyTorch calls it cache_size_limit.
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < graphs:
        setattr(cfg, name, graphs)


def guided_steps(total: int, fraction: float) -> int:
    """Returns how many of total steps keep classifier-free guidance under a
    cut-off fraction: the first ceil(fraction * total), at least one."""
    # The small margin keeps 0.7 * 10 (7.000000000000001) at 7.
    return min(total, max(1, math.ceil(fraction * total - 1e-9)))


def controlnet_runs(step: int, total: int, end: float) -> bool:
    """Reports whether the pipeline applies the ControlNet at a 0-based step
    under control_guidance_end=end, by the pipeline's own rule."""
    return not (step + 1) / total > end


class NoControl:
    """NoControl stands in for a ControlNet whose guidance has ended.

    After control_guidance_end the pipeline still calls the ControlNet and
    multiplies its residuals by zero; returning no residuals instead skips the
    call, and the UNet then adds nothing, which is the same sum.
    """

    def __call__(self, *_args: Any, **_kwargs: Any) -> tuple[None, None]:
        return None, None


class StepSwitches:
    """StepSwitches applies the per-step switches of one job from the
    pipeline's step-end callback.

    cfg_cutoff is the fraction of steps that keep classifier-free guidance
    (1: all); controlnet_end the fraction that apply the ControlNet (1: all).
    cut_guidance is false for pipelines whose callback cannot replace every
    guided tensor (the inpaint pipeline keeps its doubled mask and time ids).
    """

    def __init__(self, cfg_cutoff: float, controlnet_end: float, cut_guidance: bool) -> None:
        self._cfg_cutoff = cfg_cutoff if cut_guidance else 1.0
        self._controlnet_end = controlnet_end
        self._controlnet_off = False

    @property
    def tensor_inputs(self) -> list[str]:
        """The callback_on_step_end_tensor_inputs the pipeline must pass."""
        return list(GUIDED_TENSORS) if self._cfg_cutoff < 1.0 else ["latents"]

    @property
    def pipeline_args(self) -> dict[str, Any]:
        """Pipeline arguments that go with the switches."""
        if self._controlnet_end < 1.0:
            return {"control_guidance_end": self._controlnet_end}
        return {}

    def after_step(self, pipe: Any, step: int, tensors: dict[str, Any]) -> dict[str, Any]:
        """Called after each 0-based step; returns the tensors to replace."""
        total = int(pipe.num_timesteps)
        nxt = step + 1
        if nxt >= total:
            return {}
        out: dict[str, Any] = {}
        if (
            self._cfg_cutoff < 1.0
            and pipe.do_classifier_free_guidance
            and nxt == guided_steps(total, self._cfg_cutoff)
        ):
            # The guided batch is [unconditional, conditional]; keep the second half.
            out = {name: tensors[name].chunk(2)[1] for name in GUIDED_TENSORS}
            pipe._guidance_scale = 0.0
        if (
            self._controlnet_end < 1.0
            and not self._controlnet_off
            and not controlnet_runs(nxt, total, self._controlnet_end)
        ):
            pipe.controlnet = NoControl()
            self._controlnet_off = True
        return out


def warmup_steps(base: int, cfg_cutoff: float, controlnet_end: float, limit: int) -> int:
    """Returns the fewest steps, at least base and at most limit, in which every
    enabled per-step switch changes state after the first step and before the
    last, so a warm-up job meets every graph a real job will."""
    for total in range(max(base, 2), max(limit, base) + 1):
        ok = True
        if cfg_cutoff < 1.0:
            ok = ok and guided_steps(total, cfg_cutoff) < total
        if controlnet_end < 1.0:
            off = [s for s in range(total) if not controlnet_runs(s, total, controlnet_end)]
            ok = ok and bool(off) and off[0] >= 1
        if ok:
            return total
    return max(base, 1)
