"""The quality loop's command line: run, sweep, score and compare.

python -m quality run --service URL --store file:///folder --set quality/sets/bundled
python -m quality sweep ... --strength 0.6,0.8 --guidance-scale 5,7
python -m quality score RUN_FOLDER [--gate 0.8]
python -m quality compare RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
from pathlib import Path
from typing import Any

from quality import compare, manifest, report, runner, score
from quality.service import Service
from quality.store import FolderStore

EXIT_OK = 0
EXIT_BELOW = 1  # score below the gate, or a run with failed cases
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    """Runs one command and returns its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ValueError as e:
        print(f"quality: {e}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quality", description="vstage's quality loop")
    sub = p.add_subparsers(required=True, metavar="command")
    for name, func, help_text in (
        ("run", _run, "stage every case of a set and write results.json, report.html, rubric.csv"),
        ("sweep", _sweep, "the same set over a grid of strength and guidance; prints a table"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--service", required=True, help="the service's base URL")
        s.add_argument("--store", required=True, help="the service's STORAGE_URL (file:///folder)")
        s.add_argument(
            "--set", default="quality/sets/bundled", help="set folder with manifest.json"
        )
        s.add_argument("--out", help="run folder (default runs/<run id>)")
        s.add_argument("--run-id", help="run id (default: a UTC timestamp)")
        s.add_argument(
            "--prefix", help="key folder for the set's files (default quality/<set name>)"
        )
        s.add_argument("--concurrency", type=_positive, default=2, help="requests in flight")
        s.add_argument(
            "--attempts", type=_positive, default=4, help="tries per case on retryable errors"
        )
        s.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
        s.add_argument(
            "--patience",
            type=float,
            default=600.0,
            help="seconds a case may wait for a busy service (429, in_progress)",
        )
        s.add_argument(
            "--clip-model", help="folder of a CLIP model (transformers format) for clip_score"
        )
        s.set_defaults(func=func)
        if name == "sweep":
            s.add_argument(
                "--strength", type=_floats, default=[None], help="comma-separated strengths"
            )
            s.add_argument(
                "--guidance-scale",
                type=_floats,
                default=[None],
                help="comma-separated guidance scales",
            )
    s = sub.add_parser("score", help="pass rates of a reviewed rubric; exit 1 below the gate")
    s.add_argument("run", type=Path, help="run folder (or a rubric CSV)")
    s.add_argument(
        "--gate", type=float, default=0.8, help="overall pass rate to accept (default 0.8)"
    )
    s.set_defaults(func=_score)
    s = sub.add_parser("compare", help="two runs side by side: metric deltas and a compare.html")
    s.add_argument("a", type=Path)
    s.add_argument("b", type=Path)
    s.add_argument("--html", type=Path, help="page with both runs' images (default B/compare.html)")
    s.set_defaults(func=_compare)
    return p


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _floats(v: str) -> list[float | None]:
    try:
        return [float(x) for x in v.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{v!r}: want comma-separated numbers") from e


def _run(args: argparse.Namespace) -> int:
    return _execute(args, [runner.Setting()])[0]


def _sweep(args: argparse.Namespace) -> int:
    settings = [
        runner.Setting(label=_label(s, g), strength=s, guidance_scale=g)
        for s, g in itertools.product(args.strength, args.guidance_scale)
    ]
    code, doc = _execute(args, settings)
    print(_sweep_table(doc))
    return code


def _label(strength: float | None, guidance: float | None) -> str:
    parts = [
        f"s{strength:g}" if strength is not None else "",
        f"g{guidance:g}" if guidance is not None else "",
    ]
    return "-".join(p for p in parts if p) or "default"


def _execute(
    args: argparse.Namespace, settings: list[runner.Setting]
) -> tuple[int, dict[str, Any]]:
    """Runs the set under settings, writes the run folder, and returns the exit code and what
    results.json holds."""
    cases = manifest.load(args.set)
    store = FolderStore(args.store)
    service = Service(args.service, args.timeout, args.attempts, patience=args.patience)
    started = datetime.datetime.now(datetime.UTC)
    run_id = args.run_id or started.strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or Path("runs") / run_id)
    out.mkdir(parents=True, exist_ok=True)
    opts = runner.Options(
        run_id, args.prefix or f"quality/{cases.name}", args.concurrency, args.clip_model
    )
    results = runner.run(cases, service, store, settings, opts, out)
    info = {
        "id": run_id,
        "set": cases.name,
        "service": args.service,
        "started": started.isoformat(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(),
        "settings": [s.label for s in settings],
        "model_revs": sorted({r["answer"]["model_rev"] for r in results if "answer" in r}),
        "staged": sum("answer" in r for r in results),
        "failed": sum("error" in r for r in results),
        "flagged": sum(bool(r.get("flags")) for r in results),
    }
    doc = runner.write_results(out, info, results)
    report.write_report(out, info, doc["metrics"], results)
    report.write_rubric(out, results)
    print(
        f"{info['staged']} staged, {info['failed']} failed, {info['flagged']} flagged: "
        f"{out / 'report.html'}"
    )
    for r in results:
        if "error" in r:
            print(f"  {r['case']} ({r['setting']}): {r['error']['code']}: {r['error']['message']}")
    return (EXIT_BELOW if info["failed"] else EXIT_OK), doc


def _sweep_table(doc: dict[str, Any]) -> str:
    names = list(doc["metrics"])
    head = f"{'setting':<16}{'staged':>7}{'flagged':>8}" + "".join(f"{n[:14]:>16}" for n in names)
    lines = [head, "-" * len(head)]
    for label in doc["run"]["settings"]:
        rs = [r for r in doc["cases"] if r["setting"] == label]
        ok = [r for r in rs if "metrics" in r]
        cells = ""
        for n in names:
            vals = [r["metrics"][n] for r in ok if r["metrics"].get(n) is not None]
            cells += f"{sum(vals) / len(vals):>16.4g}" if vals else f"{'n/a':>16}"
        flagged = sum(bool(r.get("flags")) for r in ok)
        lines.append(f"{label:<16}{len(ok):>7}{flagged:>8}{cells}")
    return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
    path = args.run / "rubric.csv" if args.run.is_dir() else args.run
    if not 0 < args.gate <= 1:
        raise ValueError("--gate must be in (0, 1]")
    s = score.read(path)
    for c, rate in s.per_criterion.items():
        print(f"{c:<24} {rate:6.1%}")
    verdict = "accepted" if s.overall >= args.gate else "rejected"
    print(
        f"{'overall':<24} {s.overall:6.1%}  "
        f"({s.judgements} judgements, gate {args.gate:.0%}: {verdict})"
    )
    return EXIT_OK if s.overall >= args.gate else EXIT_BELOW


def _compare(args: argparse.Namespace) -> int:
    a, b = compare.load(args.a), compare.load(args.b)
    print(compare.format_table(compare.table(a, b), a["run"]["id"], b["run"]["id"]))
    a_dir = args.a if args.a.is_dir() else args.a.parent
    b_dir = args.b if args.b.is_dir() else args.b.parent
    page = args.html or b_dir / "compare.html"
    compare.write_html(a_dir, b_dir, a, b, page)
    print(f"images: {page}")
    return EXIT_OK
