from __future__ import annotations

import pytest

from inference import config


def test_defaults() -> None:
    s = config.parse(["--socket", "/tmp/x.sock", "--tiny-model"], {})
    assert (s.concurrency, s.device, s.model_dir, s.tiny_model) == (1, "auto", "", True)
    assert s.max_message_bytes >= 64 * config.MIB
    assert (s.min_long_side, s.max_long_side) == (768, 1024)
    assert (s.warmup_steps, s.warmup_side()) == (1, 1024)


def test_no_model_needed_when_the_backend_loads_none() -> None:
    s = config.parse(["--socket", "/tmp/x.sock"], {}, needs_model=False)
    assert (s.model_dir, s.tiny_model) == ("", False)


@pytest.mark.parametrize(
    ("asked", "want"), [(0, 1024), (512, 768), (900, 896), (903, 896), (4096, 1024)]
)
def test_warmup_side_is_clamped_to_the_limits(asked: int, want: int) -> None:
    s = config.Settings(socket="/s", tiny_model=True, warmup_long_side=asked)
    assert s.warmup_side() == want


def test_env_then_flag_precedence() -> None:
    env = {
        "ENGINE_SOCKET": "/tmp/a.sock",
        "ENGINE_CONCURRENCY": "3",
        "MODEL_DIR": "/models",
        "ENGINE_COMPILE": "true",
        "ENGINE_WARMUP_LONG_SIDE": "512",
    }
    s = config.parse([], env)
    assert (s.socket, s.concurrency, s.model_dir, s.compile, s.warmup_long_side) == (
        "/tmp/a.sock",
        3,
        "/models",
        True,
        512,
    )
    s = config.parse(["--concurrency", "2", "--no-compile", "--socket", "/tmp/b.sock"], env)
    assert (s.socket, s.concurrency, s.compile) == ("/tmp/b.sock", 2, False)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "--socket"),
        (["--socket", "/s"], {}, "MODEL_DIR"),
        (["--socket", "/s", "--tiny-model"], {"MODEL_DIR": "/models"}, "MODEL_DIR"),
        (["--socket", "/s"], {"ENGINE_TINY_MODEL": "maybe"}, "ENGINE_TINY_MODEL"),
        (["--socket", "/s", "--concurrency", "0"], {}, "ENGINE_CONCURRENCY"),
        (["--socket", "/s"], {"ENGINE_CONCURRENCY": "many"}, "ENGINE_CONCURRENCY"),
        (["--socket", "/s", "--max-long-side", "1001"], {}, "multiple of 8"),
        (["--socket", "/s", "--default-long-side", "512"], {}, "min-long-side"),
        (["--socket", "/s", "--max-message-bytes", "1024"], {}, "64 MiB"),
        (["--socket", "/s", "--warmup-long-side", "-8"], {}, "--warmup-long-side"),
        (["--socket", "/" + "s" * 120], {}, "100 bytes"),
    ],
)
def test_rejects(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.parse(argv, env)
    assert needle in str(info.value)
