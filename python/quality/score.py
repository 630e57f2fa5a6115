"""The acceptance gate: pass rates from the reviewers' rubric."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from quality.report import CRITERIA, RUBRIC_COLUMNS


@dataclasses.dataclass(frozen=True)
class Score:
    """Score is the rubric's pass rate per criterion and overall (a judgement passes when every
    criterion passes), over judgements: one per reviewer and case."""

    judgements: int
    per_criterion: dict[str, float]
    overall: float


def read(path: Path) -> Score:
    """Reads a filled rubric.csv; raises ValueError naming the first unfilled or bad cell."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
        header = tuple(rows[0].keys()) if rows else ()
    if not rows:
        raise ValueError(f"{path}: no judgements")
    missing = [c for c in RUBRIC_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    passes = dict.fromkeys(CRITERIA, 0)
    overall = 0
    for line, row in enumerate(rows, start=2):
        marks = {c: (row[c] or "").strip().lower() for c in CRITERIA}
        bad = [c for c, m in marks.items() if m not in ("pass", "fail")]
        if bad:
            raise ValueError(
                f"{path}:{line}: case {row['case']}: {', '.join(bad)} must be pass or fail"
            )
        for c, m in marks.items():
            passes[c] += m == "pass"
        overall += all(m == "pass" for m in marks.values())
    n = len(rows)
    return Score(n, {c: passes[c] / n for c in CRITERIA}, overall / n)
