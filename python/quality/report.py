"""The run's report: one self-contained HTML file, and the blank rubric it saves."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image

# The rubric's criteria, as the acceptance gate counts them.
CRITERIA = ("structure_fidelity", "furniture_plausibility", "style_adherence", "artifacts")
RUBRIC_COLUMNS = ("case", "setting", "reviewer", *CRITERIA, "comment")
# Images are embedded at this long side: enough to judge, small enough to mail the file.
_EMBED_LONG_SIDE = 640


def write_rubric(out: Path, results: list[dict[str, Any]]) -> Path:
    """Writes rubric.csv with one blank row per case: each criterion is to be set to pass or
    fail by a reviewer (or saved from the report's form)."""
    path = out / "rubric.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUBRIC_COLUMNS)
        for r in results:
            w.writerow([r["case"], r["setting"], "", *([""] * len(CRITERIA)), ""])
    return path


def write_report(
    out: Path, run_info: dict[str, Any], docs: dict[str, Any], results: list[dict[str, Any]]
) -> Path:
    """Writes report.html: per case the original, the control image and the staged image side by
    side, the metrics (flagged ones marked), the notes, and a rubric form that saves a CSV."""
    rows = "\n".join(_case_html(out, docs, r) for r in results)
    legend = "\n".join(
        f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(d['description'])}</td>"
        f"<td>{d['lo']:g} to {d['hi']:g}, {d['better']} is better</td><td>{_threshold(d)}</td></tr>"
        for n, d in docs.items()
    )
    title = f"vstage quality run {run_info['id']}"
    page = _PAGE.format(
        title=html.escape(title),
        info=html.escape(
            f"set {run_info['set']} · service {run_info['service']} · "
            f"{len(results)} cases · model_rev {', '.join(run_info.get('model_revs', [])) or 'n/a'}"
        ),
        legend=legend,
        rows=rows,
        criteria=", ".join(f'"{c}"' for c in CRITERIA),
        columns=", ".join(f'"{c}"' for c in RUBRIC_COLUMNS),
    )
    path = out / "report.html"
    path.write_text(page)
    return path


def _threshold(d: dict[str, Any]) -> str:
    parts = []
    if d.get("flag_below") is not None:
        parts.append(f"flagged below {d['flag_below']:g}")
    if d.get("flag_above") is not None:
        parts.append(f"flagged above {d['flag_above']:g}")
    return html.escape(", ".join(parts) or "never flagged")


def _case_html(out: Path, docs: dict[str, Any], r: dict[str, Any]) -> str:
    cid = html.escape(r["case"])
    setting = html.escape(r["setting"])
    imgs = "".join(
        f"<figure><img alt='{k} of {cid}' src='{data_uri(out / r['files'][k])}'>"
        f"<figcaption>{k}</figcaption></figure>"
        for k in ("original", "control", "staged")
        if k in r["files"]
    )
    if "error" in r:
        err = r["error"]
        body = (
            f"<p class='error'>failed: {html.escape(err['code'])}: "
            f"{html.escape(err['message'])}</p>"
        )
    else:
        flagged = set(r.get("flags", []))
        cells = "".join(
            f"<tr class='{'flag' if n in flagged else ''}'><td><code>{html.escape(n)}</code></td>"
            f"<td>{_value(v)}</td></tr>"
            for n, v in r["metrics"].items()
        )
        a = r["answer"]
        body = (
            f"<p>seed {a.get('seed')} · {a.get('width')}x{a.get('height')} · "
            f"{a.get('duration_ms')} ms · {html.escape(str(a.get('model_rev')))}"
            f"{_warnings(a)}</p>"
            f"<table class='metrics'>{cells}</table>"
        )
    form = "".join(
        f"<fieldset><legend>{c.replace('_', ' ')}</legend>"
        + "".join(
            f"<label><input type='radio' name='{cid}/{setting}/{c}' value='{v}'>{v}</label>"
            for v in ("pass", "fail")
        )
        + "</fieldset>"
        for c in CRITERIA
    )
    return (
        f"<section class='case' data-case='{cid}' data-setting='{setting}'>"
        f"<h2>{cid} <small>{setting}</small></h2>"
        f"<p class='notes'>{html.escape(r.get('notes', ''))}</p>"
        f"<div class='images'>{imgs}</div>{body}"
        f"<form class='rubric'>{form}<input name='comment' placeholder='comment'></form></section>"
    )


def _warnings(answer: dict[str, Any]) -> str:
    if not answer.get("warnings"):
        return ""
    return " · warnings: " + html.escape(", ".join(answer["warnings"]))


def _value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def data_uri(path: Path) -> str:
    """Returns the image at path as a data: URI of a JPEG at most _EMBED_LONG_SIDE long, so the
    page that holds it needs no other file."""
    with Image.open(path) as src:
        img = src.convert("RGB")
    img.thumbnail((_EMBED_LONG_SIDE, _EMBED_LONG_SIDE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
.images {{ display: flex; gap: 8px; }}
figure {{ margin: 0; }} figure img {{ width: 320px; display: block; }}
figcaption {{ text-align: center; color: #666; }}
table {{ border-collapse: collapse; }} td {{ padding: 2px 8px; border-bottom: 1px solid #eee; }}
tr.flag td {{ background: #fde2e1; font-weight: bold; }}
.error {{ color: #b00; font-weight: bold; }}
section.case {{ border-top: 2px solid #ccc; padding-top: 1em; margin-top: 1em; }}
fieldset {{ display: inline-block; margin-right: 8px; }}
</style></head><body>
<h1>{title}</h1><p>{info}</p>
<p>Reviewer: <input id="reviewer" placeholder="your name">
<button id="save" type="button">Save rubric.csv</button></p>
<details><summary>Metrics</summary><table><tr><th>metric</th><th>meaning</th><th>range</th>
<th>review</th></tr>{legend}</table></details>
{rows}
<script>
const criteria = [{criteria}];
const columns = [{columns}];
function quote(v) {{ return /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }}
document.getElementById("save").addEventListener("click", () => {{
  const reviewer = document.getElementById("reviewer").value;
  const lines = [columns.join(",")];
  for (const s of document.querySelectorAll("section.case")) {{
    const f = s.querySelector("form");
    const marks = criteria.map(c => {{
      const key = `${{s.dataset.case}}/${{s.dataset.setting}}/${{c}}`;
      const el = f.querySelector(`input[name="${{key}}"]:checked`);
      return el ? el.value : "";
    }});
    const row = [s.dataset.case, s.dataset.setting, reviewer, ...marks, f.comment.value];
    lines.push(row.map(quote).join(","));
  }}
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}}));
  a.download = "rubric.csv";
  a.click();
}});
</script></body></html>
"""
