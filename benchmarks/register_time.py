"""End-to-end time and peak memory of ``regode register`` (reading, registering, writing), as a
user runs it: a fresh ``regode`` process per run, wall time from start to exit, peak resident
memory of that process, and the stage timings of its ``PREFIXregode.json``. Prints one line per
run and the medians.

    python benchmarks/register_time.py -f FIXED -m MOVING [--labels SEG] [--model rigid+bspline] [--runs 5] [--threads 2]

Issue 4's figure: ``-f BraTS-GLI-00001-000/t1.nii.gz -m .../flair.nii.gz --labels .../seg.nii.gz``
(240x240x155 at 1 mm), goal <= 10 s on this 2-core CPU. The machine's speed drifts by up to a
third between spells, so compare two versions by alternating their runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def one_run(args, prefix: Path) -> dict:
    command = [shutil.which("regode") or "regode", "register", "-f", args.fixed, "-m", args.moving, "-o", str(prefix),
               "--model", args.model, "--threads", str(args.threads)]
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
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="regode-time-") as folder:
        for i in range(args.runs):
            run = one_run(args, Path(folder) / f"run{i}_")
            runs.append(run)
            stages = " ".join(f"{k} {v:.2f}" for k, v in run["stages"].items())
            print(f"run {i + 1}: {run['wall_s']:.2f} s, peak {run['peak_mb']:.0f} MB  ({stages})", flush=True)
    walls = [r["wall_s"] for r in runs]
    peaks = [r["peak_mb"] for r in runs]
    print(f"median of {len(runs)}: {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}), "
          f"peak {min(peaks):.0f}-{max(peaks):.0f} MB; model {args.model}, {args.threads} threads")


if __name__ == "__main__":
    main()
