"""Cohort throughput: ``regode cohort`` against a shell loop of ``regode register`` on the same pairs.

    python benchmarks/cohort_speed.py --data DATA [--model rigid] [--workers 1 --threads 2] [--out
    bench-out/cohort]

The pairs: every BraTS subject's T1c, T2 and FLAIR to its T1 (1 mm) and each NiChart subject's
FLAIR to its T1 (2 mm). Prints pairs per minute for both, and the time per pair split into start-up
(process start, imports, model loading: per pair in the loop, once per worker in the cohort),
reading, registration, outputs (writing, with QC) from each pair's ``PREFIXregode.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REGODE = [sys.executable, "-c", "from regode.cli import main; main()"]


def pairs(data: Path) -> list[tuple[str, Path, Path]]:
    out = []
    for subject in sorted((data / "brats").iterdir()):
        for contrast in ("t1c", "t2", "flair"):
            if (subject / f"{contrast}.nii.gz").exists():
                out.append((f"{subject.name}_{contrast}", subject / "t1.nii.gz", subject / f"{contrast}.nii.gz"))
    for subject in sorted((data / "nichart").iterdir())[:4]:
        out.append((f"{subject.name}_flair", subject / "t1.nii.gz", subject / "flair.nii.gz"))
    return out


def split(record: Path) -> dict:
    t = json.loads(record.read_text())["timings_s"]
    return {
        "read": t.get("read", 0.0),
        "registration": t["total"],
        "outputs": t["wall"] - t["total"] - t.get("read", 0.0),
        "wall": t["wall"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--model", default="rigid")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-out/cohort"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rows = pairs(args.data)
    with open(args.out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "fixed", "moving"])
        writer.writerows([(name, fixed.resolve(), moving.resolve()) for name, fixed, moving in rows])

    start = time.perf_counter()
    subprocess.run(
        [
            *REGODE,
            "cohort",
            str(args.out / "manifest.csv"),
            "--out",
            str(args.out / "cohort"),
            "--options",
            f"--model {args.model}",
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
            "-q",
        ],
        check=True,
    )
    cohort_s = time.perf_counter() - start

    loop_s, startups = 0.0, []
    (args.out / "loop").mkdir()
    for name, fixed, moving in rows:
        start = time.perf_counter()
        subprocess.run(
            [
                *REGODE,
                "register",
                "-f",
                str(fixed),
                "-m",
                str(moving),
                "-o",
                str(args.out / "loop" / f"{name}_"),
                "--model",
                args.model,
                "--threads",
                str(args.threads),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        loop_s += seconds
        startups.append(seconds - split(args.out / "loop" / f"{name}_regode.json")["wall"])

    cohort_parts = [split(args.out / "cohort" / name / f"{name}_regode.json") for name, _, _ in rows]
    loop_parts = [split(args.out / "loop" / f"{name}_regode.json") for name, _, _ in rows]
    n = len(rows)
    print(
        f"{n} pairs ({sum('brats' not in str(f) for _, f, _ in rows)} NiChart at 2 mm, the rest BraTS at 1 "
        f"mm), --model {args.model}, "
        f"{args.workers} worker(s) x {args.threads} threads"
    )
    print("| | pairs per minute | wall s per pair | start-up | read | registration | outputs (+QC) |")
    print("|---|---|---|---|---|---|---|")
    med = lambda parts, key: statistics.median(p[key] for p in parts)  # noqa: E731
    startup = (cohort_s - sum(p["wall"] for p in cohort_parts) / args.workers) / n
    print(
        f"| regode cohort | {60 * n / cohort_s:.1f} | {cohort_s / n:.2f} | {startup:.2f} "
        f"(spread over pairs) | {med(cohort_parts, 'read'):.2f} | {med(cohort_parts, 'registration'):.2f} | "
        f"{med(cohort_parts, 'outputs'):.2f} |"
    )
    print(
        f"| shell loop of regode register | {60 * n / loop_s:.1f} | {loop_s / n:.2f} | "
        f"{statistics.median(startups):.2f} | "
        f"{med(loop_parts, 'read'):.2f} | {med(loop_parts, 'registration'):.2f} | {med(loop_parts, 'outputs'):.2f} |"
    )
    brats = [p for (name, _, _), p in zip(rows, cohort_parts, strict=False) if not name.startswith("Subj")]
    if brats:
        print(
            f"1 mm BraTS pairs in the cohort: median {statistics.median(p['wall'] for p in brats):.2f} s per "
            f"pair end to end on a worker"
        )


if __name__ == "__main__":
    main()
