"""The few-step profile on the tiny model: its scheduler, steps and guidance,
a distilled UNet or a LoRA from MODEL_DIR/few-step, and what it refuses."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from helpers import gradient, job_spec, small_settings
from inference import fewstep, models, tiny
from inference._proto import engine_pb2 as pb
from inference.diffusers_backend import DiffusersBackend
from inference.jobs import JobContext, JobSpec, Work

LINEAR = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "down_blocks.0.resnets.0.conv1"


settings = small_settings


def job(steps: int = 8, strength: float = 1.0, guidance: float = 5.0) -> JobSpec:
    return job_spec(job_id="few", seed=3, strength=strength, guidance_scale=guidance, steps=steps)


def render(b: DiffusersBackend, spec: JobSpec, progress: list[tuple[int, int]]) -> bytes:
    ctx = JobContext(
        threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, lambda s, t: progress.append((s, t))
    )
    return b.run(Work(spec=spec, image=gradient(64, 64), mask=None), ctx).image.tobytes()


def distilled_unet() -> UNet2DConditionModel:
    """A tiny stand-in for a distilled UNet: the tiny architecture, other weights."""
    torch.manual_seed(7)
    return UNet2DConditionModel(**tiny.UNET_CONFIG)


def lora(rank: int = 2) -> dict[str, torch.Tensor]:
    """A tiny LoRA in the layout diffusers and PEFT write: a linear and a conv layer."""
    unet = UNet2DConditionModel(**tiny.UNET_CONFIG)
    lin = unet.get_submodule(LINEAR)
    conv = unet.get_submodule(CONV)
    g = torch.Generator().manual_seed(5)
    return {
        f"unet.{LINEAR}.lora_A.weight": torch.randn(rank, lin.in_features, generator=g),
        f"unet.{LINEAR}.lora_B.weight": torch.randn(lin.out_features, rank, generator=g),
        f"unet.{CONV}.lora_A.weight": torch.randn(rank, conv.in_channels, 3, 3, generator=g),
        f"unet.{CONV}.lora_B.weight": torch.randn(conv.out_channels, rank, 1, 1, generator=g),
    }


def test_profile_runs_its_steps_unguided_with_trailing_timesteps() -> None:
    b = DiffusersBackend(settings(few_step=True), tiny.build())
    b.load()
    batches: list[int] = []
    b._components().unet.register_forward_pre_hook(
        lambda _m, a, _k: batches.append(a[0].shape[0]), with_kwargs=True
    )
    progress: list[tuple[int, int]] = []
    first = render(b, job(steps=30), progress)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert batches == [1, 1, 1, 1]  # guidance 0: no unconditional half
    assert render(b, job(steps=30), []) == first
    assert b._few_step is not None
    assert b._few_step.scheduler.config.timestep_spacing == "trailing"
    assert b.info().model_rev.endswith("+fewstep4g0")


def test_strength_never_leaves_zero_steps() -> None:
    assert fewstep.steps_for(4, 1.0) == 4
    assert fewstep.steps_for(4, 0.5) == 4
    assert fewstep.steps_for(4, 0.2) == 5
    assert fewstep.steps_for(1, 0.3) == 4


def _model_dir(tmp_path: Path) -> str:
    folder = str(tmp_path / "models")
    models.save_dir(tiny.build(), folder)
    return folder


def test_distilled_unet_folder_replaces_the_base(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    distilled = distilled_unet()
    distilled.save_pretrained(os.path.join(folder, fewstep.FOLDER, fewstep.UNET_DIR))
    b = DiffusersBackend(settings(model_dir=folder, few_step=True))
    b.load()
    loaded = b._components().unet.state_dict()
    for name, tensor in distilled.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    progress: list[tuple[int, int]] = []
    render(b, job(), progress)
    assert progress[-1] == (4, 4)


def test_distilled_unet_file_loads_into_the_base(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    distilled = distilled_unet()
    os.makedirs(os.path.join(folder, fewstep.FOLDER))
    save_file(distilled.state_dict(), os.path.join(folder, fewstep.FOLDER, fewstep.UNET_FILE))
    b = DiffusersBackend(settings(model_dir=folder, few_step=True))
    b.load()
    assert torch.equal(
        b._components().unet.get_submodule(LINEAR).weight, distilled.get_submodule(LINEAR).weight
    )


def test_lora_fuses_up_times_down(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    os.makedirs(os.path.join(folder, fewstep.FOLDER))
    weights = lora()
    save_file(weights, os.path.join(folder, fewstep.FOLDER, fewstep.LORA_FILE))
    base = tiny.build().unet
    b = DiffusersBackend(settings(model_dir=folder, few_step=True))
    b.load()
    unet = b._components().unet
    a, up = weights[f"unet.{LINEAR}.lora_A.weight"], weights[f"unet.{LINEAR}.lora_B.weight"]
    want = base.get_submodule(LINEAR).weight + up @ a
    assert torch.allclose(unet.get_submodule(LINEAR).weight, want, atol=1e-5)
    a, up = weights[f"unet.{CONV}.lora_A.weight"], weights[f"unet.{CONV}.lora_B.weight"]
    delta = (up.flatten(1) @ a.flatten(1)).reshape(base.get_submodule(CONV).weight.shape)
    assert torch.allclose(unet.get_submodule(CONV).weight, base.get_submodule(CONV).weight + delta)
    untouched = "up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert torch.equal(unet.get_submodule(untouched).weight, base.get_submodule(untouched).weight)


def test_kohya_lora_names_and_alpha_scale(tmp_path: Path) -> None:
    """kohya-style names go through diffusers' reader; alpha / rank scales the update."""
    unet = tiny.build().unet
    before = unet.get_submodule(LINEAR).weight.clone()
    peft = lora(rank=2)
    kohya_name = "lora_unet_" + LINEAR.replace(".", "_")
    raw = {
        f"{kohya_name}.lora_down.weight": peft[f"unet.{LINEAR}.lora_A.weight"],
        f"{kohya_name}.lora_up.weight": peft[f"unet.{LINEAR}.lora_B.weight"],
        f"{kohya_name}.alpha": torch.tensor(1.0),
    }
    path = str(tmp_path / "kohya.safetensors")
    save_file(raw, path)
    changed = fewstep.fuse_lora(unet, fewstep.read_lora(path, unet))
    assert changed == 1
    want = before + 0.5 * (
        raw[f"{kohya_name}.lora_up.weight"] @ raw[f"{kohya_name}.lora_down.weight"]
    )
    assert torch.allclose(unet.get_submodule(LINEAR).weight, want, atol=1e-5)


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        ({"unet.nowhere.to_q.lora_A.weight": torch.ones(1, 1)}, "lacks"),
        (
            {
                "unet.nowhere.lora_A.weight": torch.ones(1, 1),
                "unet.nowhere.lora_B.weight": torch.ones(1, 1),
            },
            "not in the UNet",
        ),
        ({"text_encoder.x.lora_A.weight": torch.ones(1, 1)}, "text encoder"),
        ({"unet.conv_in.weight": torch.ones(1, 1)}, "not a LoRA"),
    ],
)
def test_lora_refusals(state: dict[str, torch.Tensor], needle: str) -> None:
    with pytest.raises(fewstep.FewStepError) as info:
        fewstep.fuse_lora(tiny.build().unet, state)
    assert needle in str(info.value)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path)
    b = DiffusersBackend(settings(model_dir=folder, few_step=True))
    with pytest.raises(fewstep.FewStepError) as info:
        b.load()
    assert "few-step" in str(info.value) and "lora.safetensors" in str(info.value)


def test_scheduler_folder_wins(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    folder = tmp_path / fewstep.FOLDER
    DDIMScheduler(timestep_spacing="trailing").save_pretrained(str(folder / "scheduler"))
    sched = fewstep.scheduler(tiny.build().scheduler, str(folder))
    assert type(sched).__name__ == "DDIMScheduler"
    assert np.isclose(sched.config.beta_end, 0.02)
