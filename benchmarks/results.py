"""The results table of the README and of the docs' results page, rerun from its commands.

Runs ``regode bench`` for each problem below, then writes one Markdown table with the date, the
commit, the hardware, the threads and the run time. With ``--update`` it rewrites the table in
place in README.md (between its ``results`` markers), which the docs' results page includes.

    python benchmarks/results.py --data DATA [--threads 2] [--update] [--work DIR]

DATA holds the two public datasets in the layout ``regode bench`` reads:

    DATA/brats/<subject>/{t1,t1c,t2,flair,seg}.nii.gz     BraTS 2021 (skull-stripped, co-registered)
    DATA/nichart/<subject>/{t1,labels}.nii.gz              NiChart demo data (DLMUSE labels)

The ANTs and greedy rows need ``bash install.sh bench`` (antspyx, picsl_greedy). The whole run
took 65 minutes on 2 CPU cores shared with other work, most of it ANTs' full script between subjects.
``--smoke`` runs one pair per problem at 4 mm with regode's methods only (a check that the script
works, not a measurement).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- --8<-- [start:results] -->", "<!-- --8<-- [end:results] -->"
PAGES = ("README.md",)  # docs/results.md includes this block of the README


@dataclass(frozen=True)
class Problem:
    name: str  # what the row measures, as the table shows it
    dataset: str  # folder under DATA
    task: str  # regode bench --task
    pairs: int
    resolution: float  # mm; 0: each fixed image's own grid
    methods: tuple[tuple[str, str], ...]  # (bench method, what the table calls it)


PROBLEMS = (
    Problem(
        "BraTS, one subject's contrasts, rigid (±75°, ±20 mm)",
        "brats",
        "rigid",
        10,
        2.0,
        (("ants:Rigid", "ANTs rigid (antspyx)"), ("regode:rigid", "`regode register --model rigid`")),
    ),
    Problem(
        "BraTS, one subject's contrasts, B-spline warp",
        "brats",
        "deformable",
        10,
        2.0,
        (
            ("ants:SyN", "ANTs SyN (antspyx)"),
            ("regode:bspline", "`regode register --model bspline`"),
            ("regode:nir", "`regode fit-field`"),
        ),
    ),
    Problem(
        "BraTS, one subject's contrasts, rigid (±40°, ±10 mm) + warp",
        "brats",
        "rigid+deformable",
        10,
        2.0,
        (("ants:SyNRA", "ANTs SyNRA (antspyx)"), ("regode:rigid+bspline", "`regode register --model rigid+bspline`")),
    ),
    Problem(
        "NiChart, between subjects (native 2 mm)",
        "nichart",
        "inter-subject",
        6,
        0.0,
        (
            ("ants:SyNFull", "`antsRegistrationSyN.sh` (full)"),
            ("greedy", "greedy (affine + deformable)"),
            ("regode:affine+bspline", "`regode register --model affine+bspline`"),
        ),
    ),
)


def bench_command(problem: Problem, data: Path, out: Path, threads: int, smoke: bool) -> list[str]:
    methods = [m for m, _ in problem.methods if not smoke or m.startswith("regode:")]
    return [
        "regode",
        "bench",
        "--data",
        str(data / problem.dataset),
        "--task",
        problem.task,
        "--methods",
        ",".join(methods),
        "--pairs",
        str(1 if smoke else problem.pairs),
        "--seed",
        "0",
        "--resolution",
        str(4.0 if smoke else problem.resolution),
        "--threads",
        str(threads),
        "-q",
        "--out",
        str(out),
    ]


def run(command: list[str]) -> None:
    # `python -m regode.cli` runs the regode of this Python, whatever `regode` on PATH is
    subprocess.run([sys.executable, "-m", "regode.cli", *command[1:]], check=True)


def cell(stats: dict, key: str, digits: int) -> str:
    value = stats.get(key)
    return "–" if value is None else f"{value['mean']:.{digits}f}"


def rows(problem: Problem, summary: dict) -> list[str]:
    lines = []
    for method, label in problem.methods:
        if method not in summary:
            continue
        s = summary[method]
        lines.append(
            f"| {problem.name} | {label} | {cell(s, 'dice', 1)} | {cell(s, 'rmse_phi', 2)} "
            f"| {cell(s, 'neg_jac_pct', 3)} | {cell(s, 'seconds', 1)} |"
        )
    return lines


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    except OSError:
        return "unknown"
    return sha.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"


def cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table(problems: list[tuple[Problem, dict]], threads: int, minutes: float, smoke: bool) -> str:
    from regode import __version__

    header = (
        f"Measured {datetime.date.today().isoformat()} with regode {__version__} (commit {commit()}) on "
        f"{os.cpu_count()} cores of an {cpu()} CPU, {threads} threads; "
        f"`python benchmarks/results.py` took {minutes:.0f} min."
    )
    if smoke:
        header = "Smoke run (one pair per problem at 4 mm): not a measurement. " + header
    lines = [
        header,
        "Mean over the pairs (seed 0); s / pair is the registration with the images loaded.",
        "",
        "| problem | method | Dice (%) | RMSE(φ) mm | % det J ≤ 0 | s / pair |",
        "|---|---|---|---|---|---|",
    ]
    for problem, summary in problems:
        lines += rows(problem, summary)
    return "\n".join(lines)


def update(path: Path, text: str) -> None:
    """Rewrites the block between the markers of ``path`` (atomically: a new file, then a rename)."""
    page = path.read_text()
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"results.py: error: {path} has no {BEGIN} ... {END} block")
    new = page[: start + len(BEGIN)] + "\n" + text + "\n" + page[end:]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding brats/ and nichart/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("results"), help="where the bench JSON files go")
    parser.add_argument("--update", action="store_true", help="rewrite the table in README.md")
    parser.add_argument("--pages", type=Path, nargs="*", default=[ROOT / p for p in PAGES], help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="one pair per problem at 4 mm, regode only")
    args = parser.parse_args(argv)
    for problem in PROBLEMS:
        if not (args.data / problem.dataset).is_dir():
            raise SystemExit(f"results.py: error: --data: no {problem.dataset}/ folder in {args.data}")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    measured = []
    for problem in PROBLEMS:
        out = args.work / f"{problem.dataset}_{problem.task}"
        command = bench_command(problem, args.data, out, args.threads, args.smoke)
        print("$", " ".join(command), flush=True)
        run(command)
        measured.append((problem, json.loads(out.with_suffix(".json").read_text())["summary"]))
    text = table(measured, args.threads, (time.perf_counter() - start) / 60, args.smoke)
    (args.work / "results.md").write_text(text + "\n")
    print(text)
    if args.update:
        for page in args.pages:
            update(page, text)


if __name__ == "__main__":
    main()
