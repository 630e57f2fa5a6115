"""The case set: a folder with manifest.json, the photos and optional masks."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

# The service's own rule for image_id parts; case ids become part of one.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,48}$")


@dataclasses.dataclass(frozen=True)
class Case:
    """Case is one photo to stage, with what the run asks for it."""

    id: str
    original: Path
    room_type: str
    style: str
    seed: int
    notes: str = ""
    mask: Path | None = None
    strength: float | None = None
    guidance_scale: float | None = None


@dataclasses.dataclass(frozen=True)
class CaseSet:
    """CaseSet is a loaded manifest; paths are absolute."""

    name: str
    description: str
    folder: Path
    cases: tuple[Case, ...]


def load(folder: str | Path) -> CaseSet:
    """Reads folder/manifest.json; raises ValueError naming the first problem."""
    root = Path(folder).resolve()
    path = root / "manifest.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ValueError(f"{path}: no manifest.json in the set folder") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list) or not doc["cases"]:
        raise ValueError(f"{path}: want an object with a non-empty list of cases")
    name = doc.get("name")
    if not isinstance(name, str) or not _ID.match(name):
        raise ValueError(f"{path}: name must be 1-48 characters of A-Z, a-z, 0-9, _ and -")
    cases = [_case(root, i, c) for i, c in enumerate(doc["cases"])]
    seen: set[str] = set()
    for c in cases:
        if c.id in seen:
            raise ValueError(f"{path}: case id {c.id!r} appears twice")
        seen.add(c.id)
    return CaseSet(name, str(doc.get("description", "")), root, tuple(cases))


_FIELDS = {
    "id",
    "original",
    "mask",
    "room_type",
    "style",
    "seed",
    "notes",
    "strength",
    "guidance_scale",
}


def _case(root: Path, i: int, c: Any) -> Case:
    where = f"case {i}"
    if not isinstance(c, dict):
        raise ValueError(f"{where}: not an object")
    unknown = sorted(set(c) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}")
    cid = c.get("id")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise ValueError(f"{where}: id must be 1-48 characters of A-Z, a-z, 0-9, _ and -")
    where = f"case {cid}"
    for field in ("original", "room_type", "style"):
        if not isinstance(c.get(field), str) or not c[field]:
            raise ValueError(f"{where}: {field} is required")
    seed = c.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"{where}: seed must be a whole number in [0, 2^32)")
    original = _file(root, c["original"], where)
    mask = _file(root, c["mask"], where) if "mask" in c else None
    strength = _number(c, "strength", where, 0.0, 1.0)
    if strength == 0.0:
        raise ValueError(f"{where}: strength must be in (0, 1]")
    return Case(
        id=cid,
        original=original,
        room_type=c["room_type"],
        style=c["style"],
        seed=seed,
        notes=str(c.get("notes", "")),
        mask=mask,
        strength=strength,
        guidance_scale=_number(c, "guidance_scale", where, 0.0, 30.0),
    )


def _file(root: Path, name: Any, where: str) -> Path:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"{where}: {name!r} must be a file name in the set folder")
    p = root / name
    if not p.is_file():
        raise ValueError(f"{where}: {name} does not exist in the set folder")
    return p


def _number(c: dict[str, Any], field: str, where: str, lo: float, hi: float) -> float | None:
    v = c.get(field)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{where}: {field} must be a number in [{lo:g}, {hi:g}]")
    return float(v)
