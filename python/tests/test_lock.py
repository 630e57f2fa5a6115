"""The engine's lock files: resolved from pyproject.toml as it is, and installed exactly in the
virtual environment every test runs in (make venv installs it with the gpu image's script)."""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.markers import Marker

ROOT = Path(__file__).resolve().parents[2]


def _lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vstage_lock", ROOT / "mk" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


def test_locks_are_resolved_from_pyproject() -> None:
    assert lock.stale() == []


def test_a_changed_dependency_makes_the_locks_stale(tmp_path: Path) -> None:
    changed = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    changed.write_text(text.replace('"numpy==', '"numpy>=', 1))
    problems = lock.stale(changed)
    assert len(problems) == 2
    assert all("run make lock" in p for p in problems)
    # A change outside the dependency lists (a linter setting) needs no new lock.
    changed.write_text(text.replace("line-length = 100", "line-length = 99"))
    assert lock.stale(changed) == []


def test_runtime_lock_is_within_the_dev_lock() -> None:
    dev = {(name, version, marker) for name, version, marker in lock.pins(lock.DEV_LOCK)}
    runtime = set(lock.pins(lock.RUNTIME_LOCK))
    assert runtime <= dev, sorted(runtime - dev)
    names = {name for name, _, _ in runtime}
    assert {"torch", "diffusers", "setuptools"} <= names
    assert not {"pytest", "ruff", "mypy"} & names


def test_venv_holds_exactly_the_dev_lock() -> None:
    wrong = []
    for name, version, marker in lock.pins(lock.DEV_LOCK):
        if marker and not Marker(marker).evaluate():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "(missing)"
        if installed != version:
            wrong.append(f"{name}: {installed}, locked {version}")
    assert not wrong, f"the venv differs from python/requirements-dev.lock; run make venv: {wrong}"


def test_every_pin_has_a_hash() -> None:
    for path in (lock.RUNTIME_LOCK, lock.DEV_LOCK):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line and line[0] not in " #":
                assert line.endswith("\\"), line
                assert lines[i + 1].strip().startswith("--hash=sha256:"), line
