"""Tables of gpu_bench.py results: a plain one for the terminal, a markdown
section for bench/RESULTS.md.

    python bench/gpu_report.py RESULTS.json [--append bench/RESULTS.md]

prints the markdown section for a gpu-bench.json file, or appends it to a
results file under a heading with the card's name and the date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    # key, heading, format
    ("name", "variant", "{}"),
    ("size", "px", "{}"),
    ("concurrency", "jobs", "{}"),
    ("steps", "steps", "{}"),
    ("runs", "runs", "{}"),
    ("p50_s", "P50 s", "{:.3f}"),
    ("p95_s", "P95 s", "{:.3f}"),
    ("it_s", "it/s", "{:.1f}"),
    ("vae_ms", "VAE ms", "{:.0f}"),
    ("images_per_s", "img/s", "{:.2f}"),
    ("peak_gib", "peak GiB", "{:.1f}"),
    ("first_s", "first s", "{:.1f}"),
    ("ready_s", "ready s", "{:.1f}"),
)


def _cells(row: dict[str, Any]) -> list[str]:
    if row.get("error"):
        head = [str(row.get(k, "")) for k, _, _ in COLUMNS[:4]]
        return [*head, "failed: " + str(row["error"])[:60]] + [""] * (len(COLUMNS) - 5)
    cells = []
    for key, _, fmt in COLUMNS:
        value = row.get(key)
        cells.append("" if value is None or value == "" else fmt.format(value))
    return cells


def table(rows: list[dict[str, Any]]) -> str:
    """Returns the rows as a fixed-width text table."""
    heads = [h for _, h, _ in COLUMNS]
    body = [_cells(r) for r in rows]
    widths = [
        max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(heads)
    ]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(heads, widths, strict=True))
        )
    ]
    lines.append("-" * len(lines[0]))
    for cells in body:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Returns the rows as a markdown table."""
    heads = [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "| --- |" + " ---: |" * (len(heads) - 1)]
    for r in rows:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(lines)


def section(summary: dict[str, Any]) -> str:
    """Returns a RESULTS.md section for one run's summary."""
    v = summary.get("versions", {})
    date = str(summary.get("date", ""))[:10]
    software = ", ".join(
        f"{k} {v[k]}" for k in ("python", "torch", "cuda", "diffusers", "transformers") if k in v
    )
    parts = [
        f"## GPU: {summary.get('device', '?')}, full-size SDXL + ControlNet ({date})",
        "",
        f"- Command: `{summary.get('command', 'bench/gpu.sh')}`",
        f"- Software: {software}; {summary.get('dtype', '')}; model built in "
        f"{summary.get('build_s', 0)} s, run took {summary.get('total_s', 0)} s.",
        f"- Job: img2img, strength 1.0, guidance 5.0, Canny ControlNet (scale 0.5), "
        f"{summary.get('steps', '')} steps unless the row says otherwise; square picture of the "
        "row's size; through `DiffusersBackend.run` (no socket, no image encode). 'first s' is the "
        "first job of the row (kernel selection, compilation); 'ready s' is load plus the engine's "
        "warm-up, buckets included, as before SERVING.",
        "",
        markdown_table(summary.get("rows", [])),
    ]
    notes = [f"- {n}" for n in summary.get("notes", [])]
    for r in summary.get("rows", []):
        if r.get("bucket_warm_s"):
            warm = ", ".join(f"{t:.1f}" for t in r["bucket_warm_s"])
            notes.append(
                f"- {r['name']}: buckets {r.get('settings', {}).get('buckets', '')}; each "
                f"bucket's warm-up job took {warm} s (the first compiles the graphs; "
                "'ready s' is the load plus all of them)."
            )
    if summary.get("skipped"):
        notes.append("- Skipped for the time budget: " + ", ".join(summary["skipped"]) + ".")
    if summary.get("interrupted"):
        notes.append("- " + summary["interrupted"] + ".")
    if notes:
        parts += ["", *notes]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="Format gpu_bench.py results.")
    p.add_argument("results", help="gpu-bench.json written by gpu_bench.py")
    p.add_argument("--append", default="", help="append the section to this markdown file")
    args = p.parse_args(argv)
    summary = json.loads(Path(args.results).read_text())
    text = section(summary)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
