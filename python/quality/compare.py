"""Two runs side by side: metric deltas per case, for regressions after a change."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from quality.report import data_uri


def load(run: Path) -> dict[str, Any]:
    """Reads a run folder's results.json."""
    path = run / "results.json" if run.is_dir() else run
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a run's results.json: {e}") from e
    return doc


def table(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Returns one row per metric: its mean over the cases both runs staged, in a and in b, the
    delta, and how many cases got worse beyond the metric's own flag direction."""
    docs = {**a.get("metrics", {}), **b.get("metrics", {})}
    by_case = {(r["case"], r["setting"]): r for r in b["cases"] if "metrics" in r}
    pairs = [
        (r, by_case[(r["case"], r["setting"])])
        for r in a["cases"]
        if "metrics" in r and (r["case"], r["setting"]) in by_case
    ]
    rows = []
    for name, doc in docs.items():
        va = [ra["metrics"].get(name) for ra, _ in pairs]
        vb = [rb["metrics"].get(name) for _, rb in pairs]
        both = [(x, y) for x, y in zip(va, vb, strict=True) if x is not None and y is not None]
        if not both:
            continue
        mean_a = sum(x for x, _ in both) / len(both)
        mean_b = sum(y for _, y in both) / len(both)
        sign = 1 if doc.get("better") == "higher" else -1
        worse = sum(
            1 for x, y in both if sign * (y - x) < 0 and not math.isclose(x, y, abs_tol=1e-9)
        )
        rows.append(
            {
                "metric": name,
                "a": mean_a,
                "b": mean_b,
                "delta": mean_b - mean_a,
                "cases": len(both),
                "worse": worse,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], label_a: str, label_b: str) -> str:
    """Formats table() rows as aligned text."""
    head = f"{'metric':<22} {label_a[:14]:>14} {label_b[:14]:>14} {'delta':>10} {'worse':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['metric']:<22} {r['a']:>14.4g} {r['b']:>14.4g} {r['delta']:>+10.4g} "
            f"{r['worse']:>3}/{r['cases']:<3}"
        )
    return "\n".join(lines)


def write_html(a_dir: Path, b_dir: Path, a: dict[str, Any], b: dict[str, Any], path: Path) -> None:
    """Writes a page with each case's staged image from both runs side by side."""
    by_case = {(r["case"], r["setting"]): r for r in b["cases"]}
    sections = []
    for ra in a["cases"]:
        rb = by_case.get((ra["case"], ra["setting"]))
        if rb is None or "staged" not in ra["files"] or "staged" not in rb["files"]:
            continue
        cells = "".join(
            f"<figure><img src='{data_uri(d / r['files']['staged'])}'>"
            f"<figcaption>{html.escape(lab)}</figcaption></figure>"
            for d, r, lab in ((a_dir, ra, a["run"]["id"]), (b_dir, rb, b["run"]["id"]))
        )
        deltas = ", ".join(
            f"{k} {rb['metrics'][k] - v:+.3g}"
            for k, v in ra.get("metrics", {}).items()
            if v is not None and rb.get("metrics", {}).get(k) is not None
        )
        sections.append(
            f"<section><h2>{html.escape(ra['case'])} "
            f"<small>{html.escape(ra['setting'])}</small></h2>"
            f"<div style='display:flex;gap:8px'>{cells}</div><p>{html.escape(deltas)}</p></section>"
        )
    path.write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>vstage quality: compare</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2em}img{width:400px}</style>"
        f"</head><body><h1>{html.escape(a['run']['id'])} vs {html.escape(b['run']['id'])}</h1>"
        f"{''.join(sections)}</body></html>\n"
    )
