"""End-to-end time and peak memory of ``regode register`` (reading, registering, writing), as a
user runs it: a fresh ``regode`` process per run, wall time from start to exit, peak resident
memory of that process, and the stage timings of its ``PREFIXregode.json``. Prints one line per
run and the medians.

    python benchmarks/register_time.py -f FIXED -m MOVING [--labels SEG] [--model rigid+bspline] [--runs 5]
                                       [--threads 2] [--against OTHER_CHECKOUT]

The README's figure: ``-f BraTS-GLI-00001-000/t1.nii.gz -m .../flair.nii.gz --labels .../seg.nii.gz``
(240x240x155 at 1 mm), goal <= 10 s on 2 CPU cores.

The machine's speed drifts by up to a third between spells, so two versions compare only in
alternating runs: ``--against DIR`` times this checkout and the one in DIR (e.g. ``git worktree
add DIR COMMIT``) in the order A B B A, ``--runs`` times each, and prints both medians. Both run
from their source folders through the same start-up code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_FROM_SOURCE = (
    "import sys; source = sys.argv.pop(1); sys.path.insert(0, source); sys.argv[0] = 'regode'; "
    "from regode.cli import main; main()"
)
"""``python -c`` code that runs the ``regode`` command of the checkout given as its first argument."""


def one_run(args, prefix: Path, source: str | None = None) -> dict:
    """One ``regode register`` process: the installed console script, or ``source``'s code."""
    regode = (
        [shutil.which("regode") or "regode"] if source is None else [sys.executable, "-c", START_FROM_SOURCE, source]
    )
    command = regode + [
        "register",
        "-f",
        args.fixed,
        "-m",
        args.moving,
        "-o",
        str(prefix),
        "--model",
        args.model,
        "--threads",
        str(args.threads),
    ]
    if args.labels:
        command += ["--moving-labels", args.labels]
    with tempfile.TemporaryFile(mode="w+") as errors:  # a file, not a pipe: the child never blocks on it
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise SystemExit(f"regode register failed: {errors.read().strip()}")
    stages = json.loads(Path(f"{prefix}regode.json").read_text())["timings_s"]
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--fixed", required=True)
    parser.add_argument("-m", "--moving", required=True)
    parser.add_argument("--labels", help="moving label image (--moving-labels)")
    parser.add_argument("--model", default="rigid+bspline")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--against", metavar="DIR", help="another checkout to alternate with (A B B A)")
    args = parser.parse_args()
    if args.against:
        here, other = (str(Path(p).resolve()) for p in (Path(__file__).parents[1], args.against))
        sources = {here: here, other: other}
        order = [
            name for i in range(args.runs) for name in ((here, other) if i % 2 == 0 else (other, here))
        ]  # A B B A ...
    else:
        sources = {"installed": None}
        order = ["installed"] * args.runs
    runs = {name: [] for name in sources}
    label = (lambda name: f"{name}: ") if args.against else (lambda name: "")
    with tempfile.TemporaryDirectory(prefix="regode-time-") as folder:
        for i, name in enumerate(order):
            run = one_run(args, Path(folder) / f"run{i}_", sources[name])
            runs[name].append(run)
            stages = " ".join(f"{k} {v:.2f}" for k, v in run["stages"].items())
            print(
                f"{label(name)}run {len(runs[name])}: {run['wall_s']:.2f} s, peak {run['peak_mb']:.0f} MB  ({stages})",
                flush=True,
            )
    for name, done in runs.items():
        walls = [r["wall_s"] for r in done]
        peaks = [r["peak_mb"] for r in done]
        print(
            f"{label(name)}median of {len(done)}: {statistics.median(walls):.2f} s "
            f"({min(walls):.2f}-{max(walls):.2f}), "
            f"peak {min(peaks):.0f}-{max(peaks):.0f} MB; model {args.model}, {args.threads} threads"
        )


if __name__ == "__main__":
    main()
