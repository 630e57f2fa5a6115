"""The speed settings: defaults (every switch off), environment, and refusals."""

from __future__ import annotations

import pytest

from inference import config


def test_every_switch_is_off_by_default() -> None:
    s = config.parse(["--socket", "/tmp/x.sock", "--tiny-model"], {})
    assert (s.compile, s.channels_last, s.fuse_qkv, s.few_step) == (False, False, False, False)
    assert (s.compile_mode, s.compile_backend, s.sdpa_backends, s.buckets) == (
        "default",
        "inductor",
        "",
        "",
    )
    assert (s.cfg_cutoff, s.controlnet_end) == (1.0, 1.0)
    assert (s.few_step_steps, s.few_step_guidance) == (4, 0.0)


def test_environment_sets_the_switches() -> None:
    env = {
        "ENGINE_SOCKET": "/tmp/a.sock",
        "ENGINE_TINY_MODEL": "true",
        "ENGINE_COMPILE": "true",
        "ENGINE_COMPILE_MODE": "max-autotune-no-cudagraphs",
        "ENGINE_FUSE_QKV": "1",
        "ENGINE_SDPA_BACKENDS": "cudnn,flash,efficient",
        "ENGINE_BUCKETS": "standard",
        "ENGINE_CFG_CUTOFF": "0.6",
        "ENGINE_CONTROLNET_END": "0.8",
        "ENGINE_FEW_STEP": "on",
        "ENGINE_FEW_STEP_STEPS": "8",
        "ENGINE_FEW_STEP_GUIDANCE": "1.5",
    }
    s = config.parse([], env)
    assert s.compile and s.fuse_qkv and s.few_step
    assert s.compile_mode == "max-autotune-no-cudagraphs"
    assert (s.sdpa_backends, s.buckets) == ("cudnn,flash,efficient", "standard")
    assert (s.cfg_cutoff, s.controlnet_end) == (0.6, 0.8)
    assert (s.few_step_steps, s.few_step_guidance) == (8, 1.5)
    s = config.parse(["--cfg-cutoff", "1", "--no-few-step"], env)
    assert (s.cfg_cutoff, s.few_step) == (1.0, False)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--compile-mode", "fast"], "--compile-mode"),
        (
            ["--compile", "--compile-mode", "reduce-overhead", "--concurrency", "2"],
            "--concurrency 1",
        ),
        (["--compile-backend", ""], "--compile-backend"),
        (["--sdpa-backends", "flash,turbo"], "--sdpa-backends"),
        (["--sdpa-backends", "flash,flash"], "--sdpa-backends"),
        (["--cfg-cutoff", "0"], "--cfg-cutoff"),
        (["--cfg-cutoff", "nan"], "--cfg-cutoff"),
        (["--controlnet-end", "1.5"], "--controlnet-end"),
        (["--few-step-steps", "0"], "--few-step-steps"),
        (["--few-step-steps", "17"], "--few-step-steps"),
        (["--few-step-guidance", "-1"], "--few-step-guidance"),
        (["--buckets", "1024x700"], "ENGINE_BUCKETS"),
        (["--buckets", "1280x768"], "outside [768, 1024]"),
        (["--buckets", "standard", "--default-long-side", "1000"], "multiple of 64"),
    ],
)
def test_rejects(argv: list[str], needle: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.parse(["--socket", "/s", "--tiny-model", *argv], {})
    assert needle in str(info.value)
