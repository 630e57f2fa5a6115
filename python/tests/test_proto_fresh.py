"""The committed generated code must be what proto/generate.sh makes from the .proto today."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = [
    "proto/vstage/engine/v1/engine.pb.go",
    "proto/vstage/engine/v1/engine_grpc.pb.go",
    "python/inference/_proto/engine_pb2.py",
    "python/inference/_proto/engine_pb2.pyi",
    "python/inference/_proto/engine_pb2_grpc.py",
]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        [str(ROOT / "proto" / "generate.sh"), str(tmp_path)], check=True, env=env, timeout=600
    )
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert made == sorted(GENERATED)
    stale = [f for f in GENERATED if not filecmp.cmp(tmp_path / f, ROOT / f, shallow=False)]
    assert not stale, f"stale generated code, run `make proto`: {stale}"
