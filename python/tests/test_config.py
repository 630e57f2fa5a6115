from __future__ import annotations

import pytest

from inference import config


def test_defaults() -> None:
    s = config.parse(["--socket", "/tmp/x.sock"], {})
    assert (s.backend, s.concurrency, s.device, s.model_dir) == ("diffusers", 1, "auto", "")
    assert s.max_message_bytes >= 64 * config.MIB
    assert (s.min_long_side, s.max_long_side) == (768, 1024)


def test_env_then_flag_precedence() -> None:
    env = {
        "ENGINE_SOCKET": "/tmp/a.sock",
        "ENGINE_CONCURRENCY": "3",
        "MODEL_DIR": "/models",
        "ENGINE_COMPILE": "true",
        "ENGINE_BACKEND": "test",
    }
    s = config.parse([], env)
    assert (s.socket, s.concurrency, s.model_dir, s.compile, s.backend) == (
        "/tmp/a.sock",
        3,
        "/models",
        True,
        "test",
    )
    s = config.parse(["--concurrency", "2", "--no-compile", "--socket", "/tmp/b.sock"], env)
    assert (s.socket, s.concurrency, s.compile) == ("/tmp/b.sock", 2, False)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "--socket"),
        (["--socket", "/s", "--concurrency", "0"], {}, "ENGINE_CONCURRENCY"),
        (["--socket", "/s"], {"ENGINE_CONCURRENCY": "many"}, "ENGINE_CONCURRENCY"),
        (["--socket", "/s", "--backend", "onnx"], {}, "--backend"),
        (["--socket", "/s", "--test-faults"], {}, "--backend test"),
        (["--socket", "/s"], {"ENGINE_TEST_FAULTS": "maybe"}, "ENGINE_TEST_FAULTS"),
        (["--socket", "/s", "--max-long-side", "1001"], {}, "multiple of 8"),
        (["--socket", "/s", "--default-long-side", "512"], {}, "min-long-side"),
        (["--socket", "/s", "--max-message-bytes", "1024"], {}, "64 MiB"),
        (["--socket", "/" + "s" * 120], {}, "100 bytes"),
    ],
)
def test_rejects(argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.parse(argv, env)
    assert needle in str(info.value)
