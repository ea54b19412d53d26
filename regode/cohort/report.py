"""A cohort's summary (``summary.csv``, ``summary.json``) and report (``report.html``): a page that
opens from disk, with a table sortable by every figure, failures and outliers first, and each row's
QC picture as a thumbnail that opens the full picture."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_output

FIGURES = (
    "seconds",
    "mi_before",
    "mi_after",
    "ncc_before",
    "ncc_after",
    "overlap_before",
    "overlap_after",
    "jacobian_min",
    "jacobian_max",
    "folding_pct",
    "brain_volume_ml",
)
COLUMNS = ("row", "id", "status", "error", "worker", "outlier", *FIGURES)
OUTLIER = 3.5
"""a figure more than this many robust standard deviations (1.4826 MAD) from the cohort's median."""


def mark_outliers(lines: list[dict]) -> list[dict]:
    """Each line with ``outlier``: the QC figures of its row far from the cohort's (done rows)."""
    done = [line for line in lines if line.get("status") == "done"]
    for line in lines:
        line["outlier"] = ""
    for name in FIGURES[1:]:
        values = np.array([line[name] for line in done if line.get(name) is not None], dtype=float)
        if len(values) < 4:
            continue
        median = np.median(values)
        spread = 1.4826 * np.median(np.abs(values - median))
        if spread <= 0:  # most rows agree exactly (no folding, say): any other value stands out
            spread = 1e-9 * max(1.0, abs(median))
        for line in done:
            if line.get(name) is not None and abs(line[name] - median) > OUTLIER * spread:
                line["outlier"] = " ".join(filter(None, [line["outlier"], name]))
    return lines


def order(lines: list[dict]) -> list[dict]:
    """Failures first, then outliers, then the rest, each in manifest order."""
    rank = lambda line: (line.get("status") == "done", not line.get("outlier"), line.get("row", 0))  # noqa: E731
    return sorted(lines, key=rank)


def write(lines: list[dict], out) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary.json`` and ``report.html`` into ``out`` (atomically)."""
    out = Path(out)
    lines = order(mark_outliers([dict(line) for line in lines]))
    paths = {"csv": out / "summary.csv", "json": out / "summary.json", "html": out / "report.html"}
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(lines)
    with atomic_output(paths["csv"]) as tmp:
        Path(tmp).write_text(table.getvalue())
    counts = {status: sum(line.get("status") == status for line in lines) for status in ("done", "failed", "not run")}
    with atomic_output(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps({"counts": counts, "rows": lines}, indent=2))
    with atomic_output(paths["html"]) as tmp:
        Path(tmp).write_text(page(lines, counts))
    return paths


def _cell(value) -> str:
    if value is None or value == "":
        return "<td></td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td data-v="{value:.6g}">{value:.3g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def page(lines: list[dict], counts: dict) -> str:
    """The report as one self-contained HTML page (relative links to each row's QC picture)."""
    head = "".join(f'<th onclick="sortBy({i})">{html.escape(name)}</th>' for i, name in enumerate(("qc", *COLUMNS)))
    body = []
    for line in lines:
        picture = line.get("qc_picture")
        thumb = (
            f'<td><a href="{html.escape(picture)}"><img src="{html.escape(picture)}" alt="QC '
            f'{html.escape(line["id"])}"></a></td>'
            if line.get("status") == "done" and picture
            else "<td></td>"
        )
        css = "failed" if line.get("status") != "done" else "outlier" if line.get("outlier") else ""
        body.append(f'<tr class="{css}">{thumb}' + "".join(_cell(line.get(name)) for name in COLUMNS) + "</tr>")
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>regode cohort report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; font-size: 13px; }}
th {{ cursor: pointer; background: #eee; position: sticky; top: 0; }} th, td {{ border: 1px solid #ccc;
padding: 3px 6px; }}
td img {{ height: 80px; }} tr.failed {{ background: #fdd; }} tr.outlier {{ background: #ffd; }}
</style></head><body>
<h1>regode cohort report</h1>
<p>{html.escape(summary)}. Failures first (red), then rows with an outlying QC figure (yellow); click a heading to sort,
a picture to open it.</p>
<table id="rows"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
<script>
let ascending = true;
function sortBy(column) {{
  const tbody = document.querySelector("#rows tbody");
  // numbers (cells with data-v) by value, text by collation, blanks last either way
  const key = row => {{ const c = row.children[column]; return c.dataset.v !== undefined ?
  parseFloat(c.dataset.v) : c.textContent; }};
  const rows = Array.from(tbody.rows).sort((a, b) => {{
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y),
    undefined, {{numeric: true}});
    return order * (ascending ? 1 : -1); }});
  ascending = !ascending;
  rows.forEach(r => tbody.appendChild(r));
}}
</script></body></html>
"""


def dataset_description(out) -> Path:
    """``OUT/dataset_description.json`` of a BIDS derivatives folder (written once, kept after)."""
    from .._version import __version__

    path = Path(out) / "dataset_description.json"
    if not path.exists():
        document = {
            "Name": "regode registrations",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "regode",
                    "Version": __version__,
                    "Description": "regode cohort: MS-ODENet or neural-field registration",
                }
            ],
        }
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(document, indent=2))
    return path
