"""Runs a case set through the service and computes each result's metrics."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from quality import metrics
from quality.manifest import Case, CaseSet
from quality.service import Service, ServiceError
from quality.store import FolderStore


@dataclasses.dataclass(frozen=True)
class Setting:
    """Setting is what a run changes for every case: request overrides and a label."""

    label: str = "default"
    strength: float | None = None
    guidance_scale: float | None = None

    def overrides(self) -> dict[str, float]:
        """Returns the request fields the setting sets."""
        out: dict[str, float] = {}
        if self.strength is not None:
            out["strength"] = self.strength
        if self.guidance_scale is not None:
            out["guidance_scale"] = self.guidance_scale
        return out


@dataclasses.dataclass(frozen=True)
class Options:
    """Options of one run."""

    run_id: str
    prefix: str
    concurrency: int = 2
    clip_model: str | None = None


def image_id(run_id: str, case: Case, setting: Setting) -> str:
    """Returns the case's image_id in this run: unique per run, case and setting, so that the
    service never answers a run from another run's record."""
    digest = hashlib.sha256(f"{run_id}/{case.id}/{setting.label}".encode()).hexdigest()[:10]
    return f"q-{case.id[:40]}-{digest}"


def upload(cases: CaseSet, store: FolderStore, prefix: str) -> dict[str, dict[str, str]]:
    """Copies every case's photo and mask under prefix; returns their keys by case id."""
    keys: dict[str, dict[str, str]] = {}
    for c in cases.cases:
        k = {"original": f"{prefix}/{c.original.name}"}
        store.put_file(k["original"], c.original)
        if c.mask is not None:
            k["mask"] = f"{prefix}/{c.mask.name}"
            store.put_file(k["mask"], c.mask)
        keys[c.id] = k
    return keys


def run(
    cases: CaseSet,
    service: Service,
    store: FolderStore,
    settings: list[Setting],
    opts: Options,
    out: Path,
) -> list[dict[str, Any]]:
    """Stages every case under every setting with bounded concurrency and returns one result
    per case and setting, setting by setting, cases in order.

    The set is copied into the store, and each case's original and control image written to
    out, once; each staged image lands in out/staged/<setting>/ so the report can show it.
    """
    keys = upload(cases, store, opts.prefix)
    files = _prepare(cases, out)
    jobs = [(case, setting) for setting in settings for case in cases.cases]

    def one(job: tuple[Case, Setting]) -> dict[str, Any]:
        case, setting = job
        return _stage(case, keys[case.id], dict(files[case.id]), service, store, setting, opts, out)

    with ThreadPoolExecutor(max_workers=opts.concurrency) as pool:
        return list(pool.map(one, jobs))


def _prepare(cases: CaseSet, out: Path) -> dict[str, dict[str, str]]:
    """Writes each case's original and the control image the engine derives from it (its own
    Canny) into out; returns their paths relative to out, by case id."""
    from inference.conditioning import canny

    for sub in ("original", "control"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    for c in cases.cases:
        f = {"original": f"original/{c.id}.jpg", "control": f"control/{c.id}.png"}
        original = _rgb(c.original.read_bytes())
        _save(original, out / f["original"])
        _save(canny(original), out / f["control"])
        files[c.id] = f
    return files


def _stage(
    case: Case,
    keys: dict[str, str],
    files: dict[str, str],
    service: Service,
    store: FolderStore,
    setting: Setting,
    opts: Options,
    out: Path,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image_id": image_id(opts.run_id, case, setting),
        "original_key": keys["original"],
        "room_type": case.room_type,
        "style": case.style,
        "seed": case.seed,
    }
    if "mask" in keys:
        body["mask_key"] = keys["mask"]
    for field in ("strength", "guidance_scale"):
        if getattr(case, field) is not None:
            body[field] = getattr(case, field)
    body.update(setting.overrides())
    result: dict[str, Any] = {
        "case": case.id,
        "setting": setting.label,
        "notes": case.notes,
        "request": body,
        "files": files,
    }
    try:
        outcome = service.infer(body)
    except ServiceError as e:
        result["error"] = {"code": e.code, "message": e.message}
        return result
    result["answer"] = outcome.answer
    result["timings"] = {"call_ms": outcome.call_ms, "attempts": outcome.attempts}
    staged = _rgb(store.read(outcome.answer["staged_key"]))
    files["staged"] = f"staged/{setting.label}/{case.id}.jpg"
    (out / files["staged"]).parent.mkdir(parents=True, exist_ok=True)
    _save(staged, out / files["staged"])
    original = _rgb(case.original.read_bytes())
    mask = None if case.mask is None else np.asarray(Image.open(case.mask).convert("L"))
    begin = time.monotonic()
    values = metrics.compute(np.asarray(original), np.asarray(staged), mask)
    if opts.clip_model:
        prompt = f"a {case.style.replace('_', ' ')} {case.room_type.replace('_', ' ')}"
        values["clip_score"] = metrics.clip_score(np.asarray(staged), prompt, opts.clip_model)
    result["timings"]["metrics_ms"] = int((time.monotonic() - begin) * 1000)
    result["metrics"] = {k: _finite(v) for k, v in values.items()}
    result["flags"] = metrics.flags(values)
    return result


def _rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _save(img: Image.Image, path: Path) -> None:
    if path.suffix == ".png":
        img.save(path, "PNG")
    else:
        img.save(path, "JPEG", quality=92)


def _finite(v: float) -> float | None:
    # JSON has no NaN: a metric that does not apply is null.
    return None if v != v else float(v)


def write_results(
    out: Path, run_info: dict[str, Any], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """Writes results.json and returns what it holds."""
    doc = {"run": run_info, "metrics": metric_docs(), "cases": results}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def metric_docs() -> dict[str, dict[str, Any]]:
    """Returns each metric's description, range and thresholds, as results.json records them."""
    return {name: dataclasses.asdict(m) for name, m in metrics.METRICS.items()}
